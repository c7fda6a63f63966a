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


class BatchCounts:
    """Per step: non-padding tokens, positions the model ran on, completion tokens (the ones whose
    log-prob the loss needs) and the sum over rows of squared row lengths (attention FLOPs)."""

    def __init__(self, completion_key: str):
        self.completion_key = completion_key
        self.tokens: list[int] = []
        self.positions: list[int] = []
        self.completion: list[int] = []
        self.tokens_sq: list[int] = []

    def add(self, batch) -> None:
        mask = batch["attention_mask"]
        rows = mask.sum(-1)
        self.tokens.append(int(rows.sum()))
        self.positions.append(mask.numel())
        self.completion.append(int(batch[self.completion_key][:, 1:].sum()))
        self.tokens_sq.append(int((rows.long() ** 2).sum()))


def _result(spec, framework, ends, counts: BatchCounts, ref_times, losses) -> dict[str, Any]:
    warm = int(spec["warmup"])
    steps = [b - a for a, b in zip(ends[warm - 1 : -1], ends[warm:], strict=True)]
    timed = slice(warm, warm + len(steps))
    return {
        "framework": framework,
        "step_s": steps,
        "tokens": counts.tokens[timed],
        "positions": counts.positions[timed],
        "completion_tokens": counts.completion[timed],
        "tokens_sq": counts.tokens_sq[timed],
        "ref_update_s": ref_times,
        "ref_update_median_s": statistics.median(ref_times) if ref_times else None,
        "losses": losses,
        **_peak_memory_mb(spec["device"]),
    }


# --- tralign -----------------------------------------------------------------------------------
def _module_class(head: str, adamw: str):
    """AlignmentModule as it is (``head=masked``: log-probs from ``model_sequence_logps``, the LM head
    on completion positions only; ``adamw=shipped``: fused AdamW where torch has it), or with either
    undone, to measure each: ``head=model`` computes full (N, T, V) logits, ``adamw=foreach`` is the
    foreach AdamW shipped before the fused one, ``adamw=loop`` torch's CPU default."""
    from tralign.logprobs import sequence_logps
    from tralign.module import AlignmentModule

    if head == "masked" and adamw == "shipped":
        return AlignmentModule

    class VariantModule(AlignmentModule):
        if head == "model":

            @staticmethod
            def _logps(model, batch):
                logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                return sequence_logps(logits, batch["input_ids"], batch["loss_mask"])

        def configure_optimizers(self):
            config = super().configure_optimizers()
            if adamw != "shipped":
                for group in config["optimizer"].param_groups:
                    group["fused"] = None
                    # None: torch's default, the per-parameter loop on CPU
                    group["foreach"] = True if adamw == "foreach" else None
            return config

    return VariantModule


def adamw_variant(tralign: dict[str, Any]) -> str:
    """bench.yaml's tralign.adamw (shipped | foreach | loop); ``foreach_adamw=false`` (older key): loop."""
    if not tralign.get("foreach_adamw", True):
        return "loop"
    return str(tralign.get("adamw", "shipped"))


def _tralign_module(spec: dict[str, Any], policy: torch.nn.Module, compile: bool = False):
    from tralign.reference import ReferenceSchedule

    return _module_class(spec["tralign"]["head"], adamw_variant(spec["tralign"]))(
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
        compile=compile,
    )


def run_tralign_foreach(spec: dict[str, Any]) -> dict[str, Any]:
    """tralign with the foreach AdamW it shipped before the fused one (the tralign-foreach row)."""
    return run_tralign({**spec, "tralign": {**spec["tralign"], "adamw": "foreach"}}, name="tralign-foreach")


def run_tralign_compiled(spec: dict[str, Any]) -> dict[str, Any]:
    """tralign with ``model.compile=true`` (the tralign-compile row)."""
    return run_tralign(compiled_warmup(spec, True), compile=True, name="tralign-compile")


def run_tralign(spec: dict[str, Any], compile: bool = False, name: str = "tralign") -> dict[str, Any]:
    import lightning as L

    _, data = _setup(spec)
    data.group_by_length = bool(spec["tralign"]["group_by_length"])
    device = spec["device"]
    module = _tralign_module(spec, _load(spec["model_dir"], "cpu"), compile=compile)

    class StepTimer(L.Callback):
        def __init__(self):
            self.ends, self.losses, self.counts = [], [], BatchCounts("loss_mask")

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            _sync(device)
            self.ends.append(time.perf_counter())
            self.counts.add(batch)
            self.losses.append(float(outputs["loss"]))

    from tralign.bench.breakdown import PhaseClock, instrument

    timer = StepTimer()
    phases = PhaseClock(lambda: _sync(device))
    phase_callback = instrument(module, phases)

    class EndPhases(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            phases.end_step()

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
        callbacks=[timer, phase_callback, EndPhases()],
    )
    trainer.fit(module, datamodule=data)
    ref_times = _time_reference_updates(module, device, float(spec["alpha"]), int(spec["ref_update_calls"]))
    result = _result(spec, name, timer.ends, timer.counts, ref_times, timer.losses)
    result["phases"] = phases.steps[int(spec["warmup"]) - 1 :]  # phases.steps[i] is step i + 1
    return result


def _time_reference_updates(module: torch.nn.Module, device: str, alpha: float, calls: int) -> list[float]:
    """tralign's reference update timed on the run's device. Lightning's teardown after ``fit`` has
    moved the module to the CPU, while TRL's models stay where they trained: move it back first, or
    a CUDA bench compares a CPU update with a GPU one."""
    from tralign.reference import update_reference_

    module.to(device)
    return _time_calls(lambda: update_reference_(module.reference, module.policy, alpha), calls, device)


# --- TRL ---------------------------------------------------------------------------------------
def trl_best_args(spec: dict[str, Any]) -> dict[str, Any]:
    """The ``trl-best`` row's DPOConfig on top of the default row's: the fastest settings TRL 1.16
    accepts for this device (``trl_best`` in bench.yaml). ``padding_free`` is left off: TRL 1.16's
    DPOTrainer warns and falls back to padding ("temporarily unavailable after a refactor"), and it
    needs FlashAttention anyway. Liger kernels only on CUDA (Triton) and only if installed."""
    best = spec.get("trl_best") or {}
    args: dict[str, Any] = {}
    if best.get("torch_compile"):
        args["torch_compile"] = True
    if best.get("optim"):
        args["optim"] = str(best["optim"])
    if best.get("group_by_length"):
        # transformers' LengthGroupedSampler over a precomputed column (added in _trl_dataset)
        args.update(train_sampling_strategy="group_by_length", length_column_name="length")
        args["remove_unused_columns"] = False  # keep the length column for the sampler
    if best.get("padding_free"):
        args["padding_free"] = True
    if spec["device"] == "cuda" and best.get("liger", True) and _has_liger():
        args["use_liger_kernel"] = True
    return args


def _has_liger() -> bool:
    import importlib.util

    return importlib.util.find_spec("liger_kernel") is not None


def _trl_dataset(data, best: dict[str, Any]):
    table = data.tables["train"].select_columns(list(FIELDS))
    if best.get("group_by_length"):
        table = table.map(
            lambda r: {"length": len(r["prompt_ids"]) + max(len(r["chosen_ids"]), len(r["rejected_ids"]))}
        )
    return table


def _trl_trainer(spec: dict[str, Any], tokenizer, data, policy, ref_model=None, callbacks=(), best=False):
    from trl import DPOConfig, DPOTrainer

    class PreTokenizedDPOTrainer(DPOTrainer):
        # The rows arrive tokenised by tralign (prompt_ids/chosen_ids/rejected_ids, truncated to
        # the same max lengths), so both frameworks train on identical token ids; TRL's own
        # text->ids step (EOS appended, common-prefix split) would make the data differ.
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            return dataset

    bf16 = spec["precision"] == "bf16"
    settings = dict(
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
    if best:
        settings.update(trl_best_args(spec))
    args = DPOConfig(**settings)
    return PreTokenizedDPOTrainer(
        model=policy,
        ref_model=ref_model,
        args=args,
        train_dataset=_trl_dataset(data, (spec.get("trl_best") or {}) if best else {}),
        processing_class=tokenizer,
        callbacks=list(callbacks),
    )


class _RecordingCollator:
    """Wraps TRL's collator to count each batch's tokens (batches are collated in step order)."""

    def __init__(self, collate):
        self.collate = collate
        self.counts = BatchCounts("completion_mask")

    def __call__(self, examples):
        batch = self.collate(examples)
        self.counts.add(batch)
        return batch


def run_trl_best(spec: dict[str, Any]) -> dict[str, Any]:
    return run_trl(spec, best=True)


def compiled_warmup(spec: dict[str, Any], compiled: bool) -> dict[str, Any]:
    """A compiled row gets ``compile_warmup`` more untimed steps: the first step compiles, the first
    new sequence length recompiles with dynamic shapes; the timed steps are then steady state."""
    return {**spec, "warmup": int(spec["warmup"]) + int(spec.get("compile_warmup", 0))} if compiled else spec


def run_trl(spec: dict[str, Any], best: bool = False) -> dict[str, Any]:
    spec = compiled_warmup(spec, best and bool(trl_best_args(spec).get("torch_compile")))
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
    trainer = _trl_trainer(
        spec, tokenizer, data, _load(spec["model_dir"], "cpu"), callbacks=[timer], best=best
    )
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
    name = "trl-best" if best else "trl"
    result = _result(spec, name, timer.ends, recorder.counts, ref_times, losses)
    result["trl_args"] = trl_best_args(spec) if best else {}
    return result


# --- the loss pre-check ------------------------------------------------------------------------
def precheck(spec: dict[str, Any]) -> dict[str, Any]:
    """The DPO loss of both frameworks on the first tralign batch, with the same policy and the same
    (deliberately different) reference weights, so the loss is not the trivial log 2."""
    tokenizer, data = _setup(spec)
    device = spec["device"]
    indices = next(iter(data.train_batch_sampler()))
    examples = data.train_examples.__getitems__(list(indices))
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=spec["precision"] == "bf16")

    batch = {k: v.to(device) for k, v in data.collate(examples).items()}
    tralign_loss = _tralign_loss(spec, batch, autocast, compile=False)

    trl_loss, trl_batch = _trl_loss(spec, tokenizer, data, examples, autocast, best=False)
    same_tokens = bool(
        torch.equal(
            trl_batch["input_ids"] * trl_batch["attention_mask"], batch["input_ids"] * batch["attention_mask"]
        )
    )
    result = {
        "tralign_loss": tralign_loss,
        "trl_loss": trl_loss,
        "same_tokens": same_tokens,
        "rows": len(examples),
    }
    if "trl-best" in spec.get("frameworks", ()):
        result["trl-best_loss"], _ = _trl_loss(spec, tokenizer, data, examples, autocast, best=True)
    if "tralign-compile" in spec.get("frameworks", ()):
        result["tralign-compile_loss"] = _tralign_loss(spec, batch, autocast, compile=True)
    return result


def _tralign_loss(spec, batch, autocast, *, compile: bool) -> float:
    device = spec["device"]
    module = _tralign_module(spec, _load(spec["model_dir"], device))
    module.reference.load_state_dict(_load(spec["reference_dir"], device).state_dict())
    if compile:  # as AlignmentModule(compile=True) does, after the reference weights are in
        from tralign.models import compile_backbone

        compile_backbone(module.policy)
        compile_backbone(module.reference)
    module._kl_mean = lambda: None  # what _pair_step asks a trainer for; DPO has no batch statistic
    with torch.no_grad(), autocast:
        out, _ = module._pair_step(batch)
    return float(out.losses.float().mean())


def _trl_loss(spec, tokenizer, data, examples, autocast, *, best: bool):
    """TRL's DPO loss on ``examples`` (the trl-best row: its settings, its model compiled as the
    Trainer would compile it)."""
    device = spec["device"]
    trainer = _trl_trainer(
        spec,
        tokenizer,
        data,
        _load(spec["model_dir"], device),
        ref_model=_load(spec["reference_dir"], device),
        best=best,
    )
    trl_batch = {k: v.to(device) for k, v in trainer.data_collator(examples).items()}
    trainer.model.eval()
    model = torch.compile(trainer.model) if trainer.args.torch_compile else trainer.model
    with torch.no_grad(), autocast:
        loss = float(trainer._compute_loss(model, trl_batch, return_outputs=False))
    return loss, trl_batch


def run_peak(spec: dict[str, Any]) -> dict[str, Any]:
    """The matmul peak: GEMMs of the model's own shapes (rows = the largest padded batch, 2B x
    max_length), in the run's compute dtype, with the workers' thread count."""
    from tralign.bench.mfu import gemm_shapes, measure_peak

    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    rows = 2 * int(spec["batch_size"]) * int(spec["data_cfg"]["max_length"])
    dtype = "bfloat16" if spec["precision"] == "bf16" else "float32"
    return measure_peak(
        gemm_shapes(spec["model_config"], rows),
        dtype=dtype,
        device=spec["device"],
        repeats=int(spec["peak_repeats"]),
    )


RUNNERS = {
    "tralign": run_tralign,
    "tralign-compile": run_tralign_compiled,
    "tralign-foreach": run_tralign_foreach,
    "trl": run_trl,
    "trl-best": run_trl_best,
    "precheck": precheck,
    "peak": run_peak,
}


def main(argv: list[str]) -> None:
    spec_path, what, out_path = argv
    spec = json.loads(Path(spec_path).read_text())
    result = RUNNERS[what](spec)
    Path(out_path).write_text(json.dumps(result) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
