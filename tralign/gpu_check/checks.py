"""The checks of ``python -m tralign.gpu_check``, each a function returning a :class:`Check`.

Heavy work runs in child processes (:mod:`tralign.gpu_check.runner`, ``tralign.scale_bench``,
``tralign.bench``), so each starts with an empty GPU and a crash fails one check, not the command.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]

# ~300M parameters: Pythia-410M's blocks (24 × 1024, 16 heads) on the synthetic task's tiny vocabulary.
MODEL_300M = [
    "model.config.hidden_size=1024",
    "model.config.num_hidden_layers=24",
    "model.config.num_attention_heads=16",
    "model.config.intermediate_size=4096",
]
TRAIN = [
    *MODEL_300M,
    "method=tr_dpo",
    "alpha=0.6",  # a soft update large enough for the audit to see a reference that did not move
    "trainer=fsdp2",
    "trainer.accelerator=gpu",
    "trainer.devices=1",
    "trainer.strategy.activation_checkpointing=true",
    "trainer.max_steps=20",
    "trainer.val_check_interval=10",
    "trainer.enable_progress_bar=false",
    "checkpoint.every_n_steps=10",
    "export.reference=true",
    "optim.lr=1.0e-5",
    "optim.warmup_steps=2",
    "data.n_train=640",
    "data.n_val=64",
    "data.batch_size=8",
    "data.eval_batch_size=32",
    "data.golden_eval=null",
    "logger=none",
]
RESUME_TOL = 1e-3  # resumed vs uninterrupted: largest weight difference and final val/loss difference


@dataclass
class Check:
    name: str
    ok: bool
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


def timed(name: str, fn: Callable[[], tuple[bool, dict[str, Any]]]) -> Check:
    """Run one check; an exception fails it with its last line, never the whole command."""
    start = time.perf_counter()
    try:
        ok, details = fn()
        return Check(name, bool(ok), round(time.perf_counter() - start, 1), details)
    except Exception as err:  # noqa: BLE001 - a check's failure is a result, not a crash
        tail = traceback.format_exc(limit=-3)
        return Check(name, False, round(time.perf_counter() - start, 1), {"traceback": tail}, repr(err)[:300])


def _child(args: list[str], log: Path, timeout: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled", "PYTHONPATH": str(REPO)}
    with open(log, "w") as fh:
        result = subprocess.run(
            [sys.executable, *args], cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, timeout=timeout
        )
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} exited {result.returncode}: {log.read_text()[-800:]}")
    return result


def audited_run(work: Path, name: str, device: str, head_dtype: str, overrides: list[str], ckpt: str = "-"):
    out = work / f"{name}.json"
    run_dir = work / name
    args = ["-m", "tralign.gpu_check.runner", str(out), str(run_dir), device, head_dtype, ckpt, *overrides]
    _child(args, work / f"{name}.log", timeout=420)
    return json.loads(out.read_text())


def finite_metrics(summary: dict[str, Any]) -> bool:
    """Every logged train/val metric finite (``tralign.finish`` writes a non-finite one as null)."""
    values = [*summary.get("train", {}).values(), *summary.get("val", {}).values()]
    return bool(values) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)


def _max_export_diff(a: Path, b: Path) -> float:
    from safetensors.torch import load_file

    worst = 0.0
    for part in ("policy", "reference"):
        wa, wb = load_file(a / part / "model.safetensors"), load_file(b / part / "model.safetensors")
        if wa.keys() != wb.keys():
            return math.inf
        worst = max(worst, max((wa[k].float() - wb[k].float()).abs().max().item() for k in wa))
    return worst


def _exports_load(run_dir: Path) -> dict[str, Any]:
    import torch
    from transformers import AutoModelForCausalLM

    loaded = {}
    for part in ("policy", "reference"):
        model = AutoModelForCausalLM.from_pretrained(run_dir / part)
        params = list(model.parameters())
        loaded[part] = {
            "params_m": round(sum(p.numel() for p in params) / 1e6, 1),
            "plain_tensors": not any(hasattr(p, "to_local") for p in params),
            "finite": all(bool(torch.isfinite(p).all()) for p in params),
        }
    return loaded


def train_and_resume(
    work: Path, device: str = "cuda", head_dtype: str = "bfloat16", overrides: list[str] = TRAIN
) -> tuple[Check, Check]:
    """The 300M TR-DPO run (audited), then the same run resumed from its step-10 checkpoint.
    ``overrides`` must keep 20 steps and a checkpoint every 10 (the tests pass a tiny CPU run)."""
    runs: dict[str, Any] = {}

    def train() -> tuple[bool, dict[str, Any]]:
        whole = runs["whole"] = audited_run(work, "whole", device, head_dtype, overrides)
        from tralign.checkpoint import checkpoint_name

        ckpt = work / "whole" / "checkpoints" / checkpoint_name(10)
        resumed = audited_run(work, "resumed", device, head_dtype, overrides, ckpt=str(ckpt))
        summaries = {"whole": whole["summary"], "resumed": resumed["summary"]}
        diff = _max_export_diff(work / "whole", work / "resumed")
        loaded = _exports_load(work / "whole")
        details = {
            "status": {k: s.get("status") for k, s in summaries.items()},
            "global_step": {k: s.get("global_step") for k, s in summaries.items()},
            "ref_updates": {k: s.get("ref_updates") for k, s in summaries.items()},
            "finite": {k: finite_metrics(s) for k, s in summaries.items()},
            "resume_max_abs_diff": diff,
            "exports": loaded,
            "val_loss": {k: s.get("val", {}).get("val/loss") for k, s in summaries.items()},
        }
        losses = list(details["val_loss"].values())
        details["resume_val_loss_diff"] = abs(losses[0] - losses[1]) if None not in losses else None
        ok = (
            all(s.get("status") == "completed" and s.get("global_step") == 20 for s in summaries.values())
            and all(details["finite"].values())
            and diff <= RESUME_TOL
            and details["resume_val_loss_diff"] is not None
            and details["resume_val_loss_diff"] <= RESUME_TOL
            and all(p["plain_tensors"] and p["finite"] for p in loaded.values())
        )
        return ok, details

    def audit() -> tuple[bool, dict[str, Any]]:
        if "whole" not in runs:
            raise RuntimeError("no audited run (the training check failed before it finished)")
        facts = dict(runs["whole"]["audit"])
        val = runs["whole"]["summary"].get("val", {})
        facts["final_validation"] = {
            "ok": bool(val) and all(isinstance(v, (int, float)) and math.isfinite(v) for v in val.values()),
            **val,
        }
        return all(f["ok"] for f in facts.values()), facts

    return timed("tr_dpo_300m_fsdp2_resume", train), timed("in_loop_audit", audit)


def logprobs_bf16(device: str = "cuda") -> Check:
    """Head-only log-probs (the LM head on completion positions) against the full logits, both under
    bf16 autocast; the bf16-vs-fp32 gap of the full path is the noise floor the agreement is held to."""

    def check() -> tuple[bool, dict[str, Any]]:
        import torch
        from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

        from tralign.bench.presets import model_config
        from tralign.logprobs import model_sequence_logps, sequence_logps

        torch.manual_seed(0)
        config = GPTNeoXConfig(vocab_size=50304, **model_config("pythia-160m-arch"))
        model = GPTNeoXForCausalLM(config).to(device).eval()
        ids = torch.randint(0, 50304, (8, 512), device=device)
        attention = torch.ones_like(ids)
        attention[4:, 400:] = 0  # some right padding
        mask = torch.zeros_like(ids, dtype=torch.bool)
        mask[:, 256:] = True
        mask &= attention.bool()
        with torch.no_grad():
            with torch.autocast(device, dtype=torch.bfloat16):
                head, counts = model_sequence_logps(model, ids, attention, mask)
                full = sequence_logps(model(input_ids=ids, attention_mask=attention).logits, ids, mask)
            fp32 = sequence_logps(model(input_ids=ids, attention_mask=attention).logits.float(), ids, mask)
        gap = ((head.float() - full.float()).abs() / counts).max().item()
        noise = ((full.float() - fp32.float()).abs() / counts).max().item()
        tolerance = max(2e-2, noise)
        details = {"per_token_gap": gap, "bf16_vs_fp32_per_token": noise, "tolerance": tolerance}
        return gap <= tolerance and math.isfinite(gap), details

    return timed("head_only_logprobs_bf16", check)


def scale_bench(work: Path) -> Check:
    """1B as configured by default (4 pairs × 1024); 6.9B at 2 pairs with gradient checkpointing so
    that it fits an 80 GB GPU (bf16 weights, gradients, AdamW states and reference: ~69 GB)."""

    def check() -> tuple[bool, dict[str, Any]]:
        rows = []
        for arch, extra in (
            ("pythia-1b-arch", []),
            ("pythia-6.9b-arch", ["--batch", "2", "--gradient-checkpointing"]),
        ):
            out = work / f"scale_{arch}.json"
            args = [
                "-m",
                "tralign.scale_bench",
                "--device",
                "cuda",
                "--archs",
                arch,
                "--out",
                str(out),
                *extra,
            ]
            _child(args, work / f"scale_{arch}.log", timeout=300)
            rows += json.loads(out.read_text())["results"]
        ok = all(
            "error" not in r
            and r["mfu"] is not None
            and 0 < r["mfu"] < 1
            and r["peak_memory_gb"] > 0
            and 0 < r["ref_update_share_of_step"] < 1
            for r in rows
        )
        return ok, {"rows": rows}

    return timed("scale_bench_1b_6.9b", check)


def bench_160m(work: Path) -> Check:
    """``tralign.bench device=cuda`` on Pythia-160M's architecture (tralign against TRL)."""

    def check() -> tuple[bool, dict[str, Any]]:
        out = work / "bench.json"
        args = ["-m", "tralign.bench", "device=cuda", "model=pythia-160m-arch", "repeats=1"]
        _child([*args, f"out={out}", f"hydra.run.dir={work / 'bench'}"], work / "bench.log", timeout=420)
        report = json.loads(out.read_text())
        summary = report.get("summary", {})
        ratio = summary["tralign"]["tokens_per_s"] / summary["trl"]["tokens_per_s"]
        details = {
            "throughput_ratio_tralign_over_trl": round(ratio, 3),
            "tokens_per_s": {k: v.get("tokens_per_s") for k, v in summary.items()},
            "ref_update_median_s": {k: v.get("ref_update_median_s") for k, v in summary.items()},
            "peak_cuda_mb": {k: v.get("peak_cuda_mb") for k, v in summary.items()},
        }
        return ratio > 0 and math.isfinite(ratio), details

    return timed("bench_pythia_160m_cuda", check)


def as_dict(check: Check) -> dict[str, Any]:
    return asdict(check)
