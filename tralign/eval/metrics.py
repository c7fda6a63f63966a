"""Pure arithmetic of the evaluation: win rates (ties count half), percentile-bootstrap intervals,
means with standard errors. Numbers in, numbers out; no models, no I/O."""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence

# What one judged pair is worth to answer "a" (the policy). Unparsable pairs are left out.
SCORES = {"a": 1.0, "b": 0.0, "tie": 0.5}
OUTCOMES = (*SCORES, "unparsable")


def sem(values: Sequence[float]) -> float:
    """Standard error of the mean, stdev / sqrt(n) (0 for fewer than two values)."""
    return statistics.stdev(values) / len(values) ** 0.5 if len(values) > 1 else 0.0


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean: resample ``values`` with replacement ``n_boot``
    times and take the (1-level)/2 and (1+level)/2 quantiles of the resampled means.
    Deterministic in ``seed``; (nan, nan) for no values."""
    n = len(values)
    if n == 0:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=n)) / n for _ in range(n_boot))
    lo = means[int((1 - level) / 2 * (n_boot - 1))]
    hi = means[int(round((1 + level) / 2 * (n_boot - 1)))]
    return lo, hi


def win_rate(outcomes: Sequence[str], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """Win rate of "a" over "b": (wins + ties / 2) / judged, judged = pairs that are not unparsable,
    with a bootstrap 95% interval over the judged pairs."""
    unknown = sorted(set(outcomes) - set(OUTCOMES))
    if unknown:
        raise ValueError(f"unknown outcome(s) {unknown}; expected {OUTCOMES}")
    scores = [SCORES[o] for o in outcomes if o != "unparsable"]
    lo, hi = bootstrap_ci(scores, n_boot=n_boot, seed=seed)
    return {
        "win_rate": statistics.fmean(scores) if scores else float("nan"),
        "ci_low": lo,
        "ci_high": hi,
        "n": len(scores),
        "wins": outcomes.count("a"),
        "losses": outcomes.count("b"),
        "ties": outcomes.count("tie"),
        "unparsable": outcomes.count("unparsable"),
    }


def mean_ci(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float | int]:
    """Mean, standard error and bootstrap 95% interval of ``values`` (None entries are dropped)."""
    kept = [float(v) for v in values if v is not None]
    lo, hi = bootstrap_ci(kept, n_boot=n_boot, seed=seed)
    return {
        "mean": statistics.fmean(kept) if kept else float("nan"),
        "sem": sem(kept),
        "ci_low": lo,
        "ci_high": hi,
        "n": len(kept),
    }


def combine_orders(first: str, swapped: str) -> str:
    """One pair judged twice, answers in both orders, both verdicts already in terms of "a" (the
    policy): agreement stands, disagreement (position bias) is a tie, one unparsable verdict
    leaves the other, two leave the pair unparsable."""
    if first == "unparsable":
        return swapped
    if swapped == "unparsable" or first == swapped:
        return first
    return "tie"
