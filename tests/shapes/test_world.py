"""The Shapes grammar, its parser and the train / held-out split."""

import itertools

import pytest

from diffusion_align.shapes.world import (
    COLORS,
    POSITIONS,
    SHAPES,
    ShapesPrompt,
    all_prompts,
    held_out_combinations,
    parse_prompt,
    split_prompts,
)


def test_grammar_counts_every_combination_once():
    prompts = all_prompts()
    # sizes (none, small, large) x colours x shapes x positions (none + 5) x backgrounds other than the colour
    assert len(prompts) == 3 * 8 * 3 * 6 * 7 == len(set(prompts))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red circle on a blue background", ShapesPrompt("red", "circle", "blue")),
        ("a small green square at the left on a black background", ShapesPrompt("green", "square", "black", "small", "at the left")),
        ("a large white triangle in the center on a orange background", ShapesPrompt("white", "triangle", "orange", "large", "in the center")),
    ],
)
def test_parse_reads_each_optional_part(text, expected):
    assert parse_prompt(text) == expected
    assert expected.text == text


def test_every_prompt_round_trips_through_its_text():
    for prompt in all_prompts():
        assert parse_prompt(prompt.text) == prompt


@pytest.mark.parametrize(
    "text",
    [
        "a red circle on a red background",  # colour equals background
        "a pink circle on a blue background",  # unknown colour
        "a red hexagon on a blue background",  # unknown shape
        "a red circle at the middle on a blue background",  # unknown position
        "a tiny red circle on a blue background",  # unknown size
        "red circle on a blue background",
    ],
)
def test_parse_rejects_sentences_outside_the_grammar_naming_them(text):
    with pytest.raises(ValueError, match="not a Shapes prompt"):
        parse_prompt(text)


def test_split_is_disjoint_by_combination_and_covers_everything():
    train, held = split_prompts("train"), split_prompts("held_out")
    assert len(train) + len(held) == len(all_prompts())
    assert {p.combination for p in train}.isdisjoint({p.combination for p in held})
    assert {p.combination for p in held} == held_out_combinations()
    assert len(held_out_combinations()) == 18


def test_held_out_combinations_are_new_compositions_of_seen_pairs():
    train = {p.combination for p in split_prompts("train")}
    for color, shape, bg in held_out_combinations():
        assert any(c == color and s == shape for c, s, _ in train)
        assert any(c == color and b == bg for c, _, b in train)
        assert any(s == shape and b == bg for _, s, b in train)


def test_training_split_shows_every_value_of_every_attribute():
    train = split_prompts("train")
    assert {p.color for p in train} == set(COLORS) == {p.bg for p in train}
    assert {p.shape for p in train} == set(SHAPES)
    assert {p.position for p in train} == {None, *POSITIONS}


def test_split_is_deterministic_and_rejects_unknown_names():
    assert split_prompts("held_out") == split_prompts("held_out")
    with pytest.raises(ValueError, match="expected 'train' or 'held_out'"):
        split_prompts("test")


def test_every_colour_pair_differs():
    for a, b in itertools.combinations(COLORS.values(), 2):
        assert a != b
