"""Training-loop guards (tralign/guards.py): non-finite steps are skipped or stop the run with a
checkpoint of the last good state; SIGTERM saves a checkpoint that resumes exactly."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, SHRINK, compose_cfg, run_cli
from safetensors.torch import load_file
from test_scale import RUN, TWO_PROC, _assert_same

import tralign.guards as guards
from tralign.guards import NonFiniteError, NonFiniteGuard, all_finite
from tralign.train import run


class PoisonGradients(L.Callback):
    """Makes the gradients of the given optimizer steps (1-based) NaN, as an overflow would."""

    def __init__(self, steps: set[int], param_index: int = 0):
        self.steps, self.param_index = steps, param_index

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step + 1 in self.steps:
            grad = list(pl_module.policy.parameters())[self.param_index].grad
            grad.view(-1)[0] = float("nan")


class Snapshot(L.Callback):
    """The policy's weights before and after every optimizer step, to see which steps moved it."""

    def __init__(self):
        self.before: dict[int, torch.Tensor] = {}
        self.after: dict[int, torch.Tensor] = {}

    def _flat(self, pl_module: L.LightningModule) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in pl_module.policy.parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.before[trainer.global_step + 1] = self._flat(pl_module)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.after[trainer.global_step] = self._flat(pl_module)


def _with_callbacks(monkeypatch: pytest.MonkeyPatch, *extra: L.Callback) -> None:
    original = guards.guard_callbacks
    monkeypatch.setattr(guards, "guard_callbacks", lambda cfg: [*extra, *original(cfg)])


def test_all_finite_sees_nan_inf_and_ignores_missing_grads():
    assert all_finite([torch.ones(3), None, torch.zeros(0)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("-inf")])])
    big = torch.full((4,), 3e38, dtype=torch.bfloat16)  # finite, though its squares overflow
    assert all_finite([big])


def test_nonfinite_steps_are_skipped_counted_and_never_reach_the_reference(monkeypatch, tmp_path):
    poison, snap = PoisonGradients({2, 3}), Snapshot()
    _with_callbacks(monkeypatch, poison, snap)
    cfg = compose_cfg(["ref_update=soft", "alpha=0.5", "trainer.max_steps=5"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 5
    assert summary["train"]["train/skipped_steps"] == 2
    for step in (2, 3):  # skipped: the policy did not move at all (no moment, no weight decay)
        assert torch.equal(snap.before[step], snap.after[step]), step
    for step in (1, 4, 5):
        assert not torch.equal(snap.before[step], snap.after[step]), step
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert all(torch.isfinite(v).all() for k, v in state["state_dict"].items() if k.startswith("reference."))
    assert state["callbacks"]["NonFiniteGuard"] == {"skipped": 2, "consecutive": 0}


def test_consecutive_nonfinite_steps_stop_with_a_checkpoint_of_the_last_good_state(monkeypatch, tmp_path):
    snap = Snapshot()
    _with_callbacks(monkeypatch, PoisonGradients({3, 4, 5, 6}), snap)
    cfg = compose_cfg(
        ["trainer.max_steps=8", "guard.max_consecutive_nonfinite=3", "checkpoint.every_n_steps=100"]
    )
    with pytest.raises(
        NonFiniteError, match=r"3 consecutive .*guard.max_consecutive_nonfinite=3.*nonfinite-step5"
    ):
        run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["skipped_steps"] == 3 and summary["global_step"] == 5
    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    policy = torch.cat([v.flatten() for k, v in state["state_dict"].items() if k.startswith("policy.")])
    good = snap.after[2]  # the state after the last good step: steps 3-5 were skipped
    assert torch.equal(policy.sort().values, good.sort().values)


def test_on_nonfinite_stop_stops_at_the_first_bad_step(monkeypatch, tmp_path):
    _with_callbacks(monkeypatch, PoisonGradients({2}))
    cfg = compose_cfg(["guard.on_nonfinite=stop"])
    with pytest.raises(NonFiniteError, match="optimizer step 2 .guard.on_nonfinite=stop"):
        run(cfg, tmp_path)
    assert (tmp_path / "checkpoints" / "nonfinite-step2.ckpt").is_file()


def test_guard_state_survives_resume():
    guard = NonFiniteGuard("skip", 4)
    guard.skipped, guard.consecutive = 7, 2
    other = NonFiniteGuard("skip", 4)
    other.load_state_dict(guard.state_dict())
    assert (other.skipped, other.consecutive) == (7, 2)
    with pytest.raises(ValueError, match="guard.on_nonfinite"):
        NonFiniteGuard("ignore", 4)


DRIVER = """
import runpy
import lightning as L
import tralign.guards as guards

class Poison(L.Callback):  # every gradient NaN, as after an overflow
    def on_after_backward(self, trainer, pl_module):
        next(pl_module.policy.parameters()).grad.view(-1)[0] = float("nan")

original = guards.guard_callbacks
guards.guard_callbacks = lambda cfg: [Poison(), *original(cfg)]
runpy.run_module("tralign.train", run_name="__main__", alter_sys=True)
"""


def test_cli_nonfinite_stop_exits_3_with_one_line(tmp_path):
    # The real entry point (main) with a callback that poisons every gradient.
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [*SHRINK, "guard.max_consecutive_nonfinite=2", f"hydra.run.dir={tmp_path}/run"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, str(driver), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "2 consecutive optimizer steps" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["checkpoint"].endswith("nonfinite-step2.ckpt")


def test_a_policy_with_nonfinite_weights_is_never_mixed_into_the_reference(monkeypatch, tmp_path):
    class Corrupt(L.Callback):  # finite gradients, but the policy gets an inf weight (an overflow)
        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            self.module = pl_module
            if trainer.global_step == 2:  # during optimizer step 3
                with torch.no_grad():
                    next(pl_module.policy.parameters()).view(-1)[0] = float("inf")

    corrupt = Corrupt()
    _with_callbacks(monkeypatch, corrupt)
    cfg = compose_cfg(["ref_update=soft", "alpha=0.5"])  # soft: the reference moves every step
    with pytest.raises(
        NonFiniteError, match="weights are non-finite after optimizer step 3; the reference was not"
    ):
        run(cfg, tmp_path)
    module = corrupt.module
    assert not all_finite(list(module.policy.parameters()))
    assert all_finite(list(module.reference.parameters()))  # the step-3 update never ran
    assert module.ref_updates == 2
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "stopped"
    assert not (tmp_path / "checkpoints" / "step=4.ckpt").exists()


# --------------------------------------------------------------------------- pre-emption

PREEMPT = [s for s in SHRINK if not s.startswith(("trainer.max_steps", "checkpoint.every_n_steps"))]
PREEMPT += ["trainer.max_steps=16", "checkpoint.every_n_steps=2", "trainer.val_check_interval=8"]


def _policy(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "policy" / "model.safetensors")


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_resumes_exactly(tmp_path):
    run_dir = tmp_path / "run"
    env = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tralign.train", *PREEMPT, f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "step=2.ckpt").exists():  # training is under way
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted" and 2 <= summary["global_step"] < 16
    ckpt = Path(summary["checkpoint"])
    assert ckpt.is_file() and ckpt.name == f"preempt-step{summary['global_step']}.ckpt"
    assert f"tralign: pre-empted (SIGTERM): resume with ckpt_path={ckpt}" in stderr
    assert not list(run_dir.glob("checkpoints/*.partial"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"]

    # Resume into the same folder (allowed: the checkpoint is inside it), then an uninterrupted run.
    resumed = run_cli("tralign.train", [*PREEMPT, f"hydra.run.dir={run_dir}", f"ckpt_path={ckpt}"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert ckpt.is_file() and (run_dir / "checkpoints" / "step=2.ckpt").is_file()  # nothing deleted
    full = run_cli("tralign.train", [*PREEMPT, f"hydra.run.dir={tmp_path / 'full'}"], tmp_path)
    assert full.returncode == 0, full.stderr[-2000:]
    done = json.loads((run_dir / "summary.json").read_text())
    reference = json.loads((tmp_path / "full" / "summary.json").read_text())
    assert done["status"] == "completed" and done["global_step"] == 16
    assert done["ref_updates"] == reference["ref_updates"] == 16
    a, b = _policy(run_dir), _policy(tmp_path / "full")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    assert math.isclose(done["val"]["val/loss"], reference["val"]["val/loss"], rel_tol=1e-5)


class TermDuringFinalValidation(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn == "validate" and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_during_the_closing_validation_stops_before_the_export(monkeypatch, tmp_path):
    # After fit, trainer.validate re-registers Lightning's handler; ours takes over for that stage
    # too, the validation finishes and the run stops with the final checkpoint as the resume point.
    _with_callbacks(monkeypatch, TermDuringFinalValidation())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as caught:
        run(compose_cfg([]), tmp_path)
    assert guards.is_preemption(caught.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["global_step"] == 4
    assert Path(summary["checkpoint"]).name == "step=4.ckpt" == caught.value.checkpoint.name
    assert not (tmp_path / "policy").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # Lightning restored the handler


# ----------------------------------------------------------------- pre-emption, two processes
# Both ranks are signalled (os.killpg: SLURM signals every task, torchrun's agent forwards to every
# worker). The ranks agree at the next optimizer-step boundary and checkpoint together.

RUN2 = [a for a in RUN if not a.startswith(("trainer.val_check_interval", "data.eval_batch_size"))]
TERM_IN_VALIDATION = """
import os, runpy, signal
import lightning as L
import tralign.guards as guards

class TermDuringValidation(L.Callback):  # rank 0 only: Lightning starts rank 1 as python -m tralign.train
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.state.fn == "fit" and trainer.global_step == 4 and batch_idx == 0:
            os.killpg(os.getpgid(0), signal.SIGTERM)  # every rank, mid-validation

original = guards.guard_callbacks
guards.guard_callbacks = lambda cfg: [TermDuringValidation(), *original(cfg)]
runpy.run_module("tralign.train", run_name="__main__", alter_sys=True)
"""


def _start(tmp_path: Path, name: str, cmd: list[str]) -> tuple[subprocess.Popen, Path]:
    run_dir = tmp_path / name
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [*cmd, "trainer.max_steps=100000", f"hydra.run.dir={run_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a job step's
    )
    return proc, run_dir


def _preempted(proc: subprocess.Popen, run_dir: Path, timeout: float = 180) -> tuple[dict, str]:
    """Exit 143 on time (no rank hangs), one preempt checkpoint, every rank gone."""
    try:
        output, _ = proc.communicate(timeout=timeout)  # EOF: every rank has closed the pipe
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no exit {timeout} s after SIGTERM: {proc.communicate()[0][-3000:]}") from None
    assert proc.returncode == 143, output[-3000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # rank 0 waited for its child rank
    assert "Traceback" not in output, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted", summary
    ckpt = Path(summary["checkpoint"])
    assert ckpt.exists() and ckpt.name == f"preempt-step{summary['global_step']}.ckpt"
    assert f"tralign: pre-empted (SIGTERM): resume with ckpt_path={ckpt}" in output
    assert not list(run_dir.glob("checkpoints/*.partial"))
    return summary, output


@pytest.mark.slow
def test_two_process_fsdp2_sigterm_mid_validation_checkpoints_together_and_resumes_exactly(tmp_path):
    driver = tmp_path / "driver.py"
    driver.write_text(TERM_IN_VALIDATION)
    # 4 validation batches per rank at step 4: Lightning's loop would raise at the next one.
    args = [*RUN2, *TWO_PROC, "data.batch_size=4", "data.eval_batch_size=2", "trainer.val_check_interval=4"]
    started = time.time()
    proc, run_dir = _start(tmp_path, "preempted", [sys.executable, str(driver), *args])
    summary, _ = _preempted(proc, run_dir)
    print(f"pre-empted run: {time.time() - started:.1f} s")
    # The validation of step 4 finished on both ranks; they stopped together after step 5.
    assert summary["global_step"] == 5
    ckpt = Path(summary["checkpoint"])
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    # Resume (two processes) to step 7 and compare with an uninterrupted run (one process, the
    # same global batch: test_scale.py shows one and two processes agree to 1e-5).
    val = ["data.eval_batch_size=2", "trainer.val_check_interval=4", "trainer.max_steps=7"]
    resumed, whole = tmp_path / "resumed", tmp_path / "whole"
    for run_dir, extra in (
        (resumed, [*TWO_PROC, "data.batch_size=4", f"ckpt_path={ckpt}"]),
        (whole, ["data.batch_size=8"]),
    ):
        started = time.time()
        result = run_cli("tralign.train", [*RUN2, *val, *extra, f"hydra.run.dir={run_dir}"], tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
        print(f"{run_dir.name}: {time.time() - started:.1f} s")
    _assert_same(whole, resumed, atol=1e-5)
    assert json.loads((resumed / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_two_process_ddp_sigterm_at_any_moment_exits_143_with_a_checkpoint(tmp_path):
    # Signalled from outside at whatever point the ranks are (forward, backward, a collective,
    # mid gradient accumulation: 2 micro-batches per step).
    args = [
        *RUN2,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "trainer.accumulate_grad_batches=2",
        "data.batch_size=2",
    ]
    proc, run_dir = _start(tmp_path, "ddp", [sys.executable, "-m", "tralign.train", *args])
    deadline = time.time() + 300
    while not (run_dir / "checkpoints" / "step=2.ckpt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.05)
    time.sleep(0.3)  # somewhere inside step 3 or later
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    summary, _ = _preempted(proc, run_dir)
    print(f"exit 143 {time.time() - signalled:.1f} s after SIGTERM, at step {summary['global_step']}")
    assert summary["global_step"] >= 2
    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"]
