"""What an evaluation shows: the Markdown table it prints, and the W&B run it logs
(eval.json's numbers plus a table of sample generations)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def _num(value: Any, fmt: str = ".3f") -> str:
    return "—" if value is None or value != value else format(value, fmt)


def table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """One row per (policy, baseline) comparison."""
    head = "| policy | baseline | win rate [95% CI] | n | ties | unparsable | words p/b | golden p/b | KL(p‖sft) |"
    lines = [head, "|" + " --- |" * 9]
    for c in comparisons:
        golden = (
            f"{_num(c.get('golden_policy'))} / {_num(c.get('golden_baseline'))}"
            if "golden_policy" in c
            else "—"
        )
        kl = f"{_num(c['kl_sft'])} ± {_num(c['kl_sft_sem'])}" if c.get("kl_sft") is not None else "—"
        lines.append(
            f"| {c['policy']} | {c['baseline']} | {_num(c['win_rate'])} [{_num(c['ci_low'])}, {_num(c['ci_high'])}] "
            f"| {c['n']} | {c['ties']} | {c['unparsable']} | {_num(c['words_policy'], '.1f')} / "
            f"{_num(c['words_baseline'], '.1f')} | {golden} | {kl} |"
        )
    return "\n".join(lines)


def log_wandb(
    logger_cfg: Mapping[str, Any],
    run_dir: Path,
    *,
    config: Mapping[str, Any],
    comparisons: Sequence[Mapping[str, Any]],
    samples: Sequence[Mapping[str, Any]],
) -> None:
    """One W&B run (job_type=eval): each comparison's numbers as ``<policy> vs <baseline>/<metric>``
    summary values, a ``comparisons`` table and a ``samples`` table of generations. The caller
    closes the run (``tralign.loggers.finish_wandb``)."""
    from tralign.safety import check_no_secrets

    check_no_secrets(dict(config))  # W&B keeps the config: never a credential in it

    if logger_cfg.get("name") != "wandb":
        return
    import wandb

    from tralign.loggers import wandb_mode

    run = wandb.init(
        project=logger_cfg.get("project") or "tralign",
        entity=logger_cfg.get("entity"),
        group=logger_cfg.get("group"),
        name=logger_cfg.get("run_name"),
        tags=list(logger_cfg.get("tags") or []),
        dir=str(run_dir),
        mode=wandb_mode(str(logger_cfg.get("mode", "auto"))),
        job_type="eval",
        config=dict(config),
    )
    for c in comparisons:
        prefix = f"{c['policy']} vs {c['baseline']}"
        for key, value in c.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                run.summary[f"{prefix}/{key}"] = value
    scalar_keys = (
        [k for k in comparisons[0] if isinstance(comparisons[0][k], str | int | float)] if comparisons else []
    )
    run.log(
        {
            "comparisons": wandb.Table(
                columns=scalar_keys, data=[[c.get(k) for k in scalar_keys] for c in comparisons]
            ),
            "samples": wandb.Table(
                columns=list(samples[0]) if samples else ["prompt"], data=[list(s.values()) for s in samples]
            ),
        }
    )
