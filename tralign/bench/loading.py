"""Host memory of loading a checkpoint into a sharded run.

``python -m tralign.bench.loading model=pythia-410m-arch devices=2 [dtype=float32] [dir=DIR] [keep=false]``

Saves a random-init model of the preset's architecture (tralign/bench/presets.py; Pythia's padded
vocabulary) as a safetensors checkpoint folder, then loads it through the training path (the policy,
the module with its frozen copies, Lightning's ModelParallelStrategy = ``trainer=fsdp2``) on
``devices`` gloo ranks launched by torchrun, with ``model.keep_initial=false``. Each rank prints
the peak host RSS above its post-import baseline (VmHWM, reset after the imports) and the load
time; the last line is ``peak host RSS per rank / fp32 model size: X`` (the largest rank's peak).

Also the worker of tests/test_loading.py (``role=worker ckpts=A,B dump=DIR``: gathered weights).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

VOCAB = 50304  # Pythia's padded embedding rows


def parse(argv: list[str]) -> dict[str, str]:
    """``key=value`` arguments; anything else is an error naming it."""
    out = {}
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise SystemExit(f"tralign.bench.loading: expected key=value, got {arg!r}")
        out[key] = value
    return out


def _status(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS, VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def _reset_peak() -> None:
    with contextlib.suppress(OSError):  # not Linux: the peak then includes the imports
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS


def save_checkpoint(preset: str, folder: Path, dtype: str) -> int:
    """A random-init GPT-NeoX of ``preset``'s architecture saved to ``folder``; returns its parameter count."""
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from tralign.bench.presets import model_config

    config = GPTNeoXConfig(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, **model_config(preset))
    torch.manual_seed(0)
    model = GPTNeoXForCausalLM(config).to(getattr(torch, dtype))
    model.save_pretrained(folder, safe_serialization=True)
    return sum(p.numel() for p in model.parameters())


def launch(preset: str, devices: int, dtype: str, folder: Path) -> None:
    if not (folder / "config.json").is_file():
        t = time.perf_counter()
        save_checkpoint(preset, folder, dtype)
        print(f"saved {preset} ({dtype}) to {folder} in {time.perf_counter() - t:.1f} s", flush=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}"]
    cmd += ["-m", "tralign.bench.loading", "role=worker", f"ckpts={folder}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        sys.stderr.write(result.stderr[-6000:])
        raise SystemExit(result.returncode)
    reports = [
        json.loads(line.removeprefix("RESULT "))
        for line in result.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    size = 4 * reports[0]["params"]
    for r in sorted(reports, key=lambda r: r["rank"]):
        print(
            f"rank {r['rank']}: peak host RSS above baseline {r['peak'] / 2**20:.0f} MiB, "
            f"load time {r['seconds']:.2f} s ({r['route']})"
        )
    print(f"fp32 model size: {size / 2**20:.0f} MiB ({reports[0]['params']:,} parameters)")
    print(f"peak host RSS per rank / fp32 model size: {max(r['peak'] for r in reports) / size:.2f}")


def worker(folders: list[str], dump: str | None) -> None:
    """One rank (under torchrun): load each checkpoint through the fsdp2 training path."""
    import lightning as L
    import torch

    from tralign.models import build_policy
    from tralign.reference import ReferenceSchedule
    from tralign.strategies import build_strategy, full_state_dicts

    try:  # absent before tralign.loading existed: measure the old path with the same script
        from tralign.loading import build_policy_for_strategy
    except ImportError:
        build_policy_for_strategy = None

    Module, Probe = _module_class(), _probe_class()
    strategy_cfg = {"name": "fsdp2", "mixed_precision": None}
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    keep_initial = dump is not None  # the test also checks the starting policy
    for index, folder in enumerate(folders):
        model_cfg = {"name_or_path": folder, "keep_initial": keep_initial}
        baseline = _status("VmRSS")
        _reset_peak()
        started = time.perf_counter()
        if build_policy_for_strategy is not None:
            policy, deferred = build_policy_for_strategy(model_cfg, None, strategy_cfg)
            extra: dict[str, Any] = {"deferred": deferred}
        else:
            policy, extra = build_policy(model_cfg, None), {}
        strategy, plan = build_strategy(strategy_cfg, policy, devices=world, num_nodes=1)
        module = Module(
            policy,
            loss="dpo",
            loss_params={"beta": 0.1},
            schedule=ReferenceSchedule("soft", 0.5, 1),
            optim={"lr": 1e-6},
            max_steps=0,
            keep_initial=keep_initial,
            shard_plan=plan,
            **extra,
        )
        probe = Probe(started)
        trainer = L.Trainer(
            accelerator="cpu",
            devices=world,
            strategy=strategy,
            max_steps=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            callbacks=[probe],
        )
        trainer.fit(module, train_dataloaders=[{}])
        params = sum(p.numel() for p in module.policy.parameters())
        route = "old" if not extra else ("slices" if deferred.entries is not None else "rank0")
        result = {"rank": rank, "peak": probe.peak - baseline, "seconds": probe.seconds, "params": params}
        result["route"] = route
        print("RESULT " + json.dumps(result), flush=True)
        if dump is not None:
            names = ["policy", "reference"] + (["initial"] if module.initial is not None else [])
            states = full_state_dicts(module, trainer.strategy.model, names)
            buffers = {k: v.detach().cpu() for k, v in module.policy.named_buffers()}
            if rank == 0:
                torch.save({"states": states, "buffers": buffers, "route": route}, Path(dump) / f"{index}.pt")
        del trainer, module, policy


def _module_class():
    from tralign.module import AlignmentModule

    class Module(AlignmentModule):
        def training_step(self, batch, batch_idx):  # never runs: max_steps=0
            raise AssertionError("the loading bench trains nothing")

    return Module


def _probe_class():
    import lightning as L

    class Probe(L.Callback):
        """Reads the peak when Lightning's setup is done: sharded, materialised and loaded."""

        def __init__(self, started: float):
            self.started = started

        def on_fit_start(self, trainer, pl_module):
            self.seconds = time.perf_counter() - self.started
            self.peak = _status("VmHWM")

    return Probe


def main(argv: list[str]) -> None:
    args = parse(argv)
    if args.get("role") == "worker":
        worker(args["ckpts"].split(","), args.get("dump"))
        return
    unknown = set(args) - {"model", "devices", "dtype", "dir"}
    if unknown:
        raise SystemExit(
            f"tralign.bench.loading: unknown keys {sorted(unknown)}; valid: model devices dtype dir"
        )
    preset, devices, dtype = (
        args.get("model", "pythia-410m-arch"),
        int(args.get("devices", 2)),
        args.get("dtype", "float32"),
    )
    folder = (
        Path(args["dir"]) if "dir" in args else Path(tempfile.mkdtemp(prefix="tralign-loading-")) / preset
    )
    launch(preset, devices, dtype, folder)


if __name__ == "__main__":
    main(sys.argv[1:])
