"""What a user sees of a run: the progress bar, the ending, pasteable checkpoints, the model card,
TensorBoard; and the Python API (``tralign.train`` / ``tralign.evaluate``) with a W&B offline run
whose config carries every resolved key. One CLI run and one API run are shared by the tests."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from helpers.config import SHRINK
from helpers.processes import run_cli
from helpers.wandb_offline import run_config

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("cli_run")]

QUIET = ("trainer.enable_progress_bar=", "logger=")
RUN = [a for a in SHRINK if not a.startswith(QUIET)]


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("cli")
    args = [*RUN, "logger=tensorboard", "trainer.enable_progress_bar=true", f"hydra.run.dir={root}/run"]
    result = run_cli("tralign.train", args, root)
    assert result.returncode == 0, result.stderr[-3000:]
    return {"root": root, "run": root / "run", "stdout": result.stdout, "stderr": result.stderr}


def test_run_ends_with_its_folders_and_a_human_summary(cli_run):
    out, run = cli_run["stdout"], cli_run["run"]
    assert f"run folder:  {run}\n" in out
    assert f"checkpoint:  {run / 'checkpoints' / 'step-000004.ckpt'}\n" in out
    assert f"policy:      {run / 'policy'}\n" in out
    summary = json.loads((run / "summary.json").read_text())
    accuracy = summary["val"]["val/rewards/accuracies"]
    line = re.search(r"^summary: +(.*)$", out, re.M).group(1)
    assert line.startswith(
        f"tr_dpo (soft update α={summary['alpha']} τ=1, β=0.1), 4 steps, "
        f"golden reward {summary['golden_reward_init']:.3f} → {summary['golden_reward']:.3f}"
    )
    assert line.endswith(f"val accuracy vs reference {accuracy:.3f}")


def test_progress_bar_counts_optimizer_steps_and_no_tips_are_shown(cli_run):
    err = cli_run["stdout"] + cli_run["stderr"]  # tqdm and Hydra's log go to stdout
    assert "steps: 100%" in err and "4/4" in err
    assert "Epoch" not in err  # Lightning's epoch bar ("Epoch 7/-2")
    for noise in (
        "Tip:",
        "litlogger",
        "DeprecationWarning",
        "FutureWarning",
        "smaller than the logging interval",
    ):
        assert noise not in err, noise


def test_policy_has_a_model_card(cli_run):
    card = (cli_run["run"] / "policy" / "README.md").read_text()
    summary = json.loads((cli_run["run"] / "summary.json").read_text())
    assert card.startswith("---\n") and "library_name: transformers" in card and "- trust-region" in card
    assert "with **tr_dpo**" in card and f"α = {summary['alpha']}, τ = 1, β = 0.1" in card
    assert "| optimizer steps | 4 (global batch 8" in card and "| data | synthetic |" in card
    assert f"| `golden_reward` | {summary['golden_reward']:.4g} |" in card
    assert "tralign-train trainer.max_steps=4" in card and "logger=tensorboard" in card  # the command


def test_tensorboard_logger_writes_events_and_the_resolved_config(cli_run):
    import yaml
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder = cli_run["run"] / "tensorboard"
    events = EventAccumulator(str(folder))
    events.Reload()
    assert "train/loss" in events.Tags()["scalars"]
    hparams = yaml.safe_load((folder / "hparams.yaml").read_text())
    assert hparams["alpha"] == json.loads((cli_run["run"] / "summary.json").read_text())["alpha"]
    assert hparams["optim"]["lr"] == 1e-3


def test_resume_from_the_pasted_run_folder_goes_on_with_new_checkpoint_names(cli_run):
    resume = re.search(r"^resume: +ckpt_path=(\S+)", cli_run["stdout"], re.M).group(1)
    root = cli_run["root"]
    args = [*SHRINK, f"ckpt_path={resume}", "trainer.max_steps=6", f"hydra.run.dir={root}/more"]
    result = run_cli("tralign.train", [a for a in args if a != "trainer.max_steps=4"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((root / "more" / "summary.json").read_text())["global_step"] == 6
    assert (root / "more" / "checkpoints" / "step-000006.ckpt").is_file()


@pytest.fixture(scope="module")
def api_run(tmp_path_factory) -> dict[str, Any]:
    import tralign.train as module
    from tralign import train

    assert train is module and callable(train)  # the module name and the function are one
    root = tmp_path_factory.mktemp("api")
    overrides = [*RUN, "logger=wandb", "logger.mode=offline", "export.reference=true"]
    summary = train(overrides=overrides, run_dir=root / "run")
    return {"root": root, "run": root / "run", "summary": summary}


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


def test_api_train_returns_the_summary_and_wandb_carries_every_resolved_key(api_run):
    import yaml

    summary, run = api_run["summary"], api_run["run"]
    assert summary == json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 4
    resolved = _flat(yaml.safe_load((run / "config_resolved.yaml").read_text()))
    import time

    for _ in range(60):  # wandb-core may still be writing the offline file after finish() returns
        sent = _flat(run_config(run))
        if set(resolved) <= set(sent):
            break
        time.sleep(0.5)
    missing = sorted(set(resolved) - set(sent))
    assert not missing, missing
    assert {k: sent[k] for k in resolved} == resolved
    assert "tralign.train(overrides=[" in (run / "policy" / "README.md").read_text()


def test_api_evaluate_compares_two_exports(api_run):
    from tralign.api import evaluate

    run = api_run["run"]
    overrides = [f"policy={run / 'policy'}", f"baseline={run / 'reference'}", "logger=none"]
    overrides += ["generation.n_prompts=4", "generation.max_new_tokens=4", "n_boot=20"]
    result = evaluate(overrides, run_dir=api_run["root"] / "eval")
    (comparison,) = result["comparisons"]
    assert comparison["policy"] == str(run / "policy") and 0 <= comparison["win_rate"] <= 1
    assert json.loads((api_run["root"] / "eval" / "eval.json").read_text()) == result
    from tralign.errors import TralignError

    with pytest.raises(TralignError, match="did you mean"):
        evaluate([*overrides, "judg=golden"])
