"""Where a tralign step's time goes: data, forward, reference forward, backward, optimizer,
reference update, other.

Timestamps from Lightning's hooks plus two wrapped methods of the module's instance (nothing else
changes, so the timed step is the real one; on CUDA each timestamp synchronises first):

- data: end of the previous step -> ``on_train_batch_start`` (fetch, collate, move to the device);
- forward: ``on_train_batch_start`` -> ``on_before_backward`` minus the reference forward (policy
  forward, LM head, loss, logging calls);
- reference forward: the calls of ``_frozen_logps`` (the reference under ``no_grad``);
- backward: ``on_before_backward`` -> ``on_after_backward``;
- optimizer: ``on_after_backward`` -> return of ``optimizer_step`` (clipping, AdamW, zero_grad);
- reference update: the ``step_reference`` calls (the soft update);
- other: the rest of the step (LR scheduler, loop and hook overhead).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

PHASES = ("data", "forward", "reference_forward", "backward", "optimizer", "reference_update", "other")


class PhaseClock:
    """Collects one dict of phase seconds per step; ``sync`` is called before every timestamp."""

    def __init__(
        self, sync: Callable[[], None] = lambda: None, clock: Callable[[], float] = time.perf_counter
    ):
        self.sync, self.clock = sync, clock
        self.steps: list[dict[str, float]] = []
        self._last_end: float | None = None
        self._marks: dict[str, float] = {}
        self._sums = {"reference_forward": 0.0, "reference_update": 0.0}
        self._update_before_start = 0.0

    def now(self) -> float:
        self.sync()
        return self.clock()

    def mark(self, name: str) -> None:
        self._marks[name] = self.now()
        if name == "start":  # a reference update run after the previous step's end is not data time
            self._update_before_start = self._sums["reference_update"]

    def timed(self, phase: str, fn: Callable) -> Callable:
        def wrapper(*args: Any, **kwargs: Any):
            start = self.now()
            try:
                return fn(*args, **kwargs)
            finally:
                self._sums[phase] += self.now() - start

        return wrapper

    def end_step(self) -> None:
        end = self.now()
        m = self._marks
        if (
            self._last_end is not None
            and {"start", "before_backward", "after_backward", "optimizer"} <= m.keys()
        ):
            phases = {
                "data": m["start"] - self._last_end - self._update_before_start,
                "forward": m["before_backward"] - m["start"] - self._sums["reference_forward"],
                "reference_forward": self._sums["reference_forward"],
                "backward": m["after_backward"] - m["before_backward"],
                "optimizer": m["optimizer"] - m["after_backward"],
                "reference_update": self._sums["reference_update"],
            }
            phases["other"] = (end - self._last_end) - sum(phases.values())
            self.steps.append(phases)
        self._last_end = end
        self._marks = {}
        self._sums = dict.fromkeys(self._sums, 0.0)


def instrument(module: Any, clock: PhaseClock):
    """Wrap the module's reference forward, optimizer step and reference update (on the instance)
    and return the Lightning callback that marks the rest. Add the callback *last*: its batch end
    comes after the module's own reference update."""
    import lightning as L

    module._frozen_logps = clock.timed("reference_forward", module._frozen_logps)
    module.step_reference = clock.timed("reference_update", module.step_reference)
    optimizer_step = module.optimizer_step

    def timed_optimizer_step(*args: Any, **kwargs: Any):
        out = optimizer_step(*args, **kwargs)
        clock.mark("optimizer")
        return out

    module.optimizer_step = timed_optimizer_step

    class PhaseCallback(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            clock.mark("start")

        def on_before_backward(self, trainer, pl_module, loss):
            clock.mark("before_backward")

        def on_after_backward(self, trainer, pl_module):
            clock.mark("after_backward")

    return PhaseCallback()


def summarize_phases(steps: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """Mean seconds per step and share of the summed step time, per phase (steps pooled)."""
    total = sum(sum(s.values()) for s in steps)
    return {
        p: {"mean_s": sum(s[p] for s in steps) / len(steps), "share": sum(s[p] for s in steps) / total}
        for p in PHASES
    }


def breakdown_line(phases: dict[str, dict[str, float]], name: str = "tralign") -> str:
    parts = "  ".join(f"{p.replace('_', ' ')} {100 * v['share']:.0f}%" for p, v in phases.items())
    return f"{name} step breakdown: {parts}"
