"""Plots over seeds: the golden reward–KL frontier from seed means (both axes with their standard
errors), and each method's best reward within a KL budget with its 95% interval over seeds. Drawn from
report rows with Matplotlib's object API (no pyplot state)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from tralign.report.frontier import _short, pareto_front
from tralign.report.stats import completed_with, kl_budgets, matched_kl, number, seed_stats

Row = Mapping[str, Any]


def frontier_means(rows: Sequence[Row], metric: str, kl: str, keys: Sequence[str]) -> Figure | None:
    """One point per (method, setting): mean KL and mean ``metric`` over seeds, error bars one s.e.
    each way, labelled with the setting (β, steps ...); the line joins each method's Pareto front."""
    groups: dict[tuple, list[Row]] = defaultdict(list)
    for r in completed_with(rows, kl, metric):
        groups[(r["label"], *(r.get(k) for k in keys))].append(r)
    if len(groups) < 2 or max(len(m) for m in groups.values()) < 2:
        return None
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.add_subplot()
    by_label: dict[str, list[tuple[float, float, float, float, str]]] = defaultdict(list)
    for (label, *setting), members in groups.items():
        x = seed_stats([number(m[kl]) for m in members])
        y = seed_stats([number(m[metric]) for m in members])
        text = " ".join(_short(k, v) for k, v in zip(keys, setting, strict=True) if v is not None)
        by_label[label].append((x.mean, y.mean, x.sem or 0.0, y.sem or 0.0, text))
    for label, pts in sorted(by_label.items()):
        pts.sort()
        bars = ax.errorbar([p[0] for p in pts], [p[1] for p in pts], xerr=[p[2] for p in pts],
                           yerr=[p[3] for p in pts], fmt="o", capsize=2, label=label)  # fmt: skip
        color = bars.lines[0].get_color()
        front = pareto_front([(p[0], p[1]) for p in pts])
        ax.plot([p[0] for p in front], [p[1] for p in front], color=color, lw=1.5)
        for p in pts:
            ax.annotate(
                p[4], (p[0], p[1]), xytext=(3, 3), textcoords="offset points", fontsize=6, color=color
            )
    starts = [number(r.get(f"{metric}_init")) for m in groups.values() for r in m]
    starts = [s for s in starts if s is not None]
    if starts:
        ax.scatter(
            [0.0], [sum(starts) / len(starts)], marker="*", s=120, color="black", label="starting policy"
        )
    n = min(len(m) for m in groups.values())
    ax.set(xlabel=f"KL(policy ‖ starting policy), nats  [{kl}]", ylabel=metric,
           title=f"{metric} against KL, mean over ≥{n} seeds ± s.e. (lines: Pareto fronts)")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def matched_kl_plot(
    rows: Sequence[Row], metric: str, kl: str, baselines: Mapping[str, str] | None = None
) -> Figure | None:
    """Best ``metric`` within a KL budget against the budget, per method: mean over seeds with its
    95% t-interval (a band where ≥ 2 seeds reach the budget)."""
    budgets = kl_budgets(rows, metric, kl, n=24)
    means, _ = matched_kl(rows, metric, kl, budgets, baselines)
    if len(budgets) < 2 or not means:
        return None
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label in sorted({label for label, _ in means}):
        pts = [(b, means[(label, b)]) for b in budgets if (label, b) in means]
        line = ax.plot([b for b, _ in pts], [s.mean for _, s in pts], marker=".", label=label)[0]
        band = [(b, s) for b, s in pts if s.low is not None]
        ax.fill_between([b for b, _ in band], [s.low for _, s in band], [s.high for _, s in band],
                        color=line.get_color(), alpha=0.15)  # fmt: skip
    ax.set(xlabel=f"KL budget, nats  [{kl} ≤ budget]", ylabel=f"best {metric} within the budget",
           title="Matched KL: mean over seeds, 95% t-interval")  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
