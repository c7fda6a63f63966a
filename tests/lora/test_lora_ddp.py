"""LoRA TR-DPO under DDP on 2 gloo processes: trains, moves the reference adapter on every rank
alike, and exports both adapters (one launch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK
from helpers.processes import run_cli
from safetensors.torch import load_file


@pytest.mark.slow
def test_lora_tr_dpo_runs_under_ddp(tmp_path: Path) -> None:
    run_dir = tmp_path / "ddp"
    args = [
        *SHRINK,
        "model.lora.r=4",
        "alpha=0.3",
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.max_steps=3",
        "data.golden_eval=null",
        "export.reference=true",
        f"hydra.run.dir={run_dir}",
    ]
    result = run_cli("tralign.train", args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert (summary["world_size"], summary["ref_updates"]) == (2, 3)
    assert summary["params"]["reference_extra"] == summary["params"]["trainable"] > 0
    policy = load_file(run_dir / "policy_adapter" / "adapter_model.safetensors")
    reference = load_file(run_dir / "reference_adapter" / "adapter_model.safetensors")
    assert policy.keys() == reference.keys()
    assert any(not torch.equal(policy[k], reference[k]) for k in policy)  # the reference trails
    assert (run_dir / "policy" / "config.json").is_file() and (
        run_dir / "reference" / "config.json"
    ).is_file()
