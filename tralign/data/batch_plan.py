"""The global batch and how it is cut: the one owner of the rule linking ``data.global_batch_size``,
``data.batch_size`` and ``trainer.accumulate_grad_batches``.

An experiment is defined by its *global* batch G (rows per optimizer step, all ranks together): the
learning rate, warm-up and ``trainer.max_steps`` of a preset are tuned for it. How G is cut is a
property of the machine: W ranks (``trainer.devices`` x ``trainer.num_nodes``), each running A
micro-batches of M rows per optimizer step, G = M x A x W.

- ``data.global_batch_size`` set: M and A are derived. Each rank's share G / W must be whole (else
  refused in one line); M is its largest divisor not above ``data.batch_size`` (the per-device
  memory cap) and A = G / (W x M). ``trainer.accumulate_grad_batches`` is then derived and must be
  left at 1.
- ``data.global_batch_size: null`` (the default outside the presets): M = ``data.batch_size``,
  A = ``trainer.accumulate_grad_batches``, and G = M x A x W follows from the world size, as before.

The training sampler keys its batches on (seed, epoch, G) alone (tralign/data/sampler.py), so runs
with the same G on any number of ranks train on the same rows, step for step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tralign.errors import ConfigError


@dataclass(frozen=True)
class BatchPlan:
    global_batch: int  # rows per optimizer step, all ranks together
    micro_batch: int  # rows per device per forward/backward
    accumulate: int  # micro-batches per optimizer step
    world: int  # data-parallel ranks

    def summary(self) -> dict[str, int]:
        return {
            "global_batch_size": self.global_batch,
            "micro_batch_size": self.micro_batch,
            "accumulate_grad_batches": self.accumulate,
            "world_size": self.world,
        }


def plan_batches(global_batch: int | None, micro_cap: int, accumulate: int, world: int) -> BatchPlan:
    """The cut of ``global_batch`` over ``world`` ranks (see the module docstring); raises
    :class:`ConfigError` (one line naming the key) when it cannot be cut."""
    if global_batch is None:
        return BatchPlan(micro_cap * accumulate * world, micro_cap, accumulate, world)
    if accumulate != 1:
        raise ConfigError(
            [
                f"trainer.accumulate_grad_batches={accumulate}: derived from data.global_batch_size; leave "
                "it at 1 and cap the per-device micro-batch with data.batch_size"
            ]
        )
    if global_batch % world:
        raise ConfigError(
            [
                f"data.global_batch_size={global_batch} does not divide over {world} ranks "
                f"(trainer.devices x trainer.num_nodes); use a multiple of {world}"
            ]
        )
    share = global_batch // world
    micro = max(m for m in range(1, min(micro_cap, share) + 1) if share % m == 0)
    return BatchPlan(global_batch, micro, share // micro, world)


def world_from_trainer(trainer_cfg: Any) -> int | None:
    """Data-parallel ranks the trainer config asks for (``devices`` x ``num_nodes``); None when
    ``devices`` is ``auto``/-1 on an accelerator whose count is only known at run time."""
    devices, nodes = trainer_cfg.get("devices", 1), int(trainer_cfg.get("num_nodes", 1) or 1)
    if isinstance(devices, str) and devices.strip().lstrip("-").isdigit():
        devices = int(devices)
    if isinstance(devices, (list, tuple)) or (hasattr(devices, "__len__") and not isinstance(devices, str)):
        return len(devices) * nodes
    if isinstance(devices, int) and devices > 0:
        return devices * nodes
    if str(trainer_cfg.get("accelerator", "auto")) == "cpu":
        return nodes  # Lightning's "auto" on CPU is one process per node
    return None


def plan_from_cfg(cfg: Any, world: int | None = None) -> BatchPlan:
    """The plan of a composed config; ``world`` overrides the trainer config's count (e.g. the
    GPUs that ``devices: auto`` found)."""
    world = world if world is not None else world_from_trainer(cfg.trainer)
    if world is None:
        import torch

        world = max(torch.cuda.device_count(), 1) * int(cfg.trainer.get("num_nodes", 1) or 1)
    global_batch = cfg.data.get("global_batch_size")
    return plan_batches(
        None if global_batch is None else int(global_batch),
        int(cfg.data.batch_size),
        int(cfg.trainer.get("accumulate_grad_batches", 1) or 1),
        world,
    )


def batch_problems(cfg: Any) -> list[str]:
    """For ``tralign.config.validate``: the plan's refusal, if any (other checks cover the types)."""
    value = cfg.data.get("global_batch_size")
    if value is None:
        return []
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        return [f"data.global_batch_size: must be an integer >= 1 or null, got {value!r}"]
    try:
        plan_from_cfg(cfg)
    except ConfigError as err:
        return err.problems
    except (TypeError, ValueError):
        return []  # a malformed batch_size/devices is reported by its own check
    return []


def confirm_world(plan: BatchPlan, world: int, global_batch_set: bool) -> BatchPlan:
    """``plan`` checked against the ranks Lightning really runs (``trainer.world_size``): a fixed
    global batch cut for another count is refused; otherwise the global batch follows the world."""
    if world == plan.world:
        return plan
    if global_batch_set:
        raise ConfigError(
            [
                f"data.global_batch_size={plan.global_batch} was cut for {plan.world} ranks "
                f"(trainer.devices x trainer.num_nodes), but the launch runs {world}; set them to match"
            ]
        )
    return plan_batches(None, plan.micro_batch, plan.accumulate, world)
