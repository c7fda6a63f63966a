"""After ``Trainer.fit``: gather sharded weights, the closing validation, the export of the policy
(and reference), the golden evaluation and ``summary.json``. :func:`finish` returns the summary."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from tralign.build import Run
from tralign.config import loss_params
from tralign.lora.adapters import is_lora
from tralign.lora.export import export_lora
from tralign.lora.params import param_counts
from tralign.model_card import write_model_card

log = logging.getLogger("tralign")


def finish(cfg: DictConfig, run: Run, run_dir: Path, started: float) -> dict[str, Any]:
    """The run's summary (written to ``run_dir/summary.json`` by rank 0, with the exports)."""
    module, trainer = run.module, run.trainer
    train_metrics = _floats(dict(trainer.callback_metrics), "train/")
    # Gather sharded weights into whole models (rank 0) while the fit's wrapping is in place:
    # trainer.validate re-connects the strategy. A collective: every rank takes part.
    names = ["policy"] + (["reference"] if cfg.export.reference and module.reference is not None else [])
    wholes = _whole_models(module, trainer, names, cfg.model, run.tokenizer)
    val_metrics = _floats(trainer.validate(module, datamodule=run.data, verbose=False)[0], "val/")

    summary: dict[str, Any] = {
        "status": "completed",
        "method": cfg.method.name,
        "loss": cfg.method.loss,
        "loss_params": loss_params(cfg),
        "ref_update": cfg.ref_update,
        "alpha": float(cfg.alpha),
        "tau": int(cfg.tau),
        "beta": float(cfg.beta),
        "seed": int(cfg.seed),
        "data": cfg.data.name,
        "model": cfg.model.name,
        **run.plan.summary(),  # global batch, micro-batch, accumulation, world size
        **run.setup,
        "global_step": int(trainer.global_step),
        "ref_updates": module.ref_updates,
        "applied_steps": module.applied_steps,
        "params": param_counts(module),  # total, trainable, reference_extra (tralign/lora/params.py)
        "train": train_metrics,
        "val": val_metrics,
        **{k: v for k, v in run.data.stats.items()},
    }
    if not trainer.is_global_zero:
        return summary
    export_dtype = run.setup["dtypes"]["export"]
    lora = is_lora(wholes["policy"])
    if lora:  # model.lora: merged policy/, PEFT policy_adapter/, and the reference's when asked
        summary |= export_lora(
            wholes["policy"],
            run.tokenizer,
            run_dir,
            policy=bool(cfg.export.policy),
            reference=bool(cfg.export.reference) and module.reference is not None,
            save_model=lambda m, tok, path: _export(m, tok, path, export_dtype),
        )
    elif cfg.export.policy:
        _export(wholes["policy"], run.tokenizer, run_dir / "policy", export_dtype)
        summary["policy_dir"] = str(run_dir / "policy")
    if wholes.get("reference") is not None and not lora:
        _export(wholes["reference"], run.tokenizer, run_dir / "reference", export_dtype)
    summary.update(_golden(cfg, run, wholes["policy"], run_dir))
    summary["wall_time_s"] = round(time.time() - started, 2)
    summary["run_dir"] = str(run_dir)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    if cfg.export.policy:  # policy/README.md: ready for the hub (tralign/model_card.py)
        write_model_card(run_dir / "policy", summary, cfg)
    log.info("summary: %s", run_dir / "summary.json")
    return summary


def _golden(cfg: DictConfig, run: Run, policy: Any, run_dir: Path) -> dict[str, Any]:
    """The embedded task's golden evaluation of the trained policy against the starting one, or {}."""
    task = run.data.split.golden_task
    if task is None or not cfg.data.get("golden_eval"):
        return {}
    from tralign.eval.golden import golden_eval
    from tralign.models import build_policy
    from tralign.strategies import is_sharded

    initial = run.module.initial_model
    if initial is None or is_sharded(initial):
        initial = build_policy(cfg.model, run.tokenizer)  # the same start: init_seed or init_from
    return golden_eval(
        policy,
        initial,
        run.tokenizer,
        task,
        run.data.val_prompts,
        cfg.data.golden_eval,
        seed=int(cfg.seed),
        samples_path=run_dir / "golden_samples.jsonl",
    )


def _floats(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            value = float(value.item() if hasattr(value, "item") else value)
            out[key] = value if math.isfinite(value) else None
    return dict(sorted(out.items()))


def _whole_models(
    module: Any, trainer: Any, names: list[str], model_cfg: DictConfig, tokenizer: Any
) -> dict[str, Any]:
    """``{name: model}`` for the module's submodules ``names``: the submodule itself when whole; for
    a sharded one, a fresh unsharded copy with the gathered weights on rank 0 (None elsewhere).
    All gathers happen before any model is built, so no rank waits in a collective while rank 0
    loads weights."""
    from tralign.models import build_policy
    from tralign.strategies import full_state_dicts, is_sharded

    sharded = [name for name in names if is_sharded(getattr(module, name))]
    states = full_state_dicts(module, trainer.strategy.model, sharded) if sharded else {}
    wholes: dict[str, Any] = {}
    for name in names:
        if name not in states:
            wholes[name] = getattr(module, name)
        elif trainer.is_global_zero:
            wholes[name] = build_policy(model_cfg, tokenizer)
            wholes[name].load_state_dict(states.pop(name))
        else:
            wholes[name] = None
    return wholes


def _export(model: Any, tokenizer: Any, path: Path, dtype: str) -> None:
    """``model`` and the tokenizer to ``path``, the weights in ``dtype`` (``export.dtype``)."""
    from tralign.dtypes import parse_dtype
    from tralign.models import save_as

    model.config.use_cache = True  # for whoever generates with the export
    save_as(model, path, parse_dtype(dtype))
    tokenizer.save_pretrained(path)
    model.config.use_cache = False
