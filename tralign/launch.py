"""Launch mistakes refused before anything is built.

Hydra multirun (``-m``) with a local multi-device run hangs: Lightning starts each extra rank by
re-running the whole command line, so every rank walks the sweep on its own and the ranks of one
job never meet. Multi-device sweeps run one launch per job instead: ``sweeps/print_jobs.py`` prints
them (for torchrun/srun), or ``hydra/launcher=tralign_slurm`` submits one SLURM job per point.
"""

from __future__ import annotations

from typing import Any

# Launchers that start every rank of a job themselves (one SLURM task per rank): Lightning spawns nothing.
CLUSTER_LAUNCHERS = ("hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher",)


def device_count(devices: Any, accelerator: Any) -> int:
    """How many devices per node ``trainer.devices`` asks for (``auto``/-1: all visible GPUs, one CPU)."""
    if isinstance(devices, list | tuple):
        return len(devices)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, int) and devices >= 0:
        return devices
    if accelerator == "cpu":
        return 1  # Lightning's "auto" on CPU
    import torch

    return max(1, torch.cuda.device_count())


def multirun_problem(
    mode: str, launcher: str | None, devices: Any, num_nodes: Any, accelerator: Any
) -> str | None:
    """One line when a Hydra multirun would start several ranks per job with no cluster launcher."""
    if mode != "MULTIRUN" or launcher in CLUSTER_LAUNCHERS:
        return None
    n_devices, n_nodes = device_count(devices, accelerator), int(num_nodes or 1)
    if n_devices <= 1 and n_nodes <= 1:
        return None
    return (
        f"-m (Hydra multirun) with trainer.devices={devices} trainer.num_nodes={num_nodes}: Lightning would "
        "restart every rank with the whole sweep and the jobs hang; run one launch per job "
        "(python sweeps/print_jobs.py SWEEP prints them) or submit with hydra/launcher=tralign_slurm"
    )


def check_launch(cfg: Any, hydra_cfg: Any) -> None:
    """Raise ConfigError for a launch that cannot work (see :func:`multirun_problem`)."""
    from tralign.errors import ConfigError

    launcher = hydra_cfg.launcher.get("_target_") if hydra_cfg.get("launcher") else None
    problem = multirun_problem(
        hydra_cfg.mode.name,
        launcher,
        cfg.trainer.get("devices", 1),
        cfg.trainer.get("num_nodes", 1),
        cfg.trainer.get("accelerator"),
    )
    if problem:
        raise ConfigError([problem])
