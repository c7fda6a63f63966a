"""2 gloo ranks on CPU: ``model_sequence_logps`` under FSDP2 and FSDP1 against one process.

Run by tests/test_logprobs_sharded.py as ``python tests/helpers/sharded_logps_worker.py OUT``; every rank writes
``OUT/rank{r}.json``. For each architecture and sharding, rank r takes rows [2r, 2r+2) of a 4-row
batch (data parallel), computes log-probs with gradients (the policy path) and without (the reference
path), backpropagates its rows' weighted sum, and gathers the gradients of a few parameters. One
process's full forward on the whole batch is the truth: its log-probs row for row, its gradient
twice the gathered one (FSDP averages over the 2 ranks).
"""

from __future__ import annotations

import copy
import datetime
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the helpers package
from helpers.models import arch_batch, tiny_arch  # noqa: E402

WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0])
ARCHS = ("granite", "gemma2")  # an untied head with a logit scale; a tied head with a soft cap
GRAD_PARAMS = ("embed_tokens.weight", "layers.0.self_attn.q_proj.weight", "norm.weight", "lm_head.weight")


def _named(model: torch.nn.Module) -> dict[str, torch.nn.Parameter]:
    named = {
        n.replace("_fsdp_wrapped_module.", "").removeprefix("policy."): p
        for n, p in model.named_parameters(remove_duplicate=False)
    }
    return {n: p for n, p in named.items() if n.endswith(GRAD_PARAMS)}


def _truth(model, ids, am, lm):
    from tralign.logprobs import sequence_logps

    model.zero_grad()
    logps = sequence_logps(model(input_ids=ids, attention_mask=am).logits, ids, lm)[0]
    (logps * WEIGHTS).sum().backward()
    return logps.detach(), {n: p.grad.clone() for n, p in _named(model).items()}


class Holder(torch.nn.Module):
    """As Lightning's FSDP1 root (the LightningModule): the policy is a nested unit called inside."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, ids, am, lm):
        from tralign.logprobs import model_sequence_logps

        return model_sequence_logps(self.policy, ids, am, lm, chunk_size=3)[0]


def _check(run, named_grads, rows, truth, logits_widths) -> dict:
    from tralign.heads import _PLANS

    logps, frozen = run()
    want_logps, want_grads = truth
    grads = named_grads()
    return {
        "logps": float((logps - want_logps[rows]).abs().max()),
        "frozen": float((frozen - want_logps[rows]).abs().max()),
        "grads": {
            n: float((2 * g - want_grads[n]).abs().max() / want_grads[n].abs().max())
            for n, g in grads.items()
        },
        "grad_names": sorted(grads),
        "logits_widths": sorted(set(logits_widths)),  # (rows, width)
        "plans": [repr(p.logit_map) for p in _PLANS.values()],  # what this run's probe decided
    }


def _spy(widths: list):
    """Records (rows, logits width) of every forward: the probe's one row may be V wide, the batch's not."""
    return lambda module, args, output: widths.append(tuple(output.logits.shape[::2]))


def worker(rank: int, world: int, out: str, init: str) -> None:
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60)
    )
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    from tralign.heads import clear_cache, model_sequence_logps
    from tralign.strategies import ShardPlan, decoder_block, shard_model

    mesh = init_device_mesh("cpu", (world,))
    ids, am, lm = arch_batch()
    rows = slice(2 * rank, 2 * rank + 2)
    w = WEIGHTS[rows]
    report = {}
    for arch in ARCHS:
        base = tiny_arch(arch)
        truth = _truth(copy.deepcopy(base), ids, am, lm)
        # FSDP2: fully_shard every decoder block, then the whole model (tralign.strategies.shard_model),
        # with the parameters as stored and gathered in bf16 (trainer=fsdp2's default mixed_precision).
        for name, param_dtype in (("fsdp2", None), ("fsdp2-bf16", torch.bfloat16)):
            widths: list[int] = []
            clear_cache()  # each setting probes for itself (bf16-gathered weights included)
            model = copy.deepcopy(base)
            shard_model(model, ShardPlan(block=decoder_block(model), param_dtype=param_dtype), mesh)
            model.register_forward_hook(_spy(widths))

            def run2(model=model):
                logps = model_sequence_logps(model, ids[rows], am[rows], lm[rows], chunk_size=3)[0]
                (logps * w).sum().backward()
                with torch.no_grad():
                    frozen = model_sequence_logps(model, ids[rows], am[rows], lm[rows])[0]
                return logps.detach(), frozen

            def grads2(model=model):
                return {n: p.grad.full_tensor() for n, p in _named(model).items()}

            report[f"{arch}/{name}"] = _check(run2, grads2, rows, truth, widths)

        # FSDP1: each decoder block and the whole model a unit, use_orig_params, under a root module.
        widths1: list[int] = []
        clear_cache()
        policy = copy.deepcopy(base)
        policy.register_forward_hook(_spy(widths1))
        root = FSDP(
            Holder(policy),
            auto_wrap_policy=ModuleWrapPolicy({decoder_block(policy), type(policy)}),
            use_orig_params=True,
            device_id=torch.device("cpu"),
        )

        def run1(root=root):
            logps = root(ids[rows], am[rows], lm[rows])
            (logps * w).sum().backward()
            with torch.no_grad():
                frozen = root(ids[rows], am[rows], lm[rows])
            return logps.detach(), frozen

        def grads1(root=root):
            with FSDP.summon_full_params(root, with_grads=True):
                return {n: p.grad.clone() for n, p in _named(root).items()}

        report[f"{arch}/fsdp1"] = _check(run1, grads1, rows, truth, widths1)
    Path(out, f"rank{rank}.json").write_text(json.dumps(report, indent=1))
    dist.destroy_process_group()


if __name__ == "__main__":
    torch.set_num_threads(1)
    mp.spawn(worker, args=(2, sys.argv[1], f"file://{sys.argv[1]}/store"), nprocs=2, join=True)
