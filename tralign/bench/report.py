"""Numbers from the workers' results: the loss pre-check, the per-framework summary, the table."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from tralign.errors import TralignError


class BenchError(TralignError):
    """The comparison would not be apples to apples (or a worker failed)."""


def check_losses(
    tralign_loss: float, trl_loss: float, *, rtol: float, atol: float = 1e-6, name: str = "trl"
) -> None:
    """Refuse to time frameworks that do not compute the same DPO loss on the same batch."""
    if not (math.isfinite(tralign_loss) and math.isfinite(trl_loss)):
        raise BenchError(f"loss pre-check: non-finite loss (tralign {tralign_loss}, {name} {trl_loss})")
    if abs(tralign_loss - trl_loss) > atol + rtol * abs(trl_loss):
        raise BenchError(
            f"loss pre-check failed: tralign {tralign_loss:.6f} vs {name} {trl_loss:.6f} on the same first batch "
            f"and weights (rtol {rtol}): the two runs would not compute the same thing; not timing them"
        )


def _quantile(xs: Sequence[float], q: float) -> float:
    xs = sorted(xs)
    pos = q * (len(xs) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One framework's repetitions pooled: tokens/s = all timed tokens / all timed step time."""
    steps = [s for r in runs for s in r["step_s"]]
    tokens = sum(t for r in runs for t in r["tokens"])
    positions = sum(p for r in runs for p in r["positions"])
    ref = [t for r in runs for t in r["ref_update_s"]]
    step_median = statistics.median(steps)
    ref_median = statistics.median(ref) if ref else float("nan")
    out = {
        "tokens_per_s": tokens / sum(steps),
        "tokens_per_s_by_repeat": [sum(r["tokens"]) / sum(r["step_s"]) for r in runs],
        "step_median_s": step_median,
        "step_p10_s": _quantile(steps, 0.1),
        "step_p90_s": _quantile(steps, 0.9),
        "timed_steps": len(steps),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
        "ref_update_median_s": ref_median,
        "ref_update_share": ref_median / step_median,
        "pad_fraction": 1.0 - tokens / positions,
    }
    if all("peak_cuda_mb" in r for r in runs):
        out["peak_cuda_mb"] = max(r["peak_cuda_mb"] for r in runs)
    return out


def ratio(summary: dict[str, dict[str, Any]], other: str = "trl") -> float:
    return summary["tralign"]["tokens_per_s"] / summary[other]["tokens_per_s"]


def peak_line(peak: dict[str, Any]) -> str:
    best = max(peak["by_shape"], key=lambda s: s["flops_per_s"])
    m, k, n = best["shape"]
    return (
        f"matmul peak: {peak['peak_flops_per_s'] / 1e9:.1f} GFLOP/s ({peak['dtype']}, "
        f"best of the model's GEMM shapes: ({m}, {k}) @ ({k}, {n}))"
    )


def table(summary: dict[str, dict[str, Any]]) -> str:
    """The table, then ``throughput ratio tralign/trl: X.XX`` and, last, ``throughput ratio
    tralign/trl-best: X.XX`` for the rows that ran."""
    memory = "peak CUDA MiB" if all("peak_cuda_mb" in s for s in summary.values()) else "peak RSS MiB"
    header = [
        "framework",
        "tokens/s",
        "step median s",
        "step p10-p90 s",
        memory,
        "ref update ms",
        "ref/step",
        "pad frac",
    ]
    with_mfu = all("mfu_vs_matmul_peak" in s for s in summary.values())
    if with_mfu:
        header += ["model GFLOP/s", "MFU"]
    rows = [header]
    for name, s in summary.items():
        mem = s.get("peak_cuda_mb", s["peak_rss_mb"]) if memory.startswith("peak CUDA") else s["peak_rss_mb"]
        rows.append(
            [
                name,
                f"{s['tokens_per_s']:.0f}",
                f"{s['step_median_s']:.3f}",
                f"{s['step_p10_s']:.3f}-{s['step_p90_s']:.3f}",
                f"{mem:.0f}",
                f"{1000 * s['ref_update_median_s']:.2f}",
                f"{100 * s['ref_update_share']:.2f}%",
                f"{s['pad_fraction']:.3f}",
            ]
            + (
                [f"{s['model_flops_per_s'] / 1e9:.2f}", f"{100 * s['mfu_vs_matmul_peak']:.2f}%"]
                if with_mfu
                else []
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        for r in rows
    ]
    lines.insert(1, "-" * len(lines[0]))
    # The last line: against TRL at its best when that row ran, else against TRL's defaults.
    for other in ("trl", "trl-best"):
        if {"tralign", other} <= summary.keys():
            lines.append(f"throughput ratio tralign/{other}: {ratio(summary, other):.2f}")
    return "\n".join(lines)
