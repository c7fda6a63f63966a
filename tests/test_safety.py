"""Output-folder preflight (tralign/safety.py), safe loading (weights_only) and safe exports."""

from __future__ import annotations

import argparse
import json
import re
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK
from helpers.paths import CONF, REPO
from helpers.processes import run_cli

from tralign.errors import TralignError
from tralign.safety import check_output_dir, previous_run


def _fake_run(folder: Path, status: str = "completed", ckpt: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "summary.json").write_text(json.dumps({"status": status}))
    if ckpt:
        (folder / "checkpoints").mkdir()
        (folder / "checkpoints" / "step=2.ckpt").write_bytes(b"checkpoint bytes")
    return folder


def test_a_fresh_or_empty_folder_passes_and_the_probe_leaves_nothing(tmp_path):
    check_output_dir(tmp_path / "new" / "run", {"min_free_gb": 0})
    assert list((tmp_path / "new" / "run").iterdir()) == []


def test_an_unwritable_folder_is_one_line_naming_it(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(TralignError, match=r"output folder .*file/run: not writable") as err:
        check_output_dir(tmp_path / "file" / "run")
    assert "\n" not in str(err.value)


def test_a_full_disk_is_refused_before_training(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(100 * 2**30, 99.5 * 2**30, 0.5 * 2**30))
    with pytest.raises(TralignError, match=r"0.50 GB free, output.min_free_gb=1 needed"):
        check_output_dir(tmp_path, {"min_free_gb": 1.0})
    check_output_dir(tmp_path, {"min_free_gb": 0.25})


def test_another_runs_folder_is_refused_unless_asked(tmp_path):
    done = _fake_run(tmp_path / "done")
    with pytest.raises(TralignError, match=r"already holds another run's checkpoints \(step=2.ckpt\)"):
        check_output_dir(done, {})
    check_output_dir(done, {"overwrite": True})
    check_output_dir(done, {}, ckpt_path=str(done / "checkpoints" / "step=2.ckpt"))  # resuming it
    with pytest.raises(TralignError, match="refusing to overwrite"):
        check_output_dir(done, {}, ckpt_path=str(tmp_path / "elsewhere.ckpt"))
    summary_only = _fake_run(tmp_path / "summary_only", ckpt=False)
    assert previous_run(summary_only) == "summary.json (status completed)"
    # A run refused at validation left only a failed summary: the folder may be reused.
    assert previous_run(_fake_run(tmp_path / "failed", status="failed", ckpt=False)) is None
    export = tmp_path / "export"
    (export / "policy").mkdir(parents=True)
    assert previous_run(export) == "an exported policy (policy/)"


@pytest.mark.e2e
def test_cli_refuses_a_pinned_folder_of_another_run_and_touches_nothing(tmp_path):
    done = _fake_run(tmp_path / "done")
    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    result = run_cli("tralign.train", [*SHRINK, f"hydra.run.dir={done}"], tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "already holds another run's checkpoints" in errors[0]
    assert "Traceback" not in result.stderr
    assert {p: p.read_bytes() for p in before} == before  # summary.json and checkpoint unchanged
    assert not (done / "config_resolved.yaml").exists()


class Payload:
    """Unpickling this would create a file: a checkpoint must never run code."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.e2e
def test_cli_refuses_a_checkpoint_holding_a_pickled_object(tmp_path):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.ckpt"
    torch.save(
        {"state_dict": {}, "global_step": 1, "payload": Payload(marker), "ns": argparse.Namespace()}, evil
    )
    result = run_cli(
        "tralign.train", [*SHRINK, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path}/run"], tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and f"ckpt_path={evil}: refused to load" in errors[0], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not marker.exists()
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "failed"


def test_trust_remote_code_is_off_unless_the_config_asks():
    # Every model config says false; every from_pretrained call that could run hub code gets it
    # from the config (no literal True anywhere).
    for path in (CONF / "model").glob("*.yaml"):
        assert re.search(r"^trust_remote_code: false", path.read_text(), re.M), path
    sources = "\n".join(p.read_text() for p in (REPO / "tralign").rglob("*.py"))
    assert "trust_remote_code=True" not in sources
    calls = re.findall(r"trust_remote_code=([^,)\n]+)", sources)
    assert calls and all(
        c == "trust" or c.startswith('bool(model_cfg.get("trust_remote_code"') for c in calls
    )
