"""For the worker processes of the shard-local update tests (tests/test_scale.py, tests/test_mesh.py;
their PYTHONPATH holds the checkout and tests/, see :func:`run_workers`): record every aten op a block of code runs, and every torch.distributed collective it calls, on a
pair of tiny GPT-NeoX models (policy seed 0, reference seed 1)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from helpers.models import tiny_neox
from tralign.gpu_check.ops import OpRecorder as Ops  # noqa: F401  (re-exported for the workers)

COLLECTIVES = ["all_reduce", "all_gather", "all_gather_into_tensor", "all_gather_object", "reduce_scatter",
               "reduce_scatter_tensor", "broadcast", "broadcast_object_list", "barrier", "send", "recv",
               "isend", "irecv", "all_to_all", "all_to_all_single", "gather", "scatter", "reduce"]  # fmt: skip


def record_collectives() -> list[str]:
    """Wrap every ``torch.distributed`` collective so that each call appends its name to the list
    returned (the calls still run)."""
    calls: list[str] = []
    for name in COLLECTIVES:
        original = getattr(dist, name)
        setattr(dist, name, lambda *a, _n=name, _f=original, **k: (calls.append(_n), _f(*a, **k))[1])
    return calls


def seeded_pair() -> tuple[torch.nn.Module, torch.nn.Module, dict, dict]:
    """Policy (seed 0) and reference (seed 1), with copies of their starting state dicts."""
    policy = tiny_neox(0, vocab_size=64, max_position_embeddings=64)
    reference = tiny_neox(1, vocab_size=64, max_position_embeddings=64)
    pol0 = {k: v.clone() for k, v in policy.state_dict().items()}
    ref0 = {k: v.clone() for k, v in reference.state_dict().items()}
    return policy, reference, pol0, ref0


def spawn(worker, world: int) -> None:
    """The worker script's ``__main__``: ``world`` gloo ranks meeting in a file store in ``argv[1]``."""
    import sys

    import torch.multiprocessing as mp

    out = sys.argv[1]
    mp.spawn(worker, args=(world, out, f"file://{out}/store"), nprocs=world, join=True)


def finish(out: str, rank: int, report: dict) -> None:
    """Write this rank's report for :func:`run_workers` and leave the process group."""
    import json

    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump(report, fh)
    dist.destroy_process_group()


def run_workers(script: str, tmp_path, world: int) -> list[dict]:
    """Run a worker script (in its own process: ``spawn`` starts the ranks) and return the ranks'
    reports in rank order."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = Path(tmp_path) / "workers.py"
    path.write_text(script)
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(repo), str(repo / "tests")])}
    result = subprocess.run(
        [sys.executable, str(path), str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads((Path(tmp_path) / f"rank{r}.json").read_text()) for r in range(world)]
