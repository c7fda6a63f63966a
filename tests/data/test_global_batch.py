"""The global batch is the experiment's setting (tralign/data/batch_plan.py): micro-batch and
accumulation are derived from it and the world size, every cut of it trains on the same rows step
for step, a global batch that does not divide is refused in one line. The end-to-end check (one vs
two processes with the same data.global_batch_size) is tests/test_scale.py's torchrun test."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from helpers.config import compose_cfg
from helpers.paths import CONF

from tralign.config import validate
from tralign.data.batch_plan import BatchPlan, confirm_world, plan_batches, plan_from_cfg
from tralign.data.sampler import LengthGroupedBatchSampler
from tralign.errors import ConfigError


@pytest.mark.parametrize(
    ("global_batch", "cap", "world", "micro", "accumulate"),
    [
        (64, 8, 8, 8, 1),  # the presets on one node
        (64, 8, 32, 2, 1),  # trainer.num_nodes=4: 2 pairs per GPU, still 64 per step
        (64, 8, 1, 8, 8),  # one GPU: 8 micro-batches accumulated
        (64, 4, 8, 4, 2),  # the Llama-3 preset's memory cap
        (48, 8, 4, 6, 2),  # 12 per rank: the largest divisor under the cap
        (7, 8, 1, 7, 1),
        (7, 2, 1, 1, 7),
    ],
)
def test_plan_cuts_the_global_batch(global_batch, cap, world, micro, accumulate):
    plan = plan_batches(global_batch, cap, 1, world)
    assert plan == BatchPlan(global_batch, micro, accumulate, world)
    assert plan.micro_batch * plan.accumulate * plan.world == global_batch


def test_legacy_plan_keeps_batch_size_and_accumulation():
    assert plan_batches(None, 8, 2, 4) == BatchPlan(64, 8, 2, 4)
    assert plan_from_cfg(compose_cfg([])) == BatchPlan(8, 8, 1, 1)  # SHRINK: data.batch_size=8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            ["data.global_batch_size=64", "trainer.devices=3", "trainer.accelerator=cpu"],
            r"data.global_batch_size=64 does not divide over 3 ranks .* multiple of 3",
        ),
        (
            ["data.global_batch_size=64", "trainer.accumulate_grad_batches=2"],
            "trainer.accumulate_grad_batches=2: derived from data.global_batch_size",
        ),
        (["data.global_batch_size=0"], "data.global_batch_size: must be an integer >= 1"),
    ],
)
def test_bad_global_batches_are_refused_in_one_line(overrides, message):
    with pytest.raises(ConfigError, match=message) as caught:
        validate(compose_cfg(overrides))
    assert len(caught.value.problems) == 1 and "\n" not in str(caught.value)


def test_a_fixed_global_batch_is_refused_when_the_launch_runs_another_world():
    plan = plan_batches(64, 8, 1, 8)
    assert confirm_world(plan, 8, True) is plan
    with pytest.raises(ConfigError, match="cut for 8 ranks .* the launch runs 16"):
        confirm_world(plan, 16, True)
    assert confirm_world(plan_batches(None, 8, 1, 1), 2, False) == BatchPlan(16, 8, 1, 2)


def test_presets_keep_their_global_batch_of_64_on_any_node_count():
    presets = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem != "embedded_baseline")
    assert presets
    for name in presets:
        for nodes in (1, 4):
            cfg = compose_cfg([f"experiment={name}", f"trainer.num_nodes={nodes}"], shrink=False)
            world = int(cfg.trainer.get("devices", 1)) * nodes if cfg.trainer.devices != "auto" else nodes
            plan = plan_from_cfg(cfg, world)
            assert plan.global_batch == 64, (name, nodes, plan)
            assert plan.micro_batch <= int(cfg.data.batch_size)


def _step_rows(global_rows: int, micro: int, accumulate: int, world: int, lengths, epoch: int):
    """The rows of every optimizer step of ``epoch``, all ranks and micro-batches together."""
    ranks = []
    for rank in range(world):
        sampler = LengthGroupedBatchSampler(
            lengths, micro, seed=3, num_replicas=world, rank=rank, accumulate=accumulate, mega_batch=2
        )
        assert sampler.global_batch_rows == global_rows
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler) and all(len(b) == micro for b in batches)
        ranks.append(batches)
    steps = len(ranks[0]) // accumulate
    return [
        sorted(i for r in ranks for b in r[s * accumulate : (s + 1) * accumulate] for i in b)
        for s in range(steps)
    ]


@pytest.mark.parametrize("group_by_length", [True, False])
def test_every_cut_of_a_global_batch_trains_on_the_same_rows_step_for_step(group_by_length):
    lengths = [random.Random(i).randint(3, 40) for i in range(203)]
    if not group_by_length:
        lengths = [5] * len(lengths)
    cuts = [(8, 1, 1), (4, 2, 1), (4, 1, 2), (2, 2, 2), (1, 2, 4), (1, 1, 8)]  # micro, accumulate, world
    for epoch in (0, 1):
        reference = _step_rows(8, *cuts[0], lengths, epoch)
        assert len(reference) == 203 // 8
        for cut in cuts[1:]:
            assert _step_rows(8, *cut, lengths, epoch) == reference, cut


def test_resume_skips_whole_optimizer_steps_of_micro_batches():
    sampler = LengthGroupedBatchSampler(list(range(40)), 4, seed=0, num_replicas=1, rank=0, accumulate=2)
    full = list(sampler)
    assert len(full) == len(sampler) == 10  # 5 steps x 2 micro-batches
    sampler.resume_at(0, 4)  # a checkpoint after optimizer step 2
    assert list(sampler) == full[4:]


def test_data_configs_declare_the_global_batch_key():
    for path in sorted((CONF / "data").glob("*.yaml")):
        assert "\nglobal_batch_size: null" in Path(path).read_text(), path.name
