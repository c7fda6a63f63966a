"""Markdown sections over seeds: mean ± s.e. [95% t-interval] per method and setting, paired
differences to each method's baseline (same seed, same setting), and the matched-KL comparison (each
method's best golden reward within a KL budget). The numbers come from tralign/report/stats.py."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tralign.report.cells import KL_KEY, _md_table, fmt, number
from tralign.report.lag import lag_points, lag_section
from tralign.report.meaning import metric_kind
from tralign.report.stats import (
    group_stats,
    kl_budgets,
    matched_kl,
    own_keys,
    paired_differences,
    setting_keys,
)

# Seed statistics for these (when present): the metrics that keep their meaning under a moving reference.
SEED_METRICS = ("golden_reward", KL_KEY, "val/init/rewards/accuracies")


def seed_sections(
    rows: Sequence[Mapping[str, Any]],
    swept: Sequence[str],
    metric: str | None,
    baselines: Mapping[str, str] | None = None,
) -> list[str]:
    """Markdown: mean ± s.e. [95% t-interval] over seeds per method and setting, and the paired
    differences to each method's baseline (same seed, same setting) with their intervals."""
    if "seed" not in swept:
        return []
    keys = [k for k in swept if k not in ("seed", "method", "ref_update", "sweep")]
    cols = [
        m
        for m in dict.fromkeys([*SEED_METRICS, *([metric] if metric else [])])
        if metric_kind(m) != "reference"
    ]
    cols = [m for m in cols if any(number(r.get(m)) is not None for r in rows if r["status"] == "completed")]
    if not cols:
        return []
    stats = {m: group_stats(rows, keys, m) for m in cols}
    groups = list(dict.fromkeys(g for m in cols for g in stats[m]))
    body = [
        [g[0], *(fmt(v) for v in g[1:]), *(stats[m][g].cell() if g in stats[m] else "" for m in cols),
         str(max(stats[m][g].n for m in cols if g in stats[m]))]
        for g in groups
    ]  # fmt: skip
    lines = [
        "",
        "## Mean over seeds (± standard error [95% t-interval])",
        "",
        *_md_table(["variant" if "method" in swept else "method", *keys, *cols, "n"], body),
    ]
    setting = own_keys(swept) + setting_keys(swept)
    diff_rows = []
    for m in cols:
        for d in paired_differences(rows, swept, m, baselines):
            mark = " *" if d.stats.excludes_zero else ""
            diff_rows.append([m, f"{d.label} − {d.baseline}", *(fmt(v) for v in d.setting),
                              d.stats.cell("+.3f") + mark, str(d.stats.n)])  # fmt: skip
    if diff_rows:
        lines += [
            "",
            "## Paired differences to the baseline (same seed and setting; mean ± s.e. [95% t-interval])",
            "",
            "`*`: the interval excludes 0.",
            "",
            *_md_table(["metric", "difference", *setting, "mean ± s.e. [95% CI]", "seeds"], diff_rows),
        ]
    if metric and metric != KL_KEY:
        lines += lag_section(lag_points(rows, swept, metric, baselines), metric)
    if metric and metric != KL_KEY and setting and any(r.get(KL_KEY) is not None for r in rows):
        lines += matched_kl_section(rows, metric, baselines)
    return lines


def matched_kl_section(
    rows: Sequence[Mapping[str, Any]], metric: str, baselines: Mapping[str, str] | None = None
) -> list[str]:
    """Markdown: each method's best ``metric`` within a KL budget (its frontier, read per seed, over
    every β and training length of the sweep), mean over seeds, and paired differences per seed."""
    budgets = kl_budgets(rows, metric, KL_KEY)
    means, diffs = matched_kl(rows, metric, KL_KEY, budgets, baselines)
    if not means:
        return []
    labels = list(dict.fromkeys(label for label, _ in means))
    body = [
        [fmt(b), *(means[(lab, b)].cell() if (lab, b) in means else "" for lab in labels)] for b in budgets
    ]
    lines = [
        "",
        f"## Matched KL: best `{metric}` within a KL budget (mean over seeds ± s.e. [95% t-interval])",
        "",
        f"Per method and seed, every job (all settings) is a point (`{KL_KEY}`, `{metric}`); the cell is the best "
        "value among the points with KL ≤ the budget, averaged over the seeds that reach it.",
        "",
        *_md_table([f"{KL_KEY} ≤", *labels], body),
    ]
    if diffs:
        diff_body = [
            [f"{d.label} − {d.baseline}", fmt(d.setting[0]), d.stats.cell("+.3f") + (" *" if d.stats.excludes_zero else ""),
             str(d.stats.n)]
            for d in sorted(diffs, key=lambda d: (d.label, d.setting))
        ]  # fmt: skip
        lines += ["", "Paired by seed (`*`: the interval excludes 0):", ""]
        lines += _md_table(["difference", f"{KL_KEY} ≤", "mean ± s.e. [95% CI]", "seeds"], diff_body)
    return lines
