"""Lightning callbacks the guard tests inject into a run (through ``tralign.guards.guard_callbacks``)."""

from __future__ import annotations

import lightning as L
import pytest

import tralign.guards as guards


class PoisonGradients(L.Callback):
    """Makes the gradients of the given optimizer steps (1-based) NaN, as an overflow would."""

    def __init__(self, steps: set[int], param_index: int = 0):
        self.steps, self.param_index = steps, param_index

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step + 1 in self.steps:
            grad = list(pl_module.policy.parameters())[self.param_index].grad
            grad.view(-1)[0] = float("nan")


def with_callbacks(monkeypatch: pytest.MonkeyPatch, *extra: L.Callback) -> None:
    """Run ``extra`` before tralign's own guard callbacks in every run this test starts."""
    original = guards.guard_callbacks
    monkeypatch.setattr(guards, "guard_callbacks", lambda cfg: [*extra, *original(cfg)])
