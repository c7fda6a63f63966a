"""The reference moves in one place: ``ReferenceUpdate.on_train_batch_end``, once per micro-batch,
after the non-finite guard and before every checkpoint; the optimizer-step clock (finished, applied
or skipped) is decided once, in ``AlignmentModule.optimizer_step``, and read by everyone else."""

from __future__ import annotations

import warnings

import lightning as L
import torch
from helpers.config import compose_cfg
from helpers.models import tiny_neox
from torch.utils.data import DataLoader

import tralign.module as module_mod
from tralign.build import _callbacks
from tralign.checkpoint import AtomicCheckpoint
from tralign.guards import NonFiniteGuard, PreemptionCheckpoint
from tralign.module import AlignmentModule, ReferenceUpdate
from tralign.reference import ReferenceSchedule

ACCUM, STEPS = 3, 4


def _batches(n: int) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(4, 8, dtype=torch.bool)
    mask[:, 4:] = True
    return [
        {
            "input_ids": torch.randint(0, 32, (4, 8), generator=gen),
            "attention_mask": torch.ones(4, 8, dtype=torch.long),
            "loss_mask": mask.clone(),
        }
        for _ in range(n)
    ]


class Clock(L.Callback):
    """Per micro-batch: did it finish an optimizer step, and how often did step_reference run
    (counted until the next micro-batch starts, or training ends: the later hooks included)."""

    def __init__(self, module: AlignmentModule):
        self.finished: list[bool] = []
        self.calls: list[int] = []
        real = module.step_reference

        def counted() -> None:
            self.calls[-1] += 1
            real()

        module.step_reference = counted

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.calls.append(0)

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        self.finished.append(pl_module.step_finished)


def test_step_reference_runs_once_per_micro_batch_and_updates_once_per_tau(monkeypatch) -> None:
    module = AlignmentModule(
        tiny_neox(0),
        loss="dpo",
        loss_params={"beta": 0.1},
        schedule=ReferenceSchedule("hard", 1.0, 2),
        optim={"lr": 1e-2},
        max_steps=STEPS,
    )
    updates: list[int] = []
    real = module_mod.update_reference_
    monkeypatch.setattr(
        module_mod,
        "update_reference_",
        lambda ref, pol, alpha: (updates.append(module.trainer.global_step), real(ref, pol, alpha)),
    )
    clock = Clock(module)
    trainer = L.Trainer(
        max_steps=STEPS,
        accumulate_grad_batches=ACCUM,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        num_sanity_val_steps=0,
        limit_val_batches=0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loader = DataLoader(_batches(ACCUM * STEPS), batch_size=None, shuffle=False)
        trainer.fit(module, train_dataloaders=loader)
    # A bare Trainer gets ReferenceUpdate from the module: every micro-batch calls step_reference
    # exactly once, and the clock says which micro-batches completed an optimizer step.
    assert [type(cb) for cb in trainer.callbacks].count(ReferenceUpdate) == 1
    assert clock.calls == [1] * (ACCUM * STEPS)
    assert clock.finished == [i % ACCUM == ACCUM - 1 for i in range(ACCUM * STEPS)]
    assert updates == [2, 4] and module.ref_updates == 2 and module.applied_steps == STEPS


def test_step_reference_is_called_by_nothing_but_reference_update() -> None:
    # The old layout had the module's own on_train_batch_end, a checkpoint-ordering callback and
    # both guards call it: four triggers kept in step by an idempotence counter.
    assert "on_train_batch_end" not in vars(AlignmentModule)
    for guard in (NonFiniteGuard, PreemptionCheckpoint):
        assert not hasattr(guard(), "_seen_step")


def test_run_orders_guard_then_reference_update_then_what_saves(tmp_path) -> None:
    cfg = compose_cfg([])
    kinds = [type(cb) for cb in _callbacks(cfg, tmp_path, with_logger=False)]
    order = [k for k in kinds if k in (NonFiniteGuard, ReferenceUpdate, PreemptionCheckpoint)]
    assert order == [NonFiniteGuard, ReferenceUpdate, PreemptionCheckpoint]
    assert AtomicCheckpoint in kinds  # Lightning moves it after all of them
    off = compose_cfg(["guard.on_nonfinite=off"])
    kinds = [type(cb) for cb in _callbacks(off, tmp_path, with_logger=False)]
    assert kinds.index(ReferenceUpdate) < kinds.index(PreemptionCheckpoint)
