"""Peak memory of full-fine-tuning TR-DPO against LoRA TR-DPO, one invocation, CPU:

    python -m tralign.bench.lora_memory [--arch pythia-160m-arch] [--steps 3] [--seq 64] [--pairs 2] [--r 16]

Each variant runs in its own process (so each peak RSS is its own): a random-init model of the
architecture, AlignmentModule with a soft moving reference (α = 0.6 every step) and the kept
starting policy, a few DPO steps (forward, backward, AdamW, reference update) on random tokens.
Prints one table: peak RSS, RSS after imports, and summary.json's params.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

PYTHIA_VOCAB = 50304  # Pythia's embedding rows (50,277 tokens padded)


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB


def worker(variant: str, args: argparse.Namespace) -> dict:
    import lightning as L
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tralign.bench.presets import _PYTHIA, PRESETS
    from tralign.lora.adapters import apply_lora
    from tralign.lora.config import LoraSettings
    from tralign.lora.params import param_counts
    from tralign.module import AlignmentModule
    from tralign.reference import ReferenceSchedule, update_reference_

    torch.set_num_threads(1)
    after_imports = _rss_gb()
    torch.manual_seed(0)
    config = GPTNeoXConfig(
        vocab_size=PYTHIA_VOCAB, **_PYTHIA, **PRESETS[args.arch], tie_word_embeddings=False
    )
    policy = GPTNeoXForCausalLM(config)
    if variant == "lora":
        settings = LoraSettings(args.r, float(args.r), 0.0, "all-linear", "svd", args.r)
        policy = apply_lora(policy, settings, moving_reference=True)
    alpha = 0.6
    module = AlignmentModule(
        policy,
        loss="dpo",
        loss_params={"beta": 0.1},
        schedule=ReferenceSchedule("soft", alpha, 1),
        optim={"lr": 1e-5},
        max_steps=args.steps,
        keep_initial=True,
    )
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    optimizer = module.configure_optimizers()["optimizer"]
    n, t = 2 * args.pairs, args.seq
    batch = {
        "input_ids": torch.randint(0, PYTHIA_VOCAB, (n, t)),
        "attention_mask": torch.ones(n, t, dtype=torch.long),
        "loss_mask": torch.cat([torch.zeros(n, t // 2), torch.ones(n, t - t // 2)], 1).long(),
    }
    module.train()
    for _ in range(args.steps):
        out, _ = module._pair_step(batch)
        out.losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        update_reference_(module.reference, module.policy, alpha)
    return {
        "variant": variant,
        "peak_rss_gb": round(_rss_gb(), 3),
        "rss_after_imports_gb": round(after_imports, 3),
        "params": param_counts(module),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="pythia-160m-arch")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=2)
    parser.add_argument("--r", type=int, default=16)
    parser.add_argument("--worker", choices=("full", "lora"))
    args, _ = parser.parse_known_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args)))
        return []
    results = []
    for variant in ("full", "lora"):
        cmd = [
            sys.executable,
            "-m",
            "tralign.bench.lora_memory",
            *(argv or sys.argv[1:]),
            "--worker",
            variant,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    print(
        f"{args.arch}, {args.steps} DPO steps, {args.pairs} pairs x {args.seq} tokens, soft reference + start kept"
    )
    print("| variant | peak RSS (GB) | RSS after imports (GB) | total | trainable | reference_extra |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in results:
        p = r["params"]
        print(
            f"| {r['variant']} | {r['peak_rss_gb']} | {r['rss_after_imports_gb']} | "
            f"{p['total']:,} | {p['trainable']:,} | {p['reference_extra']:,} |"
        )
    return results


if __name__ == "__main__":
    main()
