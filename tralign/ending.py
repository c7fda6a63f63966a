"""What a finished training run prints last: where its results are, and what it achieved, in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _number(value: Any, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(float(value), fmt)


def ending(summary: dict[str, Any], run_dir: Path) -> str:
    """A few lines for the console: run folder, newest checkpoint (pasteable into ``ckpt_path=``),
    policy folder, and a one-line summary (method, α/τ/β, steps, val accuracy, golden reward
    before → after on the embedded task)."""
    from tralign.checkpoint import newest_checkpoint

    newest = newest_checkpoint(run_dir / "checkpoints")
    val = summary.get("val") or {}
    accuracy = val.get("val/rewards/accuracies")
    if summary.get("ref_update") == "none":
        region = "frozen reference"
    else:
        region = f"{summary.get('ref_update')} update α={summary.get('alpha')} τ={summary.get('tau')}"
    parts = [
        f"{summary.get('method')} ({region}, β={summary.get('beta')})",
        f"{summary.get('global_step')} steps",
        f"val accuracy {_number(accuracy)}",
    ]
    if "golden_reward" in summary:
        parts.append(
            f"golden reward {_number(summary.get('golden_reward_init'))} → {_number(summary.get('golden_reward'))}"
        )
    lines = [
        f"run folder:  {run_dir}",
        f"checkpoint:  {newest if newest is not None else 'none written'}",
        f"policy:      {summary.get('policy_dir') or 'not exported (export.policy=false)'}",
        "summary:     " + ", ".join(parts),
    ]
    if newest is not None:
        lines.append(f"resume:      ckpt_path={run_dir} trainer.max_steps=<more>")
    return "\n".join(lines)
