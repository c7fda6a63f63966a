"""Logger selection: W&B mode resolution, CSV metrics contents, and the learning-rate schedule."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from helpers.config import compose_cfg

from tralign.loggers import wandb_mode
from tralign.module import lr_lambda
from tralign.train import run


@pytest.mark.parametrize(
    ("requested", "env", "key", "expected"),
    [
        ("offline", {"WANDB_MODE": "online"}, None, "offline"),  # the config's explicit choice wins
        ("auto", {"WANDB_MODE": "disabled"}, None, "disabled"),
        ("auto", {"WANDB_MODE": "dryrun"}, None, "offline"),
        ("auto", {}, None, "offline"),  # no key configured: never try the network
        ("auto", {}, "k" * 40, "online"),
    ],
)
def test_wandb_mode(requested, env, key, expected, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    monkeypatch.setenv("NETRC", str(tmp_path / "none"))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if key:
        monkeypatch.setenv("WANDB_API_KEY", key)
    assert wandb_mode(requested) == expected


def test_netrc_key_means_online(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    netrc = tmp_path / ".netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "k" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    assert wandb_mode("auto") == "online"


def test_lr_schedule_shapes() -> None:
    warm = lr_lambda(4, 20, "constant")
    assert [warm(s) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    linear = lr_lambda(0, 10, "linear")
    assert linear(0) == 1.0 and linear(5) == 0.5 and linear(10) == 0.0
    cosine = lr_lambda(0, 10, "cosine")
    assert cosine(0) == 1.0 and cosine(5) == pytest.approx(0.5) and cosine(10) == pytest.approx(0.0)


@pytest.mark.e2e
def test_csv_logger_records_trust_region_metrics(tmp_path: Path) -> None:
    run(compose_cfg(["logger=csv", "ref_update=hard", "tau=2"]), tmp_path)
    rows = list(csv.DictReader((tmp_path / "csv" / "metrics.csv").open()))
    updates = [float(r["ref/updates"]) for r in rows if r.get("ref/updates")]
    assert updates == [0.0, 1.0, 1.0, 2.0], updates  # one row per optimizer step; updates after steps 2 and 4
    columns = set(rows[0])
    for name in (
        "train/loss",
        "train/rewards/margins",
        "val/rewards/accuracies",
        "val/init/rewards/accuracies",
    ):
        assert name in columns, sorted(columns)
