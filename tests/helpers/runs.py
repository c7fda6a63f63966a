"""The end-to-end resume runs shared by tests/test_scale.py and tests/test_guards.py: the shrunk run,
the 2-process fsdp2 overrides, and the comparison of two finished runs' exported weights."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from helpers.config import SHRINK, compose_cfg

RUN = [
    a
    for a in SHRINK
    if not a.startswith(
        ("trainer.max_steps", "data.batch_size", "data.n_train", "trainer.val_check_interval")
    )
] + [
    "data.n_train=40",  # 5 global batches of 8 per epoch: checkpoints fall mid-epoch and at its end
    "trainer.val_check_interval=100",
    "export.reference=true",
    "data.golden_eval=null",
]
TWO_PROC = [
    "trainer=fsdp2",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.strategy.mixed_precision=null",
]


def train_here(run_dir: Path, overrides: list[str]) -> Path:
    """A one-process run in this process (``tralign.train.run``, the function behind
    ``python -m tralign.train``) of ``conf/train.yaml`` with ``overrides`` (no SHRINK added): the
    same training as the CLI without a second Python start-up and Lightning import (~7 CPU-s a
    launch). For the uninterrupted runs that resumed or multi-process runs are compared with."""
    from tralign.train import run

    run(compose_cfg(overrides, shrink=False), run_dir)
    return run_dir


def weights(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {part: load_file(run_dir / part / "model.safetensors") for part in ("policy", "reference")}


def assert_same(a: Path, b: Path, atol: float) -> None:
    wa, wb = weights(a), weights(b)
    for part in wa:
        assert wa[part].keys() == wb[part].keys()
        for key in wa[part]:
            torch.testing.assert_close(wa[part][key], wb[part][key], atol=atol, rtol=0, msg=f"{part}.{key}")
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert (sa["global_step"], sa["ref_updates"]) == (sb["global_step"], sb["ref_updates"])
