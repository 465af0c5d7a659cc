"""Win rates and confidence intervals for paired comparisons of two models on the same prompts and seeds.

Scores come as ``[P, S]`` arrays: P prompts, S samples per prompt, sample ``(i, k)`` of both models drawn from the
same seed. A pair is won when model A's score is higher than B's by more than ``tie_tolerance``, tied when they are
within it (a tie counts half a win), lost otherwise. The win rate is the mean over all ``P·S`` pairs.

Intervals:

* ``"bootstrap"`` (default): the paired percentile bootstrap over prompts. Prompts are resampled with replacement,
  each bringing all S of its pairs, so samples of one prompt (which share the prompt's difficulty) are not
  counted as independent evidence. The same resamples give the interval of the mean score difference.
* ``"wilson"``: the Wilson score interval of a binomial proportion with ``wins + ties / 2`` successes in ``P·S``
  trials: exact-ish for independent pairs (S = 1), too narrow when samples of a prompt are correlated.

The sign test's p-value (two-sided, exact binomial with p = 1/2, ties dropped) says whether A and B differ at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from statistics import NormalDist

import numpy as np

INTERVALS = ("bootstrap", "wilson")


@dataclass(frozen=True)
class StatsSettings:
    """How win rates and means get their intervals.

    Attributes:
        confidence: the interval's coverage, e.g. 0.95.
        n_resamples: bootstrap resamples of the prompts.
        interval: ``"bootstrap"`` (paired, over prompts) or ``"wilson"`` for win rates; means always bootstrap.
        tie_tolerance: score differences ``|a - b| <= tie_tolerance`` are ties (in the reward's units).
        seed: seed of the bootstrap resampling (same seed, same interval).
    """

    confidence: float = 0.95
    n_resamples: int = 2000
    interval: str = "bootstrap"
    tie_tolerance: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence={self.confidence}: expected a number strictly between 0 and 1")
        if self.n_resamples < 1:
            raise ValueError(f"n_resamples={self.n_resamples}: expected a positive integer")
        if self.interval not in INTERVALS:
            raise ValueError(f"interval={self.interval!r}: expected one of {INTERVALS}")
        if self.tie_tolerance < 0:
            raise ValueError(f"tie_tolerance={self.tie_tolerance}: expected a non-negative number")


@dataclass(frozen=True)
class WinRate:
    """Model A against model B under one reward.

    Attributes:
        model, opponent, reward: names of A, B and the reward model.
        win_rate: fraction of pairs A wins (ties count half), in [0, 1].
        low, high: the interval of ``win_rate`` (method ``interval``, coverage ``confidence``).
        wins, ties, losses: pair counts from A's side; they sum to ``n_pairs``.
        n_prompts: P; ``n_pairs`` = P·S.
        mean_difference: mean of ``score_A - score_B`` over pairs, in the reward's units.
        difference_low, difference_high: its paired-bootstrap interval.
        sign_test_p: two-sided exact sign-test p-value (ties dropped).
    """

    model: str
    opponent: str
    reward: str
    win_rate: float
    low: float
    high: float
    interval: str
    confidence: float
    wins: int
    ties: int
    losses: int
    n_prompts: int
    n_pairs: int
    mean_difference: float
    difference_low: float
    difference_high: float
    sign_test_p: float

    def as_dict(self) -> dict:
        return asdict(self)


def check_paired(scores_a: np.ndarray, scores_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both score arrays as float64 ``[P, S]`` of one shape, finite."""
    a, b = np.asarray(scores_a, dtype=np.float64), np.asarray(scores_b, dtype=np.float64)
    a, b = (a[:, None], b[:, None]) if a.ndim == 1 else (a, b)
    if a.ndim != 2 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired scores: expected two non-empty [P, S] arrays of one shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("paired scores: found NaN or infinite scores")
    return a, b


def pair_outcomes(scores_a: np.ndarray, scores_b: np.ndarray, tie_tolerance: float = 0.0) -> np.ndarray:
    """``[P, S]`` outcomes from A's side: 1 (win), 0.5 (tie, ``|a - b| <= tie_tolerance``) or 0 (loss)."""
    a, b = check_paired(scores_a, scores_b)
    difference = a - b
    return np.where(np.abs(difference) <= tie_tolerance, 0.5, (difference > 0).astype(np.float64))


def bootstrap_prompt_means(values: np.ndarray, n_resamples: int, seed: int) -> np.ndarray:
    """Means of ``values [P, S]`` over ``n_resamples`` resamples of its P prompts (rows), with replacement.

    Returns:
        ``[n_resamples]`` resampled means of all pairs (every prompt has S pairs, so this is the mean of
        per-prompt means).
    """
    per_prompt = values.mean(axis=1)
    rng = np.random.default_rng(seed)
    resamples = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // per_prompt.size)  # bounds the [chunk, P] index array's memory
    for start in range(0, n_resamples, chunk):
        count = min(chunk, n_resamples - start)
        indices = rng.integers(0, per_prompt.size, size=(count, per_prompt.size))
        resamples[start : start + count] = per_prompt[indices].mean(axis=1)
    return resamples


def percentile_interval(resamples: np.ndarray, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` interval of bootstrap ``resamples`` (percentile method)."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(resamples, [tail, 1.0 - tail])
    return float(low), float(high)


def wilson_interval(successes: float, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / trials`` (successes may be fractional: ties = 1/2)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"wilson_interval: expected 0 <= successes <= trials and trials >= 1, got {successes}/{trials}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / trials
    denominator = 1.0 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half_width = z / denominator * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, centre - half_width), min(1.0, centre + half_width)


def sign_test(wins: int, losses: int) -> float:
    """Two-sided exact sign test: P(a result at least this lopsided | wins and losses equally likely); 1 if none."""
    trials = wins + losses
    if trials == 0:
        return 1.0
    tail = sum(math.comb(trials, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2.0 * tail / 2**trials)


def mean_interval(values: np.ndarray, settings: StatsSettings) -> tuple[float, float, float]:
    """``(mean, low, high)`` of ``values [P, S]`` (or ``[P]``) with the bootstrap-over-prompts interval."""
    array = np.asarray(values, dtype=np.float64)
    array = array[:, None] if array.ndim == 1 else array
    resamples = bootstrap_prompt_means(array, settings.n_resamples, settings.seed)
    return (float(array.mean()), *percentile_interval(resamples, settings.confidence))


def win_rate(
    scores_a: np.ndarray,
    scores_b: np.ndarray,
    settings: StatsSettings | None = None,
    names: tuple[str, str, str] = ("a", "b", "score"),
) -> WinRate:
    """How often model A beats model B on the same prompts and seeds.

    Args:
        scores_a: ``[P, S]`` (or ``[P]``) scores of A; higher is better.
        scores_b: B's scores for the same prompts and seeds, same shape.
        settings: interval method, coverage, resamples, tie tolerance, seed.
        names: ``(model A, model B, reward)`` recorded in the result.
    """
    settings = settings or StatsSettings()
    a, b = check_paired(scores_a, scores_b)
    outcomes = pair_outcomes(a, b, settings.tie_tolerance)
    wins, ties = int((outcomes == 1.0).sum()), int((outcomes == 0.5).sum())
    losses = outcomes.size - wins - ties
    rate = float(outcomes.mean())
    if settings.interval == "wilson":
        low, high = wilson_interval(wins + ties / 2, outcomes.size, settings.confidence)
    else:
        low, high = percentile_interval(
            bootstrap_prompt_means(outcomes, settings.n_resamples, settings.seed), settings.confidence
        )
    difference, difference_low, difference_high = mean_interval(a - b, settings)
    return WinRate(
        names[0], names[1], names[2], rate, low, high, settings.interval, settings.confidence, wins, ties, losses,
        a.shape[0], outcomes.size, difference, difference_low, difference_high, sign_test(wins, losses),
    )
