"""The paper's setup is what a real model gets by default (issue 12, point 2): every shipped model
× real data × method composes to lr 1e-6, 100 warm-up steps, AdamW, grad-norm clip 2 and the
method's own β; the tiny model and the embedded task keep their own values (conf/tuning/)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.models import tiny_neox
from helpers.paths import CONF
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tralign.config import validate
from tralign.module import AlignmentModule, lr_lambda
from tralign.reference import ReferenceSchedule
from tralign.train import effective_setup

REAL_MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml") if p.stem != "tiny")
PAIR_METHODS = ["dpo", "ipo", "kto", "tr_dpo", "tr_ipo", "tr_kto"]
# Which methods each real data set feeds (its rows: pairs, SFT targets or unpaired labels).
REAL_DATA = {
    "hh": PAIR_METHODS,
    "tldr": PAIR_METHODS,
    "jsonl": PAIR_METHODS,
    "tldr_sft": ["sft"],
    "unpaired": ["kto_unpaired", "tr_kto_unpaired"],
}
PRESETS = {"none": (0.0, 1), "soft": (0.6, 1), "hard": (1.0, 512)}


def _own_beta(method: str) -> float:
    """β as the method's own file (or its base's, for tr_*) sets it."""
    return float(OmegaConf.load(CONF / "method" / f"{method.removeprefix('tr_')}.yaml").beta)


def _key_values(cfg) -> tuple:
    return (
        cfg.optim.lr,
        cfg.optim.warmup_steps,
        cfg.trainer.gradient_clip_val,
        cfg.beta,
        cfg.alpha,
        cfg.tau,
    )


@pytest.mark.slow  # ~20 compositions per model, a second each on a loaded machine
@pytest.mark.parametrize("model", REAL_MODELS)
def test_every_real_model_data_and_method_composes_to_the_paper(model: str, tmp_path: Path) -> None:
    local = tmp_path / "rows.jsonl"
    local.write_text("")
    seen = 0
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for data, methods in REAL_DATA.items():
            for method in methods:
                moving = ("soft", "hard") if data == "hh" else ("soft",)  # hard: τ 512 is data-blind
                for ref_update in moving if method.startswith("tr_") else ("none",):
                    overrides = [f"model={model}", f"data={data}", f"method={method}"]
                    overrides += [f"ref_update={ref_update}"] if method.startswith("tr_") else []
                    overrides += [f"data.path={local}"] if data in ("jsonl", "unpaired") else []
                    cfg = compose("train", overrides=overrides)
                    validate(cfg)
                    alpha, tau = PRESETS[ref_update]
                    assert _key_values(cfg) == (1e-6, 100, 2.0, _own_beta(method), alpha, tau), overrides
                    assert cfg.model.dtype == "float32" and cfg.model.reference_dtype is None
                    seen += 1
    assert seen == 3 * len(PAIR_METHODS) + 3 + 1 + 2  # pairs (hh: tr_* soft and hard), sft, unpaired
    assert _own_beta("tr_dpo") == 0.05  # the paper's β for DPO


def test_the_optimizer_is_the_papers(tmp_path: Path) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model=pythia-2.8b", "data=hh", "method=tr_dpo"])
    module = AlignmentModule(
        tiny_neox(),
        loss="dpo",
        loss_params={"beta": cfg.beta},
        schedule=ReferenceSchedule("soft", 0.6, 1),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        max_steps=2500,
    )
    built = module.configure_optimizers()
    optimizer, scheduler = built["optimizer"], built["lr_scheduler"]["scheduler"]
    assert type(optimizer) is torch.optim.AdamW
    assert optimizer.param_groups[0]["initial_lr"] == 1e-6
    factor = lr_lambda(cfg.optim.warmup_steps, 2500, cfg.optim.schedule)
    assert [factor(s) for s in (0, 49, 99, 100, 2000)] == [0.01, 0.5, 1.0, 1.0, 1.0]  # linear warm-up
    assert scheduler.get_last_lr() == [1e-8]


def test_default_run_composes_to_the_same_values_as_before() -> None:
    """``python -m tralign.train`` (tiny model, embedded task) keeps its tuned values."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        default = compose("train")
        hard = compose("train", overrides=["ref_update=hard"])
        frozen = compose("train", overrides=["experiment=embedded_baseline"])
        tiny_real = compose("train", overrides=["data=hh", "model.tokenizer=t"])
    assert (default.method.name, default.ref_update, default.model.name, default.data.name) == (
        "tr_dpo",
        "soft",
        "tiny",
        "synthetic",
    )
    assert _key_values(default) == (1e-3, 20, 2.0, 0.1, 0.003, 1)
    assert OmegaConf.to_container(default.optim) == {
        "lr": 1e-3,
        "weight_decay": 0.0,
        "betas": [0.9, 0.95],
        "eps": 1e-8,
        "warmup_steps": 20,
        "schedule": "constant",
    }
    assert (default.trainer.precision, default.trainer.max_steps) == ("32-true", 1000)
    assert _key_values(hard) == (1e-3, 20, 2.0, 0.1, 1.0, 250)
    assert (frozen.method.name, *_key_values(frozen)) == ("dpo", 1e-3, 20, 2.0, 0.1, 0.0, 1)
    # The tiny model's optimizer values go with the model, whatever the data.
    assert _key_values(tiny_real) == (1e-3, 20, 2.0, 0.05, 0.6, 1)


def test_command_line_and_experiments() -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cli = compose("train", overrides=["model=pythia-410m", "optim.lr=3e-6", "optim.warmup_steps=5"])
        tiny_cli = compose("train", overrides=["optim.lr=1e-2"])
        bundles = {
            name: compose("train", overrides=[f"experiment={name}"])
            for name in sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
        }
    assert (cli.optim.lr, cli.optim.warmup_steps) == (3e-6, 5)
    assert tiny_cli.optim.lr == 1e-2
    for name, cfg in bundles.items():
        expected = (1e-3, 20) if cfg.model.name == "tiny" else (1e-6, 100)
        assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.trainer.gradient_clip_val) == (*expected, 2.0), name


def test_effective_setup_states_the_run() -> None:
    """The first log line and summary.json: what the composed config resolved to."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        paper = compose("train", overrides=["experiment=hh_pythia-6.9b_tr_dpo"])
        fsdp2 = compose("train", overrides=["trainer=fsdp2", "model.reference_dtype=bf16"])
    assert effective_setup(paper, "float16") == {
        "lr": 1e-6,
        "warmup_steps": 100,
        "gradient_clip_val": 2.0,
        "beta": 0.05,
        "alpha": 0.6,
        "tau": 1,
        "precision": "bf16-mixed",
        "dtypes": {"master": "float32", "reference": "float32", "compute": "bfloat16", "export": "float16"},
    }
    # fsdp2's own mixed precision computes in bf16 under trainer.precision=32-true.
    assert effective_setup(fsdp2, torch.float32)["dtypes"] == {
        "master": "float32",
        "reference": "bfloat16",
        "compute": "bfloat16",
        "export": "float32",
    }
