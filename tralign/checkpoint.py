"""Checkpoints a kill cannot corrupt: ``checkpoints/step-00000N.ckpt`` every ``checkpoint.every_n_steps``
optimizer steps and at the end, plus ``last.ckpt`` (a link to the newest).

Every checkpoint is first written as ``<name>.partial`` (a file, or a folder for sharded
strategies) and renamed into place only once all ranks have finished writing, so a run killed
in the middle of a save leaves the previous checkpoints intact and loadable; the leftover
``.partial`` is never mistaken for a checkpoint. ``last.ckpt`` is a symbolic link, so the newest
state is written once, not twice (a 6.9B policy with its reference and AdamW states is ~110 GB:
16 bytes per parameter, 20 with a kept starting copy; see safety.checkpoint_bytes).

Names hold no ``=``, so a checkpoint's path pastes into ``ckpt_path=`` unquoted; the ``step=N.ckpt``
names of earlier versions still load and resume (``newest_checkpoint`` reads both).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from tralign.ckpt_names import checkpoint_name, periodic_checkpoints  # noqa: F401  (checkpoint_name re-exported)
from tralign.errors import TralignError

PARTIAL = ".partial"
log = logging.getLogger("tralign")


AUTO, NONE = "auto", "none"


def resolve_ckpt_path(
    value: str | os.PathLike[str] | None,
    run_dir: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] = os.environ,
) -> str | None:
    """The checkpoint ``ckpt_path`` names, or None to start fresh:

    - a checkpoint (file, or a sharded checkpoint's folder);
    - a run folder: its newest checkpoint (highest step, pre-emption checkpoints included);
    - ``auto``: ``run_dir``'s newest checkpoint, or None when it has none. The same command started
      again in the same folder continues the run;
    - ``null`` (the default): ``auto`` under SLURM (``SLURM_JOB_ID`` set), so a job that SLURM or
      submitit requeues after a pre-emption resumes by itself; elsewhere None;
    - ``none``: start fresh, even under SLURM.
    """
    if value is None:
        value = AUTO if environ.get("SLURM_JOB_ID") else None
    if not value or str(value) == NONE:
        return None
    if str(value) == AUTO:
        newest = newest_checkpoint(Path(run_dir) / "checkpoints") if run_dir is not None else None
        log.info(
            "ckpt_path=auto: %s", f"resuming from {newest}" if newest else "no checkpoint, starting fresh"
        )
        return str(newest) if newest is not None else None
    path = Path(value)
    newest = newest_checkpoint(path / "checkpoints") if path.is_dir() else None
    if newest is not None:
        return str(newest)
    if path.is_dir() and not (path / "meta.pt").exists() and not (path / ".metadata").exists():
        raise TralignError(
            f"ckpt_path={value}: neither a checkpoint nor a run folder with checkpoints/last.ckpt"
        )
    return str(path)


# Keys a continued run may change: where it resumes from, the folder checks, and how far it goes.
_MAY_DIFFER = ("ckpt_path", "output.", "trainer.max_steps")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def check_same_run(run_dir: str | os.PathLike[str], resolved: dict[str, Any]) -> None:
    """``ckpt_path=auto`` continues the run of ``run_dir`` only with that run's config (its
    ``config_resolved.yaml``); another config in the same folder (two sweep points started in
    one SLURM allocation, say) is refused in one line instead of silently resuming the other's."""
    saved_path = Path(run_dir) / "config_resolved.yaml"
    if not saved_path.is_file():
        return
    import yaml

    saved, now = _flat(yaml.safe_load(saved_path.read_text()) or {}), _flat(resolved)
    differ = [
        k
        for k in sorted(set(saved) | set(now))
        if not k.startswith(_MAY_DIFFER) and saved.get(k, "<unset>") != now.get(k, "<unset>")
    ]
    if differ:
        shown = ", ".join(
            f"{k}: {saved.get(k, '<unset>')!r} there, {now.get(k, '<unset>')!r} now" for k in differ[:3]
        )
        raise TralignError(
            f"ckpt_path=auto: {run_dir} holds a run with another config ({shown}"
            f"{' ...' if len(differ) > 3 else ''}); continue it with its own config, or use a fresh hydra.run.dir"
        )


def replace_path(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Move ``src`` (file or folder) to ``dst``, replacing whatever is there.

    A file replaces a file atomically (``os.replace``). A folder cannot be renamed over a non-empty
    folder, so the old one is first moved aside and deleted afterwards: at every instant either the
    old or the new checkpoint is complete under some name.
    """
    src, dst = Path(src), Path(dst)
    if dst.is_dir() and not dst.is_symlink():
        aside = dst.with_name(dst.name + ".old")
        if aside.exists():
            shutil.rmtree(aside)
        dst.rename(aside)
        src.rename(dst)
        shutil.rmtree(aside)
    else:
        os.replace(src, dst)


_STEP = re.compile(r"step[-=]?(\d+)")


def newest_checkpoint(folder: Path) -> Path | None:
    """The checkpoint of the highest optimizer step in ``folder``: periodic (``step-00000N.ckpt``, or ``step=N.ckpt`` from earlier versions),
    pre-emption (``preempt-stepN.ckpt``) or non-finite stop (``nonfinite-stepN.ckpt``); unfinished
    ``.partial`` writes and the ``last.ckpt`` link are skipped. None when there is none."""
    if not folder.is_dir():
        return None
    found = []
    for entry in folder.iterdir():
        match = _STEP.search(entry.name)
        if match and entry.name.endswith(".ckpt") and not entry.is_symlink():
            found.append((int(match.group(1)), entry.stat().st_mtime, entry))
    return max(found)[2] if found else None


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


class AtomicCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint with write-then-rename saves and a save at the end of training."""

    def __init__(
        self,
        dirpath: str | os.PathLike[str],
        every_n_steps: int,
        save_last: bool = True,
        keep: int | None = None,
    ):
        super().__init__(
            dirpath=dirpath,
            filename="step-{step:06d}",  # -> step-000040.ckpt: no "=" to quote on the command line
            auto_insert_metric_name=False,
            every_n_train_steps=every_n_steps,
            save_top_k=-1,
            save_last="link" if save_last else False,
        )
        self.keep = keep  # None: every periodic checkpoint; k: the k newest, older ones deleted

    def _save_checkpoint(self, trainer: L.Trainer, filepath: str) -> None:
        partial = Path(filepath + PARTIAL)
        if trainer.is_global_zero:
            _remove(partial)  # a leftover of a killed save
        trainer.strategy.barrier("tralign-checkpoint-start")
        trainer.save_checkpoint(partial, self.save_weights_only)
        trainer.strategy.barrier("tralign-checkpoint-written")  # every rank's shard is on disk
        if trainer.is_global_zero:
            replace_path(partial, filepath)
            self._prune(Path(filepath).parent, trainer.ckpt_path)
        trainer.strategy.barrier("tralign-checkpoint-renamed")
        self._save_checkpoint_bookkeeping(trainer, filepath)

    def _prune(self, folder: Path, resumed_from: str | None) -> None:
        """Delete periodic checkpoints beyond the ``keep`` newest (never the one this run resumed from)."""
        if self.keep is None:
            return
        periodic = list(periodic_checkpoints(folder).items())
        keep_from = resumed_from and Path(resumed_from).resolve()
        for _, entry in periodic[: -self.keep]:
            if entry.resolve() != keep_from:
                _remove(entry)

    def _save_checkpoint_bookkeeping(self, trainer: L.Trainer, filepath: str) -> None:
        # What ModelCheckpoint._save_checkpoint does after writing (Lightning 2.6).
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(self)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final state, unless the last periodic save already holds it."""
        if trainer.global_step == self._last_global_step_saved or trainer.global_step == 0:
            return
        candidates = self._monitor_candidates(trainer)
        self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)
