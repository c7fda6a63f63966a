"""Typos never train silently: every mistyped key, Trainer argument or group option, and a bare
``evaluate``, end in one line naming what was meant, exit code 2, before Lightning is imported."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.config import compose_cfg
from helpers.paths import CONF, REPO
from helpers.processes import run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tralign.cli import check_overrides, config_keys, nearest, trainer_arguments
from tralign.errors import TralignError
from tralign.evaluate import comparisons_for

GROUPS = {
    "method": sorted(p.stem for p in (CONF / "method").glob("*.yaml")),
    "ref_update": sorted(p.stem for p in (CONF / "ref_update").glob("*.yaml")),
    "model": sorted(p.stem for p in (CONF / "model").glob("*.yaml")),
    "data": sorted(p.stem for p in (CONF / "data").glob("*.yaml")),
    "logger": sorted(p.stem for p in (CONF / "logger").glob("*.yaml")),
}


def _one_line_refusal(overrides: list[str], config: str = "train") -> str:
    with pytest.raises(TralignError) as info:
        check_overrides(overrides, config)
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["lr=1e-6"], "did you mean optim.lr?"),
        (["+lr=1e-6"], "did you mean optim.lr?"),  # Hydra's own hint: trains at 1e-3 with an unused key
        (["+trainer.max_step=10"], "not a lightning.Trainer argument; did you mean max_steps?"),
        (["trainer.max_step=10"], "did you mean max_steps?"),
        (["method=trdpo"], "valid: dpo, ipo, kto, kto_unpaired, sft, tr_dpo"),
        (["method=trdpo"], "did you mean tr_dpo?"),
        (["ref_update=sotf"], "did you mean soft?"),
        (["+optim.weight_decy=0.1"], "did you mean optim.weight_decay?"),
        (["alpha=0.1,0.3", "method=tr_dpo,tr_ipoo"], "did you mean tr_ipo?"),  # each value of a sweep
        (["ckpt_path=out/step=4.ckpt"], "ckpt_path=\"'out/step=4.ckpt'\""),
    ],
)
def test_typos_are_refused_with_the_nearest_real_name(overrides, expected):
    assert expected in _one_line_refusal(overrides)


def test_sound_command_lines_pass():
    for overrides in (
        ["optim.lr=1e-6", "method=tr_ipo", "ref_update=hard", "tau=4"],
        ["+trainer.profiler=simple", "+logger.notes=x", "data.unpair=true", "method=tr_kto_unpaired"],
        ["alpha=0.1,0.3", "method=dpo,ipo", "ref_update=none", "hydra.run.dir=x"],
        ["+sweep=alpha_soft"],
        ["model.config.hidden_size=16", "+model.config.rope_theta=10"],
    ):
        check_overrides(overrides, "train")


def test_bare_evaluate_says_what_it_needs():
    from tralign.evaluate import REQUIRED

    with pytest.raises(TralignError, match="policy: required: the model folder"):
        check_overrides([], "evaluate", required=REQUIRED)
    check_overrides(["policy=a", "baseline=b"], "evaluate", required=REQUIRED)


def test_policy_and_baseline_the_same_folder_is_refused(tmp_path):
    with pytest.raises(TralignError, match="policy and baseline are the same folder"):
        comparisons_for([str(tmp_path)], str(tmp_path / "." / ""), "baseline")
    assert comparisons_for(["a", "b"], "b", "baseline") == [("a", "b")]  # the others still run


def _mutations(word: str) -> st.SearchStrategy[str]:
    """One edit of ``word``: a character dropped, doubled, or swapped with its neighbour."""
    n = len(word)
    return st.integers(0, max(n - 2, 0)).flatmap(
        lambda i: st.sampled_from(
            [
                word[:i] + word[i + 1 :],
                word[:i] + word[i] + word[i:],
                word[:i] + word[i + 1 : i + 2] + word[i] + word[i + 2 :],
            ]
        )
    )


_KEYS = [k for k in config_keys(compose_cfg(shrink=False)) if "." in k and len(k) > 6]
_LEAVES = sorted({k.split(".")[0] for k in _KEYS})


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    family=st.sampled_from(["key", "plus_key", "trainer", "group"]),
    data=st.data(),
)
def test_fuzz_typos_never_pass_silently(family, data):
    """Every one-edit typo of a real name that is not itself a real name is refused in one line
    that names a real candidate (key, Trainer argument, or the group's valid options)."""
    keys = _KEYS
    if family in ("key", "plus_key"):
        real = data.draw(st.sampled_from(keys))
        typo = data.draw(_mutations(real))
        if (
            typo in keys
            or "." not in typo
            or typo.endswith(".")
            or ".." in typo
            or typo.startswith("trainer.")
        ):
            return
        if any(typo.startswith(k + ".") for k in keys):
            return  # a new key below an existing leaf is Hydra's own error, covered elsewhere
        line = ("+" if family == "plus_key" else "") + f"{typo}=1"
        if family == "plus_key" and not _is_near(typo, keys):
            return  # a genuinely new optional setting (e.g. +logger.notes) is allowed
        message = _one_line_refusal([line])
        assert "did you mean" in message or "unknown key" in message or "Could not" in message
    elif family == "trainer":
        args = trainer_arguments()
        real = data.draw(st.sampled_from(args))
        typo = data.draw(_mutations(real))
        if typo in args or not typo:
            return
        message = _one_line_refusal([f"+trainer.{typo}=1"])
        assert "not a lightning.Trainer argument" in message
    else:
        group = data.draw(st.sampled_from(sorted(GROUPS)))
        typo = data.draw(_mutations(data.draw(st.sampled_from(GROUPS[group]))))
        if typo in GROUPS[group] or not typo or typo == "null":
            return
        message = _one_line_refusal([f"{group}={typo}"])
        assert f"valid: {', '.join(GROUPS[group])}" in message


def _is_near(typo: str, keys: list[str]) -> bool:
    import difflib

    match = nearest(typo, keys)
    return match is not None and difflib.SequenceMatcher(None, typo, match).ratio() >= 0.8


def test_cli_typo_exits_2_in_one_line_before_lightning_is_imported(tmp_path):
    code = (
        "import sys\nfrom tralign.train import main\nsys.argv = ['tralign-train', '+lr=1e-6']\n"
        "try:\n    main()\nexcept SystemExit as e:\n"
        "    print(e.code, 'lightning' in sys.modules, 'transformers' in sys.modules)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.stdout.split() == ["2", "False", "False"], result.stderr
    assert result.stderr.strip() == "tralign: error: +lr=1e-6: unknown key 'lr'; did you mean optim.lr?"
    assert not (tmp_path / "outputs").exists()  # nothing written: Hydra never started


@pytest.mark.parametrize(
    ("module", "args", "expected"),
    [
        ("tralign.train", ["method=trdpo"], "did you mean tr_dpo?"),
        ("tralign.evaluate", [], "policy: required"),
    ],
)
def test_cli_refusals_are_one_line_exit_2(tmp_path: Path, module, args, expected):
    result = run_cli(module, args, tmp_path)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
