"""Training entry point: ``python -m tralign.train [group=option ...] [key=value ...]``.

Compose (Hydra) → validate (tralign.config) → build data, model, module, logger, trainer
(tralign.build) → ``Trainer.fit`` → finish: export the policy, golden evaluation, ``summary.json``
(tralign.finish). Everything a run writes lives in its Hydra run directory.
"""

from __future__ import annotations

import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from tralign.build import build, effective_setup, preflight
from tralign.cli import CONF, CallableModule, api_compose, api_run_dir, run_command, user_errors
from tralign.config import validate
from tralign.ending import ending
from tralign.errors import TralignError, exit_on_user_error
from tralign.finish import finish
from tralign.loggers import finish_wandb

# Lightning and transformers take seconds to import; tralign.build and tralign.finish import them
# inside their functions, after the config is validated, so a typo on the command line is reported
# at once.

__all__ = ["effective_setup", "main", "run"]

log = logging.getLogger("tralign")

# The frozen reference/initial copies are in eval mode on purpose (dropout off).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*litlogger.*")


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one configuration; returns the summary (also written to ``run_dir/summary.json``)."""
    started = time.time()
    validate(cfg)  # before anything expensive: all config problems at once
    ckpt_path = preflight(cfg, run_dir)  # a bad output folder or checkpoint: refused before building
    built = build(cfg, run_dir, ckpt_path)  # data first (bad data fails before the model is built)
    # weights_only: a checkpoint is data, never code (no arbitrary pickles are unpickled).
    built.trainer.fit(built.module, datamodule=built.data, ckpt_path=built.ckpt_path, weights_only=True)
    return finish(cfg, built, run_dir, started)  # closing validation, export, golden evaluation, summary


def _write_failure(err: BaseException) -> None:
    """A failed summary.json in the job's folder, so sweep reports list the job, never drop it."""
    hc = HydraConfig.get()
    path = Path(hc.runtime.output_dir) / "summary.json"
    if not path.exists():  # never overwrite what a run already wrote
        failure = {
            "status": "failed",
            "error": f"{type(err).__name__}: {err}",
            "overrides": list(hc.overrides.task),
        }
        path.write_text(json.dumps(failure, indent=2) + "\n")


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    from tralign.launch import check_launch

    try:
        check_launch(cfg, HydraConfig.get())  # a sweep that would hang stops whole, at its first job
    except TralignError as err:
        exit_on_user_error(err)
    failed = True
    try:
        with user_errors(on_failure=lambda err: _on_failure(err, cfg)):
            summary = run(cfg, Path(HydraConfig.get().runtime.output_dir))
            if "run_dir" in summary:  # rank zero: where everything is, and what the run achieved
                print(ending(summary, Path(summary["run_dir"])))
            failed = False
            # The return value is what Hydra's sweepers optimise: final validation loss.
            return summary["val"].get("val/loss")
    except SystemExit as err:
        from tralign.guards import EXIT_PREEMPTED, is_preemption

        if not is_preemption(err):
            raise
        # SIGTERM/SIGUSR2: PreemptionCheckpoint saved a checkpoint and wrote summary.json (status preempted).
        where, name = getattr(err, "checkpoint", None), getattr(err, "signal_name", "SIGTERM")
        resume = f"resume with ckpt_path={where} (or ckpt_path=auto)" if where else "no checkpoint written"
        print(f"tralign: pre-empted ({name}): {resume}", file=sys.stderr)
        raise SystemExit(EXIT_PREEMPTED) from None
    finally:
        finish_wandb(failed)


def _on_failure(err: BaseException, cfg: DictConfig) -> None:
    """Every failure leaves a failed summary.json; a checkpoint refused by the safe loader
    (weights_only=True: anything but tensors and plain data) is the user's error, in one line."""
    if type(err).__name__ == "UnpicklingError" and cfg.get("ckpt_path"):
        user = TralignError(f"ckpt_path={cfg.ckpt_path}: refused to load: {str(err).strip().splitlines()[0]}")
        _write_failure(user)
        exit_on_user_error(user)
    _write_failure(err)


def main() -> Any:
    """``python -m tralign.train`` and ``tralign-train``: typos are refused before Hydra starts."""
    return run_command(_hydra_main, "train")


def call(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one configuration, as ``tralign-train *overrides``; returns the summary (``summary.json``).

    ``run_dir``: where the run writes; default ``outputs/<date>/<time>_<method>_<ref_update>`` under
    the working directory. Sweeps (``-m``, ``a,b`` values) are the command line's: call this once per
    configuration instead."""
    from tralign import model_card

    cfg = api_compose("train", overrides)
    model_card.API_COMMAND = f"tralign.train(overrides={list(overrides or [])!r})"
    folder = (
        Path(run_dir)
        if run_dir is not None
        else api_run_dir("outputs", f"{cfg.method.name}_{cfg.ref_update}")
    )
    return run(cfg, folder)


# ``from tralign import train; train(overrides=[...])``: the module itself calls :func:`call`.
sys.modules[__name__].__class__ = CallableModule


if __name__ == "__main__":
    main()
