"""One audited training run in a process of its own (``tralign.gpu_check`` starts it):

    python -m tralign.gpu_check.runner OUT.json RUN_DIR DEVICE HEAD_DTYPE [CKPT|-] [override ...]

Composes ``conf/train.yaml`` with the overrides, trains with :class:`AuditCallback` added to the
callbacks, and writes ``{"summary": ..., "audit": {fact: {...}}}`` to OUT.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[2]
CONF = Path(__file__).resolve().parents[1] / "conf"  # the packaged configs (tralign/conf)


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tralign.runstamp import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose("train", overrides=overrides)


def audited_run(
    run_dir: Path, device: str, head_dtype: str, ckpt: str | None, overrides: list[str]
) -> dict[str, Any]:
    import torch
    from omegaconf import DictConfig, open_dict

    from tralign import build, train
    from tralign.gpu_check.audit import AuditCallback

    cfg = compose(overrides)
    if ckpt:
        with open_dict(cfg):
            cfg.ckpt_path = ckpt
    sharded = isinstance(cfg.trainer.strategy, DictConfig) and cfg.trainer.strategy.name == "fsdp2"
    audit = AuditCallback(device, getattr(torch, head_dtype), sharded=sharded)
    callbacks = build._callbacks
    build._callbacks = lambda *a, **k: [*callbacks(*a, **k), audit]  # the run as shipped, plus the audit
    try:
        summary = train.run(cfg, run_dir)
    finally:
        build._callbacks = callbacks
    return {"summary": summary, "audit": audit.facts}


def main(argv: list[str]) -> None:
    out, run_dir, device, head_dtype, ckpt, *overrides = argv
    result = audited_run(Path(run_dir), device, head_dtype, None if ckpt == "-" else ckpt, overrides)
    Path(out).write_text(json.dumps(result, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
