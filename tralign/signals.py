"""Which signals mean "pre-empted: checkpoint at the next optimizer step and stop" (``guard.preemption_signals``).

Each launcher warns a job differently before it is stopped:

- SLURM (``sbatch``/``srun``, pre-emption or ``--signal=TERM@300``) and Kubernetes: SIGTERM.
- submitit (``hydra/launcher=tralign_slurm``): its jobs carry ``SUBMITIT_EXECUTOR=slurm`` and are
  submitted with ``--signal=USR2@<signal_delay_s>``; ``SUBMITIT_PREEMPT_SIGNAL`` changes the signal.
  submitit installs its own handler for it (rank 0 pickles the job and runs ``scontrol requeue``);
  tralign's checkpoint runs first and then hands the signal to that handler (tralign/guards.py).

``null`` (the default) means SIGTERM, plus submitit's signal under submitit. A list replaces that
choice entirely. Pure functions of the config and the environment: no Lightning import here.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from typing import Any

UNCATCHABLE = {signal.SIGKILL, signal.SIGSTOP}


def parse_signal(name: Any) -> signal.Signals:
    """``SIGUSR2``, ``USR2`` or ``usr2`` -> ``signal.SIGUSR2``; ValueError for anything else."""
    text = str(name).strip().upper()
    text = text if text.startswith("SIG") else "SIG" + text
    sig = getattr(signal.Signals, text, None) if text.isidentifier() else None
    if sig is None or sig in UNCATCHABLE:
        raise ValueError(f"{name!r} is not a signal a process can catch (e.g. SIGTERM, SIGUSR1, SIGUSR2)")
    return sig


def submitit_signal(environ: Mapping[str, str] = os.environ) -> signal.Signals | None:
    """The signal submitit's SLURM jobs are warned with (it sets its own handler for it), or None
    outside a submitit SLURM job."""
    if environ.get("SUBMITIT_EXECUTOR") != "slurm":
        return None
    return parse_signal(environ.get("SUBMITIT_PREEMPT_SIGNAL") or "USR2")


def preemption_signals(
    configured: Any = None, environ: Mapping[str, str] = os.environ
) -> tuple[signal.Signals, ...]:
    """The signals that trigger the pre-emption checkpoint (see the module docstring)."""
    if configured is None:
        found = [signal.SIGTERM, submitit_signal(environ)]
    else:
        found = [parse_signal(n) for n in ([configured] if isinstance(configured, str) else configured)]
    return tuple(dict.fromkeys(s for s in found if s is not None))


def signal_problems(configured: Any) -> list[str]:
    """For ``tralign.config.validate``: ``guard.preemption_signals`` in one line, or nothing."""
    if configured is None:
        return []
    names = [configured] if isinstance(configured, str) else configured
    try:
        if not preemption_signals(list(names), {}):
            return ["guard.preemption_signals: an empty list; null means SIGTERM (+ submitit's signal)"]
    except (TypeError, ValueError) as err:
        return [f"guard.preemption_signals: {err}"]
    return []
