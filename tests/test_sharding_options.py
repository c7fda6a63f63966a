"""The moving reference under every sharding option the configs offer: after each hard update
(α = 1, τ = 1) the reference's next forward sees the policy's weights.

Each option trains through the real entry point (``tralign.train.run``, the function behind
``python -m tralign.train``) for 5 steps with a hard update after every step. Two measures:

- the gap: at each training step the policy and the reference run on the same batch; with a hard
  update after the previous step (and no optimizer step since), their per-sequence log-probs must be
  equal. Step 0 is the trivial case (both are the starting weights); steps 1–4 each follow an update.
- end to end: the final validation (after the 5th update) has ``val/rewards/chosen``, ``rejected``
  and ``margins`` equal to 0, while the policy has really moved from its start
  (``val/init/rewards/margins`` ≠ 0).

CPU is scarce, so all 2-rank options run in ONE torchrun launch (:data:`LOOP` loops over them in
each rank, one ``run`` per option, sharing the process group); the single device trains in the
test's own process (:func:`train_options_here`, the same loop). FSDP1 runs on CPU through ``tests/test_fsdp1_cpu.py``'s shim.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK, compose_cfg
from helpers.fsdp1_shim import shim_env
from helpers.models import tiny_neox
from helpers.paths import CONF
from helpers.processes import TORCHRUN

from tralign.module import frozen_copy
from tralign.strategies import build_strategy

LOOP = r'''
"""Test-only: train each option named on the command line in turn, in this process (2 ranks under
torchrun, or one process), recording the policy-reference log-prob gap at every training step."""
import json
import sys
from pathlib import Path

import fsdp1_cpu_shim  # noqa: F401  (FSDP1 on CPU; a no-op for the other strategies)
import torch
from hydra import compose, initialize_config_dir

from tralign.module import AlignmentModule
from tralign.train import run

out, conf = Path(sys.argv[1]), sys.argv[2]
common, options = json.loads(sys.argv[3]), json.loads(sys.argv[4])
gaps = []
_pair_step = AlignmentModule._pair_step


def pair_step(self, batch):
    loss, pair = _pair_step(self, batch)
    if self.training:  # training steps only; validation is checked through summary.json
        gap = torch.cat([pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected])
        gaps.append([int(self.trainer.global_step), gap.detach().abs().max().item()])
    return loss, pair


AlignmentModule._pair_step = pair_step
for name, overrides in options.items():
    gaps.clear()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        cfg = compose("train", overrides=common + overrides)
    try:
        summary = run(cfg, out / name)
        result = {"gaps": list(gaps), "val": summary["val"], "ref_updates": summary["ref_updates"]}
    except Exception as err:  # recorded, so one broken option does not hide the others
        result = {"gaps": list(gaps), "error": f"{type(err).__name__}: {err}"[:400]}
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    (out / f"{name}-rank{rank}.json").write_text(json.dumps(result))
'''

STEPS = 5
COMMON = [
    a
    for a in SHRINK
    if not a.startswith(("trainer.max_steps", "data.batch_size", "trainer.val_check_interval"))
] + [
    f"trainer.max_steps={STEPS}",
    "trainer.val_check_interval=100",
    "checkpoint.every_n_steps=100",
    "data.batch_size=4",
    "data.golden_eval=null",
    "trainer.precision=32-true",
    "ref_update=hard",
    "tau=1",  # a hard update after every optimizer step
]
TWO_RANKS = ["trainer.accelerator=cpu", "trainer.devices=2"]
FSDP2 = ["trainer=fsdp2", "trainer.strategy.mixed_precision=null", *TWO_RANKS]
OPTIONS = {
    **{
        f"fsdp-{s}": ["trainer=fsdp", f"trainer.strategy.sharding_strategy={s}", *TWO_RANKS]
        for s in ("FULL_SHARD", "SHARD_GRAD_OP", "HYBRID_SHARD", "NO_SHARD")
    },
    "fsdp2-reshard": [*FSDP2, "trainer.strategy.reshard_after_forward=true"],
    "fsdp2-keep-gathered": [*FSDP2, "trainer.strategy.reshard_after_forward=false"],
    "ddp": ["trainer=ddp", *TWO_RANKS],
}
SINGLE = {"single-device": ["trainer.accelerator=cpu"]}


def launch_options(tmp_path: Path, options: dict[str, list[str]], *, ranks: int) -> dict[str, list[dict]]:
    """Run :data:`LOOP` over ``options`` (one launch: torchrun for 2 ranks, plain Python for one);
    returns ``{option: [rank 0's result, rank 1's …]}``."""
    env = shim_env(tmp_path, "clips")
    script = tmp_path / "train_options.py"
    script.write_text(LOOP)
    launcher = TORCHRUN if ranks == 2 else []
    cmd = [sys.executable, *launcher, str(script), str(tmp_path), str(CONF), json.dumps(COMMON)]
    result = subprocess.run(
        [*cmd, json.dumps(options)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return {
        name: [json.loads((tmp_path / f"{name}-rank{r}.json").read_text()) for r in range(ranks)]
        for name in options
    }


def assert_reference_moved(results: dict[str, list[dict]]) -> None:
    """Every option: a gap of 0 after every update on every rank, and rewards of 0 at the end."""
    report = {
        name: [[float(f"{g:.3g}") for _, g in r["gaps"]] for r in ranks] for name, ranks in results.items()
    }
    print(json.dumps(report))  # the gap after each update, per option and rank (pytest -s)
    rewards = {
        name: {k: ranks[0]["val"][f"val/rewards/{k}"] for k in ("chosen", "rejected", "margins")}
        for name, ranks in results.items()
        if "val" in ranks[0]
    }
    print(json.dumps(rewards))  # the final validation's rewards (rank 0; the ranks agree: sync_dist)
    failed = {}
    for name, ranks in results.items():
        for rank, result in enumerate(ranks):
            if "error" in result:
                failed[f"{name} rank {rank}"] = result["error"]
                continue
            steps = [step for step, _ in result["gaps"]]
            assert steps == list(range(STEPS)), (name, steps)  # one training step each, in order
            worst = max(gap for _, gap in result["gaps"])
            val = result["val"]
            rewards = [abs(val[f"val/rewards/{k}"]) for k in ("chosen", "rejected", "margins")]
            if worst > 1e-6 or max(rewards) > 1e-6:
                failed[f"{name} rank {rank}"] = f"gaps {report[name][rank]}, val rewards {rewards}"
            # The policy really moved: a gap of 0 is not the trivial "nothing trained".
            assert abs(val["val/init/rewards/margins"]) > 1e-4, (name, val)
            assert result["ref_updates"] == STEPS, (name, result["ref_updates"])
    assert not failed, failed


@pytest.mark.slow
@pytest.mark.e2e
def test_reference_moves_under_every_two_rank_sharding_option(tmp_path: Path) -> None:
    """fsdp FULL_SHARD / SHARD_GRAD_OP / HYBRID_SHARD / NO_SHARD, fsdp2 with and without
    resharding after forward, and ddp, on 2 gloo ranks: one torchrun launch."""
    assert_reference_moved(launch_options(tmp_path, OPTIONS, ranks=2))


def train_options_here(tmp_path: Path, options: dict[str, list[str]]) -> dict[str, list[dict]]:
    """:data:`LOOP` for one process, in this one (no launch, no shim: no FSDP1 here); the same
    ``{option: [rank 0's result]}``."""
    from tralign.module import AlignmentModule
    from tralign.train import run

    gaps: list[list] = []
    pair_step_of = AlignmentModule._pair_step

    def pair_step(self, batch):
        loss, pair = pair_step_of(self, batch)
        if self.training:  # as LOOP: training steps only
            gap = torch.cat([pair.policy_chosen - pair.ref_chosen, pair.policy_rejected - pair.ref_rejected])
            gaps.append([int(self.trainer.global_step), gap.detach().abs().max().item()])
        return loss, pair

    results = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(AlignmentModule, "_pair_step", pair_step)
        for name, overrides in options.items():
            gaps.clear()
            summary = run(compose_cfg(COMMON + overrides, shrink=False), tmp_path / name)
            results[name] = [
                {"gaps": list(gaps), "val": summary["val"], "ref_updates": summary["ref_updates"]}
            ]
    return results


@pytest.mark.slow
@pytest.mark.e2e
def test_reference_moves_on_a_single_device(tmp_path: Path) -> None:
    assert_reference_moved(train_options_here(tmp_path, SINGLE))  # in-process: no launch to pay for


# --- the frozen copies' own plan -----------------------------------------------------------------
# FSDP1: the frozen copies' strategy frees the gathered parameters after each forward and keeps the
# policy's process groups and flat shards (NO_SHARD gathers nothing; HYBRID_SHARD already frees).
FROZEN_FSDP1 = {
    "FULL_SHARD": "FULL_SHARD",
    "SHARD_GRAD_OP": "FULL_SHARD",
    "HYBRID_SHARD": "HYBRID_SHARD",
    "NO_SHARD": "NO_SHARD",
}


@pytest.mark.parametrize("sharding", list(FROZEN_FSDP1))
def test_fsdp1_frozen_copies_reshard_after_forward_whatever_the_policy_does(sharding: str) -> None:
    """The wrap policy of ``trainer=fsdp``: the policy's units get the configured strategy, the
    frozen copies' units :data:`FROZEN_FSDP1`; both copies are cut into the same units."""
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    policy = tiny_neox()
    copies = torch.nn.ModuleDict({"policy": policy, "reference": frozen_copy(policy)})
    strategy, _ = build_strategy(
        {"name": "fsdp", "sharding_strategy": sharding}, policy, devices=2, num_nodes=1
    )
    wrap = strategy.kwargs["auto_wrap_policy"]
    wrap = ModuleWrapPolicy(wrap) if isinstance(wrap, set) else wrap  # what Lightning makes of a set
    units = wrap._run_policy(copies, set(), {"sharding_strategy": strategy.sharding_strategy})
    expected = {"policy": sharding, "reference": FROZEN_FSDP1[sharding]}
    for name, copy in copies.items():
        chosen = [units[m]["sharding_strategy"].name for m in copy.modules() if m in units]
        assert chosen == [expected[name]] * 3, (name, chosen)  # the whole copy and its 2 decoder blocks


def test_fsdp2_frozen_plan_reshards_after_forward() -> None:
    from tralign.strategies import ShardPlan

    for keep in (True, False):
        plan = ShardPlan(block=torch.nn.Linear, param_dtype=torch.bfloat16, reshard_after_forward=keep)
        assert plan.frozen() == ShardPlan(block=torch.nn.Linear, param_dtype=torch.bfloat16)
