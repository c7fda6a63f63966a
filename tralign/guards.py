"""Training-loop guards, as Lightning callbacks: non-finite steps and pre-emption.

``NonFiniteGuard`` checks every optimizer step's loss and gradients. A bad step is *skipped*: every
policy gradient is set to None before ``optimizer.step()``, so AdamW leaves those parameters alone
(no moment update, no weight decay). Lightning still counts the step in ``global_step`` (and the
learning-rate schedule advances), so ``train/skipped_steps`` says how many of ``global_step`` did not
move the policy. The guard tells the module (``skip_optimizer_step``), whose τ clock
(``ref/applied_steps``) counts applied steps only: a skipped step never moves the reference. After
``guard.max_consecutive_nonfinite`` bad steps in a row (or the first one with
``guard.on_nonfinite=stop``) the run saves a checkpoint of the current state — the last good one,
since bad updates were skipped — and stops with :class:`NonFiniteError` (exit code 3). Before the
reference moves, the policy's weights are checked too: a non-finite policy is never mixed into it.

``PreemptionCheckpoint`` replaces the handlers of the pre-emption signals (SIGTERM, and submitit's
SIGUSR2 under submitit, or ``guard.preemption_signals``: tralign/signals.py) with one that only sets a
flag; at the end of every optimizer step (reference updated) the ranks agree on it with one
``all_reduce`` and, if any rank was signalled, all of them save ``checkpoints/preempt-stepN.ckpt``
together, write ``summary.json`` with status ``preempted`` and raise ``SIGTERMException`` at the same
step; ``python -m tralign.train`` then exits with code 143. Under submitit its own handler (pickle the
job, ``scontrol requeue``) runs only after that save. Resume with ``ckpt_path=auto`` (the default
under SLURM: a requeued job resumes by itself) or ``ckpt_path=<checkpoint>``.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor

from tralign.checkpoint import replace_path
from tralign.errors import TralignError

log = logging.getLogger("tralign")

OnNonFinite = Literal["skip", "stop"]
ON_NONFINITE: tuple[OnNonFinite, ...] = ("skip", "stop")
EXIT_NONFINITE = 3
EXIT_PREEMPTED = 143  # 128 + SIGTERM, what schedulers expect of a job that was terminated


class NonFiniteError(TralignError):
    """Training stopped on non-finite loss, gradients or weights; the message names the checkpoint."""

    exit_code = EXIT_NONFINITE


def _local(t: Tensor) -> Tensor:
    """A DTensor's local shard (FSDP2), else the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


def all_finite(tensors: list[Tensor]) -> bool:
    """True when every element of every tensor (local shards) is finite; one reduction per dtype group."""
    tensors = [_local(t).detach() for t in tensors if t is not None and _local(t).numel()]
    if not tensors:
        return True
    # The largest |element| is non-finite iff some element is (NaN propagates, inf stays inf), and
    # unlike the 2-norm it cannot overflow on large finite values. One kernel per tensor group.
    norms = torch._foreach_norm(tensors, float("inf"))
    return bool(torch.isfinite(torch.stack([n.float() for n in norms])).all())


def _any_rank(flag: bool, device: torch.device) -> bool:
    """``flag`` OR-ed over all processes: each FSDP rank sees only its own shard of the gradients."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
    return bool(t.item() > 0)


def _run_dir(trainer: L.Trainer) -> Path:
    return Path(trainer.default_root_dir)


def _write_summary(trainer: L.Trainer, status: str, **fields: Any) -> None:
    if not trainer.is_global_zero:
        return
    path = _run_dir(trainer) / "summary.json"
    summary = {"status": status, "global_step": int(trainer.global_step), **fields}
    path.write_text(json.dumps(summary, indent=2) + "\n")


def _save(trainer: L.Trainer, name: str) -> Path:
    """Write-then-rename, as the periodic checkpoints: a kill during the save leaves no half file
    under a checkpoint's name."""
    path = _run_dir(trainer) / "checkpoints" / name
    partial = path.with_name(path.name + ".partial")
    if trainer.is_global_zero and partial.is_dir():  # a killed sharded save: never mix its shards in
        import shutil

        shutil.rmtree(partial)
    trainer.strategy.barrier("tralign-guard-checkpoint-start")
    trainer.save_checkpoint(
        partial, weights_only=False
    )  # full state; collective: every rank calls it (sharded: each its shard)
    trainer.strategy.barrier("tralign-guard-checkpoint-written")
    if trainer.is_global_zero:
        replace_path(partial, path)
    trainer.strategy.barrier("tralign-guard-checkpoint-renamed")
    return path


class NonFiniteGuard(L.Callback):
    def __init__(self, on_nonfinite: OnNonFinite = "skip", max_consecutive: int = 10):
        if on_nonfinite not in ON_NONFINITE:
            raise ValueError(f"guard.on_nonfinite: must be one of {ON_NONFINITE}, got {on_nonfinite!r}")
        self.on_nonfinite = on_nonfinite
        self.max_consecutive = int(max_consecutive)
        self.skipped = 0  # optimizer steps skipped, over the whole run (resumes included)
        self.consecutive = 0
        self._bad_loss = False  # some micro-batch of the current optimizer step had a bad loss
        self._stop: str | None = None  # why the run stops at the end of this step

    @property
    def state_key(self) -> str:
        return "NonFiniteGuard"

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = int(state.get("skipped", 0))
        self.consecutive = int(state.get("consecutive", 0))

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = True

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        # Under fp16 mixed precision the GradScaler skips steps with inf gradients by design (and
        # lowers its scale): those are its business, only a non-finite loss is ours.
        check_grads = not str(trainer.precision).startswith("16")
        bad = self._bad_loss or (check_grads and not all_finite([p.grad for p in params]))
        self._bad_loss = False
        bad = _any_rank(bad, pl_module.device)
        if not bad:
            self.consecutive = 0
            return
        for p in params:
            p.grad = None  # AdamW skips parameters without a gradient: the policy does not move
        pl_module.skip_optimizer_step()  # the module's τ clock counts applied steps only
        self.skipped += 1
        self.consecutive += 1
        step = trainer.global_step + 1
        log.warning(
            "non-finite loss or gradients at optimizer step %d: update skipped (%d in a row, %d in all)",
            step,
            self.consecutive,
            self.skipped,
        )
        if self.on_nonfinite == "stop":
            self._stop = f"non-finite loss or gradients at optimizer step {step} (guard.on_nonfinite=stop)"
        elif self.consecutive >= self.max_consecutive:
            self._stop = (
                f"{self.consecutive} consecutive optimizer steps with non-finite loss or gradients "
                f"(guard.max_consecutive_nonfinite={self.max_consecutive})"
            )

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not pl_module.step_finished:
            return  # mid gradient accumulation: no optimizer step yet
        step = trainer.global_step
        pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False, batch_size=1)
        if pl_module.reference_update_due and _any_rank(
            not all_finite(list(pl_module.policy.parameters())), pl_module.device
        ):
            # This callback runs before ReferenceUpdate (tralign.build orders them): a policy that
            # went non-finite despite finite gradients stops the run here.
            why = f"the policy's weights are non-finite after optimizer step {step}"
            _coordinated_exit(trainer)
            _write_summary(trainer, "stopped", error=why, skipped_steps=self.skipped, **_applied(pl_module))
            raise NonFiniteError(
                f"{why}; the reference was not updated; resume from an earlier checkpoint in "
                f"{_run_dir(trainer) / 'checkpoints'} with a lower optim.lr"
            )
        if self._stop is not None:
            why, self._stop = self._stop, None
            # A stop follows a skipped step, which moves no reference: the checkpoint holds this
            # step's reference whether ReferenceUpdate has run yet or not.
            _coordinated_exit(trainer)
            path = _save(trainer, f"nonfinite-step{step}.ckpt")
            _write_summary(
                trainer,
                "stopped",
                error=why,
                checkpoint=str(path),
                skipped_steps=self.skipped,
                **_applied(pl_module),
            )
            raise NonFiniteError(f"{why}; the last good state is saved in {path}")


def _applied(pl_module: L.LightningModule) -> dict[str, int]:
    """summary.json's ``applied_steps`` (the optimizer steps that moved the policy)."""
    return {"applied_steps": int(pl_module.applied_steps)}


class PreemptionCheckpoint(L.Callback):
    """Save a resumable checkpoint when a pre-emption signal arrives, then stop.

    ``signals``: SIGTERM (SLURM's pre-emption warning, torchrun's agent), submitit's SIGUSR2
    (tralign/signals.py). Lightning's own SIGTERM handler is replaced once training starts: it runs
    a ``dist.broadcast`` inside the handler (collectives matched out of order when several ranks
    are signalled) and makes the loops raise at whichever batch each rank happens to be in.
    submitit's handler is replaced too: on rank 0 it requeues the job and raises ``SystemExit``
    from wherever the main thread is, while the other ranks wait in the next collective, so no
    checkpoint would be written. Ours only sets a flag; at every optimizer-step boundary the ranks
    OR their flags with one ``all_reduce`` (only with more than one process) and, if any was
    signalled, all of them save the checkpoint together, hand submitit's signal to submitit's
    handler (``requeue_signal``: it requeues the job, which then resumes with ``ckpt_path=auto``)
    and raise ``SIGTERMException`` at the same step.
    """

    def __init__(
        self,
        signals: tuple[int, ...] = (signal.SIGTERM,),
        requeue_signal: int | None = None,
    ) -> None:
        self.saved: Path | None = None
        self.received = False  # set by the signal handler, nothing else happens there
        self.signals = tuple(signals)
        self.requeue_signal = requeue_signal  # submitit's: its handler runs after our save
        self._got: set[int] = set()  # which signals arrived (for the messages and the hand-over)
        self._requeue_handler: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        # A signal handler runs between two bytecodes of the main thread, possibly inside a
        # collective's Python frames or a logging call: set the flag, nothing more.
        self.received = True
        self._got.add(signum)

    @property
    def signal_name(self) -> str:
        """The signal(s) received, for messages: ``SIGTERM``, ``SIGUSR2`` ..."""
        return "+".join(signal.Signals(s).name for s in sorted(self._got)) or "SIGTERM"

    def _install(self, trainer: L.Trainer) -> None:
        """Replace the handlers of ``signals`` (Lightning's SIGTERM one is registered just before
        the sanity check). Lightning restores the pre-``fit`` handlers when ``fit`` ends."""
        if threading.current_thread() is not threading.main_thread():
            return  # signal.signal works only there (Lightning registers nothing then either)
        connector = getattr(trainer, "_signal_connector", None)
        if connector is not None and connector.received_sigterm and signal.SIGTERM in self.signals:
            # Lightning's handler caught one before ours was in place: take it over.
            self.received, connector.received_sigterm = True, False
            self._got.add(signal.SIGTERM)
        for sig in self.signals:
            current = signal.getsignal(sig)
            if sig == self.requeue_signal and callable(current) and current != self._on_sigterm:
                self._requeue_handler = current  # submitit's: called after our checkpoint
            signal.signal(sig, self._on_sigterm)

    def _agree(self, device: torch.device) -> tuple[bool, bool]:
        """(some rank was signalled, some rank got the requeue signal): one collective, every rank."""
        flags = [self.received, self.requeue_signal in self._got]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([float(f) for f in flags], device=device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            flags = [bool(v > 0) for v in t.tolist()]
        return flags[0], flags[1]

    def _hand_over(self, requeue: bool) -> None:
        """After the checkpoint: let submitit's handler requeue the job (rank 0; on the others it
        only logs). It ends with ``sys.exit(-1)``: swallowed, every rank exits 143 together."""
        if not requeue or self._requeue_handler is None:
            return
        try:
            self._requeue_handler(self.requeue_signal, None)
        except SystemExit:
            pass
        except Exception as err:  # e.g. submitit's "timed-out too many times": no requeue
            log.warning("pre-emption: the launcher did not requeue the job: %s", err)

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install(trainer)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if not pl_module.step_finished:
            # Mid gradient accumulation: the signal waits for the optimizer step (a checkpoint
            # here would lose the accumulated gradients). Validation, which runs after this hook,
            # also finishes first: Lightning's loops never see a signal.
            return
        step = trainer.global_step
        # The only collective: every rank gets here at every optimizer step, in the same order.
        stop, requeue = self._agree(pl_module.device)
        if not stop:
            return
        log.warning("%s: stopping after optimizer step %d", self.signal_name, step)
        # ReferenceUpdate ran before this callback (tralign.build orders them): the checkpoint
        # holds this step's reference, as a resumed run needs.
        _coordinated_exit(trainer)
        self._preempt(trainer)  # every rank: a sharded checkpoint needs all of them
        self._hand_over(requeue)  # the checkpoint is complete: now submitit may requeue
        raise self._exception()  # on every rank at the same step; main() exits with 143

    def _exception(self) -> SIGTERMException:
        err = SIGTERMException()
        err.checkpoint, err.signal_name = self.saved, self.signal_name
        return err

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.received and self.saved is None:
            log.warning("%s after the last optimizer step: the final checkpoint follows", self.signal_name)

    # The run's closing trainer.validate (after fit): the same flag, agreed on once at its end.
    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "validate":
            self._install(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn != "validate":
            return
        stop, requeue = self._agree(pl_module.device)
        if not stop:
            return
        # Training is over and its final checkpoint written (AtomicCheckpoint.on_train_end):
        # that one resumes (to the export) as well as a new one would.
        from tralign.checkpoint import newest_checkpoint

        self.saved = newest_checkpoint(_run_dir(trainer) / "checkpoints")
        _write_summary(trainer, "preempted", checkpoint=str(self.saved) if self.saved else None)
        _coordinated_exit(trainer)
        log.warning(
            "pre-empted (%s) after training, before the export; resume with ckpt_path=%s",
            self.signal_name,
            self.saved,
        )
        self._hand_over(requeue)
        raise self._exception()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, NonFiniteError):
            _wait_for_children(trainer)
        if not is_preemption(exception):
            return
        try:
            self._save_late(trainer)
        finally:
            exception.checkpoint = self.saved  # for the command line's last message
            exception.signal_name = self.signal_name
        _wait_for_children(trainer)

    def _save_late(self, trainer: L.Trainer) -> None:
        if self.saved is not None:
            return
        # Lightning raised SIGTERMException itself: its handler was still in place (a signal
        # between its registration and ours, or in a stage we do not cover). Single process at a
        # step boundary: the state is resumable; otherwise the ranks may be at different batches.
        mid_accumulation = trainer.fit_loop.epoch_loop._should_accumulate()
        if trainer.world_size > 1 or mid_accumulation or trainer.state.fn != "fit":
            why = "mid gradient accumulation" if mid_accumulation else "signal outside a step boundary"
            log.warning(
                "pre-empted (%s): no checkpoint written (resume from the last periodic checkpoint)", why
            )
            _write_summary(trainer, "preempted", checkpoint=None)
            return
        self._preempt(trainer)

    def _preempt(self, trainer: L.Trainer) -> None:
        step = trainer.global_step
        self.saved = _save(trainer, f"preempt-step{step}.ckpt")
        _write_summary(trainer, "preempted", checkpoint=str(self.saved), signal=self.signal_name)
        log.warning(
            "pre-empted (%s) after optimizer step %d: checkpoint %s; resume with ckpt_path=%s",
            self.signal_name,
            step,
            self.saved,
            self.saved,
        )


def _coordinated_exit(trainer: L.Trainer) -> None:
    """Before every rank raises together (pre-emption, non-finite stop): keep Lightning's child
    observer (rank 0 of a run that spawned its ranks itself) from taking a child's non-zero exit
    for a crash and SIGKILLing the whole run, rank 0 included, before it can exit with its code."""
    if not trainer.is_global_zero or not getattr(trainer.strategy.launcher, "procs", None):
        return
    for thread in threading.enumerate():
        if type(thread).__name__ == "_ChildProcessObserver":
            thread._run = lambda: True  # its next poll ends the thread, nothing is killed


def _wait_for_children(trainer: L.Trainer, timeout: float = 120.0) -> None:
    """Rank 0 of a run that spawned its ranks: let them exit first (each saved with us), so the
    job ends as a whole. torchrun/SLURM ranks have no children here."""
    procs = getattr(trainer.strategy.launcher, "procs", None) if trainer.is_global_zero else None
    deadline = time.monotonic() + timeout
    for proc in procs or []:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("rank process %d still running after %.0f s", proc.pid, timeout)


def is_preemption(err: BaseException) -> bool:
    """Lightning's SIGTERMException (a SystemExit), without importing Lightning to ask."""
    return isinstance(err, SystemExit) and type(err).__name__ == "SIGTERMException"


def guard_callbacks(guard_cfg: Any) -> list[L.Callback]:
    """The callbacks ``conf/train.yaml``'s ``guard`` block asks for."""
    guard_cfg = guard_cfg or {}
    callbacks: list[L.Callback] = []
    on_nonfinite = guard_cfg.get("on_nonfinite", "skip")
    if on_nonfinite != "off":
        # First: its weight check must run before anything moves the reference.
        callbacks.append(NonFiniteGuard(on_nonfinite, int(guard_cfg.get("max_consecutive_nonfinite", 10))))
    if guard_cfg.get("preemption_checkpoint", True):
        from tralign.signals import preemption_signals, submitit_signal

        signals = preemption_signals(guard_cfg.get("preemption_signals"))
        callbacks.append(PreemptionCheckpoint(signals, requeue_signal=submitit_signal()))
    return callbacks
