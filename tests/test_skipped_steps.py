"""τ counts applied optimizer steps: a step the non-finite guard skips moves no reference and does
not count toward the next update, and the applied-step clock survives a resume."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.callbacks import PoisonGradients, with_callbacks
from helpers.config import compose_cfg
from helpers.models import tiny_neox
from safetensors.torch import load_file

from tralign.checkpoint import checkpoint_name
from tralign.module import AlignmentModule
from tralign.reference import ReferenceSchedule
from tralign.train import run


class Weights(L.Callback):
    """Policy and reference weights after every optimizer step (taken when the next one starts,
    or when training ends: after the step's reference update has run)."""

    def __init__(self):
        self.policy: dict[int, torch.Tensor] = {}
        self.reference: dict[int, torch.Tensor] = {}
        self.logged: dict[str, float] = {}

    def _take(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        for store, model in ((self.policy, pl_module.policy), (self.reference, pl_module.reference)):
            store[step] = torch.cat([p.detach().flatten() for p in model.parameters()]).clone()

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._take(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self._take(trainer, pl_module)
        self.logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("ref/")}

    def reference_moved(self) -> list[int]:
        """The optimizer steps (1-based) during which the reference changed."""
        last = max(self.reference)
        return [s for s in range(1, last + 1) if not torch.equal(self.reference[s - 1], self.reference[s])]


@pytest.mark.slow
@pytest.mark.e2e
def test_hard_update_waits_for_tau_applied_steps_and_resumes_exactly(monkeypatch, tmp_path):
    # Step 2 is skipped, so the applied steps are 1, 3, 4, 5: with τ = 2 the reference is copied
    # after global steps 3 and 5 (counting global steps would copy after 2, an unchanged policy).
    weights = Weights()
    with_callbacks(monkeypatch, PoisonGradients({2}), weights)
    common = [
        "ref_update=hard",
        "tau=2",
        "trainer.max_steps=5",
        "checkpoint.every_n_steps=1",
        "export.reference=true",
    ]
    whole = tmp_path / "whole"
    summary = run(compose_cfg(common), whole)
    assert summary["global_step"] == 5 and summary["train"]["train/skipped_steps"] == 1
    assert weights.reference_moved() == [3, 5]
    assert torch.equal(weights.reference[3], weights.policy[3])
    assert summary["ref_updates"] == 2 and summary["applied_steps"] == 4
    assert weights.logged == {"ref/updates": 2.0, "ref/applied_steps": 4.0}
    saved = torch.load(whole / "checkpoints" / checkpoint_name(2), map_location="cpu", weights_only=True)
    assert saved["tralign"] == {"ref_updates": 0, "applied_steps": 1}

    # Resumed after the skipped step, the run makes the same updates at the same steps.
    resumed = tmp_path / "resumed"
    ckpt = whole / "checkpoints" / checkpoint_name(2)
    again = run(compose_cfg([*common, f"ckpt_path='{ckpt}'"]), resumed)
    assert (again["ref_updates"], again["applied_steps"]) == (2, 4)
    for part in ("policy", "reference"):
        a, b = (_exported(d / part) for d in (whole, resumed))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part


@pytest.mark.slow
@pytest.mark.e2e
def test_soft_update_skips_the_skipped_step(monkeypatch, tmp_path):
    # τ = 1: every applied step mixes the policy in; the skipped step 2 must not mix in the
    # unchanged policy a second time.
    weights = Weights()
    with_callbacks(monkeypatch, PoisonGradients({2}), weights)
    summary = run(compose_cfg(["ref_update=soft", "alpha=0.5", "trainer.max_steps=4"]), tmp_path)
    assert weights.reference_moved() == [1, 3, 4]
    assert (summary["ref_updates"], summary["applied_steps"]) == (3, 3)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["applied_steps"] == 3


def test_the_clock_is_carried_in_checkpoints_and_old_ones_fall_back_to_global_step():
    module = AlignmentModule(
        tiny_neox(), loss="dpo", loss_params={"beta": 0.1}, schedule=ReferenceSchedule("hard", 1.0, 2),
        optim={"lr": 1e-3}, max_steps=10,
    )  # fmt: skip
    module.ref_updates, module.applied_steps = 3, 6
    checkpoint: dict = {"global_step": 9}
    module.on_save_checkpoint(checkpoint)
    other = AlignmentModule(
        tiny_neox(), loss="dpo", loss_params={"beta": 0.1}, schedule=ReferenceSchedule("hard", 1.0, 2),
        optim={"lr": 1e-3}, max_steps=10,
    )  # fmt: skip
    other.on_load_checkpoint(checkpoint)
    assert (other.ref_updates, other.applied_steps) == (3, 6)
    other.on_load_checkpoint({"global_step": 9, "tralign": {"ref_updates": 4}})  # written before the clock
    assert (other.ref_updates, other.applied_steps) == (4, 9)


def _exported(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "model.safetensors")
