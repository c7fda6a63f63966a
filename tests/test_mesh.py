"""fsdp2's device mesh: the data-parallel size from the real world size (devices=auto on 2 ranks),
hybrid sharding (HSDP: replicate × shard) with a shard-local reference update on 4 ranks as 2 × 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.config import compose_cfg
from helpers.dispatch import run_workers
from helpers.models import tiny_neox

from tralign.config import validate
from tralign.errors import ConfigError
from tralign.strategies import ShardPlan, build_strategy, shard_mesh


def test_fsdp2_takes_the_data_parallel_size_from_the_world_size_when_devices_are_not_counted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lightning.fabric.plugins.environments import LightningEnvironment
    from lightning.pytorch.strategies import ModelParallelStrategy

    monkeypatch.setattr(ModelParallelStrategy, "_setup_distributed", lambda self: None)  # no process group
    cfg = compose_cfg(["trainer=fsdp2"])
    for devices in ("auto", -1, "4"):
        strategy, _ = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=devices, num_nodes=2)
        assert strategy._data_parallel_size == "auto"  # Lightning alone would take num_nodes (2)
        strategy.cluster_environment = LightningEnvironment()
        strategy.cluster_environment.set_world_size(8)
        strategy._setup_distributed()
        assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)
    counted, _ = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=4, num_nodes=2)
    assert counted._data_parallel_size == 8


def test_hybrid_keys_build_the_plan_and_bad_values_are_refused_naming_the_key() -> None:
    cfg = compose_cfg(["trainer=fsdp2", "trainer.strategy.hybrid=true", "trainer.strategy.shard_size=4"])
    validate(cfg)
    _, plan = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=8, num_nodes=2)
    assert (plan.hybrid, plan.shard_size) == (True, 4)
    _, plain = build_strategy(
        compose_cfg(["trainer=fsdp2"]).trainer.strategy, tiny_neox(), devices=8, num_nodes=1
    )
    assert (plain.hybrid, plain.shard_size) == (False, None)
    for overrides, message in [
        (["trainer.strategy.shard_size=2"], "trainer.strategy.shard_size: only with trainer.strategy.hybrid"),
        (["trainer.strategy.hybrid=true", "trainer.strategy.shard_size=0"], "trainer.strategy.shard_size"),
        (["trainer.strategy.hybrid=maybe"], "trainer.strategy.hybrid"),
    ]:
        with pytest.raises(ConfigError, match=message):
            validate(compose_cfg(["trainer=fsdp2", *overrides]))


class _Mesh:
    device_type = "cpu"

    def size(self) -> int:
        return 6


def test_shard_mesh_is_the_data_parallel_mesh_without_hybrid_and_refuses_a_shard_size_that_does_not_divide():
    mesh = _Mesh()
    assert shard_mesh(mesh, ShardPlan(block=torch.nn.Linear), num_nodes=3) is mesh
    with pytest.raises(ConfigError, match="trainer.strategy.shard_size: 4 ranks .* world size 6"):
        shard_mesh(mesh, ShardPlan(block=torch.nn.Linear, hybrid=True, shard_size=4), num_nodes=1)


# --- HSDP on 4 gloo ranks as 2 × 2: the update stays shard-local ------------------------------------
HSDP_SCRIPT = r"""
import datetime, types
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Replicate, Shard
from tralign.reference import update_reference_
from tralign.strategies import ShardPlan, decoder_block, full_state_dicts, shard_mesh, shard_model

from helpers.dispatch import Ops, finish, record_collectives, seeded_pair, spawn

def worker(rank, world, out, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    flat = init_device_mesh("cpu", (world,))
    policy, reference, pol0, ref0 = seeded_pair()
    plan = ShardPlan(block=decoder_block(policy), hybrid=True)
    mesh = shard_mesh(flat, plan, num_nodes=2)  # 2 "nodes" of 2 ranks
    for model in (policy, reference):
        shard_model(model, plan, mesh)
    weight = reference.gpt_neox.layers[0].mlp.dense_h_to_4h.weight
    report = {"mesh": list(mesh.shape), "names": list(mesh.mesh_dim_names),
              "placements": [str(p) for p in weight.placements],
              "local_rows": weight.to_local().shape[0], "rows": weight.shape[0]}
    calls = record_collectives()
    ops = Ops()
    alpha = 0.3
    if rank == 3:  # the others wait in a gloo barrier: a collective here would hang, then time out
        with ops:
            update_reference_(reference, policy, alpha)
    report["ops"], report["collectives"] = ops.names, list(calls)
    calls.clear()
    torch.distributed.distributed_c10d.barrier()
    if rank != 3:
        update_reference_(reference, policy, alpha)
    report["local"] = weight.to_local().flatten()[:4].tolist()
    state = full_state_dicts(types.SimpleNamespace(reference=reference), None, ["reference"])["reference"]
    if rank == 0:
        expect = {k: alpha * pol0[k] + (1 - alpha) * ref0[k] for k in ref0}
        report["max_error"] = max((state[k] - expect[k]).abs().max().item() for k in expect)
    finish(out, rank, report)

if __name__ == "__main__":
    spawn(worker, 4)
"""


@pytest.mark.slow
def test_hsdp_2x2_reference_update_is_shard_local_and_follows_the_rule(tmp_path: Path) -> None:
    reports = run_workers(HSDP_SCRIPT, tmp_path, world=4)
    first = reports[0]
    assert first["mesh"] == [2, 2] and first["names"] == ["replicate", "shard"]
    assert first["placements"] == ["R", "S(0)"]  # Replicate(), Shard(0)
    assert first["local_rows"] * 2 == first["rows"]  # sharded in two, not in four
    # Replicas (ranks 0 and 2, 1 and 3) hold the same shard; the two shards differ.
    assert reports[0]["local"] == reports[2]["local"] and reports[1]["local"] == reports[3]["local"]
    assert reports[0]["local"] != reports[1]["local"]
    ops = reports[3]["ops"]
    assert ops, "the dispatch recorder saw nothing: it would miss collectives too"
    assert reports[3]["collectives"] == [] and not [op for op in ops if "c10d" in op], ops
    assert first["max_error"] < 1e-6  # gathered reference = α·θ + (1 − α)·θ_ref


# --- end to end: devices=auto on 2 CPU ranks, hybrid (2 replicas x 1 shard) ----------------------
# Checked in the launch of tests/test_guards.py::
# test_two_process_fsdp2_sigterm_mid_validation_checkpoints_together_and_resumes_exactly (one 2-rank
# launch checks pre-emption, and devices=auto on a hybrid mesh against one process).
