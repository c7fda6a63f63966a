"""The paper's pictures from report rows: final metric against α, τ and β (one curve per method,
mean over seeds with its standard error, every job as a faint dot) and quality against KL from the
starting (SFT) policy. Matplotlib's object API only (``Figure``, rendered by Agg): no pyplot state,
no display."""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from tralign.report.cells import KL_KEY, number
from tralign.report.frontier import _short, pareto_front  # noqa: F401  (pareto_front re-exported)
from tralign.report.lag import lag_plot, lag_points
from tralign.report.plots_seeds import frontier_means, matched_kl_plot
from tralign.report.stats import completed_with

Row = Mapping[str, Any]
NAMES = {"alpha": "α (soft update weight)", "tau": "τ (optimizer steps between hard updates)", "beta": "β"}


def _points(
    rows: Sequence[Row], x: str, y: str, split: Sequence[str] = ()
) -> dict[str, list[tuple[float, float]]]:
    """Curve name -> [(x, y)] over completed jobs with both values, in row order. A curve is a method
    label plus the ``split`` values (swept keys other than ``x`` and the seed), so that only seeds
    are averaged."""
    out: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for row in completed_with(rows, x, y):
        name = " ".join([row["label"], *(_short(k, row.get(k)) for k in split if row.get(k) is not None)])
        out[name].append((number(row[x]), number(row[y])))
    return dict(out)


def means_by_x(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float], list[float]]:
    """Sorted x, the mean y at each x, and its standard error (0 for a single job)."""
    by_x: dict[float, list[float]] = defaultdict(list)
    for xv, yv in points:
        by_x[xv].append(yv)
    xs = sorted(by_x)
    ys = [statistics.fmean(by_x[v]) for v in xs]
    sems = [statistics.stdev(by_x[v]) / len(by_x[v]) ** 0.5 if len(by_x[v]) > 1 else 0.0 for v in xs]
    return xs, ys, sems


def plot_against(
    rows: Sequence[Row],
    x: str,
    metric: str,
    *,
    keep: Callable[[Row], bool] = lambda r: True,
    split: Sequence[str] = (),
    title: str = "",
) -> Figure | None:
    """``metric`` against ``x`` for the rows ``keep`` accepts, one curve per method (and ``split``
    values): the mean over seeds ± its standard error, every job a faint dot. None when fewer than
    two x values."""
    points = _points([r for r in rows if keep(r)], x, metric, [k for k in split if k not in (x, "seed")])
    xs_all = sorted({xv for pts in points.values() for xv, _ in pts})
    if len(xs_all) < 2:
        return None
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, pts in sorted(points.items()):
        xs, ys, sems = means_by_x(pts)
        line = ax.errorbar(xs, ys, yerr=sems, marker="o", capsize=3, label=name).lines[0]
        ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=12, alpha=0.35, color=line.get_color())
    spans_decades = xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 10
    if x in ("tau", "beta") or (x == "alpha" and spans_decades):  # log grids; ticks at the swept values
        ax.set_xscale("log", base=2 if x == "tau" else 10)
        ax.set_xticks(xs_all, [f"{v:g}" for v in xs_all])
        ax.minorticks_off()
    ax.set(
        xlabel=NAMES.get(x, x), ylabel=metric, title=title or f"{metric} against {NAMES.get(x, x).split()[0]}"
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_frontier(
    rows: Sequence[Row], metric: str, kl: str = KL_KEY, annotate: Sequence[str] = ()
) -> Figure | None:
    """Quality against KL from the starting policy: every job a point with its standard errors
    (``<key>_sem``) and its ``annotate`` values beside it, one colour per method, the line through
    the method's Pareto front; the starting policy (``<metric>_init``) as a star at KL 0. The paper's
    over-optimisation picture: points falling to the right are over-optimised."""
    series: dict[str, list[Row]] = defaultdict(list)
    for row in completed_with(rows, kl, metric):
        series[row["label"]].append(row)
    if sum(len(s) for s in series.values()) < 2:
        return None
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    for label, members in sorted(series.items()):
        members = sorted(members, key=lambda r: (r[kl], r[metric]))
        points = ax.errorbar(
            [r[kl] for r in members],
            [r[metric] for r in members],
            xerr=[number(r.get(f"{kl}_sem")) or 0.0 for r in members],
            yerr=[number(r.get(f"{metric}_sem")) or 0.0 for r in members],
            fmt="o",
            capsize=2,
            alpha=0.8,
            label=label,
        ).lines[0]
        color = points.get_color()
        front = pareto_front([(r[kl], r[metric]) for r in members])
        ax.plot([p[0] for p in front], [p[1] for p in front], color=color, lw=1.5, gid=f"front:{label}")
        for r in members if annotate else ():
            text = " ".join(_short(k, r.get(k)) for k in annotate if r.get(k) is not None)
            ax.annotate(
                text, (r[kl], r[metric]), xytext=(4, 4), textcoords="offset points", fontsize=7, color=color
            )
    starts = [
        v for v in (number(r.get(f"{metric}_init")) for m in series.values() for r in m) if v is not None
    ]
    if starts:
        ax.scatter(
            [0.0], [statistics.fmean(starts)], marker="*", s=120, color="black", label="starting policy"
        )
    ax.set(
        xlabel=f"KL(policy ‖ starting policy), nats  [{kl}]",
        ylabel=metric,
        title=f"{metric} against KL from the start (lines: Pareto fronts)",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def _family(row: Row) -> str:
    """``TR-DPO soft`` -> ``DPO``: the β plots put a loss's baseline and its TR variants together."""
    return str(row.get("label", "")).split(" ")[0].removeprefix("TR-")


def all_plots(
    rows: Sequence[Row], metric: str, swept: Sequence[str] = (), baselines: Mapping[str, str] | None = None
) -> dict[str, Figure]:
    """File stem -> figure, for every plot the rows support. Swept values other than the method,
    reference update and seed split the curves (α, τ, β plots) or annotate the points (frontier).
    With seeds swept: the frontier from seed means and the matched-KL comparison too."""
    split = [k for k in swept if k not in ("method", "ref_update", "seed", "sweep")]
    figures: dict[str, Figure | None] = {
        "alpha": plot_against(
            rows, "alpha", metric, keep=lambda r: r.get("ref_update") == "soft", split=split
        ),
        "tau": plot_against(rows, "tau", metric, keep=lambda r: r.get("ref_update") == "hard", split=split),
        "frontier": plot_frontier(rows, metric, annotate=split),
    }
    for family in sorted({_family(r) for r in rows} - {"", "SFT"}):
        figures[f"beta_{family.lower()}"] = plot_against(
            rows, "beta", metric, keep=lambda r, f=family: _family(r) == f, split=split,
            title=f"{metric} against β, {family}",
        )  # fmt: skip
    if "seed" in swept and metric != KL_KEY:
        keys = [k for k in split if k not in ("alpha", "tau")] + [k for k in split if k in ("alpha", "tau")]
        figures["frontier_seeds"] = frontier_means(rows, metric, KL_KEY, keys)
        figures["matched_kl"] = matched_kl_plot(rows, metric, KL_KEY, baselines) if split else None
        figures["lag"] = lag_plot(lag_points(rows, swept, metric, baselines), metric)
    return {name: fig for name, fig in figures.items() if fig is not None}


def save(figures: Mapping[str, Figure], out_dir: Path) -> list[Path]:
    paths = []
    for name, fig in figures.items():
        path = Path(out_dir) / f"{name}.png"
        fig.savefig(path, dpi=130)
        paths.append(path)
    return paths
