"""End-to-end CPU runs of the real entry point on the tiny model: every method × reference update,
the outputs contract (summary.json, checkpoints, exported policy), and the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK, compose_cfg
from helpers.processes import run_cli
from transformers import AutoModelForCausalLM, AutoTokenizer

from tralign.train import run

VALID = [(m, r) for m in ("dpo", "ipo", "kto") for r in ("none", "soft", "hard")]
VALID += [(f"tr_{m}", r) for m in ("dpo", "ipo", "kto") for r in ("soft", "hard")]
VALID += [("sft", "none")]


@pytest.mark.parametrize(("method", "ref_update"), VALID)
@pytest.mark.e2e
def test_every_method_and_reference_update_trains(method: str, ref_update: str, tmp_path: Path) -> None:
    cfg = compose_cfg([f"method={method}", f"ref_update={ref_update}", "tau=2"])
    summary = run(cfg, tmp_path)
    assert summary["status"] == "completed"
    assert summary["global_step"] == 4
    expected_updates = {"none": 0, "soft": 2, "hard": 2}[ref_update]  # tau=2 over 4 optimizer steps
    assert summary["ref_updates"] == expected_updates
    assert (tmp_path / "policy" / "model.safetensors").is_file()
    loss = summary["val"]["val/loss"]
    assert loss is not None and loss == loss  # finite, not NaN
    if method != "sft":
        for key in (
            "rewards/chosen",
            "rewards/rejected",
            "rewards/margins",
            "rewards/accuracies",
            "logps/chosen",
        ):
            assert f"train/{key}" in summary["train"], summary["train"]
            assert f"val/{key}" in summary["val"], summary["val"]
        assert "val/init/rewards/accuracies" in summary["val"]


@pytest.mark.e2e
def test_run_outputs_contract(tmp_path: Path) -> None:
    cfg = compose_cfg(["export.reference=true"])
    summary = run(cfg, tmp_path)
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary))
    for key in (
        "method",
        "loss",
        "ref_update",
        "alpha",
        "tau",
        "beta",
        "global_step",
        "ref_updates",
        "train",
        "val",
        "wall_time_s",
        "golden_reward",
        "golden_reward_init",
        "global_batch_size",
    ):
        assert key in on_disk, key
    assert (on_disk["method"], on_disk["ref_update"], on_disk["alpha"], on_disk["tau"]) == (
        "tr_dpo",
        "soft",
        0.003,
        1,
    )
    assert on_disk["ref_updates"] == 4
    assert (tmp_path / "config_resolved.yaml").is_file()
    ckpts = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step-000002.ckpt", "step-000004.ckpt"], ckpts
    # The checkpoint carries the moving reference and the update counter (needed to resume).
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert any(k.startswith("reference.") for k in state["state_dict"])
    assert state["tralign"]["ref_updates"] == 4
    # The export loads with plain transformers on one process and matches the trained weights.
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "policy")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "policy")
    ids = tokenizer("Q: fox owl ->", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] >= len(tokenizer)
    ref = AutoModelForCausalLM.from_pretrained(tmp_path / "reference")
    policy_w = model.state_dict()["gpt_neox.embed_in.weight"]
    ref_w = ref.state_dict()["gpt_neox.embed_in.weight"]
    assert not torch.equal(policy_w, ref_w)  # soft α = 0.003: the reference trails the policy
    golden = [json.loads(line) for line in (tmp_path / "golden_samples.jsonl").read_text().splitlines()]
    assert len(golden) == 8 and {"prompt", "completion", "golden_reward", "golden_reward_init"} <= set(
        golden[0]
    )


@pytest.mark.e2e
def test_gradient_accumulation_counts_optimizer_steps(tmp_path: Path) -> None:
    cfg = compose_cfg(
        ["ref_update=hard", "tau=2", "trainer.accumulate_grad_batches=3", "trainer.max_steps=6"]
    )
    summary = run(cfg, tmp_path)
    assert summary["global_step"] == 6
    assert summary["ref_updates"] == 3  # after optimizer steps 2, 4, 6 — not per micro-batch
    assert summary["global_batch_size"] == 8 * 3


@pytest.mark.e2e
def test_sft_then_alignment_from_its_export(tmp_path: Path) -> None:
    sft = run(compose_cfg(["method=sft", "ref_update=none"]), tmp_path / "sft")
    aligned = run(compose_cfg([f"model.init_from={sft['policy_dir']}"]), tmp_path / "dpo")
    assert aligned["status"] == "completed"
    start = AutoModelForCausalLM.from_pretrained(sft["policy_dir"]).state_dict()
    # The aligned run's starting policy is the SFT export: its "initial" golden reward is the SFT model's.
    assert aligned["golden_reward_init"] == pytest.approx(sft["golden_reward"])
    assert "gpt_neox.embed_in.weight" in start


# The CLI single run with W&B offline is checked in tests/test_report.py::test_real_multirun_then_report
# (each job of that sweep is one such run: summary, wandb/offline-run-*, .hydra/config.yaml).


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_multirun_sweeps_alpha_and_beta(tmp_path: Path) -> None:
    result = run_cli(
        "tralign.train",
        [
            "-m",
            *SHRINK,
            "method=tr_dpo",
            "ref_update=soft",
            "alpha=0.3,0.9",
            "beta=0.05,0.1",
            f"hydra.sweep.dir={tmp_path}/sweep",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/summary.json"))]
    assert len(summaries) == 4
    assert sorted((s["alpha"], s["beta"]) for s in summaries) == [
        (0.3, 0.05),
        (0.3, 0.1),
        (0.9, 0.05),
        (0.9, 0.1),
    ]
    assert len({s["run_dir"] for s in summaries}) == 4


@pytest.mark.e2e
def test_cli_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_cli(
        "tralign.train",
        ["method=tr_dpo", "ref_update=none", "tau=0", f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("tralign: error:")]
    assert len(errors) == 1, result.stderr
    assert "ref_update=none contradicts method=tr_dpo" in errors[0] and "tau:" in errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.e2e
def test_cli_bad_data_file_names_file_and_line(tmp_path: Path) -> None:
    data = tmp_path / "prefs.jsonl"
    data.write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "a", "chosen": "b"\n')
    result = run_cli(
        "tralign.train",
        [
            "data=jsonl",
            f"data.path={data}",
            "model.tokenizer=synthetic_is_wrong_here",
            f"hydra.run.dir={tmp_path}/run",
        ],
        tmp_path,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "model.tokenizer=synthetic_is_wrong_here: could not load" in result.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_two_process_ddp_on_cpu(tmp_path: Path) -> None:
    # KTO's batch KL estimate is all-gathered across ranks: this exercises the distributed path.
    args = [a for a in SHRINK if not a.startswith(("trainer.max_steps", "data.n_train"))]
    result = run_cli(
        "tralign.train",
        [
            *args,
            "method=tr_kto",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "trainer.max_steps=3",
            "data.n_train=64",
            f"hydra.run.dir={tmp_path}/run",
        ],
        tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert (summary["global_step"], summary["ref_updates"], summary["global_batch_size"]) == (3, 3, 16)
    assert (tmp_path / "run" / "policy" / "model.safetensors").is_file()
