"""The Moving Shapes grammar, its parser and the train / held-out split (the image world's combinations)."""

import pytest

from diffusion_align.generate.dense import segment_frame_ranges
from diffusion_align.moving_shapes.world import (
    DIRECTIONS,
    FRAMES,
    SPEEDS,
    MovingShapesPrompt,
    all_prompts,
    parse_prompt,
    split_prompts,
)
from diffusion_align.shapes import world as image_world
from diffusion_align.shapes.world import COLORS, SHAPES, SIZES, ShapesPrompt


def test_grammar_counts_every_combination_once():
    prompts = all_prompts()
    # sizes (none, small, large) x colours x shapes x backgrounds other than the colour x directions x speeds
    assert len(prompts) == 3 * 8 * 3 * 7 * 4 * 3 == len(set(prompts))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a red circle moving left on a blue background",
         MovingShapesPrompt("red", "circle", "blue", "left")),
        ("a small green square moving up slowly on a black background",
         MovingShapesPrompt("green", "square", "black", "up", "small", "slowly")),
        ("a large white triangle moving down quickly on a orange background",
         MovingShapesPrompt("white", "triangle", "orange", "down", "large", "quickly")),
        ("a yellow circle moving right quickly on a purple background",
         MovingShapesPrompt("yellow", "circle", "purple", "right", speed="quickly")),
    ],
)
def test_parse_reads_each_optional_part(text, expected):
    assert parse_prompt(text) == expected
    assert expected.text == text


def test_every_prompt_round_trips_through_its_text():
    for prompt in all_prompts():
        assert parse_prompt(prompt.text) == prompt


@pytest.mark.parametrize(
    "text, reason",
    [
        ("a red circle moving left on a red background", "both 'red'"),
        ("a pink circle moving left on a blue background", "color='pink'"),
        ("a red hexagon moving left on a blue background", "shape='hexagon'"),
        ("a red circle moving sideways on a blue background", "direction='sideways'"),
        ("a red circle moving left fast on a blue background", "expected 'a \\[small"),
        ("a tiny red circle moving left on a blue background", "expected 'a \\[small"),
        ("a red circle at the left on a blue background", "expected 'a \\[small"),  # image world grammar
        ("a red circle moving on a blue background", "expected 'a \\[small"),
        ("a red circle moving slowly left on a blue background", "expected 'a \\[small"),
    ],
)
def test_parse_rejects_sentences_outside_the_grammar_naming_them_and_why(text, reason):
    with pytest.raises(ValueError, match=f"not a Moving Shapes prompt: '{text}'.*{reason}"):
        parse_prompt(text)


@pytest.mark.parametrize(
    "fields, culprit",
    [
        (("red", "circle", "blue", "north"), "direction='north'"),
        (("red", "circle", "blue", "left", "medium"), "size='medium'"),
        (("red", "circle", "blue", "left", None, "fast"), "speed='fast'"),
        (("red", "cube", "blue", "left"), "shape='cube'"),
        (("red", "circle", "teal", "left"), "bg='teal'"),
    ],
)
def test_prompt_fields_are_validated_naming_the_field(fields, culprit):
    with pytest.raises(ValueError, match=f"Moving Shapes prompt field {culprit}: expected one of"):
        MovingShapesPrompt(*fields)


def test_image_prompt_keeps_colour_shape_background_and_size_without_position():
    prompt = parse_prompt("a large blue triangle moving down slowly on a white background")
    assert prompt.image_prompt == ShapesPrompt("blue", "triangle", "white", "large", None)
    assert prompt.image_prompt.text == "a large blue triangle on a white background"
    assert prompt.combination == prompt.image_prompt.combination == ("blue", "triangle", "white")


def test_split_is_disjoint_by_combination_and_covers_everything():
    train, held = split_prompts("train"), split_prompts("held_out")
    assert len(train) + len(held) == len(all_prompts())
    assert {p.combination for p in train}.isdisjoint({p.combination for p in held})
    assert len(held) == 18 * 3 * 4 * 3


def test_held_out_means_the_same_combinations_as_in_the_image_world():
    held = {p.combination for p in split_prompts("held_out")}
    assert held == image_world.held_out_combinations()
    assert held == {p.combination for p in image_world.split_prompts("held_out")}
    assert {p.image_prompt for p in split_prompts("held_out")} <= set(image_world.split_prompts("held_out"))


def test_training_split_shows_every_value_of_every_attribute():
    train = split_prompts("train")
    assert {p.color for p in train} == set(COLORS) == {p.bg for p in train}
    assert {p.shape for p in train} == set(SHAPES)
    assert {p.size for p in train} == {None, *SIZES}
    assert {p.direction for p in train} == set(DIRECTIONS)
    assert {p.speed for p in train} == {None, *SPEEDS}


def test_split_is_deterministic_and_rejects_unknown_names():
    assert split_prompts("held_out") == split_prompts("held_out")
    with pytest.raises(ValueError, match="Moving Shapes split 'test': expected 'train' or 'held_out'"):
        split_prompts("test")


def test_clip_length_suits_a_causal_video_vae():
    # 4k + 1 frames: the causal VAEs of Wan 2.1 / CogVideoX (temporal compression 4) take them as they are
    assert (FRAMES - 1) % 4 == 0
    assert segment_frame_ranges(FRAMES, 3, 4) == [(0, 1), (1, 5), (5, 9)]
