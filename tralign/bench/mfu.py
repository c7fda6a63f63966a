"""Model FLOPs utilisation against the machine's own matmul peak, measured in the bench itself.

Model FLOPs of one DPO step (the same count for every framework, whatever it computes on the way;
GPT-NeoX, d = hidden, f = intermediate, L = layers, V = vocabulary; biases, norms and element-wise
work not counted, as usual):

- per token, the backbone's matmuls: ``2 * L * (4 d^2 + 2 d f)`` forward (QKV, attention output,
  MLP up and down);
- per row of n real tokens, attention scores and values: ``4 * L * n^2 * d`` forward (full square);
- per *completion* token, the LM head: ``2 * d * V`` forward (the loss needs no other position's
  log-prob: a framework that projects every position does extra work, not model work);
- the policy runs forward and backward (3x the forward), the reference forward only (1x): 4x in all.

The peak is the best FLOP/s of GEMMs of the model's own shapes (rows = the step's padded token
count) in the run's dtype, timed in the bench's worker process; MFU = achieved model FLOP/s / peak.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

PASSES = 4  # policy forward (1) + backward (2) + reference forward (1)


def gemm_flops(m: int, k: int, n: int) -> int:
    """(m, k) @ (k, n): one multiply and one add per term."""
    return 2 * m * k * n


def forward_flops(config: Mapping[str, Any], tokens: int, completion_tokens: int, tokens_sq: int) -> int:
    """Forward model FLOPs of one pass over a batch with ``tokens`` real tokens, ``completion_tokens``
    positions whose log-prob counts and ``tokens_sq`` = sum over rows of (real tokens in the row)^2."""
    d, f = int(config["hidden_size"]), int(config["intermediate_size"])
    layers, vocab = int(config["num_hidden_layers"]), int(config["vocab_size"])
    backbone = 2 * layers * (4 * d * d + 2 * d * f) * tokens
    attention = 4 * layers * d * tokens_sq
    head = 2 * d * vocab * completion_tokens
    return backbone + attention + head


def step_flops(config: Mapping[str, Any], tokens: int, completion_tokens: int, tokens_sq: int) -> int:
    """Model FLOPs of one DPO step: policy forward + backward, reference forward."""
    return PASSES * forward_flops(config, tokens, completion_tokens, tokens_sq)


def gemm_shapes(config: Mapping[str, Any], rows: int) -> list[tuple[int, int, int]]:
    """The model's own GEMMs for ``rows`` token positions: QKV, attention output, MLP up, MLP down,
    LM head (the head's rows capped at 4096: its (rows, V) output is the largest tensor)."""
    d, f, vocab = int(config["hidden_size"]), int(config["intermediate_size"]), int(config["vocab_size"])
    return [(rows, d, 3 * d), (rows, d, d), (rows, d, f), (rows, f, d), (min(rows, 4096), d, vocab)]


def measure_peak(
    shapes: Sequence[tuple[int, int, int]],
    *,
    dtype: str = "float32",
    device: str = "cpu",
    repeats: int = 5,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, Any]:
    """Best FLOP/s of ``a @ b`` for each (m, k, n) (one untimed warm-up, then the fastest of
    ``repeats``), and the best over shapes: ``{"peak_flops_per_s", "dtype", "by_shape": [...]}``."""
    import torch

    torch_dtype = getattr(torch, dtype)
    by_shape = []
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(torch_dtype)
        b = torch.randn(k, n, device=device).to(torch_dtype)
        times = []
        for i in range(repeats + 1):
            if device == "cuda":
                torch.cuda.synchronize()
            start = clock()
            a @ b
            if device == "cuda":
                torch.cuda.synchronize()
            if i:  # the first call warms up (allocator, kernel selection)
                times.append(clock() - start)
        best = min(times)
        by_shape.append({"shape": [m, k, n], "seconds": best, "flops_per_s": gemm_flops(m, k, n) / best})
        del a, b
    peak = max(s["flops_per_s"] for s in by_shape)
    return {"peak_flops_per_s": peak, "dtype": dtype, "by_shape": by_shape}


def mfu(run_results: Sequence[Mapping[str, Any]], config: Mapping[str, Any], peak_flops_per_s: float) -> dict:
    """Achieved model FLOP/s of a framework's timed steps (all repetitions pooled) and its MFU."""
    flops = 0
    seconds = 0.0
    for r in run_results:
        for tok, comp, sq in zip(r["tokens"], r["completion_tokens"], r["tokens_sq"], strict=True):
            flops += step_flops(config, tok, comp, sq)
        seconds += sum(r["step_s"])
    achieved = flops / seconds
    return {"model_flops_per_s": achieved, "mfu_vs_matmul_peak": achieved / peak_flops_per_s}
