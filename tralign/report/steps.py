"""Golden reward and KL at every saved checkpoint of the embedded task's runs: several training lengths
from one run. ``python -m tralign.report.steps <sweep dir> [--final]``

A run checkpoints its policy every ``checkpoint.every_n_steps`` optimizer steps
(``checkpoints/step-00000N.ckpt``). With the default constant learning rate after warm-up, the policy at step
N of an 800-step run is the policy an N-step run ends with (same seed, same data order, same reference
updates), so evaluating it as the run's own closing golden evaluation does (same held-out prompts,
same sampling seed, same starting policy) gives the N-step point of a frontier without training again.
With ``optim.schedule`` linear or cosine the learning rate depends on ``max_steps`` and that is no
longer true: such runs are refused.

Writes ``<job>/golden_steps.json``: ``{"200": {"golden_reward": ..., "golden_kl_init": ..., ...}, ...}``,
read by ``python -m tralign.report <sweep dir> --steps``. The final step is taken from ``summary.json``
(``--final`` re-evaluates its checkpoint too, to check that both agree).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tralign.ckpt_names import periodic_checkpoints
from tralign.errors import TralignError

STEPS_FILE = "golden_steps.json"


def checkpoint_steps(job_dir: Path) -> dict[int, Path]:
    """``{N: checkpoints/step-00000N.ckpt}`` in step order (``last.ckpt`` is a link to one of them)."""
    return periodic_checkpoints(Path(job_dir) / "checkpoints")


def evaluate_job(job_dir: Path, *, final: bool = False) -> dict[str, dict[str, Any]]:
    """Golden evaluation of every checkpoint of one completed embedded-task run (the final step from
    its summary unless ``final``); writes and returns ``golden_steps.json``'s content."""
    import torch
    from omegaconf import OmegaConf

    from tralign.data.sources import synthetic_source
    from tralign.eval.golden import golden_eval
    from tralign.models import build_policy, build_tokenizer

    job_dir = Path(job_dir)
    summary = json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))
    cfg = OmegaConf.load(job_dir / "config_resolved.yaml")
    if cfg.data.name != "synthetic" or not cfg.data.get("golden_eval"):
        raise TralignError(f"{job_dir}: not an embedded-task run (data=synthetic with data.golden_eval)")
    if cfg.optim.get("schedule", "constant") != "constant":
        raise TralignError(
            f"{job_dir}: optim.schedule={cfg.optim.schedule}: the learning rate at step N depends on "
            "trainer.max_steps, so a checkpoint is not the end of a shorter run"
        )
    last = int(summary["global_step"])
    out: dict[str, dict[str, Any]] = {}
    if not final:
        out[str(last)] = {k: v for k, v in summary.items() if k.startswith("golden_")}
    tokenizer = build_tokenizer(cfg.model, cfg.data)
    split = synthetic_source(cfg.data)
    prompts = list(dict.fromkeys(row["prompt"] for row in split.val))  # the DataModule's val_prompts
    initial = build_policy(cfg.model, tokenizer)
    for step, path in checkpoint_steps(job_dir).items():
        if step == last and not final or step > last:
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
        policy = build_policy(cfg.model, tokenizer)
        policy.load_state_dict(
            {k.removeprefix("policy."): v for k, v in state.items() if k.startswith("policy.")}
        )
        out[str(step)] = golden_eval(
            policy, initial, tokenizer, split.golden_task, prompts, cfg.data.golden_eval, seed=int(cfg.seed)
        )
    out = dict(sorted(out.items(), key=lambda item: int(item[0])))
    (job_dir / STEPS_FILE).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return out


STEP_KEY = "step"


def step_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Report rows with one row per evaluated training length: a completed job whose folder has
    ``golden_steps.json`` becomes one row per step (``job`` ``3@200``, ``step`` 200, its ``golden_*``
    values; validation and training metrics only on the final step's row, the one the run ended
    with). Other rows get ``step`` = their ``global_step``."""
    out = []
    for row in rows:
        path = Path(row.get("job_dir") or "") / STEPS_FILE
        final = row.get("global_step")
        if row.get("status") != "completed" or not row.get("job_dir") or not path.is_file():
            out.append({**row, STEP_KEY: final})
            continue
        for step, metrics in json.loads(path.read_text(encoding="utf-8")).items():
            if int(step) == final:
                out.append({**row, STEP_KEY: final, **metrics})
                continue
            partial = {k: v for k, v in row.items() if not k.startswith(("val/", "train/", "golden_"))}
            out.append(
                {**partial, **metrics, "job": f"{row['job']}@{step}", STEP_KEY: int(step), "best": False}
            )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tralign.report.steps", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "sweep_dir", type=Path, help="a sweep folder (every completed job below it) or one run"
    )
    parser.add_argument("--final", action="store_true", help="re-evaluate the final checkpoint too")
    parser.add_argument("--redo", action="store_true", help=f"evaluate jobs that already have {STEPS_FILE}")
    args = parser.parse_args(argv)
    jobs = sorted(p.parent for p in args.sweep_dir.rglob("summary.json"))
    done = 0
    for job_dir in jobs:
        summary = json.loads((job_dir / "summary.json").read_text(encoding="utf-8"))
        if summary.get("status") != "completed" or "golden_reward" not in summary:
            continue
        if (job_dir / STEPS_FILE).is_file() and not args.redo:
            continue
        steps = evaluate_job(job_dir, final=args.final)
        done += 1
        print(f"{job_dir}: " + ", ".join(f"{s}: {m['golden_reward']:.3f}" for s, m in steps.items()))
    print(f"evaluated {done} job(s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
