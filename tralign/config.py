"""Validate a composed config before anything expensive is built; report every problem at once.

Each problem names the config key (as the user would type it on the command line).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from tralign.data.batch_plan import batch_problems
from tralign.data.sources import ON_BAD_ROWS, SFT_SOURCES, SOURCES, data_kind
from tralign.dtypes import dtype_problems
from tralign.errors import ConfigError
from tralign.lora.config import lora_problems
from tralign.losses import LOSSES
from tralign.losses.registry import DataMode, param_problem, param_problems
from tralign.reference import ReferenceSchedule, schedule_problems
from tralign.safety import check_no_secrets
from tralign.signals import signal_problems
from tralign.strategies import strategy_problems

METHOD_META_KEYS = {"name", "loss", "trust_region"}
SCHEDULES = ("constant", "linear", "cosine")
LOGGER_MODES = ("auto", "online", "offline", "disabled")
GUARD_MODES = ("skip", "stop", "off")


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


def data_mode(cfg: DictConfig) -> DataMode:
    """What the method's loss trains on ("pair", "sft" or "unpaired"): the data's ``mode``."""
    return LOSSES[cfg.method.loss].data_mode


def schedule_from(cfg: DictConfig) -> ReferenceSchedule:
    return ReferenceSchedule(mode=cfg.ref_update, alpha=float(cfg.alpha), tau=int(cfg.tau))


def _positive_int(cfg: DictConfig, key: str, problems: list[str], minimum: int = 1) -> None:
    value = _get(cfg, key, problems)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        problems.append(f"{key}: must be an integer >= {minimum}, got {value!r}")


def _method_problems(cfg: DictConfig) -> list[str]:
    """The loss's parameters (their rules: tralign.losses.registry) under the config keys that set
    them: the top-level ``beta`` (read by every run's summary, so checked for every method) and the
    method's own ``method.<parameter>``; then the method against ``ref_update``."""
    loss = cfg.method.get("loss")
    if loss not in LOSSES:
        return [f"method.loss: unknown loss {loss!r}; valid: {', '.join(sorted(LOSSES))}"]
    beta = param_problem("beta", cfg.get("beta"))
    problems = [beta] if beta else []
    own = {k: v for k, v in cfg.method.items() if k not in METHOD_META_KEYS}
    if "beta" in LOSSES[loss].params:
        own.pop("beta", None)  # the top-level beta is the one the loss gets (loss_params)
    problems += [f"method.{problem}" for problem in param_problems(loss, own)]
    name = cfg.method.get("name")
    if cfg.method.get("trust_region") and cfg.ref_update == "none":
        problems.append(
            f"ref_update=none contradicts method={name}, a Trust Region method (use method={name.removeprefix('tr_')} "
            "for a frozen reference, or ref_update=soft|hard)"
        )
    if not LOSSES[loss].needs_reference and cfg.ref_update != "none":
        problems.append(
            f"ref_update={cfg.ref_update}: method={name} has no reference model (use ref_update=none)"
        )
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
        if value is not None and not Path(str(value)).exists():
            problems.append(f"{key}={value}: no such file or folder")
    if "path" in cfg.data and cfg.data.get("path") is None and not cfg.data.get("hub_id"):
        problems.append("data.path: set a local file or folder (or data.hub_id for a hub dataset)")
    on_bad_rows = cfg.data.get("on_bad_rows", "error")
    if on_bad_rows not in ON_BAD_ROWS:
        problems.append(f"data.on_bad_rows: must be one of {', '.join(ON_BAD_ROWS)}, got {on_bad_rows!r}")
    problems += _kind_problems(cfg, name)
    if cfg.model.get("tokenizer") == "synthetic" and name != "synthetic":
        problems.append(
            f"model.tokenizer=synthetic only knows the synthetic task's words; with data={name} set "
            "model.tokenizer=<folder or hub id> (e.g. a Pythia tokenizer)"
        )
    return problems


def _kind_problems(cfg: DictConfig, name: str) -> list[str]:
    """The rows the data gives (pairs, SFT targets, unpaired) must be what the method trains on."""
    loss = LOSSES.get(cfg.method.get("loss"))
    if loss is None or name not in SOURCES:
        return []
    kind, method = data_kind(cfg.data), cfg.method.get("name")
    given = f"data={name}" + "".join(f" data.{flag}=true" for flag in ("sft", "unpair") if cfg.data.get(flag))
    if cfg.data.get("unpair") and (name in SFT_SOURCES or cfg.data.get("sft")):
        return [f"{given}: unpair needs preference pairs, but this data gives SFT rows"]
    if kind == "sft" and loss.name != "sft":
        return [
            f"{given} gives SFT rows (prompt, completion) with no rejected answer; "
            f"method={method} needs preference pairs (use method=sft)"
        ]
    if kind == "unpaired" and loss.paired:
        return [
            f"{given} gives unpaired rows (prompt, completion, label); method={method} needs pairs "
            "(use method=kto_unpaired or tr_kto_unpaired)"
        ]
    if kind != "unpaired" and not loss.paired:
        return [
            f"method.loss: {loss.name!r} needs unpaired data (prompt, completion, label): use data=unpaired, "
            "or data.unpair=true to split each pair into a desirable and an undesirable row"
        ]
    return []


def validate(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` listing every problem, or return quietly."""
    problems = _method_problems(cfg)
    problems += schedule_problems(cfg.ref_update, cfg.get("alpha"), cfg.get("tau"))
    problems += _data_problems(cfg)
    lr = cfg.optim.get("lr")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
        problems.append(f"optim.lr: must be a number > 0, got {lr!r}")
    if cfg.optim.get("schedule") not in SCHEDULES:
        problems.append(
            f"optim.schedule: must be one of {', '.join(SCHEDULES)}, got {cfg.optim.get('schedule')!r}"
        )
    _positive_int(cfg, "optim.warmup_steps", problems, minimum=0)
    _positive_int(cfg, "trainer.max_steps", problems)
    _positive_int(cfg, "trainer.accumulate_grad_batches", problems)
    _positive_int(cfg, "checkpoint.every_n_steps", problems)
    if cfg.checkpoint.get("keep") is not None:
        _positive_int(cfg, "checkpoint.keep", problems)
    _positive_int(cfg, "seed", problems, minimum=0)
    if cfg.logger.get("name") == "wandb" and cfg.logger.get("mode") not in LOGGER_MODES:
        problems.append(
            f"logger.mode: must be one of {', '.join(LOGGER_MODES)}, got {cfg.logger.get('mode')!r}"
        )
    if cfg.get("ckpt_path") not in (None, "auto", "none") and not Path(str(cfg.ckpt_path)).exists():
        # A file, or a folder (sharded checkpoints are folders, see tralign/checkpoint.py).
        problems.append(f"ckpt_path={cfg.ckpt_path}: no such file or folder")
    problems += strategy_problems(cfg.trainer.get("strategy"), cfg.trainer.get("accelerator"))
    problems += _guard_output_problems(cfg)
    problems += dtype_problems(cfg)  # model.dtype, model.reference_dtype, export.dtype
    problems += signal_problems(OmegaConf.select(cfg, "guard.preemption_signals", default=None))
    problems += batch_problems(cfg)  # data.global_batch_size: cut over the ranks (tralign/data/batch_plan.py)
    problems += _fuzzed_problems(cfg)
    problems += lora_problems(cfg)  # model.lora (tralign/lora/config.py)
    check_no_secrets(cfg, problems)  # its own error: the value must also be redacted from Hydra's files
    if problems:
        raise ConfigError(problems)


def _guard_output_problems(cfg: DictConfig) -> list[str]:
    problems: list[str] = []
    on_nonfinite = OmegaConf.select(cfg, "guard.on_nonfinite", default="skip")
    if on_nonfinite not in GUARD_MODES:
        problems.append(f"guard.on_nonfinite: must be one of {', '.join(GUARD_MODES)}, got {on_nonfinite!r}")
    if "guard" in cfg:
        _positive_int(cfg, "guard.max_consecutive_nonfinite", problems)
    for key in ("guard.preemption_checkpoint", "output.overwrite"):
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{key}: must be true or false, got {value!r}")
    free = OmegaConf.select(cfg, "output.min_free_gb", default=0)
    if isinstance(free, bool) or not isinstance(free, (int, float)) or not 0 <= free < float("inf"):
        problems.append(f"output.min_free_gb: must be a number >= 0, got {free!r}")
    return problems


def _number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _fuzzed_problems(cfg: DictConfig) -> list[str]:
    """Values that passed the checks above but failed deep inside training (found by
    tests/test_fuzz_config.py, see docs/hardening.md)."""
    problems: list[str] = []

    def need(key: str, ok: Any, rule: str, optional: bool = False) -> None:
        if OmegaConf.select(cfg, key, default="<absent>") == "<absent>":
            return
        value = _get(cfg, key, problems)
        if optional and value is None:
            return
        try:
            good = bool(ok(value))
        except (TypeError, ValueError):
            good = False
        if not good:
            problems.append(f"{key}: must be {rule}, got {value!r}")

    need("optim.lr", lambda v: not _number(v) or v <= 10, "a number in (0, 10] (AdamW)")
    need("optim.weight_decay", lambda v: _number(v) and v >= 0, "a number >= 0")
    need("optim.eps", lambda v: _number(v) and v > 0, "a number > 0")
    need(
        "optim.betas",
        lambda v: len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v),
        "two numbers in [0, 1), e.g. [0.9, 0.95]",
    )
    need("data.num_workers", lambda v: _int(v) and v >= 0, "an integer >= 0")
    for key in ("data.group_by_length", "data.cache", "data.unpair", "export.policy", "export.reference"):
        need(key, lambda v: isinstance(v, bool), "true or false")
    for key in (
        "data.golden_eval.n_prompts",
        "data.golden_eval.max_new_tokens",
        "data.golden_eval.batch_size",
    ):
        need(key, lambda v: _int(v) and v >= 1, "an integer >= 1")
    for key in ("data.golden_eval.temperature", "data.golden_eval.top_p"):
        need(key, lambda v: _number(v) and v > 0, "a number > 0")
    if cfg.data.get("name") == "synthetic":
        for key in ("data.n_train", "data.n_val"):
            need(key, lambda v: _int(v) and v >= 1, "an integer >= 1")
        problems += _synthetic_task_problems(cfg)
    need(
        "trainer.gradient_clip_val",
        lambda v: _number(v) and v >= 0,
        "a number >= 0 or null",
        optional=True,
    )
    need(
        "trainer.val_check_interval",
        lambda v: (_int(v) and v >= 1) or (_number(v) and 0 < v <= 1),
        "an integer >= 1 (batches) or a fraction in (0, 1] of an epoch",
        optional=True,
    )
    if not cfg.model.get("name_or_path") and not cfg.model.get("init_from"):
        problems += _tiny_model_problems(cfg)
    return problems


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _synthetic_task_problems(cfg: DictConfig) -> list[str]:
    from tralign.data.synthetic import SyntheticTask

    task = cfg.data.get("task")
    if not OmegaConf.is_dict(task):
        return [f"data.task: must be the synthetic task's settings, got {task!r}"]
    ints = ("seed", "n_words", "n_keys", "min_len", "max_len")
    bad = [f"data.task.{k}: must be an integer, got {task.get(k)!r}" for k in ints if not _int(task.get(k))]
    if not _number(task.get("label_temperature")):
        bad.append(
            f"data.task.label_temperature: must be a finite number, got {task.get('label_temperature')!r}"
        )
    if bad:
        return bad
    try:
        SyntheticTask(**OmegaConf.to_container(task))
    except (TypeError, ValueError) as err:
        return [f"data.task: {err}"]
    return []


def _tiny_model_problems(cfg: DictConfig) -> list[str]:
    """A model built from ``model.config`` (GPTNeoXConfig keyword arguments)."""
    conf = cfg.model.get("config") or {}
    problems = [
        f"model.config.{key}: must be an integer >= 1, got {conf.get(key)!r}"
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        if key in conf and not (_int(conf.get(key)) and conf.get(key) >= 1)
    ]
    hidden, heads = conf.get("hidden_size"), conf.get("num_attention_heads")
    if not problems and _int(hidden) and _int(heads) and hidden % heads:
        problems.append(
            f"model.config.hidden_size ({hidden}) must be a multiple of model.config.num_attention_heads ({heads})"
        )
    return problems
