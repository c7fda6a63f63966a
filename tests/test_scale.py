"""The sharded path on CPU: strategy configs, the shard-local reference update (no collectives, no
allocations), 1-process ≡ 2-process training, exact resume after SIGKILL, atomic checkpoints and
the consolidated export."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK, compose_cfg
from helpers.dispatch import run_workers
from helpers.models import tiny_model, tiny_neox
from helpers.paths import REPO
from helpers.processes import TORCHRUN, run_cli, run_python, sigkill_after_checkpoint
from helpers.runs import RUN, TWO_PROC, assert_same, train_here

from tralign.checkpoint import PARTIAL, AtomicCheckpoint, replace_path
from tralign.config import validate
from tralign.errors import ConfigError
from tralign.strategies import ShardPlan, build_strategy, decoder_block, strategy_problems


# --- strategies ----------------------------------------------------------------------------------
def test_decoder_block_is_found_for_neox_and_llama() -> None:
    assert decoder_block(tiny_neox()).__name__ == "GPTNeoXLayer"
    llama = tiny_model("llama", vocab_size=64, num_hidden_layers=1, num_key_value_heads=1)
    assert decoder_block(llama).__name__ == "LlamaDecoderLayer"
    with pytest.raises(ValueError, match="decoder block"):
        decoder_block(torch.nn.Linear(2, 2))


def test_fsdp_config_builds_lightnings_fsdp_strategy_wrapping_blocks_and_whole_copies() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    cfg = compose_cfg(["trainer=fsdp", "trainer.strategy.activation_checkpointing=true"])
    model = tiny_neox()
    strategy, plan = build_strategy(cfg.trainer.strategy, model, devices=8, num_nodes=1)
    assert isinstance(strategy, FSDPStrategy) and plan is None
    units = strategy.kwargs["auto_wrap_policy"]._module_classes
    assert {c.__name__ for c in units} == {"GPTNeoXLayer", "GPTNeoXForCausalLM"}
    checkpointed = strategy._activation_checkpointing_kwargs["auto_wrap_policy"]._module_classes
    assert {c.__name__ for c in checkpointed} == {"GPTNeoXLayer"}
    assert strategy.kwargs["use_orig_params"] is True
    assert strategy.sharding_strategy.name == "FULL_SHARD"
    assert strategy._state_dict_type == "sharded"
    assert cfg.trainer.precision == "bf16-mixed"


def test_fsdp2_config_builds_model_parallel_strategy_with_one_data_parallel_group() -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    cfg = compose_cfg(["trainer=fsdp2", "trainer.num_nodes=2"])
    strategy, plan = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=4, num_nodes=2)
    assert isinstance(strategy, ModelParallelStrategy)
    assert (strategy._data_parallel_size, strategy._tensor_parallel_size) == (8, 1)
    assert plan == ShardPlan(block=plan.block, param_dtype=torch.bfloat16, reshard_after_forward=True)
    assert plan.block.__name__ == "GPTNeoXLayer"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["trainer=fsdp", "trainer.accelerator=cpu"], "trainer=fsdp needs GPUs"),
        (["trainer=fsdp2", "trainer.strategy.mixed_precision=fp8"], "trainer.strategy.mixed_precision"),
        (
            ["trainer=fsdp2", "+trainer.strategy.shard_degree=2"],
            "trainer.strategy.shard_degree: unknown for fsdp2",
        ),
        (["trainer=fsdp", "trainer.strategy.name=zero3"], "trainer.strategy.name: must be one of"),
        (["trainer=fsdp", "trainer.strategy.sharding_strategy=HALF"], "trainer.strategy.sharding_strategy"),
    ],
)
def test_bad_strategy_settings_are_refused_naming_the_key(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate(compose_cfg(overrides))


def test_plain_strategy_names_pass_through() -> None:
    assert strategy_problems("ddp", "cpu") == []
    assert build_strategy("auto", tiny_neox(), devices=1, num_nodes=1) == ("auto", None)


# --- atomic checkpoints --------------------------------------------------------------------------
def test_replace_path_swaps_files_and_folders(tmp_path: Path) -> None:
    (tmp_path / "new").write_text("new")
    (tmp_path / "ckpt").write_text("old")
    replace_path(tmp_path / "new", tmp_path / "ckpt")
    assert (tmp_path / "ckpt").read_text() == "new" and not (tmp_path / "new").exists()
    (tmp_path / "dir.partial").mkdir()
    (tmp_path / "dir.partial" / "shard").write_text("2")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "shard").write_text("1")
    replace_path(tmp_path / "dir.partial", tmp_path / "dir")
    assert (tmp_path / "dir" / "shard").read_text() == "2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "dir"]


class _DyingTrainer:
    """Just enough of a Trainer for AtomicCheckpoint._save_checkpoint; its save dies halfway."""

    is_global_zero = True
    global_step = 7
    ckpt_path = None
    loggers: list = []

    class strategy:  # noqa: N801
        @staticmethod
        def barrier(name: str | None = None) -> None:
            pass

    def __init__(self, die: bool):
        self.die = die

    def save_checkpoint(self, path: Path, weights_only: bool = False) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        if self.die:
            raise KeyboardInterrupt("killed during the save")
        torch.save({"step": self.global_step}, path)


def test_a_save_killed_halfway_leaves_the_previous_checkpoint_intact(tmp_path: Path) -> None:
    callback = AtomicCheckpoint(tmp_path, every_n_steps=1)
    good = tmp_path / "step=6.ckpt"
    torch.save({"step": 6}, good)
    with pytest.raises(KeyboardInterrupt):
        callback._save_checkpoint(_DyingTrainer(die=True), str(tmp_path / "step=7.ckpt"))
    assert torch.load(good, weights_only=True) == {"step": 6}
    assert not (tmp_path / "step=7.ckpt").exists()  # only the .partial, never a torn checkpoint
    assert (tmp_path / f"step=7.ckpt{PARTIAL}").exists()
    callback._save_checkpoint(_DyingTrainer(die=False), str(tmp_path / "step=7.ckpt"))
    assert torch.load(tmp_path / "step=7.ckpt", weights_only=True) == {"step": 7}
    assert not (tmp_path / f"step=7.ckpt{PARTIAL}").exists()


# --- the shard-local reference update ------------------------------------------------------------
SHARD_SCRIPT = r"""
import datetime, types
import torch, torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from tralign.reference import update_reference_
from tralign.strategies import ShardPlan, decoder_block, full_state_dicts, shard_model

from helpers.dispatch import Ops, finish, record_collectives, seeded_pair, spawn

def worker(rank, world, out, init):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=30))
    mesh = init_device_mesh("cpu", (world,))
    policy, reference, pol0, ref0 = seeded_pair()
    plan = ShardPlan(block=decoder_block(policy))
    for model in (policy, reference):
        shard_model(model, plan, mesh)
    barrier = dist.barrier
    calls = record_collectives()
    report = {}
    for mode, alpha in (("soft", 0.3), ("hard", 1.0)):
        ops = Ops()
        if rank == 1:  # rank 0 takes no part: a collective here would wait on it, then time out
            with ops:
                update_reference_(reference, policy, alpha)
        barrier()
        if rank == 0:
            update_reference_(reference, policy, alpha)
        report[mode] = {"ops": ops.names, "collectives": list(calls)}
        barrier()
        state = full_state_dicts(types.SimpleNamespace(reference=reference), None, ["reference"])["reference"]
        if rank == 0:
            expect = {k: ref0[k] + alpha * (pol0[k] - ref0[k]) for k in ref0}
            report[mode]["max_error"] = max((state[k] - expect[k]).abs().max().item() for k in expect)
        ref0 = {k: ref0[k] + alpha * (pol0[k] - ref0[k]) for k in ref0}
        calls.clear()
        barrier()
    finish(out, rank, report)

if __name__ == "__main__":
    spawn(worker, 2)
"""


@pytest.mark.slow
def test_shard_local_update_makes_no_collective_and_no_allocation(tmp_path: Path) -> None:
    reports = run_workers(SHARD_SCRIPT, tmp_path, world=2)
    for mode in ("soft", "hard"):
        ops = reports[1][mode]["ops"]
        assert ops, "the dispatch recorder saw nothing: it would miss collectives too"
        assert reports[1][mode]["collectives"] == []
        assert not [op for op in ops if "c10d" in op], ops
        # Only in-place updates and views of existing storage: nothing the size of the model.
        allocating = [op for op in ops if not op.split(".")[0].endswith("_") and op not in VIEW_OPS]
        assert allocating == [], ops
        assert reports[0][mode]["max_error"] < 1e-6


VIEW_OPS = {"aten::detach", "aten::alias", "aten::view", "aten::_unsafe_view", "aten::view.default"}


# --- end to end: 1 vs 2 processes, SIGKILL and resume --------------------------------------------
def _train(tmp_path: Path, name: str, *args: str) -> Path:
    result = run_cli("tralign.train", [*RUN, *args, f"hydra.run.dir={tmp_path / name}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    return tmp_path / name


def _train_here(tmp_path: Path, name: str, *args: str) -> Path:
    return train_here(tmp_path / name, [*RUN, *args])


def _kill_after(tmp_path: Path, name: str, checkpoint: str, *args: str) -> Path:
    """A run that would train for long, SIGKILLed (all its processes) once ``checkpoint`` is written."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO)}
    run_dir = tmp_path / name
    cmd = [
        sys.executable,
        "-m",
        "tralign.train",
        *RUN,
        *args,
        "trainer.max_steps=100000",
        f"hydra.run.dir={run_dir}",
    ]
    return sigkill_after_checkpoint(
        cmd, tmp_path, env, run_dir / "checkpoints" / checkpoint, tmp_path / f"{name}.log"
    )


ONE_PROCESS = [
    "data.global_batch_size=8",
    "data.batch_size=4",  # 2 micro-batches of 4 accumulated: resume is exact across accumulation too
    "checkpoint.every_n_steps=1",
    "trainer.max_steps=8",
]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The uninterrupted one-process soft run at 8 pairs for 8 steps, checkpointing every step: the
    result the resumed runs and the 2-process run are held to (shared: one launch, not three)."""
    return _train_here(tmp_path_factory.mktemp("one-process"), "whole", *ONE_PROCESS)


@pytest.mark.slow
@pytest.mark.xdist_group("scale_one_process")
@pytest.mark.e2e
def test_single_process_resume_after_sigkill_is_exact(tmp_path: Path, one_process: Path) -> None:
    """One run SIGKILLed once step 5's checkpoint is written, resumed from step 4 (mid-epoch) and
    from step 5 (the end of the first epoch): both bitwise equal to the uninterrupted run."""
    args = ONE_PROCESS[:3]
    saved = _kill_after(tmp_path, "killed", "step-000005.ckpt", *args)
    for checkpoint in ("step-000004.ckpt", "step-000005.ckpt"):
        name = f"resumed-{checkpoint.removesuffix('.ckpt').replace('=', '')}"  # no '=' in hydra.run.dir
        resumed = _train_here(tmp_path, name, *ONE_PROCESS, f"ckpt_path='{saved.parent / checkpoint}'")
        assert_same(one_process, resumed, atol=0.0)  # bitwise: same data, same order, same reference
        summary = json.loads((resumed / "summary.json").read_text())
        assert summary["ref_updates"] == 8


@pytest.mark.slow
@pytest.mark.xdist_group("scale_one_process")
@pytest.mark.e2e
def test_two_process_fsdp2_matches_one_process_soft_via_torchrun(tmp_path: Path, one_process: Path) -> None:
    """torchrun launches the ranks itself (as on a cluster); Lightning sees it and spawns nothing.
    The same data.global_batch_size on both: one process accumulates 2 micro-batches of at most 4
    rows (data.batch_size), two processes run 4 rows each; they train on the same rows step for step."""
    result = run_python(
        [*TORCHRUN, "-m", "tralign.train", *RUN, *TWO_PROC, "data.global_batch_size=8", "data.batch_size=4",
         "trainer.max_steps=8", f"hydra.run.dir={tmp_path / 'two'}"],
        tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    two = tmp_path / "two"
    assert_same(one_process, two, atol=1e-5)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["ref_updates"] == 8
    cut = ("global_batch_size", "micro_batch_size", "accumulate_grad_batches", "world_size")
    assert tuple(summary[k] for k in cut) == (8, 4, 1, 2)
    assert tuple(json.loads((one_process / "summary.json").read_text())[k] for k in cut) == (8, 4, 2, 1)
    # The sharded run's checkpoints are folders of per-rank shards; its export is one whole model.
    assert (two / "checkpoints" / "step-000008.ckpt" / "__1_0.distcp").is_file()
    _assert_loads_on_one_process(two / "policy")


def _assert_loads_on_one_process(folder: Path) -> None:
    from transformers import AutoModelForCausalLM

    assert sorted(p.suffix for p in folder.iterdir() if p.suffix in {".bin", ".pt", ".safetensors"}) == [
        ".safetensors"
    ]
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert not any(hasattr(p, "to_local") for p in model.parameters())


@pytest.mark.slow
@pytest.mark.e2e
def test_two_process_fsdp2_hard_update_resumed_after_sigkill_matches_one_process(tmp_path: Path) -> None:
    hard = ["ref_update=hard", "tau=3"]
    one = _train_here(tmp_path, "one", *hard, "data.batch_size=8", "trainer.max_steps=8")
    saved = _kill_after(tmp_path, "killed", "step-000004.ckpt", *hard, *TWO_PROC, "data.batch_size=4")
    assert saved.is_dir() and not list(saved.parent.glob(f"*{PARTIAL}"))
    resumed = _train(
        tmp_path,
        "resumed",
        *hard,
        *TWO_PROC,
        "data.batch_size=4",
        "trainer.max_steps=8",
        f"ckpt_path='{saved}'",
    )
    assert_same(one, resumed, atol=1e-5)
    assert json.loads((resumed / "summary.json").read_text())["ref_updates"] == 2  # after steps 3 and 6


# --- beyond one machine --------------------------------------------------------------------------
@pytest.mark.parametrize(("launcher", "tasks"), [("submitit_slurm", 1), ("tralign_slurm", 8)])
def test_slurm_launcher_configs_compose(launcher: str, tasks: int) -> None:
    from hydra import compose, initialize_config_dir

    from tralign.runstamp import register

    register()
    with initialize_config_dir(config_dir=str(REPO / "tralign" / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert cfg.hydra.launcher.tasks_per_node == tasks


@pytest.mark.slow
@pytest.mark.e2e
def test_sweep_through_submitit_runs_each_point_as_its_own_job(tmp_path: Path) -> None:
    """submitit's local executor: the same launcher code path as SLURM, minus the cluster."""
    args = [a for a in SHRINK if not a.startswith("trainer.max_steps")]
    result = run_cli(
        "tralign.train",
        ["-m", "hydra/launcher=submitit_local", f"hydra.sweep.dir={tmp_path / 'sweep'}", *args]
        + ["trainer.max_steps=2", "data.golden_eval=null", "seed=0,1"],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        summary = json.loads((tmp_path / "sweep" / job / "summary.json").read_text())
        assert (summary["status"], summary["seed"], summary["global_step"]) == ("completed", int(job), 2)
    assert list((tmp_path / "sweep" / ".submitit").glob("*/*_result.pkl"))  # submitit ran them


def test_run_stamp_is_shared_by_the_ranks_of_one_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    from tralign.runstamp import run_stamp

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc123")
    assert run_stamp().endswith("/torchrun-abc123")
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")  # torchrun without --standalone/--rdzv-id
    monkeypatch.setenv("SLURM_JOB_ID", "777")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert run_stamp() == "slurm-777"  # no date: a requeued job finds its folder again the next day
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert "slurm" not in run_stamp() and "torchrun" not in run_stamp()


@pytest.mark.e2e
def test_scale_bench_plumbing_on_cpu(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The GPU benchmark's code path on a tiny architecture (numbers are not checked: CPU)."""
    from tralign import scale_bench

    out = tmp_path / "scale.json"
    argv = [
        "--device",
        "cpu",
        "--archs",
        "tiny",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--seq",
        "32",
        "--batch",
        "1",
    ]
    results = scale_bench.main([*argv, "--ref-updates", "2", "--out", str(out)])
    (row,) = results
    assert row["arch"] == "tiny" and row["tokens_per_s"] > 0 and row["ref_update_ms"] > 0
    assert json.loads(out.read_text())["results"] == results
    printed = capsys.readouterr().out.splitlines()
    assert printed[1].startswith("| arch |") and printed[-1].startswith("| tiny |")
    # The FLOPs, MFU and peak-table arithmetic: tests/test_scale_bench.py.


def test_ckpt_path_may_name_a_run_folder(tmp_path: Path) -> None:
    from tralign.checkpoint import resolve_ckpt_path
    from tralign.errors import TralignError

    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    (ckpts / "step=3.ckpt").write_bytes(b"")
    (ckpts / "last.ckpt").symlink_to("step=3.ckpt")
    assert resolve_ckpt_path(tmp_path / "run") == str(ckpts / "step=3.ckpt")
    (ckpts / "preempt-step4.ckpt").write_bytes(b"")  # a SIGTERM save after the last periodic one
    (ckpts / "step=6.ckpt.partial").write_bytes(b"")  # a killed write never counts
    assert resolve_ckpt_path(tmp_path / "run") == str(ckpts / "preempt-step4.ckpt")
    assert resolve_ckpt_path(str(ckpts / "step=3.ckpt")) == str(ckpts / "step=3.ckpt")
    assert resolve_ckpt_path(None) is None
    with pytest.raises(TralignError, match="neither a checkpoint nor a run folder"):
        resolve_ckpt_path(tmp_path)


def test_checkpoint_keep_deletes_all_but_the_newest_periodic_ones(tmp_path: Path) -> None:
    callback = AtomicCheckpoint(tmp_path, every_n_steps=1, keep=2)
    trainer = _DyingTrainer(die=False)
    trainer.ckpt_path = str(tmp_path / "step=1.ckpt")  # the run resumed from this one: kept
    (tmp_path / "preempt-step1.ckpt").write_bytes(b"")  # not periodic: never pruned
    for step in (1, 2, 3, 4):
        trainer.global_step = step
        callback._save_checkpoint(trainer, str(tmp_path / f"step={step}.ckpt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "preempt-step1.ckpt",
        "step=1.ckpt",
        "step=3.ckpt",
        "step=4.ckpt",
    ]


def test_fsdp1_norm_clipping_moves_from_lightning_to_the_module() -> None:
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    from tralign.strategies import take_fsdp1_clip_norm

    kwargs = {"gradient_clip_val": 2.0}
    assert take_fsdp1_clip_norm(FSDPStrategy(), kwargs) == 2.0 and "gradient_clip_val" not in kwargs
    by_value = {"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"}
    assert take_fsdp1_clip_norm(FSDPStrategy(), by_value) is None and by_value["gradient_clip_val"] == 0.5
    ddp = {"gradient_clip_val": 2.0}
    assert take_fsdp1_clip_norm(DDPStrategy(), ddp) is None and ddp == {"gradient_clip_val": 2.0}
