"""Run the CLIs as a user would (offline, this checkout's tralign), and kill runs mid-training."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from helpers.paths import REPO

# torchrun with 2 ranks on this machine (``python TORCHRUN... script.py``).
TORCHRUN = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def cli_env(**env: str) -> dict[str, str]:
    """The environment of a CLI run: offline, wandb offline, this checkout's tralign first."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **env}


def run_python(args: list[str], cwd: Path, timeout: float = 600, **env: str) -> subprocess.CompletedProcess:
    """Run ``python ARGS`` (a script, ``-m MODULE`` or ``TORCHRUN``) offline in ``cwd``, output captured."""
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=cli_env(**env), capture_output=True, text=True, timeout=timeout
    )


def run_cli(module: str, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """Run ``python -m MODULE ARGS`` offline in ``cwd``, as a user would."""
    return run_python(["-m", module, *args], cwd, **env)


def sigkill_after_checkpoint(
    cmd: list[str], cwd: Path, env: dict[str, str], target: Path, log_path: Path
) -> Path:
    """Start ``cmd`` (a run that would train for long) in its own process group; once ``target``
    (a checkpoint, complete once it exists: saves are write-then-rename) appears, SIGKILL the whole
    group, launcher and every rank. Returns ``target``."""
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.time() + 300
        try:
            while not target.exists():
                assert proc.poll() is None, log_path.read_text()[-4000:]
                assert time.time() < deadline, f"no {target.name} within 300 s"
                time.sleep(0.05)
        finally:  # also when the checkpoint never comes: no run left training in the background
            kill_tree(proc.pid)
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    return target


def kill_tree(pid: int) -> None:
    """SIGKILL a launcher and every process below it. A process-group kill is not enough: torchrun
    starts its ranks in sessions of their own, so they would outlive the launcher and go on training
    (for max_steps=100000) in the background of the rest of the suite."""
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
