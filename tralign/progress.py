"""A progress bar that counts what a run is measured in: optimizer steps out of ``trainer.max_steps``.

Lightning's bar counts micro-batches per epoch, and a run bounded by steps (``max_epochs: -1``)
showed "Epoch 7/-2"; with gradient accumulation its count was not the steps either.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import _update_n


class StepProgressBar(TQDMProgressBar):
    """``steps 40/1000 [...] loss=...``: one bar for the whole run, resumed runs starting where they left off."""

    @property
    def train_description(self) -> str:
        return "steps"

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.train_progress_bar = self.init_train_tqdm()
        bar = self.train_progress_bar
        bar.reset(total=int(trainer.max_steps))
        bar.set_description("steps")
        _update_n(bar, int(trainer.global_step))

    def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
        pass  # one bar over epochs: the run ends at max_steps, not at an epoch's end

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step, bar = int(trainer.global_step), self.train_progress_bar
        if bar is not None and step != bar.n and self._should_update(step, bar.total):
            _update_n(bar, step)
            bar.set_postfix(self.get_metrics(trainer, pl_module))

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if not self.train_progress_bar.disable:
            self.train_progress_bar.set_postfix(self.get_metrics(trainer, pl_module))

    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)  # the logger's version number means nothing here
        return metrics
