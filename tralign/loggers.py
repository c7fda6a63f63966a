"""Experiment loggers from ``conf/logger/*``: W&B (offline unless configured online), TensorBoard, CSV, none."""

from __future__ import annotations

import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any


def _wandb_key_configured() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(requested: str) -> str:
    """``auto`` means: what WANDB_MODE says, else online when a W&B key is configured, else offline."""
    if requested != "auto":
        return requested
    env = os.environ.get("WANDB_MODE", "").lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    return "online" if _wandb_key_configured() else "offline"


def build_logger(
    logger_cfg: Mapping[str, Any],
    run_dir: Path,
    *,
    run_name: str,
    group: str | None,
    config: Mapping[str, Any],
) -> Any:
    """A Lightning logger, or None for logger=none."""
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

    name = logger_cfg.get("name", "none")
    if name == "none":
        return None
    if name == "csv":
        return CSVLogger(save_dir=str(run_dir), name="csv", version="")
    if name == "tensorboard":
        return _tensorboard(run_dir, config)
    if name == "wandb":
        logger = WandbLogger(
            project=logger_cfg.get("project") or "tralign",
            entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group") or group,
            name=logger_cfg.get("run_name") or run_name,
            tags=list(logger_cfg.get("tags") or []),
            save_dir=str(run_dir),
            mode=wandb_mode(str(logger_cfg.get("mode", "auto"))),
        )
        from tralign.safety import check_no_secrets

        check_no_secrets(dict(config))  # W&B keeps the config: never a credential in it
        logger.log_hyperparams(dict(config))
        return logger
    raise ValueError(f"logger.name: unknown logger {name!r}; valid: wandb, tensorboard, csv, none")


def _tensorboard(run_dir: Path, config: Mapping[str, Any]) -> Any:
    """TensorBoard event files in ``<run dir>/tensorboard/``, the resolved config as its hparams."""
    from lightning.pytorch.loggers import TensorBoardLogger

    from tralign.errors import TralignError

    try:
        logger = TensorBoardLogger(
            save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False
        )
    except ModuleNotFoundError as err:
        raise TralignError(
            "logger=tensorboard needs the tensorboard package: pip install 'tralign[tensorboard]'"
        ) from err
    logger.log_hyperparams(dict(config))
    return logger


def finish_wandb(failed: bool) -> None:
    """Close the W&B run even when training crashed, so the next job of a sweep starts clean."""
    # Only a process that imported wandb can hold a W&B run: importing it just to look costs ~1 CPU-s
    # per process (every rank of every run, logger=none included).
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish(exit_code=1 if failed else 0)
