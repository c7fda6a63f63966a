"""Preflight for cluster runs: room on disk for the checkpoints a run will write (from the model's
size, checkpoint.keep, the .partial and a pre-emption save), the collective time-out passed to the
strategies, and Hydra multirun with several ranks per job refused before anything is built."""

from __future__ import annotations

import shutil
from collections import namedtuple
from datetime import timedelta
from pathlib import Path

import pytest
from helpers.config import compose_cfg
from helpers.models import tiny_neox
from helpers.processes import run_cli

import tralign.safety
from tralign.config import validate
from tralign.errors import ConfigError, TralignError
from tralign.launch import multirun_problem
from tralign.safety import check_checkpoint_space, checkpoint_slots
from tralign.strategies import build_strategy
from tralign.train import run

GB = 2**30
Usage = namedtuple("Usage", "total used free")


# --- disk space ----------------------------------------------------------------------------------
def test_checkpoint_slots_count_kept_partial_and_preemption() -> None:
    assert checkpoint_slots(1000, 250, keep=None) == 1 + 1  # keep=null: the next one + pre-emption
    assert checkpoint_slots(10_000, 250, keep=3) == 3 + 1 + 1  # + the .partial written before pruning
    assert checkpoint_slots(500, 250, keep=3) == 2 + 1  # keep never binds: the .partial is one of them


def test_6_9b_with_keep_3_needs_about_half_a_terabyte(tmp_path: Path, monkeypatch) -> None:
    per = 16 * 6_900_000_000  # fp32 policy + fp32 reference + two AdamW moments
    monkeypatch.setattr(tralign.safety.shutil, "disk_usage", lambda _: Usage(10**13, 0, 400 * GB))
    with pytest.raises(TralignError) as err:
        check_checkpoint_space(tmp_path, per, {"keep": 3, "every_n_steps": 250}, 10_000)
    line = str(err.value)
    assert "\n" not in line and "400.0 GB free" in line and "~514.1 GB" in line and "5 x 102.82 GB" in line
    assert "checkpoint.keep=3" in line
    monkeypatch.setattr(tralign.safety.shutil, "disk_usage", lambda _: Usage(10**13, 0, 520 * GB))
    check_checkpoint_space(tmp_path, per, {"keep": 3, "every_n_steps": 250}, 10_000)


def test_checkpoints_already_in_a_resumed_folder_count_as_reusable(tmp_path: Path, monkeypatch) -> None:
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    for step in (250, 500):
        (folder / f"step={step}.ckpt").write_bytes(b"x" * 1000)
    (folder / "last.ckpt").symlink_to("step=500.ckpt")
    monkeypatch.setattr(tralign.safety.shutil, "disk_usage", lambda _: Usage(10**6, 0, 3000))
    check_checkpoint_space(tmp_path, 1000, {"keep": 3, "every_n_steps": 250}, 10_000)  # 3000 + 2000 >= 5000
    with pytest.raises(TralignError, match="checkpoints need"):
        check_checkpoint_space(tmp_path, 1000, {"keep": 4, "every_n_steps": 250}, 10_000)  # 5000 < 6000
    # keep=null prunes nothing: the checkpoints there are not reusable; the next two need room.
    monkeypatch.setattr(tralign.safety.shutil, "disk_usage", lambda _: Usage(10**6, 0, 1999))
    with pytest.raises(TralignError, match="checkpoints need"):
        check_checkpoint_space(tmp_path, 1000, {"keep": None, "every_n_steps": 250}, 10_000)


@pytest.mark.e2e
def test_checkpoint_size_estimate_is_what_lightning_writes(tmp_path: Path, monkeypatch) -> None:
    """The estimate against a real checkpoint of the tiny model (policy, reference, starting copy,
    AdamW moments), and a run refused before training when the disk is short by one byte."""
    estimates = []
    bytes_of = tralign.safety.checkpoint_bytes
    monkeypatch.setattr(
        tralign.safety, "checkpoint_bytes", lambda m: estimates.append(bytes_of(m)) or estimates[-1]
    )
    cfg = compose_cfg(["trainer.max_steps=2", "data.golden_eval=null", "checkpoint.every_n_steps=2"])
    run(cfg, tmp_path / "run")
    (estimate,) = estimates
    written = (tmp_path / "run" / "checkpoints" / "step-000002.ckpt").stat().st_size
    print(f"tiny model checkpoint: {written} bytes written, {estimate} estimated")
    assert estimate <= written <= 1.05 * estimate  # the rest is Lightning's bookkeeping

    slots = checkpoint_slots(2, 2, None)
    real = shutil.disk_usage(tmp_path)
    short = Usage(real.total, real.used, estimate * slots - 1)
    monkeypatch.setattr(tralign.safety.shutil, "disk_usage", lambda _: short)
    cfg = compose_cfg(["trainer.max_steps=2", "data.golden_eval=null", "checkpoint.every_n_steps=2"])
    cfg.output.min_free_gb = 0
    with pytest.raises(TralignError, match=f"checkpoints need .*\\({slots} x "):
        run(cfg, tmp_path / "refused")
    assert not (tmp_path / "refused" / "checkpoints").exists()


# --- collective time-out -------------------------------------------------------------------------
@pytest.mark.parametrize("trainer", ["ddp", "fsdp", "fsdp2"])
def test_strategies_get_the_configured_timeout(trainer: str) -> None:
    cfg = compose_cfg([f"trainer={trainer}"])
    assert cfg.trainer.strategy.timeout_minutes == 60
    strategy, _ = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=2, num_nodes=1)
    assert strategy._timeout == timedelta(minutes=60)
    cfg = compose_cfg([f"trainer={trainer}", "trainer.strategy.timeout_minutes=7.5"])
    strategy, _ = build_strategy(cfg.trainer.strategy, tiny_neox(), devices=2, num_nodes=1)
    assert strategy._timeout == timedelta(minutes=7.5)


@pytest.mark.parametrize("value", ["0", "-5", "'soon'", "true"])
def test_bad_timeout_is_refused(value: str) -> None:
    cfg = compose_cfg(["trainer=fsdp2", f"trainer.strategy.timeout_minutes={value}"])
    with pytest.raises(ConfigError, match="trainer.strategy.timeout_minutes: must be a number"):
        validate(cfg)


# --- multirun with several ranks per job ---------------------------------------------------------
SLURM = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
BASIC = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"


@pytest.mark.parametrize(
    ("mode", "launcher", "devices", "nodes", "accelerator", "refused"),
    [
        ("MULTIRUN", BASIC, 2, 1, "cpu", True),
        ("MULTIRUN", BASIC, 1, 2, "gpu", True),
        ("MULTIRUN", BASIC, [0, 1], 1, "gpu", True),
        ("MULTIRUN", BASIC, "auto", 1, "cpu", False),  # Lightning's auto on CPU: one device
        ("MULTIRUN", BASIC, 1, 1, "gpu", False),
        ("MULTIRUN", SLURM, 8, 4, "gpu", False),  # one SLURM task per rank: nothing is re-launched
        ("RUN", BASIC, 8, 1, "gpu", False),
    ],
)
def test_multirun_problem(mode, launcher, devices, nodes, accelerator, refused: bool) -> None:
    problem = multirun_problem(mode, launcher, devices, nodes, accelerator)
    assert (problem is not None) == refused
    if refused:
        assert "sweeps/print_jobs.py" in problem and "hydra/launcher=tralign_slurm" in problem


@pytest.mark.e2e
def test_cli_multirun_on_two_local_devices_is_refused_before_anything_is_built(tmp_path: Path) -> None:
    result = run_cli(
        "tralign.train",
        ["-m", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp", "seed=0,1"]
        + [f"hydra.sweep.dir={tmp_path / 'sweep'}"],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "-m (Hydra multirun) with trainer.devices=2" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    # Stopped at the first job, before a model, a checkpoint or a summary was made.
    assert not list((tmp_path / "sweep").glob("*/summary.json"))
    assert not list((tmp_path / "sweep").glob("*/checkpoints"))
    assert not (tmp_path / "sweep" / "1").exists()
