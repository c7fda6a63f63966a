"""Everything one training run needs, built from a validated config: :func:`preflight` refuses a bad
output folder or checkpoint before anything is built, :func:`build` returns the :class:`Run`.

Lightning and transformers take seconds to import; they are imported inside the functions, so
``tralign.train`` reports a config typo at once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from tralign.config import loss_params, schedule_from
from tralign.losses import LOSSES

log = logging.getLogger("tralign")


@dataclass
class Run:
    """What ``Trainer.fit`` and the finish (export, golden evaluation, summary) work on."""

    data: Any  # PreferenceDataModule: read and tokenised
    tokenizer: Any
    policy: Any  # the trained model (module.policy)
    module: Any  # AlignmentModule
    trainer: Any  # lightning.Trainer
    logger: Any  # None when logging is off
    plan: Any  # BatchPlan, confirmed against the trainer's world size
    setup: dict[str, Any]  # effective_setup: the first log line and part of summary.json
    ckpt_path: str | None  # the checkpoint fit resumes from, None to start fresh


def preflight(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint to resume from (None: start fresh), after refusing an unwritable, full or
    foreign output folder and another run's state, all before anything is built."""
    from tralign.checkpoint import check_same_run, resolve_ckpt_path
    from tralign.safety import check_output_dir

    # A run folder means its newest checkpoint; auto (the default under SLURM) this run's folder's.
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), run_dir)
    if ckpt_path and cfg.get("ckpt_path") in (None, "auto"):
        check_same_run(run_dir, OmegaConf.to_container(cfg, resolve=True))  # never another run's state
    check_output_dir(run_dir, cfg.get("output"), ckpt_path)
    return ckpt_path


def build(cfg: DictConfig, run_dir: Path, ckpt_path: str | None) -> Run:
    """Data, tokenizer, policy, module, logger and trainer of one run, in the order that fails
    cheapest first: the data is read before the model is built, the checkpoint space checked
    before the trainer starts."""
    import lightning as L
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    from tralign.data.batch_plan import confirm_world, plan_from_cfg
    from tralign.data.datamodule import PreferenceDataModule
    from tralign.loading import build_policy_for_strategy, prepare_fsdp1
    from tralign.loggers import build_logger
    from tralign.lora.adapters import with_lora
    from tralign.models import build_tokenizer, checkpoint_dtype, reference_dtype
    from tralign.module import AlignmentModule
    from tralign.safety import check_checkpoint_space, checkpoint_bytes
    from tralign.strategies import build_strategy, take_fsdp1_clip_norm

    setup = effective_setup(cfg, export_dtype=cfg.export.get("dtype") or checkpoint_dtype(cfg.model))
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

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config_resolved.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)

    tokenizer = build_tokenizer(cfg.model, cfg.data)
    plan = plan_from_cfg(cfg)  # micro-batch and accumulation: data.global_batch_size over the ranks
    data = PreferenceDataModule(
        cfg.data,
        tokenizer,
        mode=LOSSES[cfg.method.loss].data_mode,
        seed=int(cfg.seed),
        micro_batch=plan.micro_batch,
        accumulate=plan.accumulate,
    )  # reads and tokenises now: bad data fails before the model is built
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    # fsdp/fsdp2: no whole policy per rank; its weights arrive once sharded (tralign.loading).
    policy, deferred = build_policy_for_strategy(cfg.model, tokenizer, trainer_kwargs["strategy"])
    # model.lora: adapters on the policy (a moving reference gets a second adapter); else unchanged.
    moving = LOSSES[cfg.method.loss].needs_reference and schedule_from(cfg).active
    policy = with_lora(policy, cfg.model, moving_reference=moving)
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
    module = AlignmentModule(
        policy,
        loss=cfg.method.loss,
        loss_params=loss_params(cfg),
        schedule=schedule_from(cfg),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        max_steps=int(cfg.trainer.max_steps),
        keep_initial=bool(cfg.model.keep_initial),
        shard_plan=shard_plan,
        fsdp1_clip_norm=fsdp1_clip,
        frozen_dtype=reference_dtype(cfg.model),
        deferred=deferred,
        compile=bool(cfg.model.get("compile", False)),
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
    return Run(data, tokenizer, policy, module, trainer, logger, plan, setup, ckpt_path)


def _callbacks(cfg: DictConfig, run_dir: Path, with_logger: bool) -> list[Any]:
    from lightning.pytorch.callbacks import LearningRateMonitor

    from tralign.checkpoint import AtomicCheckpoint
    from tralign.guards import NonFiniteGuard, guard_callbacks
    from tralign.module import ReferenceUpdate

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
    # The end of an optimizer step, in this order: the non-finite guard (a bad step is skipped, a
    # non-finite policy refused before it is mixed into the reference), the reference update, then
    # what saves (the pre-emption checkpoint here; ModelCheckpoint, which Lightning moves last).
    guards = guard_callbacks(cfg.get("guard"))
    after = max((i + 1 for i, cb in enumerate(guards) if isinstance(cb, NonFiniteGuard)), default=0)
    callbacks += [*guards[:after], ReferenceUpdate(), *guards[after:]]
    if cfg.trainer.get("enable_progress_bar", True):
        from tralign.progress import StepProgressBar

        callbacks.append(StepProgressBar())  # optimizer steps out of trainer.max_steps
    return callbacks


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


def effective_setup(cfg: DictConfig, export_dtype: Any) -> dict[str, Any]:
    """What this run trains with, as the composed config resolved it (tiny model, task tuning,
    experiment bundle and command line included): the first log line and part of summary.json."""
    from tralign.dtypes import compute_dtype, master_dtype, name, parse_dtype, reference_dtype
    from tralign.lora.config import lora_settings

    master = master_dtype(cfg.model)
    lora = lora_settings(cfg.model) is not None
    # LoRA trains float32 adapters (tralign.lora.adapters) on a frozen base in model.dtype.
    dtypes = {"master": "float32", "base": name(master)} if lora else {"master": name(master)}
    dtypes.update(
        reference=name(reference_dtype(cfg.model)),
        compute=name(compute_dtype(cfg.trainer, master)),
        export=name(parse_dtype(export_dtype)),
    )
    return {
        "lr": float(cfg.optim.lr),
        "warmup_steps": int(cfg.optim.warmup_steps),
        "gradient_clip_val": cfg.trainer.get("gradient_clip_val"),
        "beta": float(cfg.beta),
        "alpha": float(cfg.alpha),
        "tau": int(cfg.tau),
        "precision": str(cfg.trainer.precision),
        "dtypes": dtypes,
    }
