"""Shared fixtures: compose the real configs, shrink them for seconds-long CPU runs, stay offline."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from helpers.models import tiny_neox  # noqa: F401  (re-exported: tests import it from conftest)
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tokenised-data caches of the tests go to a throwaway folder, not ~/.cache/tralign.
os.environ.setdefault("TRALIGN_CACHE", tempfile.mkdtemp(prefix="tralign-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "tralign" / "conf"  # the packaged configs
SHARED = REPO.parent / "shared"

# Small enough for a few seconds per run, large enough that every code path runs (validation,
# periodic checkpoints, reference updates, golden evaluation).
SHRINK = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.n_train=64",
    "data.n_val=16",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.golden_eval.n_prompts=8",
    "data.golden_eval.max_new_tokens=4",
    "checkpoint.every_n_steps=2",
    "logger=none",
]


def compose_cfg(overrides: list[str] | None = None, shrink: bool = True) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=(SHRINK if shrink else []) + list(overrides or []))
    return cfg


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (real data samples and tokenizer) not present")
    return SHARED


# The embedded task's default world (conf/data/synthetic.yaml's task block), for DataModule tests.
SYNTH_TASK = {"seed": 0, "n_words": 24, "n_keys": 2, "min_len": 2, "max_len": 8, "label_temperature": 0.25}


def synthetic_data_cfg(**overrides: Any) -> dict[str, Any]:
    """A small synthetic data config (64 train / 16 val pairs) for building a DataModule directly."""
    cfg = {
        "name": "synthetic",
        "n_train": 64,
        "n_val": 16,
        "task": dict(SYNTH_TASK),
        "max_length": 48,
        "max_prompt_length": 16,
        "batch_size": 8,
        "eval_batch_size": 8,
        "num_workers": 0,
    }
    cfg.update(overrides)
    return cfg


def run_cli(module: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` offline in ``cwd``, as a user would."""
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **env}
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def sigkill_after_checkpoint(
    cmd: list[str], cwd: Path, env: dict[str, str], target: Path, log_path: Path
) -> Path:
    """Start ``cmd`` (a run that would train for long) in its own process group; once ``target``
    (a checkpoint, complete once it exists: saves are write-then-rename) appears, SIGKILL the whole
    group, launcher and every rank. Returns ``target``."""
    import signal
    import time

    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 300
        while not target.exists():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            assert time.time() < deadline, "no checkpoint within 300 s"
            time.sleep(0.05)
        kill_tree(proc.pid)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return target


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it. A process-group kill is not enough: torchrun
    starts its ranks in sessions of their own, so they would outlive the launcher and go on training
    (for max_steps=100000) in the background of the rest of the suite."""
    import signal

    import psutil

    try:
        procs = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        procs = []
    for child in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            child.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is present."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
