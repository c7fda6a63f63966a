"""Training-loop guards (tralign/guards.py): non-finite steps are skipped or stop the run with a
checkpoint of the last good state; a pre-emption signal (SIGTERM, submitit's SIGUSR2, a configured
one) saves a checkpoint from which the same command, started again, resumes exactly."""

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
from helpers.callbacks import PoisonGradients, with_callbacks
from helpers.config import SHRINK, compose_cfg
from helpers.paths import REPO
from helpers.processes import run_python
from helpers.runs import RUN, TWO_PROC, assert_same, train_here

import tralign.guards as guards
from tralign.guards import NonFiniteError, NonFiniteGuard, all_finite
from tralign.train import run


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


def test_all_finite_sees_nan_inf_and_ignores_missing_grads():
    assert all_finite([torch.ones(3), None, torch.zeros(0)])
    assert not all_finite([torch.ones(3), torch.tensor([1.0, float("nan")])])
    assert not all_finite([torch.tensor([float("-inf")])])
    big = torch.full((4,), 3e38, dtype=torch.bfloat16)  # finite, though its squares overflow
    assert all_finite([big])


@pytest.mark.e2e
def test_nonfinite_steps_are_skipped_counted_and_never_reach_the_reference(monkeypatch, tmp_path):
    poison, snap = PoisonGradients({2, 3}), Snapshot()
    with_callbacks(monkeypatch, poison, snap)
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


@pytest.mark.e2e
def test_consecutive_nonfinite_steps_stop_with_a_checkpoint_of_the_last_good_state(monkeypatch, tmp_path):
    snap = Snapshot()
    with_callbacks(monkeypatch, PoisonGradients({3, 4, 5, 6}), snap)
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


@pytest.mark.e2e
def test_on_nonfinite_stop_stops_at_the_first_bad_step(monkeypatch, tmp_path):
    with_callbacks(monkeypatch, PoisonGradients({2}))
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


@pytest.mark.e2e
def test_cli_nonfinite_stop_exits_3_with_one_line(tmp_path):
    # The real entry point (main) with a callback that poisons every gradient.
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [*SHRINK, "guard.max_consecutive_nonfinite=2", f"hydra.run.dir={tmp_path}/run"]
    result = run_python([str(driver), *args], tmp_path, timeout=300)
    assert result.returncode == 3, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "2 consecutive optimizer steps" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "stopped" and summary["checkpoint"].endswith("nonfinite-step2.ckpt")


@pytest.mark.e2e
def test_a_policy_with_nonfinite_weights_is_never_mixed_into_the_reference(monkeypatch, tmp_path):
    class Corrupt(L.Callback):  # finite gradients, but the policy gets an inf weight (an overflow)
        def on_before_zero_grad(self, trainer, pl_module, optimizer):
            self.module = pl_module
            if trainer.global_step == 2:  # during optimizer step 3
                with torch.no_grad():
                    next(pl_module.policy.parameters()).view(-1)[0] = float("inf")

    corrupt = Corrupt()
    with_callbacks(monkeypatch, corrupt)
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
    assert not (tmp_path / "checkpoints" / "step-000004.ckpt").exists()


# --------------------------------------------------------------------------- pre-emption
# The end-to-end scenarios share one configuration, so one uninterrupted run (a module fixture)
# is the reference for all of them; the first start of a command runs it with max_steps=10 and is
# signalled, the second start of the *same* command in the same folder resumes by itself
# (ckpt_path=auto, the default under SLURM: SLURM_JOB_ID is set). data.global_batch_size=8 makes the
# same command train on the same rows on 1 and 2 processes.

RUN2 = [a for a in RUN if not a.startswith(("trainer.val_check_interval", "data.eval_batch_size"))]
BASE = [
    *RUN2,
    "data.global_batch_size=8",
    "data.eval_batch_size=2",
    "trainer.val_check_interval=4",
    "trainer.max_steps=10",
]
SLURM = {"SLURM_JOB_ID": "4242"}  # no SLURM_NTASKS: Lightning does not take the run for an srun task
SUBMITIT = {**SLURM, "SUBMITIT_EXECUTOR": "slurm"}
ENV = {"HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def whole(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted run of BASE, one process."""
    return train_here(tmp_path_factory.mktemp("whole") / "run", BASE)  # in-process: no CLI start-up


def _launch(cmd: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env={**os.environ, **ENV, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group, as a job step's
    )


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():  # complete once it exists: saves are write-then-rename
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
        time.sleep(0.01)


def _preempted(
    proc: subprocess.Popen, run_dir: Path, signal_name: str = "SIGTERM", timeout: float = 180
) -> tuple[dict, str]:
    """Exit 143 on time (no rank hangs), one preempt checkpoint, every rank gone."""
    try:
        output, _ = proc.communicate(timeout=timeout)  # EOF: every rank has closed the pipe
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(
            f"no exit {timeout} s after the signal: {proc.communicate()[0][-3000:]}"
        ) from None
    assert proc.returncode == 143, output[-3000:]
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)  # rank 0 waited for its child rank
    assert "Traceback" not in output, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "preempted", summary
    ckpt = Path(summary["checkpoint"])
    assert ckpt.exists() and ckpt.name == f"preempt-step{summary['global_step']}.ckpt"
    assert f"tralign: pre-empted ({signal_name}): resume with ckpt_path={ckpt}" in output
    assert not list(run_dir.glob("checkpoints/*.partial"))
    return summary, output


def _resumes_to_the_end(cmd: list[str], cwd: Path, env: dict[str, str], run_dir: Path, ckpt: Path) -> None:
    """The same command, started again in the same folder, continues from ``ckpt`` to the end."""
    proc = _launch(cmd, cwd, env)
    output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output[-3000:]
    assert f"ckpt_path=auto: resuming from {ckpt}" in output, output[-3000:]
    assert ckpt.exists() and (run_dir / "checkpoints" / "step-000002.ckpt").exists()  # nothing deleted
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 10


SUBMITIT_DRIVER = """
import json, os, runpy, signal, sys
from pathlib import Path

def requeue(signum, frame):  # submitit's SignalHandler.checkpoint_and_try_requeue on rank 0
    found = sorted(p.name for p in Path(os.environ["RUN_DIR"], "checkpoints").iterdir())
    Path(os.environ["REQUEUE_MARKER"]).write_text(json.dumps({"signal": signum, "checkpoints": found}))
    sys.exit(-1)  # submitit's _exit

signal.signal(signal.SIGUSR2, requeue)  # as submitit's process_job, before it calls the job
runpy.run_module("tralign.train", run_name="__main__", alter_sys=True)
"""


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.xdist_group("guards_whole")  # both use the module-scoped run `whole`: make it once
def test_sigusr2_under_submitit_saves_then_requeues_and_the_same_command_resumes_exactly(tmp_path, whole):
    run_dir, marker = tmp_path / "run", tmp_path / "requeued.json"
    driver = tmp_path / "driver.py"
    driver.write_text(SUBMITIT_DRIVER)
    cmd = [sys.executable, str(driver), *BASE, f"hydra.run.dir={run_dir}"]
    env = {**SUBMITIT, "RUN_DIR": str(run_dir), "REQUEUE_MARKER": str(marker)}
    proc = _launch(cmd, tmp_path, env)
    _wait_for(run_dir / "checkpoints" / "step-000002.ckpt", proc)  # training is under way
    proc.send_signal(signal.SIGUSR2)  # what SLURM sends submitit's jobs signal_delay_s before the limit
    summary, _ = _preempted(proc, run_dir, "SIGUSR2")
    assert summary["signal"] == "SIGUSR2" and 2 <= summary["global_step"] < 10
    ckpt = Path(summary["checkpoint"])
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"]
    # submitit's handler ran, and only once the checkpoint was complete (saved, then requeued).
    requeued = json.loads(marker.read_text())
    assert requeued["signal"] == signal.SIGUSR2 and ckpt.name in requeued["checkpoints"], requeued
    assert not [n for n in requeued["checkpoints"] if n.endswith(".partial")]

    marker.unlink()
    _resumes_to_the_end(cmd, tmp_path, env, run_dir, ckpt)
    assert not marker.exists()
    assert_same(whole, run_dir, atol=0.0)  # bitwise: same rows, same order, same reference
    done, reference = (json.loads((d / "summary.json").read_text()) for d in (run_dir, whole))
    assert done["ref_updates"] == reference["ref_updates"] == 10
    assert math.isclose(done["val"]["val/loss"], reference["val"]["val/loss"], rel_tol=1e-6)


class SendSignal(L.Callback):
    def __init__(self, signum: int, step: int):
        self.signum, self.step, self.sent = signum, step, False

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


@pytest.mark.e2e
def test_a_configured_signal_replaces_the_defaults_and_checkpoints(monkeypatch, tmp_path):
    # guard.preemption_signals=[SIGUSR1]: e.g. sbatch --signal=USR1@300 with srun tasks.
    with_callbacks(monkeypatch, SendSignal(signal.SIGUSR1, 2))
    before = signal.getsignal(signal.SIGUSR1)
    with pytest.raises(SystemExit) as caught:
        run(compose_cfg(["guard.preemption_signals=[SIGUSR1]", "trainer.max_steps=6"]), tmp_path)
    assert guards.is_preemption(caught.value) and caught.value.signal_name == "SIGUSR1"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert (summary["status"], summary["global_step"], summary["signal"]) == ("preempted", 2, "SIGUSR1")
    assert caught.value.checkpoint.name == "preempt-step2.ckpt"
    assert signal.getsignal(signal.SIGUSR1) == before  # Lightning restored the handler
    callbacks = guards.guard_callbacks({"preemption_signals": ["USR1"]})
    (callback,) = [c for c in callbacks if isinstance(c, guards.PreemptionCheckpoint)]
    assert callback.signals == (signal.SIGUSR1,)  # the list replaces SIGTERM


class TermDuringFinalValidation(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.state.fn == "validate" and batch_idx == 0:
            os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.e2e
def test_sigterm_during_the_closing_validation_stops_before_the_export(monkeypatch, tmp_path):
    # After fit, trainer.validate re-registers Lightning's handler; ours takes over for that stage
    # too, the validation finishes and the run stops with the final checkpoint as the resume point.
    with_callbacks(monkeypatch, TermDuringFinalValidation())
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as caught:
        run(compose_cfg([]), tmp_path)
    assert guards.is_preemption(caught.value)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "preempted" and summary["global_step"] == 4
    assert Path(summary["checkpoint"]).name == "step-000004.ckpt" == caught.value.checkpoint.name
    assert not (tmp_path / "policy").exists()
    assert signal.getsignal(signal.SIGTERM) == before  # Lightning restored the handler


# ----------------------------------------------------------------- pre-emption, two processes
# Both ranks are signalled (os.killpg: SLURM signals every task, torchrun's agent forwards to every
# worker). The ranks agree at the next optimizer-step boundary and checkpoint together.

TERM_IN_VALIDATION = """
import os, runpy, signal
import lightning as L
from lightning.pytorch.accelerators import CPUAccelerator
import tralign.guards as guards

# CPU's "auto" is one device; two here, as on a 2-GPU node. Run as ``python -m term_auto_two``: this
# module is what Lightning's launcher re-runs for rank 1, so both ranks see two devices.
CPUAccelerator.auto_device_count = staticmethod(lambda: 2)

class TermDuringValidation(L.Callback):
    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        at_step_4 = trainer.state.fn == "fit" and trainer.global_step == 4 and batch_idx == 0
        if at_step_4 and trainer.is_global_zero:
            os.killpg(os.getpgid(0), signal.SIGTERM)  # every rank, mid-validation

original = guards.guard_callbacks
guards.guard_callbacks = lambda cfg: [TermDuringValidation(), *original(cfg)]
runpy.run_module("tralign.train", run_name="__main__")
"""
# BASE on trainer.devices=auto (two devices, see the driver) and a hybrid mesh (2 replicas x 1 shard).
# tralign cuts data.global_batch_size for the devices it counts before the launch, and "auto" is not
# counted there (it refuses the mismatch): 4 rows per rank instead, the same global batch of 8.
AUTO_HYBRID = [
    *(a for a in BASE if not a.startswith("data.global_batch_size=")),
    "data.batch_size=4",
    *(a for a in TWO_PROC if not a.startswith("trainer.devices=")),
    "trainer.devices=auto",
    "trainer.strategy.hybrid=true",
    "trainer.strategy.shard_size=1",
]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.xdist_group("guards_whole")  # both use the module-scoped run `whole`: make it once
def test_two_process_fsdp2_sigterm_mid_validation_checkpoints_together_and_resumes_exactly(tmp_path, whole):
    """One launch, two properties: pre-emption of 2 fsdp2 ranks (checkpoint together, resume exactly),
    and ``trainer.devices=auto`` on a hybrid mesh (2 replicas x 1 shard) training as one process."""
    (tmp_path / "term_auto_two.py").write_text(TERM_IN_VALIDATION)
    # 4 validation batches per rank at step 4: Lightning's loop would raise at the next one.
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "term_auto_two", *AUTO_HYBRID, f"hydra.run.dir={run_dir}"]
    summary, _ = _preempted(_launch(cmd, tmp_path, SLURM), run_dir)
    # The validation of step 4 finished on both ranks; they stopped together after step 5.
    assert summary["global_step"] == 5
    ckpt = Path(summary["checkpoint"])
    assert sorted(p.name for p in ckpt.glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    # The same command again (two processes) resumes to step 10; the uninterrupted run is one
    # process with the same global batch (test_scale.py shows one and two processes agree to 1e-5).
    _resumes_to_the_end(cmd, tmp_path, SLURM, run_dir, ckpt)
    assert_same(whole, run_dir, atol=1e-5)
    done = json.loads((run_dir / "summary.json").read_text())
    assert (done["world_size"], done["global_batch_size"]) == (2, 8)  # auto: the two devices


@pytest.mark.slow
@pytest.mark.e2e
def test_two_process_ddp_sigterm_at_any_moment_exits_143_with_a_checkpoint(tmp_path):
    # Signalled from outside at whatever point the ranks are (forward, backward, a collective,
    # mid gradient accumulation: 2 micro-batches per step).
    args = [
        *RUN2,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.global_batch_size=8",
        "data.batch_size=2",  # at most 2 rows per micro-batch: 2 micro-batches per step on each rank
        "trainer.max_steps=100000",
    ]
    run_dir = tmp_path / "ddp"
    proc = _launch([sys.executable, "-m", "tralign.train", *args, f"hydra.run.dir={run_dir}"], tmp_path, {})
    _wait_for(run_dir / "checkpoints" / "step-000002.ckpt", proc)
    time.sleep(0.3)  # somewhere inside step 3 or later
    os.killpg(proc.pid, signal.SIGTERM)
    signalled = time.time()
    summary, _ = _preempted(proc, run_dir)
    print(f"exit 143 {time.time() - signalled:.1f} s after SIGTERM, at step {summary['global_step']}")
    assert summary["global_step"] >= 2
    state = torch.load(summary["checkpoint"], map_location="cpu", weights_only=True)
    assert state["global_step"] == summary["global_step"]
