"""tralign.report.steps: golden reward and KL at every checkpoint of an embedded-task run (several
training lengths from one run), and the report's --steps rows. The slow test trains a shrunk run and
checks that evaluating its final checkpoint reproduces the run's own closing golden evaluation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers.config import SHRINK
from helpers.processes import run_cli

from tralign.errors import TralignError
from tralign.report.__main__ import main
from tralign.report.steps import STEPS_FILE, checkpoint_steps, evaluate_job, step_rows


def test_step_rows_one_row_per_evaluated_length(tmp_path: Path) -> None:
    job = tmp_path / "3"
    job.mkdir()
    (job / STEPS_FILE).write_text(json.dumps({
        "200": {"golden_reward": 0.9, "golden_kl_init": 4.0},
        "600": {"golden_reward": 1.2, "golden_kl_init": 9.0},
    }))  # fmt: skip
    row = {"job": "3", "status": "completed", "label": "DPO", "seed": 0, "global_step": 600, "job_dir": str(job),
           "golden_reward": 1.2, "golden_kl_init": 9.0, "val/loss": 0.5, "train/loss": 0.4, "best": True}  # fmt: skip
    plain = {"job": "4", "status": "failed", "label": "DPO", "global_step": None, "job_dir": ""}
    rows = step_rows([row, plain])
    assert [(r["job"], r["step"], r["golden_reward"]) for r in rows[:2]] == [
        ("3@200", 200, 0.9),
        ("3", 600, 1.2),
    ]
    early, final = rows[:2]
    assert "val/loss" not in early and "train/loss" not in early and early["best"] is False
    assert final["val/loss"] == 0.5 and final["label"] == early["label"] == "DPO"
    assert rows[2]["job"] == "4" and rows[2]["step"] is None


def test_checkpoint_steps_ignores_other_files(tmp_path: Path) -> None:
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    # today's names and the old step=N.ckpt ones; never the link, a .partial or a pre-emption save
    for name in (
        "step-000010.ckpt",
        "step=2.ckpt",
        "last.ckpt",
        "step-000004.ckpt.partial",
        "preempt-step3.ckpt",
    ):
        (ckpts / name).write_text("")
    assert list(checkpoint_steps(tmp_path)) == [2, 10]


@pytest.mark.slow
def test_final_checkpoint_reproduces_the_runs_golden_eval_and_report_steps(tmp_path: Path) -> None:
    run = tmp_path / "sweep" / "0"
    shrink = [s for s in SHRINK if not s.startswith("trainer.max_steps")]
    result = run_cli(
        "tralign.train", [*shrink, "trainer.max_steps=4", "method=dpo", f"hydra.run.dir={run}"], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert list(checkpoint_steps(run)) == [2, 4]
    steps = evaluate_job(run, final=True)
    assert list(steps) == ["2", "4"]
    for key in ("golden_reward", "golden_reward_init", "golden_kl_init"):
        assert steps["4"][key] == summary[key]  # same prompts, sampling seed, starting policy: same numbers
    assert steps["2"]["golden_reward_init"] == summary["golden_reward_init"]
    assert steps["2"]["golden_kl_init"] != summary["golden_kl_init"]  # an earlier policy
    assert json.loads((run / STEPS_FILE).read_text()) == steps
    assert main([str(tmp_path / "sweep"), "--steps"]) == 0
    md = (tmp_path / "sweep" / "results.md").read_text()
    assert "| 0@2 |" in md and "| 0 |" in md
    # A learning rate that depends on max_steps: a checkpoint is not the end of a shorter run.
    config = run / "config_resolved.yaml"
    config.write_text(config.read_text().replace("schedule: constant", "schedule: cosine"))
    with pytest.raises(TralignError, match="optim.schedule=cosine"):
        evaluate_job(run)
