"""One framework's run (or the loss pre-check) in a process of its own:
``python -m tralign.bench.worker SPEC.json {tralign|trl|precheck} OUT.json``.

A process per framework and repetition makes the peak memory (peak RSS on CPU,
``torch.cuda.max_memory_allocated`` on CUDA) that framework's own, and lets the driver alternate.

Timing, the same for both: the wall time between the ends of consecutive optimizer steps (so data
loading, logging, callbacks and the reference update all count), the first ``warmup`` steps left
out; tokens = non-padding positions of the (2B, T) batch the step ran on.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")


# --- shared set-up ----------------------------------------------------------------------------
def _setup(spec: dict[str, Any]):
    """Threads, seed, tokenizer and tralign's DataModule (whose tokenised rows both frameworks get)."""
    import logging

    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    torch.manual_seed(int(spec["seed"]))
    from tralign.data.datamodule import PreferenceDataModule
    from tralign.models import build_tokenizer

    tokenizer = build_tokenizer({"tokenizer": spec["tokenizer"]}, spec["data_cfg"])
    data = PreferenceDataModule(spec["data_cfg"], tokenizer, mode="pair", seed=int(spec["seed"]))
    return tokenizer, data


def _load(path: str, device: str) -> torch.nn.Module:
    from tralign.models import build_policy

    model = build_policy({"name_or_path": path}, None)
    return model.to(device)


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _peak_memory_mb(device: str) -> dict[str, float]:
    peak = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}  # Linux: KiB
    if device == "cuda":
        peak["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return peak


def _time_calls(fn, n: int, device: str) -> list[float]:
    times = []
    for _ in range(n):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


def _result(spec, framework, ends, tokens, positions, ref_times, losses) -> dict[str, Any]:
    warm = int(spec["warmup"])
    steps = [b - a for a, b in zip(ends[warm - 1 : -1], ends[warm:], strict=True)]
    return {
        "framework": framework,
        "step_s": steps,
        "tokens": tokens[warm : warm + len(steps)],
        "positions": positions[warm : warm + len(steps)],
        "ref_update_s": ref_times,
        "ref_update_median_s": statistics.median(ref_times) if ref_times else None,
        "losses": losses,
        **_peak_memory_mb(spec["device"]),
    }


# --- tralign -----------------------------------------------------------------------------------
def _module_class(head: str, foreach: bool):
    """AlignmentModule as it is (``head=masked``: log-probs from ``model_sequence_logps``, the LM head
    on completion positions only; ``foreach_adamw=true``), or with either undone, to measure each:
    ``head=model`` computes full (N, T, V) logits, ``foreach_adamw=false`` is torch's CPU default."""
    from tralign.logprobs import sequence_logps
    from tralign.module import AlignmentModule

    if head == "masked" and foreach:
        return AlignmentModule

    class VariantModule(AlignmentModule):
        if head == "model":

            @staticmethod
            def _logps(model, batch):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                return sequence_logps(logits, batch["input_ids"], batch["loss_mask"])

        def configure_optimizers(self):
            config = super().configure_optimizers()
            if not foreach:
                for group in config["optimizer"].param_groups:
                    group["foreach"] = None  # torch's default: the per-parameter loop on CPU
            return config

    return VariantModule


def _tralign_module(spec: dict[str, Any], policy: torch.nn.Module):
    from tralign.reference import ReferenceSchedule

    return _module_class(spec["tralign"]["head"], bool(spec["tralign"].get("foreach_adamw", False)))(
        policy,
        loss="dpo",
        loss_params={"beta": float(spec["beta"]), "label_smoothing": 0.0},
        schedule=ReferenceSchedule(
            "soft" if float(spec["alpha"]) < 1 else "hard", float(spec["alpha"]), int(spec["tau"])
        ),
        optim={
            "lr": float(spec["lr"]),
            "betas": list(spec["betas"]),
            "eps": float(spec["eps"]),
            "weight_decay": float(spec["weight_decay"]),
            "warmup_steps": 0,
            "schedule": "constant",
        },
        max_steps=int(spec["warmup"]) + int(spec["steps"]),
        keep_initial=False,  # TRL keeps no third copy either
    )


def run_tralign(spec: dict[str, Any]) -> dict[str, Any]:
    import lightning as L

    _, data = _setup(spec)
    data.group_by_length = bool(spec["tralign"]["group_by_length"])
    device = spec["device"]
    module = _tralign_module(spec, _load(spec["model_dir"], "cpu"))

    class StepTimer(L.Callback):
        def __init__(self):
            self.ends, self.tokens, self.positions, self.losses = [], [], [], []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self.ends.append(time.perf_counter())
            self.tokens.append(int(batch["attention_mask"].sum()))
            self.positions.append(batch["attention_mask"].numel())
            self.losses.append(float(outputs["loss"]))

    timer = StepTimer()
    trainer = L.Trainer(
        accelerator=device,
        devices=1,
        precision="bf16-mixed" if spec["precision"] == "bf16" else "32-true",
        max_steps=int(spec["warmup"]) + int(spec["steps"]),
        gradient_clip_val=float(spec["grad_clip"]),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=data)
    ref_times = _time_reference_updates(module, device, float(spec["alpha"]), int(spec["ref_update_calls"]))
    return _result(spec, "tralign", timer.ends, timer.tokens, timer.positions, ref_times, timer.losses)


def _time_reference_updates(module: torch.nn.Module, device: str, alpha: float, calls: int) -> list[float]:
    """tralign's reference update timed on the run's device. Lightning's teardown after ``fit`` has
    moved the module to the CPU, while TRL's models stay where they trained: move it back first, or
    a CUDA bench compares a CPU update with a GPU one."""
    from tralign.reference import update_reference_

    module.to(device)
    return _time_calls(lambda: update_reference_(module.reference, module.policy, alpha), calls, device)


# --- TRL ---------------------------------------------------------------------------------------
def _trl_trainer(spec: dict[str, Any], tokenizer, data, policy, ref_model=None, callbacks=()):
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        # The rows arrive tokenised by tralign (prompt_ids/chosen_ids/rejected_ids, truncated to
        # the same max lengths), so both frameworks train on identical token ids; TRL's own
        # text->ids step (EOS appended, common-prefix split) would make the data differ.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    bf16 = spec["precision"] == "bf16"
    args = DPOConfig(
        output_dir=tempfile.mkdtemp(prefix="tralign-bench-trl-"),
        per_device_train_batch_size=int(spec["batch_size"]),
        gradient_accumulation_steps=1,
        max_steps=int(spec["warmup"]) + int(spec["steps"]),
        learning_rate=float(spec["lr"]),
        weight_decay=float(spec["weight_decay"]),
        adam_beta1=float(spec["betas"][0]),
        adam_beta2=float(spec["betas"][1]),
        adam_epsilon=float(spec["eps"]),
        optim="adamw_torch",
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=float(spec["grad_clip"]),
        bf16=bf16,
        fp16=False,
        use_cpu=spec["device"] == "cpu",
        gradient_checkpointing=False,
        max_length=int(spec["data_cfg"]["max_length"]),
        pad_to_multiple_of=None,
        beta=float(spec["beta"]),
        loss_type=["sigmoid"],
        sync_ref_model=True,
        ref_model_mixup_alpha=float(spec["alpha"]),
        ref_model_sync_steps=int(spec["tau"]),
        precompute_ref_log_probs=False,
        logging_steps=10,
        report_to="none",
        save_strategy="no",
        eval_strategy="no",
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=int(spec["seed"]),
    )
    return PreTokenizedDPOTrainer(
        model=policy,
        ref_model=ref_model,
        args=args,
        train_dataset=data.tables["train"].select_columns(list(FIELDS)),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


class _RecordingCollator:
    """Wraps TRL's collator to count each batch's tokens (batches are collated in step order)."""

    def __init__(self, collate):
        self.collate = collate
        self.tokens: list[int] = []
        self.positions: list[int] = []

    def __call__(self, examples):
        batch = self.collate(examples)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.positions.append(batch["attention_mask"].numel())
        return batch


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    from transformers import TrainerCallback
    from trl.trainer.callbacks import SyncRefModelCallback

    tokenizer, data = _setup(spec)
    device = spec["device"]

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends: list[float] = []

        def on_step_end(self, args, state, control, **kwargs):
            _sync(device)
            self.ends.append(time.perf_counter())

    timer = StepTimer()
    trainer = _trl_trainer(spec, tokenizer, data, _load(spec["model_dir"], "cpu"), callbacks=[timer])
    recorder = _RecordingCollator(trainer.data_collator)
    trainer.data_collator = recorder
    out = trainer.train()
    policy = trainer.accelerator.unwrap_model(trainer.model)
    alpha = float(spec["alpha"])
    ref_times = _time_calls(
        lambda: SyncRefModelCallback.sync_target_model(policy, trainer.ref_model, alpha),
        int(spec["ref_update_calls"]),
        device,
    )
    losses = [float(out.training_loss)]
    return _result(spec, "trl", timer.ends, recorder.tokens, recorder.positions, ref_times, losses)


# --- the loss pre-check ------------------------------------------------------------------------
def precheck(spec: dict[str, Any]) -> dict[str, Any]:
    """The DPO loss of both frameworks on the first tralign batch, with the same policy and the same
    (deliberately different) reference weights, so the loss is not the trivial log 2."""
    tokenizer, data = _setup(spec)
    device = spec["device"]
    indices = next(iter(data.train_batch_sampler()))
    examples = data.train_examples.__getitems__(list(indices))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    module = _tralign_module(spec, _load(spec["model_dir"], device))
    module.reference.load_state_dict(_load(spec["reference_dir"], device).state_dict())
    module._kl_mean = lambda: None  # what _pair_step asks a trainer for; DPO has no batch statistic
    batch = {k: v.to(device) for k, v in data.collate(examples).items()}
    with torch.no_grad(), autocast:
        out, _ = module._pair_step(batch)
    tralign_loss = float(out.losses.float().mean())
    del module

    trainer = _trl_trainer(
        spec,
        tokenizer,
        data,
        _load(spec["model_dir"], device),
        ref_model=_load(spec["reference_dir"], device),
    )
    trl_batch = {k: v.to(device) for k, v in trainer.data_collator(examples).items()}
    trainer.model.eval()
    with torch.no_grad(), autocast:
        trl_loss = float(trainer._compute_loss(trainer.model, trl_batch, return_outputs=False))
    same_tokens = bool(
        torch.equal(
            trl_batch["input_ids"] * trl_batch["attention_mask"], batch["input_ids"] * batch["attention_mask"]
        )
    )
    return {
        "tralign_loss": tralign_loss,
        "trl_loss": trl_loss,
        "same_tokens": same_tokens,
        "rows": len(examples),
    }


RUNNERS = {"tralign": run_tralign, "trl": run_trl, "precheck": precheck}


def main(argv: list[str]) -> None:
    spec_path, what, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = RUNNERS[what](spec)
    Path(out_path).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
