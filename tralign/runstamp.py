"""The run folder's time stamp, the same on every rank of one multi-process launch.

Hydra names a run's folder when each process starts. Under torchrun or ``srun`` every rank is its own
Python process, so ``${now:...}`` could differ by a second between ranks and split one run over two
folders. ``${run_stamp:}`` uses the launcher's id when there is one: torchrun's rendezvous id
(``--standalone`` draws one; else ``--rdzv-id``), SLURM's job id (and array task) for multi-task jobs,
which stays the same when SLURM requeues the job; otherwise the local time. Lightning's own launcher passes ``hydra.run.dir`` to the processes it
starts, so single-command runs need none of this.
"""

from __future__ import annotations

import os
import time

from omegaconf import OmegaConf


def run_stamp() -> str:
    run_id = os.environ.get("TORCHELASTIC_RUN_ID", "")
    if run_id and run_id != "none":
        return f"{time.strftime('%Y-%m-%d')}/torchrun-{run_id}"
    job = os.environ.get("SLURM_JOB_ID")
    if job and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        array = os.environ.get("SLURM_ARRAY_TASK_ID")
        # No date: a job SLURM requeues (pre-emption, submitit after a time-out) may restart the next
        # day, and must find its folder again to resume (ckpt_path=auto, the default under SLURM).
        return f"slurm-{job}" + (f"-{array}" if array else "")
    return time.strftime("%Y-%m-%d/%H-%M-%S")


def register() -> None:
    if not OmegaConf.has_resolver("run_stamp"):
        OmegaConf.register_new_resolver("run_stamp", run_stamp, use_cache=True)
