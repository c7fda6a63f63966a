"""Validate a composed config before anything expensive is built; report every problem at once.

Each problem names the config key (as the user would type it on the command line).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tralign.data.sources import SOURCES
from tralign.errors import ConfigError
from tralign.losses import LOSSES, check_loss_params
from tralign.reference import ReferenceSchedule, schedule_problems

METHOD_META_KEYS = {"name", "loss", "trust_region"}
SCHEDULES = ("constant", "linear", "cosine")
LOGGER_MODES = ("auto", "online", "offline", "disabled")


def _get(cfg: DictConfig, key: str, problems: list[str]) -> Any:
    """The value at a dotted key, or None with a problem recorded when missing (``???``)."""
    try:
        return OmegaConf.select(cfg, key, default=None, throw_on_missing=True)
    except MissingMandatoryValue:
        problems.append(f"{key}: required but not set (add {key}=...)")
        return None


def loss_params(cfg: DictConfig) -> dict[str, Any]:
    """The keyword parameters of the method's loss: β plus the method's own knobs."""
    spec = LOSSES[cfg.method.loss]
    params = {k: v for k, v in cfg.method.items() if k not in METHOD_META_KEYS}
    if "beta" in spec.params:
        params["beta"] = cfg.beta
    return params


def schedule_from(cfg: DictConfig) -> ReferenceSchedule:
    return ReferenceSchedule(mode=cfg.ref_update, alpha=float(cfg.alpha), tau=int(cfg.tau))


def _positive_int(cfg: DictConfig, key: str, problems: list[str], minimum: int = 1) -> None:
    value = _get(cfg, key, problems)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        problems.append(f"{key}: must be an integer >= {minimum}, got {value!r}")


def _method_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    loss = cfg.method.get("loss")
    if loss not in LOSSES:
        return [f"method.loss: unknown loss {loss!r}; valid: {', '.join(sorted(LOSSES))}"]
    if not LOSSES[loss].paired:
        problems.append(f"method.loss: {loss!r} needs unpaired data, which this data pipeline does not provide yet")
    params = {k: v for k, v in cfg.method.items() if k not in METHOD_META_KEYS}
    params["beta"] = cfg.get("beta")
    if "beta" not in LOSSES[loss].params:
        params.pop("beta")
    problems += [p.replace(f"loss {loss!r}: ", "method.").replace("method.beta", "beta") for p in check_loss_params(loss, params)]
    name = cfg.method.get("name")
    if cfg.method.get("trust_region") and cfg.ref_update == "none":
        problems.append(
            f"ref_update=none contradicts method={name}, a Trust Region method (use method={name.removeprefix('tr_')} "
            "for a frozen reference, or ref_update=soft|hard)"
        )
    if not LOSSES[loss].needs_reference and cfg.ref_update != "none":
        problems.append(f"ref_update={cfg.ref_update}: method={name} has no reference model (use ref_update=none)")
    return problems


def _data_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    name = cfg.data.get("name")
    if name not in SOURCES:
        problems.append(f"data.name: unknown source {name!r}; valid: {', '.join(sorted(SOURCES))}")
    for key in ("data.batch_size", "data.eval_batch_size", "data.max_length", "data.max_prompt_length"):
        _positive_int(cfg, key, problems)
    max_len, max_prompt = cfg.data.get("max_length"), cfg.data.get("max_prompt_length")
    if isinstance(max_len, int) and isinstance(max_prompt, int) and not max_prompt < max_len:
        problems.append(f"data.max_prompt_length ({max_prompt}) must be < data.max_length ({max_len})")
    for key in ("data.path", "data.val_path"):
        value = _get(cfg, key, problems)
        if value is not None and not Path(str(value)).is_file():
            problems.append(f"{key}={value}: no such file")
    if cfg.model.get("tokenizer") == "synthetic" and name != "synthetic":
        problems.append(
            f"model.tokenizer=synthetic only knows the synthetic task's words; with data={name} set "
            "model.tokenizer=<folder or hub id> (e.g. a Pythia tokenizer)"
        )
    return problems


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem, or return quietly."""
    problems = _method_problems(cfg)
    problems += schedule_problems(cfg.ref_update, cfg.get("alpha"), cfg.get("tau"))
    problems += _data_problems(cfg)
    lr = cfg.optim.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        problems.append(f"optim.lr: must be a number > 0, got {lr!r}")
    if cfg.optim.get("schedule") not in SCHEDULES:
        problems.append(f"optim.schedule: must be one of {', '.join(SCHEDULES)}, got {cfg.optim.get('schedule')!r}")
    _positive_int(cfg, "optim.warmup_steps", problems, minimum=0)
    _positive_int(cfg, "trainer.max_steps", problems)
    _positive_int(cfg, "trainer.accumulate_grad_batches", problems)
    _positive_int(cfg, "checkpoint.every_n_steps", problems)
    _positive_int(cfg, "seed", problems, minimum=0)
    if cfg.logger.get("name") == "wandb" and cfg.logger.get("mode") not in LOGGER_MODES:
        problems.append(f"logger.mode: must be one of {', '.join(LOGGER_MODES)}, got {cfg.logger.get('mode')!r}")
    if cfg.get("ckpt_path") and not Path(str(cfg.ckpt_path)).is_file():
        problems.append(f"ckpt_path={cfg.ckpt_path}: no such file")
    if problems:
        raise ConfigError(problems)
