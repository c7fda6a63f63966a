"""``model.lora``: both shorthands compose, full fine-tuning stays the default, and every
unsupported combination is refused in one line naming its key."""

from __future__ import annotations

import pytest
from helpers.config import compose_cfg

from tralign.config import validate
from tralign.errors import ConfigError
from tralign.lora.config import lora_settings


def test_default_is_full_fine_tuning_and_null_block_too() -> None:
    assert lora_settings(compose_cfg().model) is None
    cfg = compose_cfg(["model.lora=null"])
    validate(cfg)
    assert lora_settings(cfg.model) is None


def test_command_line_shorthand_and_yaml_block() -> None:
    cli = compose_cfg(["model.lora.r=16"])
    validate(cli)
    settings = lora_settings(cli.model)
    assert (settings.r, settings.alpha, settings.ref_rank) == (16, 16.0, 16)
    assert "lm_head" in settings.target_modules  # the tiny model's tuning (conf/tuning/model/tiny.yaml)
    real = compose_cfg(["model=pythia-1b", "model.lora.r=16"], shrink=False)
    assert lora_settings(real.model).target_modules == "all-linear"  # the default elsewhere
    block = compose_cfg(["model.lora={r: 8, alpha: 32, target_modules: [query_key_value]}"])
    validate(block)
    settings = lora_settings(block.model)
    assert (settings.r, settings.scale, settings.target_modules, settings.ref_mode) == (
        8,
        4.0,
        ["query_key_value"],
        "svd",
    )


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.lora.r=0"], "model.lora.r"),
        (["model.lora.r=4", "model.lora.alpha=-1"], "model.lora.alpha"),
        (["model.lora.r=4", "model.lora.dropout=1.5"], "model.lora.dropout"),
        (["model.lora.r=4", "model.lora.ref_mode=ema"], "model.lora.ref_mode"),
        (["model.lora.r=4", "model.lora.ref_rank=0"], "model.lora.ref_rank"),
        (["model.lora.r=4", "model.lora.ref_mode=factors", "model.lora.ref_rank=8"], "model.lora.ref_rank=8"),
        (["model.lora.r=4", "ref_update=hard", "model.lora.ref_rank=full"], "model.lora.ref_rank=full"),
        (["model.lora.r=4", "model.lora.quantize=4bit"], "model.lora.quantize=4bit"),
        (["model.lora.r=4", "trainer=fsdp2"], "trainer.strategy=fsdp2"),
        (["model.lora.r=4", "trainer=fsdp"], "trainer.strategy=fsdp"),
    ],
)
def test_unsupported_combinations_are_refused_in_one_line(overrides: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as err:
        validate(compose_cfg(overrides))
    lines = [p for p in err.value.problems if key in p]
    assert len(lines) == 1 and "\n" not in lines[0], err.value.problems


def test_ddp_is_accepted() -> None:
    validate(compose_cfg(["model.lora.r=4", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]))


def test_a_target_module_that_names_nothing_is_refused_in_one_line() -> None:
    """peft skips a listed name that matches no module as long as another one matches."""
    from helpers.models import tiny_neox

    from tralign.errors import TralignError
    from tralign.lora.adapters import apply_lora

    settings = lora_settings(
        compose_cfg(["model.lora.r=4", "model.lora.target_modules=[dense,embed_out]"]).model
    )
    with pytest.raises(TralignError, match=r"model.lora.target_modules: no module named embed_out .*lm_head"):
        apply_lora(tiny_neox(0), settings, moving_reference=False)
