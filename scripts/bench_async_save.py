"""CPU bench: torch.distributed.checkpoint.save vs async_save for one checkpoint-sized state.

    python scripts/bench_async_save.py [--mb 400] [--repeats 3] [--dir /tmp]

One process, gloo. For each repeat: the time ``dcp.save`` blocks training, the time ``async_save``
blocks (staging: a copy of every tensor into host memory) and how long its background write takes,
and the extra host memory the staged copy holds (peak RSS growth). A checkpoint here is a dict of
fp32 tensors standing in for policy + reference + AdamW moments.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=400.0, help="checkpoint size in MB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args(argv)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29611")
    dist.init_process_group("gloo", rank=0, world_size=1)
    n = int(args.mb * 2**20 / 4 / 16)
    state = {f"t{i}": torch.randn(n) for i in range(16)}
    root = tempfile.mkdtemp(dir=args.dir, prefix="bench-async-save-")
    rows = {"save_blocking_s": [], "async_blocking_s": [], "async_total_s": [], "async_extra_rss_mb": []}
    try:
        for r in range(args.repeats):
            t = time.perf_counter()
            dcp.save(state, checkpoint_id=f"{root}/sync{r}")
            rows["save_blocking_s"].append(time.perf_counter() - t)
            before = _rss_mb()
            t = time.perf_counter()
            future = dcp.async_save(state, checkpoint_id=f"{root}/async{r}")
            rows["async_blocking_s"].append(time.perf_counter() - t)
            rows["async_extra_rss_mb"].append(_rss_mb() - before)
            future.result()
            rows["async_total_s"].append(time.perf_counter() - t)
    finally:
        shutil.rmtree(root, ignore_errors=True)
        dist.destroy_process_group()
    result = {"mb": args.mb, **{k: round(statistics.median(v), 3) for k, v in rows.items()}}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
