"""A LoRA TR-DPO run SIGKILLed after a checkpoint and resumed is bitwise the uninterrupted run: the
checkpoint holds both adapters, the optimizer and the update counters (CPU, one process)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK
from helpers.paths import REPO
from helpers.processes import run_cli, sigkill_after_checkpoint
from safetensors.torch import load_file

from tralign.checkpoint import checkpoint_name

RUN = [a for a in SHRINK if not a.startswith(("trainer.max_steps", "data.batch_size", "checkpoint."))] + [
    "model.lora.r=4",
    "alpha=0.3",  # a soft update that moves the reference adapter visibly every step
    "data.global_batch_size=8",
    "data.batch_size=4",  # 2 accumulated micro-batches per step
    "checkpoint.every_n_steps=1",
    "trainer.val_check_interval=100",
    "data.golden_eval=null",
    "export.reference=true",
]


def _adapters(run_dir: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {
        p: load_file(run_dir / p / "adapter_model.safetensors")
        for p in ("policy_adapter", "reference_adapter")
    }


@pytest.mark.slow
def test_lora_resume_after_sigkill_is_bitwise(tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    result = run_cli("tralign.train", [*RUN, "trainer.max_steps=5", f"hydra.run.dir={whole}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "tralign.train", *RUN, "trainer.max_steps=100000", f"hydra.run.dir={killed}"]
    saved = sigkill_after_checkpoint(
        cmd, tmp_path, env, killed / "checkpoints" / checkpoint_name(3), tmp_path / "k.log"
    )
    state = torch.load(saved.parent / checkpoint_name(2), weights_only=True, map_location="cpu")
    keys = state["state_dict"].keys()
    assert any(".lora_A.default." in k for k in keys) and any(".lora_B.reference." in k for k in keys)
    assert state["optimizer_states"][0]["state"] and state["tralign"] == {
        "ref_updates": 2,
        "applied_steps": 2,
    }

    resumed = tmp_path / "resumed"
    args = [
        *RUN,
        "trainer.max_steps=5",
        f"ckpt_path={saved.parent / checkpoint_name(2)}",
        f"hydra.run.dir={resumed}",
    ]
    result = run_cli("tralign.train", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _adapters(whole), _adapters(resumed)
    for part in a:
        assert a[part].keys() == b[part].keys() and a[part]
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), f"{part}/{key}"
    assert not torch.equal(*(next(iter(a[p].values())) for p in a))  # the reference trails the policy
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, resumed))
    assert (sa["global_step"], sa["ref_updates"]) == (sb["global_step"], sb["ref_updates"]) == (5, 5)
    assert sa["params"] == sb["params"] and sa["params"]["reference_extra"] == sa["params"]["trainable"]
