"""Training entry point: ``python -m tralign.train [group=option ...] [key=value ...]``.

Compose (Hydra) → validate → build data, model, module, logger → ``Trainer.fit`` → export the
policy → write ``summary.json``. Everything a run writes lives in its Hydra run directory.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
import types
import warnings
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tralign.cli import CONF, run_command, user_errors
from tralign.config import loss_params, schedule_from, validate
from tralign.ending import ending
from tralign.errors import TralignError, exit_on_user_error
from tralign.loggers import finish_wandb
from tralign.losses import LOSSES
from tralign.model_card import write_model_card

# Lightning and transformers take seconds to import; they are imported inside run(), after the
# config is validated, so a typo on the command line is reported at once.

log = logging.getLogger("tralign")

# The frozen reference/initial copies are in eval mode on purpose (dropout off).
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*litlogger.*")


def _run_name(cfg: DictConfig) -> str:
    base = f"{cfg.method.name}-{cfg.ref_update}"
    try:
        overrides = HydraConfig.get().job.override_dirname
    except ValueError:  # not under @hydra.main (tests calling run() directly)
        overrides = ""
    return f"{base}:{overrides}" if overrides else base


def _sweep_group() -> str | None:
    try:
        hc = HydraConfig.get()
    except ValueError:
        return None
    return Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None


def _floats(metrics: dict[str, Any], prefix: str) -> dict[str, float]:
    out = {}
    for key, value in metrics.items():
        if key.startswith(prefix):
            value = float(value.item() if hasattr(value, "item") else value)
            out[key] = value if math.isfinite(value) else None
    return dict(sorted(out.items()))


def _callbacks(cfg: DictConfig, run_dir: Path, with_logger: bool) -> list[Any]:
    from lightning.pytorch.callbacks import LearningRateMonitor

    from tralign.checkpoint import AtomicCheckpoint

    callbacks: list[Any] = [
        AtomicCheckpoint(
            run_dir / "checkpoints",
            every_n_steps=int(cfg.checkpoint.every_n_steps),
            save_last=bool(cfg.checkpoint.save_last),
            keep=cfg.checkpoint.get("keep"),
        )
    ]
    if with_logger:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    from tralign.guards import guard_callbacks

    # Before ModelCheckpoint (Lightning moves checkpoint callbacks last): a bad step is skipped and
    # a non-finite policy refused before anything is saved or mixed into the reference.
    callbacks += guard_callbacks(cfg.get("guard"))
    if cfg.trainer.get("enable_progress_bar", True):
        from tralign.progress import StepProgressBar

        callbacks.append(StepProgressBar())  # optimizer steps out of trainer.max_steps
    return callbacks


def run(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train one configuration; returns the summary (also written to ``run_dir/summary.json``)."""
    started = time.time()
    validate(cfg)  # before anything expensive: all config problems at once
    from tralign.checkpoint import check_same_run, resolve_ckpt_path
    from tralign.safety import check_checkpoint_space, check_output_dir, checkpoint_bytes

    # A run folder means its newest checkpoint; auto (the default under SLURM) this run's folder's.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path and cfg.get("ckpt_path") in (None, "auto"):
        check_same_run(run_dir, OmegaConf.to_container(cfg, resolve=True))  # never another run's state
    # Unwritable, full, or another run's folder: refuse before anything is built.
    check_output_dir(run_dir, cfg.get("output"), ckpt_path)
    from tralign.models import checkpoint_dtype

    setup = effective_setup(cfg, export_dtype=cfg.export.get("dtype") or checkpoint_dtype(cfg.model))
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    if rank_zero_only.rank == 0:  # once per run, not once per process
        log.info(
            "setup: %s; dtypes: %s",
            " ".join(f"{k}={v}" for k, v in setup.items() if k != "dtypes"),
            " ".join(f"{k}={v}" for k, v in setup["dtypes"].items()),
        )

    if logging.getLogger().handlers:
        # Hydra already logs to the console and train.log; Lightning's own stderr handler would
        # print every Lightning message a second time.
        logging.getLogger("lightning").handlers.clear()

    from tralign.data.batch_plan import confirm_world, plan_from_cfg
    from tralign.data.datamodule import PreferenceDataModule
    from tralign.eval.golden import golden_eval
    from tralign.loading import build_policy_for_strategy, prepare_fsdp1
    from tralign.loggers import build_logger
    from tralign.models import build_policy, build_tokenizer, reference_dtype
    from tralign.module import AlignmentModule
    from tralign.strategies import build_strategy, is_sharded, take_fsdp1_clip_norm

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    spec = LOSSES[cfg.method.loss]
    tokenizer = build_tokenizer(cfg.model, cfg.data)
    plan = plan_from_cfg(cfg)  # micro-batch and accumulation: data.global_batch_size over the ranks
    data = PreferenceDataModule(
        cfg.data,
        tokenizer,
        mode=spec.data_mode,
        seed=int(cfg.seed),
        micro_batch=plan.micro_batch,
        accumulate=plan.accumulate,
    )  # reads and tokenises now: bad data fails before the model is built
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    # fsdp/fsdp2: no whole policy per rank; its weights arrive once sharded (tralign.loading).
    policy, deferred = build_policy_for_strategy(cfg.model, tokenizer, trainer_kwargs["strategy"])
    trainer_kwargs["accumulate_grad_batches"] = plan.accumulate
    strategy, shard_plan = build_strategy(
        trainer_kwargs.pop("strategy"),
        policy,
        devices=trainer_kwargs.get("devices"),
        num_nodes=int(trainer_kwargs.get("num_nodes", 1)),
        precision=trainer_kwargs.get("precision"),
    )
    fsdp1_clip = take_fsdp1_clip_norm(strategy, trainer_kwargs)  # the module clips, not Lightning
    if deferred is not None and deferred.strategy == "fsdp":
        prepare_fsdp1(strategy, deferred)
    schedule = schedule_from(cfg)
    module = AlignmentModule(
        policy,
        loss=cfg.method.loss,
        loss_params=loss_params(cfg),
        schedule=schedule,
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        max_steps=int(cfg.trainer.max_steps),
        keep_initial=bool(cfg.model.keep_initial),
        shard_plan=shard_plan,
        fsdp1_clip_norm=fsdp1_clip,
        frozen_dtype=reference_dtype(cfg.model),
        deferred=deferred,
    )
    # Now that the model's size is known: room for the checkpoints it will write, before any training.
    check_checkpoint_space(run_dir, checkpoint_bytes(module), cfg.checkpoint, int(cfg.trainer.max_steps))

    resolved = OmegaConf.to_container(cfg, resolve=True)
    logger = build_logger(cfg.logger, run_dir, run_name=_run_name(cfg), group=_sweep_group(), config=resolved)
    trainer = L.Trainer(
        **trainer_kwargs,
        strategy=strategy,
        logger=logger if logger is not None else False,
        callbacks=_callbacks(cfg, run_dir, logger is not None),
        default_root_dir=str(run_dir),
    )
    plan = confirm_world(plan, trainer.world_size, cfg.data.get("global_batch_size") is not None)
    # weights_only: a checkpoint is data, never code (no arbitrary pickles are unpickled).
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path, weights_only=True)
    train_metrics = _floats(dict(trainer.callback_metrics), "train/")
    # Gather sharded weights into whole models (rank 0) while the fit's wrapping is in place:
    # trainer.validate re-connects the strategy. A collective: every rank takes part.
    names = ["policy"] + (["reference"] if cfg.export.reference and module.reference is not None else [])
    wholes = _whole_models(module, trainer, names, cfg.model, tokenizer)
    val_metrics = _floats(trainer.validate(module, datamodule=data, verbose=False)[0], "val/")

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
        **plan.summary(),  # global batch, micro-batch, accumulation, world size
        **setup,
        "global_step": int(trainer.global_step),
        "ref_updates": module.ref_updates,
        "applied_steps": module.applied_steps,
        "train": train_metrics,
        "val": val_metrics,
        **{k: v for k, v in data.stats.items()},
    }
    policy_whole, reference_whole = wholes["policy"], wholes.get("reference")
    if trainer.is_global_zero:
        if cfg.export.policy:
            _export(policy_whole, tokenizer, run_dir / "policy", setup["dtypes"]["export"])
            summary["policy_dir"] = str(run_dir / "policy")
        if reference_whole is not None:
            _export(reference_whole, tokenizer, run_dir / "reference", setup["dtypes"]["export"])
        task = data.split.golden_task
        if task is not None and cfg.data.get("golden_eval"):
            initial = module.initial_model
            if initial is None or is_sharded(initial):
                initial = build_policy(cfg.model, tokenizer)  # the same start: init_seed or init_from
            summary.update(
                golden_eval(
                    policy_whole,
                    initial,
                    tokenizer,
                    task,
                    data.val_prompts,
                    cfg.data.golden_eval,
                    seed=int(cfg.seed),
                    samples_path=run_dir / "golden_samples.jsonl",
                )
            )
        summary["wall_time_s"] = round(time.time() - started, 2)
        summary["run_dir"] = str(run_dir)
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if cfg.export.policy:  # policy/README.md: ready for the hub (tralign/model_card.py)
            write_model_card(run_dir / "policy", summary, cfg)
        log.info("summary: %s", run_dir / "summary.json")
    return summary


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


def effective_setup(cfg: DictConfig, export_dtype: Any) -> dict[str, Any]:
    """What this run trains with, as the composed config resolved it (tiny model, task tuning,
    experiment bundle and command line included): the first log line and part of summary.json."""
    from tralign.dtypes import compute_dtype, master_dtype, name, parse_dtype, reference_dtype

    master = master_dtype(cfg.model)
    return {
        "lr": float(cfg.optim.lr),
        "warmup_steps": int(cfg.optim.warmup_steps),
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "beta": float(cfg.beta),
        "alpha": float(cfg.alpha),
        "tau": int(cfg.tau),
        "precision": str(cfg.trainer.precision),
        "dtypes": {
            "master": name(master),
            "reference": name(reference_dtype(cfg.model)),
            "compute": name(compute_dtype(cfg.trainer, master)),
            "export": name(parse_dtype(export_dtype)),
        },
    }


def _export(model: Any, tokenizer: Any, path: Path, dtype: str) -> None:
    """``model`` and the tokenizer to ``path``, the weights in ``dtype`` (``export.dtype``)."""
    from tralign.dtypes import parse_dtype
    from tralign.models import save_as

    model.config.use_cache = True  # for whoever generates with the export
    save_as(model, path, parse_dtype(dtype))
    tokenizer.save_pretrained(path)
    model.config.use_cache = False


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


class _CallableModule(types.ModuleType):
    """``from tralign import train`` gives this module once it is imported (a package's submodule
    replaces the package attribute of the same name), so the module itself calls
    :func:`tralign.api.train`: ``train(overrides=[...])`` works either way."""

    def __call__(
        self, overrides: list[str] | None = None, run_dir: str | Path | None = None
    ) -> dict[str, Any]:
        from tralign import api

        return api.train(overrides, run_dir=run_dir)


sys.modules[__name__].__class__ = _CallableModule


if __name__ == "__main__":
    main()
