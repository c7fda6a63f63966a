"""One AdamW step on a preset's parameters, in-process: fused vs foreach vs torch's CPU default loop,
alternating (ABC CBA ...); the fastest and the median per kernel.

``python -m tralign.bench.adamw_step [model=pythia-14m-arch] [repeats=8]`` (vocabulary: Pythia's).
"""

from __future__ import annotations

import statistics
import sys
import time


def main(argv: list[str]) -> None:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tralign.bench.presets import model_config

    args = dict(a.split("=", 1) for a in argv)
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(
        GPTNeoXConfig(vocab_size=50280, **model_config(args.get("model", "pythia-14m-arch")))
    )
    params = list(model.parameters())
    for p in params:
        p.grad = torch.randn_like(p)
    kernels = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}
    optimizers = {k: torch.optim.AdamW(params, lr=1e-6, **kw) for k, kw in kernels.items()}
    for optimizer in optimizers.values():
        optimizer.step()  # state initialised outside the timing
    times: dict[str, list[float]] = {k: [] for k in kernels}
    for rep in range(int(args.get("repeats", 8))):
        for k in list(kernels) if rep % 2 == 0 else list(kernels)[::-1]:
            start = time.perf_counter()
            optimizers[k].step()
            times[k].append(time.perf_counter() - start)
    n = sum(p.numel() for p in params)
    for k, ts in times.items():
        print(
            f"{k}: fastest {1000 * min(ts):.0f} ms, median {1000 * statistics.median(ts):.0f} ms ({n / 1e6:.1f} M parameters)"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
