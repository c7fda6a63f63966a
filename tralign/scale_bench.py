"""One-GPU training-step benchmark on random-init Pythia architectures (no download).

    python -m tralign.scale_bench --device cuda --archs pythia-1b-arch,pythia-2.8b-arch,pythia-6.9b-arch --out scale.json
    python -m tralign.scale_bench --device cpu --archs tiny --steps 2 --warmup 1     # the plumbing, on CPU

For each architecture: a policy and a moving reference built from the config (same weights), one
TR-DPO training step exactly as ``AlignmentModule`` does it (one (2B, T) policy forward for chosen +
rejected, a ``no_grad`` reference forward, the DPO loss, backward, gradient clipping at 2, AdamW),
then the soft reference update (α = 0.6) timed on its own. Reported per architecture: tokens/s,
step time (median, min, max over the timed steps), model FLOPs utilisation, peak memory, and the
reference update's time and achieved memory bandwidth (it reads the reference and the policy and
writes the reference: 3 × the parameter bytes).

Precision: ``bf16`` (default) keeps parameters, gradients and AdamW states in bf16 so that 6.9B fits
one GPU with its reference (2 + 2 + 4 bytes/param + 2 for the reference = 10 bytes/param = 69 GB);
``bf16-mixed`` is fp32 parameters with bf16 autocast, what ``trainer=fsdp`` uses sharded (20
bytes/param with the fp32 reference: 1B and 2.8B fit one 80 GB GPU, 6.9B does not).

FLOPs per step (Kaplan/Megatron accounting, causal attention counted in full, embedding lookup
free): policy forward + backward ``6·N·tok + 12·L·h·T·tok + 6·V·h·M``, reference forward
``2·N·tok + 4·L·h·T·tok + 2·V·h·M``, with N the parameters of the decoder blocks and final norm (no
input embedding, no LM head), tok = 2·B·T tokens, and M the positions that predict a completion
token: tralign runs the LM head on those only (``tralign.logprobs.model_sequence_logps``). MFU =
those FLOPs / step time / the device's peak dense bf16 FLOP/s (``--peak-tflops``; by default
looked up from the device name in ``PEAK_TFLOPS``).

Peak memory is that of the training steps and updates only: the counter is reset once the models
are built (in their final dtype, so no fp32 copy exists on the way).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from typing import Any

import torch

from tralign.bench.presets import PRESETS, model_config
from tralign.losses import dpo_loss
from tralign.module import AlignmentModule
from tralign.reference import update_reference_

# Dense (no 2:4 sparsity) bf16 tensor-core TFLOP/s by device name, most specific first (first match
# wins). NVIDIA's datasheets print the sparse figure, twice these: H100 SXM 1,979, H100 PCIe 1,513,
# H100 NVL 1,671 (per GPU), H200 SXM 1,979, H200 NVL 1,671; A100 (SXM and PCIe) 312 dense; L40S 362;
# A10 125. torch names: "NVIDIA H100 PCIe", "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H200" ...
PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("GH200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("A10", 125.0),
)
VOCAB = 50304  # Pythia's padded vocabulary (the architectures: tralign.bench.presets)


def build(arch: str, device: torch.device, dtype: torch.dtype, seq: int):
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    config = GPTNeoXConfig(
        vocab_size=VOCAB,
        attn_implementation="sdpa",
        **model_config(arch, {"max_position_embeddings": max(2048, seq)}),
    )
    torch.manual_seed(0)
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # built in its final dtype: no transient fp32 copy
    try:
        with torch.device(device):
            policy = GPTNeoXForCausalLM(config)
            reference = GPTNeoXForCausalLM(config)
    finally:
        torch.set_default_dtype(default)
    reference.load_state_dict(policy.state_dict())
    reference.eval().requires_grad_(False)
    policy.config.use_cache = False
    return policy, reference


def step_flops(policy: torch.nn.Module, batch: int, seq: int, head_positions: int) -> float:
    """Model FLOPs of one TR-DPO step on ``batch`` pairs of ``seq`` tokens whose LM head runs on
    ``head_positions`` positions (all 2·batch rows together): see the module docstring."""
    cfg = policy.config
    head = policy.get_output_embeddings().weight.numel()  # V·h
    n = sum(p.numel() for p in policy.parameters()) - head - policy.get_input_embeddings().weight.numel()
    tokens = 2 * batch * seq
    attention = cfg.num_hidden_layers * cfg.hidden_size * seq * tokens
    return (6 + 2) * n * tokens + (12 + 4) * attention + (6 + 2) * head * head_positions


def mfu(flops: float, step_s: float, peak_tflops: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the device's peak (None when unknown)."""
    return flops / step_s / (peak_tflops * 1e12) if peak_tflops else None


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_arch(arch: str, args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    mixed = args.precision == "bf16-mixed"
    dtype = torch.float32 if mixed or device.type == "cpu" else torch.bfloat16
    if device.type == "cuda":
        torch.cuda.empty_cache()
    policy, reference = build(arch, device, dtype, args.seq)
    build_gb = torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else None
    _reset_peak(device)  # what the steps need on top of the models, not the build
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    optimizer = torch.optim.AdamW(policy.parameters(), lr=1e-6, betas=(0.9, 0.95), eps=1e-8)
    rows = 2 * args.batch  # chosen rows then rejected rows
    generator = torch.Generator(device="cpu").manual_seed(0)
    input_ids = torch.randint(0, VOCAB, (rows, args.seq), generator=generator).to(device)
    loss_mask = torch.zeros(rows, args.seq, dtype=torch.bool, device=device)
    loss_mask[:, args.seq // 2 :] = True  # completion = second half of each sequence
    batch = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "loss_mask": loss_mask}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=mixed)

    def train_step() -> None:
        with autocast:
            logps, _ = AlignmentModule._logps(policy, batch)
            with torch.no_grad():
                ref = AlignmentModule._logps(reference, batch)[0]
        n = args.batch
        out = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta=0.05)
        out.losses.mean().backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 2.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    times = []
    for i in range(args.warmup + args.steps):
        _sync(device)
        start = time.perf_counter()
        train_step()
        _sync(device)
        if i >= args.warmup:
            times.append(time.perf_counter() - start)
    update_times = []
    for i in range(args.warmup + args.ref_updates):
        _sync(device)
        start = time.perf_counter()
        update_reference_(reference, policy, 0.6)
        _sync(device)
        if i >= args.warmup:
            update_times.append(time.perf_counter() - start)
    step = statistics.median(times)
    update = statistics.median(update_times)
    param_bytes = sum(p.numel() * p.element_size() for p in policy.parameters())
    peak = args.peak_tflops or _peak_tflops(device)
    flops = step_flops(policy, args.batch, args.seq, int(loss_mask[:, 1:].sum()))
    result = {
        "arch": arch,
        "params_b": round(sum(p.numel() for p in policy.parameters()) / 1e9, 3),
        "precision": args.precision,
        "batch_pairs": args.batch,
        "seq": args.seq,
        "tokens_per_s": round(2 * args.batch * args.seq / step, 1),
        "step_s_median": round(step, 4),
        "step_s_min": round(min(times), 4),
        "step_s_max": round(max(times), 4),
        "mfu": round(mfu(flops, step, peak), 4) if peak else None,
        "peak_tflops": peak,
        "models_memory_gb": round(build_gb, 2) if build_gb is not None else None,
        "peak_memory_gb": round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        if device.type == "cuda"
        else None,
        "ref_update_ms": round(update * 1e3, 3),
        "ref_update_share_of_step": round(update / step, 4),
        "ref_update_gb_per_s": round(3 * param_bytes / update / 1e9, 1),
    }
    return result


def _peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    return peak_tflops_for(torch.cuda.get_device_name(device))


def peak_tflops_for(name: str) -> float | None:
    """Dense bf16 peak of the device called ``name`` (``torch.cuda.get_device_name``), or None."""
    return next((v for k, v in PEAK_TFLOPS if k in name), None)


def table(results: list[dict[str, Any]]) -> str:
    head = "| arch | params (B) | tokens/s | step s (median, min–max) | MFU | peak mem GB | ref update ms (share, GB/s) |"
    lines = [head, "|" + "---|" * 7]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['error']} |" + " |" * 5)
            continue
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "–"
        mem = r["peak_memory_gb"] if r["peak_memory_gb"] is not None else "–"
        lines.append(
            f"| {r['arch']} | {r['params_b']} | {r['tokens_per_s']:,.0f} | {r['step_s_median']} "
            f"({r['step_s_min']}–{r['step_s_max']}) | {mfu} | {mem} | {r['ref_update_ms']} "
            f"({r['ref_update_share_of_step']:.2%}, {r['ref_update_gb_per_s']}) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(prog="python -m tralign.scale_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--archs", default="pythia-1b-arch,pythia-2.8b-arch,pythia-6.9b-arch")
    parser.add_argument("--precision", choices=("bf16", "bf16-mixed"), default="bf16")
    parser.add_argument("--batch", type=int, default=4, help="pairs per step (2x sequences)")
    parser.add_argument("--seq", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ref-updates", type=int, default=20)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--peak-tflops", type=float, default=None)
    parser.add_argument("--out", default=None, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    unknown = [a for a in args.archs.split(",") if a not in PRESETS]
    if unknown:
        parser.error(f"--archs: unknown {', '.join(unknown)}; known: {', '.join(PRESETS)}")
    results = []
    for arch in args.archs.split(","):
        try:
            results.append(bench_arch(arch, args))
        except torch.OutOfMemoryError:
            results.append({"arch": arch, "error": f"out of memory at {args.batch} pairs x {args.seq}"})
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    device_name = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    )
    print(f"# {time.strftime('%Y-%m-%d')} · {device_name} · torch {torch.__version__} · {args.precision}")
    print(table(results))
    if args.out:
        payload = {
            "device": device_name,
            "date": time.strftime("%Y-%m-%d"),
            "args": vars(args),
            "results": results,
        }
        with open(args.out, "w") as fh:
            json.dump(payload, fh, indent=2)
    return results


if __name__ == "__main__":
    main()
