"""Statistics over seeds: mean ± standard error with a 95% Student-t interval, and paired differences
against a baseline run with the same seed (same data order, same starting policy, same held-out
prompts and sampling seed), with their own interval. Pure functions over report rows (plain dicts).

A seed is the unit of replication: run-to-run variation (data order, sampling) is what a claim about
a method has to beat, so the intervals are over seeds, not over the prompts of one run.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from scipy.stats import t as student_t

from tralign.report.cells import number

# Swept keys that say *which method* a row is (``sweep``: the +sweep= file, e.g. regime_dpo vs regime_soft);
# every other swept key but the seed is the setting the method ran in, which a paired baseline must share.
METHOD_KEYS = ("method", "ref_update", "alpha", "tau", "label", "sweep")
SEED_KEY = "seed"


@dataclass(frozen=True)
class SeedStats:
    """Mean over ``n`` seeds, its standard error (None for n = 1) and the 95% t-interval."""

    n: int
    mean: float
    sem: float | None
    low: float | None
    high: float | None

    def cell(self, digits: str = ".3f") -> str:
        """``1.294 ± 0.020 [1.208, 1.380]`` (mean ± s.e. [95% interval]); ``1.294 (n=1)`` alone."""
        if self.sem is None:
            return f"{self.mean:{digits}} (n=1)"
        plain = digits.lstrip("+")  # a sign on the mean and bounds (differences), never on the s.e.
        return f"{self.mean:{digits}} ± {self.sem:{plain}} [{self.low:{digits}}, {self.high:{digits}}]"

    @property
    def excludes_zero(self) -> bool:
        return self.low is not None and (self.low > 0 or self.high < 0)


def seed_stats(values: Sequence[float], level: float = 0.95) -> SeedStats:
    """Mean, s.e. = sd/√n (sample sd, n − 1) and mean ± t_{n−1, (1+level)/2} · s.e."""
    values = [float(v) for v in values]
    if not values:
        raise ValueError("seed_stats: no values")
    mean = statistics.fmean(values)
    if len(values) == 1:
        return SeedStats(1, mean, None, None, None)
    sem = statistics.stdev(values) / math.sqrt(len(values))
    half = float(student_t.ppf((1 + level) / 2, len(values) - 1)) * sem
    return SeedStats(len(values), mean, sem, mean - half, mean + half)


def setting_keys(swept: Sequence[str]) -> list[str]:
    """The swept keys that define a setting shared by a method and its baseline (not the method's own
    keys, not the seed), e.g. β, the learning rate, the training length."""
    return [k for k in swept if k not in METHOD_KEYS and k != SEED_KEY]


def completed_with(rows: Sequence[Mapping[str, Any]], *keys: str) -> list[Mapping[str, Any]]:
    """The completed rows that have a finite number under every one of ``keys``."""
    return [
        r for r in rows if r.get("status") == "completed" and all(number(r.get(k)) is not None for k in keys)
    ]


def group_stats(
    rows: Sequence[Mapping[str, Any]], keys: Sequence[str], metric: str
) -> dict[tuple, SeedStats]:
    """``(label, *values of keys) -> SeedStats`` of ``metric`` over the completed rows (the seeds);
    ``keys`` are the swept keys without the seed (α, τ, β, ...), so only seeds are pooled."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for row in completed_with(rows, metric):
        groups[(row["label"], *(row.get(k) for k in keys))].append(number(row[metric]))
    return {key: seed_stats(values) for key, values in groups.items()}


def default_baselines(labels: Sequence[str]) -> dict[str, str]:
    """``TR-DPO soft -> DPO``: each TR label's frozen-reference variant of the same loss, when present."""
    present = set(labels)
    out = {}
    for label in labels:
        if label.startswith("TR-"):
            base = label.removeprefix("TR-").split(" ")[0]
            if base in present:
                out[label] = base
    return out


@dataclass(frozen=True)
class PairedDiff:
    """``metric(label) − metric(baseline)`` per seed in the same setting, over the seeds both have."""

    label: str
    baseline: str
    setting: tuple
    stats: SeedStats
    seeds: tuple


def own_keys(swept: Sequence[str]) -> list[str]:
    """Swept keys that tell apart variants of one method (α, τ): part of a row's identity, but not
    matched with the baseline (DPO has no α to match)."""
    return [k for k in swept if k in ("alpha", "tau")]


def paired_differences(
    rows: Sequence[Mapping[str, Any]],
    swept: Sequence[str],
    metric: str,
    baselines: Mapping[str, str] | None = None,
) -> list[PairedDiff]:
    """For every (label, α/τ, setting) with a baseline, the per-seed differences to the baseline's run
    with the same seed and setting (``setting_keys``), summarised by :func:`seed_stats`. ``baselines``
    maps a label to its baseline label (default: :func:`default_baselines`, TR-X -> X); ``{"*": "DPO"}``
    compares every other label with DPO. ``PairedDiff.setting`` is the swept α/τ values then the
    setting's. A baseline with several α/τ variants in one setting is matched on α/τ too."""
    done = completed_with(rows, metric)
    keys, own = setting_keys(swept), own_keys(swept)
    labels = list(dict.fromkeys(r["label"] for r in done))
    if baselines is None:
        baselines = default_baselines(labels)
    elif "*" in baselines:
        baselines = {label: baselines["*"] for label in labels if label != baselines["*"]}
    by: dict[tuple, dict[Any, float]] = defaultdict(dict)  # (label, own, setting) -> seed -> value
    for row in done:
        ident = (row["label"], tuple(row.get(k) for k in own), tuple(row.get(k) for k in keys))
        by[ident][row.get(SEED_KEY)] = number(row[metric])
    out = []
    for (label, mine, setting), values in by.items():
        if label not in baselines:
            continue
        candidates = [k for k in by if k[0] == baselines[label] and k[2] == setting]
        if len(candidates) > 1:
            candidates = [k for k in candidates if k[1] == mine]
        if len(candidates) != 1:
            continue
        base = by[candidates[0]]
        seeds = sorted((s for s in values if s in base), key=str)
        if seeds:
            diffs = [values[s] - base[s] for s in seeds]
            out.append(
                PairedDiff(label, baselines[label], (*mine, *setting), seed_stats(diffs), tuple(seeds))
            )
    return out


def best_within(points: Sequence[tuple[float, float]], budget: float) -> float | None:
    """The best quality among ``(kl, quality)`` points with kl ≤ ``budget`` (None if none): the
    method's frontier read as "the best it reached without drifting further than this"."""
    inside = [q for kl, q in points if kl <= budget]
    return max(inside) if inside else None


def kl_budgets(rows: Sequence[Mapping[str, Any]], metric: str, kl: str, n: int = 6) -> list[float]:
    """``n`` KL budgets, evenly spaced from the smallest budget every (method, seed) reaches (its
    lowest-KL point) to the largest KL seen, rounded to 0.5 nats."""
    done = completed_with(rows, metric, kl)
    lows: dict[tuple, float] = {}
    for r in done:
        key = (r["label"], r.get(SEED_KEY))
        lows[key] = min(lows.get(key, math.inf), number(r[kl]))
    if not lows:
        return []
    low, high = max(lows.values()), max(number(r[kl]) for r in done)
    if n < 2 or high <= low:
        return [math.ceil(low * 2) / 2]
    return sorted({math.ceil((low + i * (high - low) / (n - 1)) * 2) / 2 for i in range(n)})


def matched_kl(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    kl: str,
    budgets: Sequence[float],
    baselines: Mapping[str, str] | None = None,
) -> tuple[dict[tuple[str, float], SeedStats], list[PairedDiff]]:
    """Quality at matched divergence. Per method and seed, every run of the sweep (all β, all training
    lengths) is a ``(kl, metric)`` point; :func:`best_within` reads the seed's frontier at each budget.
    Returns the mean over seeds per ``(label, budget)`` and the paired differences to the baseline's
    frontier of the same seed (``setting`` = ``(budget,)``), where both reach the budget."""
    points: dict[tuple, list[tuple[float, float]]] = defaultdict(list)
    for r in completed_with(rows, metric, kl):
        points[(r["label"], r.get(SEED_KEY))].append((number(r[kl]), number(r[metric])))
    labels = list(dict.fromkeys(label for label, _ in points))
    if baselines is None:
        baselines = default_baselines(labels)
    elif "*" in baselines:
        baselines = {label: baselines["*"] for label in labels if label != baselines["*"]}
    front: dict[tuple, dict[Any, float]] = defaultdict(dict)  # (label, budget) -> seed -> quality
    for (label, seed), pts in points.items():
        for budget in budgets:
            value = best_within(pts, budget)
            if value is not None:
                front[(label, budget)][seed] = value
    means = {key: seed_stats(list(values.values())) for key, values in front.items()}
    diffs = []
    for (label, budget), values in front.items():
        base = front.get((baselines.get(label), budget)) if label in baselines else None
        seeds = sorted((s for s in values if base and s in base), key=str)
        if seeds:
            stats = seed_stats([values[s] - base[s] for s in seeds])
            diffs.append(PairedDiff(label, baselines[label], (budget,), stats, tuple(seeds)))
    return means, diffs
