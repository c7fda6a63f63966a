"""What a finished training run prints last: where its results are, and what it achieved, in words."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _number(value: Any, fmt: str = ".3f") -> str:
    return "n/a" if value is None else format(float(value), fmt)


def ending(summary: dict[str, Any], run_dir: Path) -> str:
    """A few lines for the console: run folder, newest checkpoint (pasteable into ``ckpt_path=``),
    policy folder, and a one-line summary (method, α/τ/β, steps, golden reward before → after and
    KL on the embedded task, val accuracy against the start and against the reference)."""
    from tralign.checkpoint import newest_checkpoint
    from tralign.report.meaning import reference_equals_policy

    newest = newest_checkpoint(run_dir / "checkpoints")
    val = summary.get("val") or {}
    if summary.get("ref_update") == "none":
        region = "frozen reference"
    else:
        region = f"{summary.get('ref_update')} update α={summary.get('alpha')} τ={summary.get('tau')}"
    parts = [
        f"{summary.get('method')} ({region}, β={summary.get('beta')})",
        f"{summary.get('global_step')} steps",
    ]
    # What keeps its meaning under a moving reference first: golden reward, KL and accuracy against
    # the starting policy; the reference-relative accuracy last, labelled, and never shown as a
    # number when the last step made the reference equal to the policy (tralign.report.meaning).
    if "golden_reward" in summary:
        parts.append(
            f"golden reward {_number(summary.get('golden_reward_init'))} → {_number(summary.get('golden_reward'))}"
        )
    if summary.get("golden_kl_init") is not None:
        parts.append(f"KL from start {_number(summary['golden_kl_init'], '.2f')}")
    if val.get("val/init/rewards/accuracies") is not None:
        parts.append(f"val accuracy vs start {_number(val['val/init/rewards/accuracies'])}")
    if reference_equals_policy(summary):
        parts.append("val accuracy vs reference: empty (reference = policy at the last step)")
    else:
        parts.append(f"val accuracy vs reference {_number(val.get('val/rewards/accuracies'))}")
    lines = [
        f"run folder:  {run_dir}",
        f"checkpoint:  {newest if newest is not None else 'none written'}",
        f"policy:      {summary.get('policy_dir') or 'not exported (export.policy=false)'}",
        "summary:     " + ", ".join(parts),
    ]
    if newest is not None:
        lines.append(f"resume:      ckpt_path={run_dir} trainer.max_steps=<more>")
    return "\n".join(lines)
