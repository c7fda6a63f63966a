"""A wheel works without the checkout: configs and sweeps ship in the package, the console scripts
run from an unrelated folder, and building leaves the tree clean."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.config import SHRINK
from helpers.paths import REPO

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("wheel")]


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """The wheel built from this checkout, installed (not editable) into a fresh venv. The venv sees
    the system's packages (torch, Lightning ...: fast and offline) but its own tralign first."""
    root = tmp_path_factory.mktemp("wheel")
    # Without the checkout on PYTHONPATH (which the suite runs with): pip would take it as installed.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    built = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(REPO)], root, env)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (root / "dist").glob("tralign-*.whl")
    assert (
        _run([sys.executable, "-m", "venv", "--system-site-packages", str(root / "venv")], root).returncode
        == 0
    )
    bin_dir = root / "venv" / "bin"
    pip = _run([str(bin_dir / "pip"), "install", "-q", "--no-deps", "--no-index", str(wheel)], root, env)
    assert pip.returncode == 0, pip.stderr[-2000:]
    elsewhere = root / "elsewhere"  # no checkout, no conf/ here
    elsewhere.mkdir()
    return {"bin": bin_dir, "cwd": elsewhere, "env": env, "wheel": wheel}


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    where = _run([str(installed["bin"] / "python"), "-c", "import tralign; print(tralign.__file__)"], installed["cwd"], installed["env"])  # fmt: skip
    assert where.stdout.strip().startswith(str(installed["bin"].parent)), where.stdout + where.stderr


def test_console_script_trains_from_an_unrelated_folder(installed):
    args = [a for a in SHRINK if not a.startswith("trainer.max_steps")] + ["trainer.max_steps=2"]
    command = [str(installed["bin"] / "tralign-train"), "method=tr_kto", "ref_update=hard", "tau=1", *args]
    result = _run([*command, "hydra.run.dir=run"], installed["cwd"], installed["env"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((installed["cwd"] / "run" / "summary.json").read_text())
    assert (summary["method"], summary["ref_update"], summary["tau"], summary["global_step"]) == (
        "tr_kto",
        "hard",
        1,
        2,
    )
    assert summary["ref_updates"] == 2  # hard update every step
    assert (installed["cwd"] / "run" / "policy" / "README.md").is_file()


def test_sweeps_help_and_every_console_script_resolve_from_the_wheel(installed):
    bin_dir, cwd, env = installed["bin"], installed["cwd"], installed["env"]
    sweep = _run([str(bin_dir / "tralign-train"), "+sweep=tau_hard", "--cfg", "hydra"], cwd, env)
    assert sweep.returncode == 0 and "tau: 32,64,128,256,512,1024" in sweep.stdout, sweep.stderr[-2000:]
    typo = _run([str(bin_dir / "tralign-train"), "+sweep=tau_hardd"], cwd, env)
    assert typo.returncode == 2 and "did you mean tau_hard?" in typo.stderr
    assert "tralign-eval:" in _run([str(bin_dir / "tralign-eval"), "--help"], cwd, env).stdout
    report = _run([str(bin_dir / "tralign-report"), "--help"], cwd, env)
    assert report.returncode == 0 and "usage: tralign-report" in report.stdout
    assert not (cwd / "outputs").exists()  # --cfg, a refused typo and --help write nothing


def test_building_leaves_the_tree_clean():
    ignored = _run(["git", "check-ignore", "build/", "dist/", "tralign.egg-info/"], REPO)
    assert ignored.stdout.split() == ["build/", "dist/", "tralign.egg-info/"], ignored.stdout + ignored.stderr
