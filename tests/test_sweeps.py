"""Every shipped sweep (tralign/conf/sweep/*.yaml, used as +sweep=NAME) composes, says how to run itself, expands
to the expected jobs in unique folders, and each job's config is valid; +sweep is found from any
working directory and only by tralign's own configs."""

from __future__ import annotations

import importlib.util
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import CONF, REPO
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import MissingConfigException
from omegaconf import DictConfig, OmegaConf

from tralign.config import validate
from tralign.report.jobs import expand_sweep, parse_value, split_override

SWEEPS = CONF / "sweep"  # the +sweep group, shipped in the package
# A new sweep file must be added here with its job count.
EXPECTED_JOBS = {
    "alpha_soft": 8 * 3,  # α 0.1 … 0.8 × 3 seeds
    "tau_hard": 6 * 3,  # τ 32 … 1024 × 3 seeds
    "beta_dpo": 3 * 5 * 3,  # none/soft/hard × 5 β × 3 seeds
    "beta_ipo": 3 * 5 * 3,
    "beta_kto": 3 * 5 * 3,
    "method_ref_update": 3 * 3 * 3,  # DPO/IPO/KTO × none/soft/hard × 3 seeds
    "overoptimisation": 3 * 3 * 2,  # DPO / TR-DPO soft / TR-DPO hard × 3 β × 2 step budgets
    "frontier": 3 * 3 * 3,  # DPO / TR-DPO soft / TR-DPO hard × 3 β × 3 seeds
    "regime_dpo": 3 * 3,  # 3 learning rates × 3 seeds
    "regime_soft": 3 * 3 * 3,  # 3 learning rates × 3 α × 3 seeds
    "regime_hard": 3 * 3 * 3,  # 3 learning rates × 3 τ × 3 seeds
}
GROUPS = {p.name for p in CONF.iterdir() if p.is_dir()}  # swept config groups; other keys are plain values


def _compose(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


def test_every_sweep_file_is_listed() -> None:
    assert sorted(p.stem for p in SWEEPS.glob("*.yaml")) == sorted(EXPECTED_JOBS)


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_sweep_header_has_package_then_run_command(name: str) -> None:
    lines = (SWEEPS / f"{name}.yaml").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "# @package _global_"  # Hydra reads the header only before other comments
    assert lines[1].startswith(f"# Run: python -m tralign.train -m +sweep={name}"), lines[1]


@pytest.mark.parametrize("name", sorted(EXPECTED_JOBS))
def test_sweep_expands_to_expected_unique_valid_jobs(name: str) -> None:
    cfg = _compose([f"+sweep={name}"])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    jobs = expand_sweep(params, [])
    # The expansion the report uses is Hydra's own.
    hydra_jobs = BasicSweeper.split_arguments(
        OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()]), None
    )[0]
    assert jobs == hydra_jobs
    assert len(jobs) == EXPECTED_JOBS[name]
    assert len({frozenset(job) for job in jobs}) == len(jobs)  # no two jobs alike (seeds included)
    # One folder per job: numbered subdirs under a sweep dir named after the sweep (= the W&B group).
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep["subdir"] == "${hydra.job.num}"
    assert Path(sweep["dir"]).name.startswith(f"{name}_")
    # Every job's config is valid: compose once per choice of config groups, then set the plain values.
    bases: dict[tuple, DictConfig] = {}
    for job in jobs:
        pairs = [split_override(o) for o in job]
        group_key = tuple(o for o in job if split_override(o)[0] in GROUPS)
        if group_key not in bases:
            bases[group_key] = _compose([f"+sweep={name}", *group_key])
        job_cfg = bases[group_key].copy()
        for key, value in pairs:
            if key not in GROUPS:
                OmegaConf.update(job_cfg, key, parse_value(value), merge=False)
        validate(job_cfg)
        for key, value in pairs:
            if key not in GROUPS:
                assert OmegaConf.select(job_cfg, key) == parse_value(value)


def test_command_line_replaces_a_swept_key() -> None:
    params = OmegaConf.to_container(_compose(["+sweep=alpha_soft"]).hydra.sweeper.params)
    jobs = expand_sweep(params, ["seed=7", "method=tr_ipo"])
    assert len(jobs) == 8
    assert all("seed=7" in job and "method=tr_ipo" in job for job in jobs)


def test_sweep_group_is_only_added_to_tralign_configs(tmp_path: Path) -> None:
    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
        cfg = compose("app", overrides=["+sweep=alpha_soft"], return_hydra_config=True)
    assert cfg.sweep == "alpha_soft"  # a plain value: another app has no `sweep` group
    assert not cfg.hydra.sweeper.params
    with pytest.raises(MissingConfigException, match="Available options in 'sweep'"):
        _compose(["+sweep=no_such_sweep"])  # in tralign's configs it is a group


@pytest.mark.e2e
def test_sweep_is_found_from_another_working_directory(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    result = subprocess.run(
        [sys.executable, "-m", "tralign.train", "+sweep=tau_hard", "--cfg", "hydra"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "tau: 32,64,128,256,512,1024" in result.stdout


def test_print_jobs_gives_one_launch_line_per_job() -> None:
    spec = importlib.util.spec_from_file_location("print_jobs", REPO / "sweeps" / "print_jobs.py")
    print_jobs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(print_jobs)
    lines = [shlex.split(line) for line in print_jobs.job_lines("tau_hard", ["seed=0,1", "alpha=0.9"])]
    assert len(lines) == 6 * 2
    run_dirs = [Path(a.split("=", 1)[1]) for args in lines for a in args if a.startswith("hydra.run.dir=")]
    assert len(set(run_dirs)) == len(lines) and [d.name for d in run_dirs] == [str(n) for n in range(12)]
    sweep_dir = run_dirs[0].parent
    assert sweep_dir.name.startswith("tau_hard_") and {d.parent for d in run_dirs} == {sweep_dir}
    assert all(f"++logger.group={sweep_dir.name}" in args and "alpha=0.9" in args for args in lines)
    assert lines[1][:5] == ["method=tr_dpo", "ref_update=hard", "alpha=0.9", "tau=32", "seed=1"]
