"""Every shipped config composes; the card's commands resolve to the intended values; bad values
are all reported at once, naming the key, before anything is built."""

from __future__ import annotations

import pytest
from helpers.config import compose_cfg
from helpers.paths import CONF

from tralign.config import loss_params, schedule_from, validate
from tralign.errors import ConfigError

GROUPS = sorted(
    p.name
    for p in CONF.iterdir()
    if p.is_dir() and p.name not in ("tuning", "experiment", "judge", "sweep")  # sweep: tests/test_sweeps.py
)


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.mark.parametrize(("group", "option"), [(g, o) for g in GROUPS for o in _options(g)])
def test_every_option_composes(group: str, option: str) -> None:
    extra = ["data.path=x.jsonl", "model.tokenizer=some/tokenizer"] if option == "jsonl" else []
    if group == "method" and option == "sft":
        extra.append("ref_update=none")
    cfg = compose_cfg([f"{group}={option}", *extra], shrink=False)
    assert cfg.method.loss and cfg.ref_update in ("none", "soft", "hard")


@pytest.mark.parametrize("name", _options("experiment"))
def test_every_experiment_composes(name: str) -> None:
    cfg = compose_cfg([f"experiment={name}"], shrink=False)
    assert cfg.method.name


def test_card_command_hard_update_every_512_steps() -> None:
    cfg = compose_cfg(["method=tr_kto", "ref_update=hard", "tau=512"], shrink=False)
    schedule = schedule_from(cfg)
    assert (cfg.method.loss, schedule.mode, schedule.alpha, schedule.tau) == ("kto_pair", "hard", 1.0, 512)
    assert [s for s in range(0, 2049) if schedule.is_update_step(s)] == [512, 1024, 1536, 2048]


def test_tr_method_is_base_loss_with_soft_reference() -> None:
    tr = compose_cfg(["method=tr_dpo"], shrink=False)
    base = compose_cfg(["method=dpo", "ref_update=soft"], shrink=False)
    assert schedule_from(tr) == schedule_from(base)
    assert loss_params(tr) == loss_params(base)
    assert tr.method.loss == base.method.loss == "dpo"


def test_presets_on_real_data_match_the_paper() -> None:
    # Away from the embedded task (no conf/tuning file), the presets apply unchanged.
    common = ["data=jsonl", "data.path=x.jsonl", "model.tokenizer=t"]
    soft = compose_cfg([*common, "method=tr_dpo"], shrink=False)
    hard = compose_cfg([*common, "method=tr_ipo", "ref_update=hard"], shrink=False)
    none = compose_cfg([*common, "method=dpo"], shrink=False)
    assert (soft.alpha, soft.tau, soft.beta) == (0.6, 1, 0.05)
    assert (hard.alpha, hard.tau) == (1.0, 512)
    assert (none.ref_update, none.alpha) == ("none", 0.0)


def test_cli_values_beat_task_tuning() -> None:
    cfg = compose_cfg(["ref_update=soft", "alpha=0.6", "beta=0.05"], shrink=False)
    assert (cfg.alpha, cfg.beta) == (0.6, 0.05)
    default = compose_cfg([], shrink=False)
    assert (default.method.name, default.ref_update, default.alpha, default.tau) == (
        "tr_dpo",
        "soft",
        0.003,
        1,
    )


def test_default_config_is_valid() -> None:
    validate(compose_cfg([], shrink=False))


def test_tr_method_with_frozen_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ref_update=none contradicts method=tr_ipo"):
        validate(compose_cfg(["method=tr_ipo", "ref_update=none"]))


def test_sft_with_moving_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"ref_update=soft: method=sft has no reference"):
        validate(compose_cfg(["method=sft", "ref_update=soft"]))


def test_all_problems_reported_at_once() -> None:
    cfg = compose_cfg(
        ["alpha=1.5", "tau=0", "beta=-1", "optim.lr=0", "data.max_prompt_length=64", "trainer.max_steps=0"]
    )
    with pytest.raises(ConfigError) as info:
        validate(cfg)
    message = str(info.value)
    for key in ("alpha:", "tau:", "beta", "optim.lr:", "data.max_prompt_length", "trainer.max_steps:"):
        assert key in message, message
    assert len(info.value.problems) == 6
    assert "\n" not in message


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["tau=2.5"], "tau: must be an integer >= 1"),
        (["alpha=-0.1"], "alpha: must be a number in [0, 1]"),
        (["method.label_smoothing=0.7"], "method.label_smoothing must be a number in [0, 0.5)"),
        (["+method.gamma=1"], "unknown parameter 'gamma'"),
        (["data=jsonl", "model.tokenizer=t"], "data.path: required but not set"),
        (
            ["data=jsonl", "data.path=/nonexistent.jsonl", "model.tokenizer=t"],
            "data.path=/nonexistent.jsonl: no such file",
        ),
        (["data=jsonl", "data.path=/etc/hostname"], "model.tokenizer=synthetic only knows"),
        (["optim.schedule=exp"], "optim.schedule: must be one of"),
        (["logger=wandb", "logger.mode=sometimes"], "logger.mode: must be one of"),
        (["ckpt_path=/nope.ckpt"], "ckpt_path=/nope.ckpt: no such file"),
        (["method.loss=orpo"], "method.loss: unknown loss 'orpo'"),
    ],
)
def test_bad_values_name_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides, shrink=False))
    assert needle in str(info.value)
