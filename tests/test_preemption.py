"""Pre-emption plumbing without a run: which signal each launcher sends (tralign/signals.py), the
hand-over to submitit's handler after the save, ckpt_path=auto (tralign/checkpoint.py) and the
output-folder check that lets the same command continue (tralign/safety.py). The end-to-end
signal scenarios are in tests/test_guards.py."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from helpers.config import compose_cfg

from tralign.checkpoint import resolve_ckpt_path
from tralign.config import validate
from tralign.errors import ConfigError, TralignError
from tralign.guards import PreemptionCheckpoint
from tralign.safety import check_output_dir
from tralign.signals import parse_signal, preemption_signals, submitit_signal


def test_each_launcher_gets_the_signal_it_really_sends():
    assert preemption_signals(None, {}) == (signal.SIGTERM,)  # sbatch/srun, torchrun, Kubernetes
    submitit = {"SUBMITIT_EXECUTOR": "slurm"}
    assert preemption_signals(None, submitit) == (signal.SIGTERM, signal.SIGUSR2)
    assert submitit_signal(submitit) == signal.SIGUSR2
    moved = {**submitit, "SUBMITIT_PREEMPT_SIGNAL": "USR1"}
    assert preemption_signals(None, moved) == (signal.SIGTERM, signal.SIGUSR1)
    assert submitit_signal({"SUBMITIT_EXECUTOR": "local"}) is None
    assert preemption_signals(["usr1", "SIGTERM"], submitit) == (signal.SIGUSR1, signal.SIGTERM)
    assert preemption_signals("SIGUSR2", {}) == (signal.SIGUSR2,)
    assert parse_signal("TERM") == signal.SIGTERM


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[SIGKILL]", "guard.preemption_signals: 'SIGKILL' is not a signal a process can catch"),
        ("[USR3]", "guard.preemption_signals: 'USR3' is not a signal"),
        ("[]", "guard.preemption_signals: an empty list"),
    ],
)
def test_bad_preemption_signals_are_refused_in_one_line(value, message):
    with pytest.raises(ConfigError, match=message) as caught:
        validate(compose_cfg([f"guard.preemption_signals={value}"]))
    assert len(caught.value.problems) == 1


class _FakeSubmitit:
    """submitit's SignalHandler.checkpoint_and_try_requeue: requeue, then sys.exit(-1)."""

    def __init__(self, error: Exception | None = None):
        self.calls: list[int] = []
        self.error = error

    def __call__(self, signum, frame):
        self.calls.append(signum)
        if self.error:
            raise self.error
        raise SystemExit(-1)


def test_submitit_handler_is_kept_and_called_only_after_the_save(monkeypatch):
    fake = _FakeSubmitit()
    previous = signal.signal(signal.SIGUSR2, fake)
    try:
        callback = PreemptionCheckpoint((signal.SIGTERM, signal.SIGUSR2), requeue_signal=signal.SIGUSR2)
        callback._install(trainer=None)
        assert signal.getsignal(signal.SIGUSR2) == callback._on_sigterm
        callback._install(trainer=None)  # re-installed for the closing validation: still submitit's
        assert callback._requeue_handler is fake
        signal.raise_signal(signal.SIGUSR2)
        assert fake.calls == [] and callback.received  # the handler only sets the flag
        assert callback._agree(device=None) == (True, True) and callback.signal_name == "SIGUSR2"
        callback._hand_over(requeue=True)  # submitit's SystemExit is swallowed: all ranks exit 143
        assert fake.calls == [signal.SIGUSR2]
        callback._hand_over(requeue=False)  # SIGTERM alone: SLURM requeues a pre-empted job itself
        assert fake.calls == [signal.SIGUSR2]
        fake.error = RuntimeError("Job not requeued because: timed-out too many times.")
        callback._hand_over(requeue=True)  # logged, not raised: the checkpoint is saved
    finally:
        signal.signal(signal.SIGUSR2, previous)


def _run_folder(tmp_path: Path, *names: str) -> Path:
    (tmp_path / "checkpoints").mkdir(parents=True)
    for name in names:
        (tmp_path / "checkpoints" / name).write_bytes(b"x")
    return tmp_path


def test_ckpt_path_auto_takes_the_newest_checkpoint_or_starts_fresh(tmp_path):
    run_dir = _run_folder(
        tmp_path / "a", "step=2.ckpt", "step=4.ckpt", "preempt-step5.ckpt", "step=6.ckpt.partial"
    )
    newest = str(run_dir / "checkpoints" / "preempt-step5.ckpt")
    assert resolve_ckpt_path("auto", run_dir, {}) == newest
    assert resolve_ckpt_path("auto", tmp_path / "empty", {}) is None  # nothing yet: fresh
    # null: auto under SLURM (a requeued job resumes by itself), fresh elsewhere; none: always fresh.
    assert resolve_ckpt_path(None, run_dir, {"SLURM_JOB_ID": "7"}) == newest
    assert resolve_ckpt_path(None, run_dir, {}) is None
    assert resolve_ckpt_path("none", run_dir, {"SLURM_JOB_ID": "7"}) is None
    validate(compose_cfg(["ckpt_path=auto"]))
    validate(compose_cfg(["ckpt_path=none"]))


def test_the_same_command_again_in_the_same_folder_continues_instead_of_being_refused(tmp_path):
    run_dir = _run_folder(tmp_path, "step=2.ckpt", "preempt-step3.ckpt")
    (run_dir / "summary.json").write_text(json.dumps({"status": "preempted", "checkpoint": "..."}))
    with pytest.raises(TralignError, match="already holds another run's checkpoints"):
        check_output_dir(run_dir, {}, resolve_ckpt_path(None, run_dir, {}))  # not under SLURM
    check_output_dir(run_dir, {}, resolve_ckpt_path("auto", run_dir, {}))
    check_output_dir(run_dir, {}, resolve_ckpt_path(None, run_dir, {"SLURM_JOB_ID": "7"}))


def test_a_run_preempted_before_its_first_checkpoint_leaves_nothing_to_keep(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps({"status": "preempted", "checkpoint": None}))
    check_output_dir(tmp_path, {}, resolve_ckpt_path("auto", tmp_path, {}))
    (tmp_path / "summary.json").write_text(json.dumps({"status": "completed"}))
    with pytest.raises(TralignError, match="summary.json .status completed"):
        check_output_dir(tmp_path, {}, resolve_ckpt_path("auto", tmp_path, {}))


def test_auto_never_continues_a_run_with_another_config(tmp_path):
    from tralign.checkpoint import check_same_run

    (tmp_path / "config_resolved.yaml").write_text("alpha: 0.3\ntrainer:\n  max_steps: 10\nckpt_path: null\n")
    check_same_run(
        tmp_path, {"alpha": 0.3, "trainer": {"max_steps": 20}, "ckpt_path": "auto"}
    )  # longer: fine
    with pytest.raises(TralignError, match="holds a run with another config .alpha: 0.3 there, 0.6 now"):
        check_same_run(tmp_path, {"alpha": 0.6, "trainer": {"max_steps": 10}, "ckpt_path": None})
