"""How far the moving reference trails the policy, and what that does to the result: the regime map's
reading (docs/evidence.md, ``+sweep=regime_*``).

The reference is an EMA of policy snapshots taken every τ optimizer steps with rate α: its weight on
the snapshot k updates back is α(1 − α)^k, and the newest snapshot is on average τ/2 steps old. Its
mean age in optimizer steps is therefore τ·(1/α − 1/2): τ/2 for the hard update (α = 1), about 1/α for
the soft update every step. Times the (constant) learning rate, that is the lag in "learning rate ×
steps", the distance the policy can travel ahead of its anchor: the paper's α 0.6 at lr 1e-6 gives
1.2e-6, the embedded task's α 0.003 at lr 1e-3 gives 0.33.

Pure functions over report rows; the paired differences come from tralign.report.stats.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure

from tralign.report.cells import _md_table, fmt
from tralign.report.stats import PairedDiff, number, own_keys, paired_differences, setting_keys

Row = Mapping[str, Any]


def lag_steps(ref_update: str, alpha: float, tau: float) -> float:
    """Mean age of the reference's weights in optimizer steps: τ·(1/α − 1/2); ∞ for a frozen one."""
    if ref_update in ("none", "") or alpha <= 0:
        return math.inf
    return tau * (1.0 / alpha - 0.5)


def lr_key(swept: Sequence[str]) -> str | None:
    """The swept learning-rate key (``optim.lr``), if the sweep varies it."""
    return next((k for k in setting_keys(swept) if k == "lr" or k.endswith(".lr")), None)


@dataclass(frozen=True)
class LagPoint:
    """A moving-reference variant at one learning rate, its lag and its paired difference to the baseline."""

    label: str
    alpha: float
    tau: float
    lr: float
    steps: float
    diff: PairedDiff

    @property
    def lag(self) -> float:
        return self.lr * self.steps


def lag_points(
    rows: Sequence[Row], swept: Sequence[str], metric: str, baselines: Mapping[str, str] | None = None
) -> list[LagPoint]:
    """One point per (moving-reference variant, learning rate) with a paired difference to its
    baseline; empty unless the sweep varies the learning rate."""
    key = lr_key(swept)
    if key is None:
        return []
    names = own_keys(swept) + setting_keys(swept)
    points = []
    for d in paired_differences(rows, swept, metric, baselines):
        values = dict(zip(names, d.setting, strict=True))
        row = next(
            (r for r in rows if r.get("label") == d.label and all(r.get(k) == v for k, v in values.items())),
            None,
        )
        if row is None or row.get("ref_update") in (None, "none"):
            continue
        alpha, tau, lr = number(row.get("alpha")), number(row.get("tau")), number(values.get(key))
        if alpha is None or tau is None or lr is None:
            continue
        steps = lag_steps(str(row["ref_update"]), alpha, tau)
        points.append(LagPoint(d.label, alpha, tau, lr, steps, d))
    return sorted(points, key=lambda p: (p.lag, p.label))


def lag_section(points: Sequence[LagPoint], metric: str) -> list[str]:
    """Markdown: each variant's lag next to its paired difference to the baseline, by increasing lag."""
    if not points:
        return []
    body = [
        [p.label, fmt(p.alpha), fmt(p.tau), fmt(p.lr), f"{p.steps:.3g}", f"{p.lag:.2g}",
         f"{p.diff.label} − {p.diff.baseline}", p.diff.stats.cell("+.3f") + (" *" if p.diff.stats.excludes_zero else ""),
         str(p.diff.stats.n)]
        for p in points
    ]  # fmt: skip
    return [
        "",
        f"## Reference lag against the paired difference in `{metric}`",
        "",
        "Lag: the reference's mean age, τ·(1/α − 1/2) optimizer steps, times the learning rate "
        "(tralign/report/lag.py). `*`: the interval excludes 0.",
        "",
        *_md_table(
            [
                "variant",
                "alpha",
                "tau",
                "lr",
                "lag (steps)",
                "lag (lr·steps)",
                "difference",
                "mean ± s.e. [95% CI]",
                "seeds",
            ],
            body,
        ),  # fmt: skip
    ]


def _interval(diff: PairedDiff) -> tuple[float, float]:
    """Error-bar lengths below and above the mean: its 95% interval (none for one seed)."""
    s = diff.stats
    return (0.0, 0.0) if s.low is None or s.high is None else (s.mean - s.low, s.high - s.mean)


def lag_plot(points: Sequence[LagPoint], metric: str) -> Figure | None:
    """The paired difference (mean, 95% interval) against the lag on log axes, in optimizer steps
    (left) and in learning rate × steps (right); one colour per learning rate, one marker per update
    rule. None with fewer than two points."""
    if len(points) < 2:
        return None
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    markers = {"soft": "o", "hard": "s"}
    rates = sorted({p.lr for p in points})
    base = points[0].diff.baseline
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x, xlabel in (
        # Steps do not depend on the learning rate: spread the rates a little so the bars stay apart.
        (
            axes[0],
            lambda p: p.steps * 1.08 ** (rates.index(p.lr) - 1),
            "reference lag: mean age in optimizer steps, τ·(1/α − 1/2) (rates spread)",
        ),
        (axes[1], lambda p: p.lag, "reference lag: learning rate × mean age"),
    ):
        for lr in rates:
            for rule, marker in markers.items():
                pts = [p for p in points if p.lr == lr and p.label.endswith(rule)]
                if not pts:
                    continue
                bars = [_interval(p.diff) for p in pts]
                ax.errorbar([x(p) for p in pts], [p.diff.stats.mean for p in pts],
                            yerr=[[b[0] for b in bars], [b[1] for b in bars]], fmt=marker, capsize=3,
                            label=f"{rule}, lr {lr:g}", color=f"C{rates.index(lr)}")  # fmt: skip
        ax.axhline(0.0, color="black", lw=0.8)
        ax.set_xscale("log")
        ax.set(xlabel=xlabel)
        ax.grid(alpha=0.3)
    axes[0].set(ylabel=f"{metric}: variant − {base}")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Paired difference to {base}, 95% interval over seeds")
    return fig
