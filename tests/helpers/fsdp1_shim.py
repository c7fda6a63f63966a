"""The FSDP1-on-CPU shim of tests/test_fsdp1_cpu.py and tests/test_sharding_options.py (see the
former's docstring for what it changes and why): the script, and the environment its runs need."""

from __future__ import annotations

import os
from pathlib import Path

from helpers.paths import REPO

SHIM = r'''
"""Test-only: run tralign.train with trainer=fsdp (FSDP1) on CPU. Not shipped."""
import json
import os
import runpy

import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

import tralign.config
import tralign.strategies

RECORD = os.path.join(os.environ["TRALIGN_CLIP_SPY"], f"clip-rank{os.environ.get('RANK', '0')}.jsonl")


def _record(**entry):
    with open(RECORD, "a") as fh:
        fh.write(json.dumps(entry) + "\n")


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning refuses ``type(strategy) is FSDPStrategy`` on CPU; a subclass is let through."""

    def _setup_model(self, model):
        init = FSDP.__init__

        def cpu_init(fsdp, *args, device_id=None, **kwargs):
            init(fsdp, *args, device_id=torch.device("cpu") if device_id is None else device_id, **kwargs)

        FSDP.__init__ = cpu_init  # every unit the auto-wrap policy creates, and the root
        try:
            return super()._setup_model(model)
        finally:
            FSDP.__init__ = init


_problems = tralign.strategies.strategy_problems
_build = tralign.strategies.build_strategy


def strategy_problems(strategy, accelerator):
    return [p for p in _problems(strategy, accelerator) if not p.startswith("trainer=fsdp needs GPUs")]


def build_strategy(*args, **kwargs):
    strategy, plan = _build(*args, **kwargs)
    if type(strategy) is FSDPStrategy:
        strategy.__class__ = CPUFSDPStrategy
    return strategy, plan


tralign.config.strategy_problems = strategy_problems
tralign.strategies.build_strategy = build_strategy

_fsdp_clip = FSDP.clip_grad_norm_
_plain_clip = torch.nn.utils.clip_grad_norm_


def fsdp_clip(self, max_norm, norm_type=2.0):
    total = _fsdp_clip(self, max_norm, norm_type)
    _record(kind="fsdp", root=bool(self._is_root), max_norm=float(max_norm), norm=float(total))
    return total


def plain_clip(parameters, max_norm, *args, **kwargs):
    total = _plain_clip(parameters, max_norm, *args, **kwargs)
    _record(kind="plain", root=True, max_norm=float(max_norm), norm=float(total))
    return total


FSDP.clip_grad_norm_ = fsdp_clip
torch.nn.utils.clip_grad_norm_ = plain_clip

if __name__ == "__main__":
    # As ``python -m tralign.train``: Hydra finds conf/ relative to the __main__ file.
    runpy.run_module("tralign.train", run_name="__main__", alter_sys=True)
'''


def shim_env(tmp_path: Path, spy: str) -> dict[str, str]:
    """Write the shim into ``tmp_path`` and return the environment its runs need: offline, this
    checkout's tralign, and each clip recorded into ``tmp_path/spy``."""
    shim = tmp_path / "fsdp1_cpu_shim.py"
    if not shim.exists():
        shim.write_text(SHIM)
    (tmp_path / spy).mkdir(exist_ok=True)
    return {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "PYTHONPATH": str(REPO),
        "TRALIGN_CLIP_SPY": str(tmp_path / spy),
    }
