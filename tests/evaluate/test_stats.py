"""Win rates and intervals on synthetic scores whose answer is known by construction or by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from diffusion_align.evaluate.stats import (
    StatsSettings,
    bootstrap_prompt_means,
    mean_interval,
    pair_outcomes,
    sign_test,
    wilson_interval,
    win_rate,
)

Z95 = 1.959964  # standard normal 97.5% quantile


def lopsided_scores(n_prompts: int, n_wins: int, samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A beats B on the first ``n_wins`` prompts (every sample), loses on the rest."""
    b = np.zeros((n_prompts, samples))
    a = np.where(np.arange(n_prompts)[:, None] < n_wins, 1.0, -1.0) * np.ones((1, samples))
    return a, b


def test_outcomes_count_ties_half():
    a = np.array([[1.0, 2.0, 3.0]])
    b = np.array([[0.0, 2.0, 4.0]])
    np.testing.assert_array_equal(pair_outcomes(a, b), [[1.0, 0.5, 0.0]])
    np.testing.assert_array_equal(pair_outcomes(a, b, tie_tolerance=1.0), [[0.5, 0.5, 0.5]])


def test_identical_models_win_half_with_a_degenerate_interval():
    scores = np.random.default_rng(0).normal(size=(50, 3))
    result = win_rate(scores, scores.copy(), StatsSettings(n_resamples=300))
    assert (result.win_rate, result.low, result.high) == (0.5, 0.5, 0.5)
    assert (result.wins, result.ties, result.losses, result.n_pairs) == (0, 150, 0, 150)
    assert result.sign_test_p == 1.0 and result.mean_difference == 0.0


def test_a_shift_wins_everything_and_the_difference_is_the_shift():
    b = np.random.default_rng(1).normal(size=(40, 2))
    result = win_rate(b + 1.0, b, StatsSettings(n_resamples=300), names=("aligned", "base", "clip"))
    assert (result.model, result.opponent, result.reward) == ("aligned", "base", "clip")
    assert (result.win_rate, result.low, result.high) == (1.0, 1.0, 1.0)
    assert result.mean_difference == pytest.approx(1.0)
    assert result.difference_low == pytest.approx(1.0) and result.difference_high == pytest.approx(1.0)
    assert result.sign_test_p == pytest.approx(2 / 2**80)  # 80 wins, 0 losses


def test_bootstrap_interval_matches_the_normal_approximation_for_independent_prompts():
    # 280 wins of 400: p = 0.7, standard error sqrt(0.7 * 0.3 / 400) = 0.02291, so 95% = 0.7 -/+ 0.0449.
    a, b = lopsided_scores(400, 280)
    result = win_rate(a, b, StatsSettings(n_resamples=4000, seed=3))
    half_width = Z95 * math.sqrt(0.7 * 0.3 / 400)
    assert result.win_rate == pytest.approx(0.7)
    assert result.low == pytest.approx(0.7 - half_width, abs=0.006)
    assert result.high == pytest.approx(0.7 + half_width, abs=0.006)


def test_bootstrap_resamples_prompts_not_samples():
    # Every prompt's 4 samples share the outcome: the evidence is 100 prompts, not 400 pairs, so the interval is
    # as wide as for 100 independent pairs, twice Wilson's (which counts 400 independent trials).
    a, b = lopsided_scores(100, 60, samples=4)
    bootstrap = win_rate(a, b, StatsSettings(n_resamples=4000, seed=5))
    wilson = win_rate(a, b, StatsSettings(interval="wilson"))
    assert bootstrap.win_rate == wilson.win_rate == pytest.approx(0.6)
    expected_half_width = Z95 * math.sqrt(0.6 * 0.4 / 100)  # 0.0960
    assert (bootstrap.high - bootstrap.low) / 2 == pytest.approx(expected_half_width, abs=0.01)
    assert (bootstrap.high - bootstrap.low) / (wilson.high - wilson.low) == pytest.approx(2.0, abs=0.25)


def test_bootstrap_interval_covers_the_true_win_rate_about_95_percent_of_the_time():
    rng = np.random.default_rng(7)
    true_rate, n_prompts, trials = 0.6, 120, 200
    covered = 0
    for trial in range(trials):
        a_wins = rng.random(n_prompts) < true_rate
        a, b = np.where(a_wins, 1.0, 0.0), np.where(a_wins, 0.0, 1.0)
        result = win_rate(a, b, StatsSettings(n_resamples=500, seed=trial))
        covered += result.low <= true_rate <= result.high
    assert 0.89 <= covered / trials <= 0.99


def test_ties_count_half_in_rate_and_interval():
    # 10 wins, 20 ties, 10 losses -> exactly 0.5; a 1-point tolerance turns the +/-0.5 differences into ties.
    b = np.zeros(40)
    a = np.concatenate([np.full(10, 2.0), np.full(10, 0.5), np.full(10, -0.5), np.full(10, -2.0)])
    exact = win_rate(a, b, StatsSettings(n_resamples=500))
    assert (exact.wins, exact.ties, exact.losses) == (20, 0, 20)
    tolerant = win_rate(a, b, StatsSettings(n_resamples=500, tie_tolerance=1.0))
    assert (tolerant.wins, tolerant.ties, tolerant.losses) == (10, 20, 10)
    assert tolerant.win_rate == 0.5 and tolerant.low < 0.5 < tolerant.high
    assert tolerant.sign_test_p == 1.0


def test_wilson_interval_textbook_values():
    # 8 successes in 10 trials, 95%: (0.4902, 0.9433) (Wilson 1927; Newcombe 1998, Table I).
    low, high = wilson_interval(8, 10, 0.95)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # 0 of 10: the lower bound is 0 and the upper z^2 / (n + z^2) = 0.2775.
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    with pytest.raises(ValueError, match="successes <= trials"):
        wilson_interval(11, 10)


def test_sign_test_exact_values():
    assert sign_test(9, 1) == pytest.approx(2 * 11 / 1024)  # P(X <= 1 | n=10) = 11/1024, two-sided
    assert sign_test(5, 5) == 1.0
    assert sign_test(0, 0) == 1.0
    assert sign_test(0, 6) == pytest.approx(2 / 64)


def test_mean_interval_of_a_constant_is_the_constant_and_a_normal_mean_is_covered():
    assert mean_interval(np.full((10, 3), 2.5), StatsSettings(n_resamples=100)) == (2.5, 2.5, 2.5)
    values = np.random.default_rng(11).normal(loc=3.0, scale=1.0, size=(400, 1))
    mean, low, high = mean_interval(values, StatsSettings(n_resamples=2000))
    assert low < 3.0 < high
    assert (high - low) / 2 == pytest.approx(Z95 / math.sqrt(400), abs=0.015)
    assert low < mean < high


def test_bootstrap_is_seeded_and_chunked_consistently():
    values = np.random.default_rng(0).random((30, 2))
    first = bootstrap_prompt_means(values, 50, seed=4)
    np.testing.assert_array_equal(first, bootstrap_prompt_means(values, 50, seed=4))
    assert not np.array_equal(first, bootstrap_prompt_means(values, 50, seed=5))
    assert first.shape == (50,) and values.min() <= first.min() and first.max() <= values.max()


@pytest.mark.parametrize(
    ("a", "b", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "one shape"),
        (np.zeros((0, 2)), np.zeros((0, 2)), "non-empty"),
        (np.array([1.0, np.nan]), np.array([0.0, 0.0]), "NaN"),
    ],
)
def test_bad_scores_are_refused(a, b, message):
    with pytest.raises(ValueError, match=message):
        win_rate(a, b)


@pytest.mark.parametrize(
    ("field", "value"), [("confidence", 1.0), ("n_resamples", 0), ("interval", "normal"), ("tie_tolerance", -1.0)]
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        StatsSettings(**{field: value})
