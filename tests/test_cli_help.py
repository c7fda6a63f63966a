"""``--help`` of train and evaluate: every group with a description and its options, the top-level
keys with this command line's values, and examples that compose."""

from __future__ import annotations

import re
import shlex

import pytest
from helpers.paths import CONF
from helpers.processes import run_cli

from tralign.cli import check_overrides

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name != "hydra")


@pytest.fixture(scope="module")
def train_help(tmp_path_factory) -> str:
    result = run_cli(
        "tralign.train", ["method=tr_ipo", "ref_update=hard", "--help"], tmp_path_factory.mktemp("h")
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_train_help_describes_every_group_and_lists_its_options(train_help: str):
    described = re.findall(
        r"^  (\+?\w+) +(?:\[[^]]*\] )?\S.*$", train_help.split("Options of each group:")[0], re.M
    )
    for group in GROUPS:
        if group == "judge":  # evaluate's
            continue
        if group == "sweep":  # added with +: +sweep=NAME
            group = "+sweep"
        assert group in described, f"conf/{group}/ has no description line in conf/hydra/help/train.yaml"
        options = sorted(p.stem for p in (CONF / group.lstrip("+")).glob("*.yaml"))
        assert f"{group.lstrip('+')}: {', '.join(options)}" in train_help
    assert "+sweep" in described and re.search(r"^sweep: .*alpha_soft", train_help, re.M)


def test_train_help_shows_the_top_level_keys_with_this_command_lines_values(train_help: str):
    assert "[tr_ipo] the loss" in train_help and "[hard] how the reference moves" in train_help
    for key, value in (("seed", "0"), ("alpha", "1.0"), ("beta", "0.1"), ("ckpt_path", "None")):
        assert re.search(rf"^  {key} +\[{re.escape(value)}\] \S", train_help, re.M), key
    assert re.search(r"^  tau +\[\d+\] optimizer steps between reference updates", train_help, re.M)
    assert "Hydra's own flags: --hydra-help" in train_help and "\n$" not in train_help  # no raw $CONFIG dump


def _examples(text: str, command: str) -> list[list[str]]:
    lines = text.split("Examples:")[1].splitlines()
    found = []
    for line in lines:
        words = shlex.split(re.sub(r"<[^>]*>", "x", line.strip().split("  ", 1)[0]))
        if words and words[0] == command:
            found.append([w for w in words[1:] if w != "-m"])
    return found


def test_train_help_examples_compose(train_help: str):
    examples = _examples(train_help, "tralign-train")
    assert len(examples) >= 6 and ["method=tr_kto", "ref_update=hard", "tau=512"] in examples
    for overrides in examples:
        check_overrides(overrides, "train")


def test_evaluate_help_says_what_it_needs_and_its_examples_compose(tmp_path):
    result = run_cli("tralign.evaluate", ["--help"], tmp_path)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert re.search(r"^  policy +\[required\]", text, re.M)
    assert re.search(r"^  judge +\[golden\] .*reward_model", text, re.M)
    assert "judge: api, golden, reward_model" in text
    examples = _examples(text, "tralign-eval")
    assert len(examples) == 3
    for overrides in examples:
        check_overrides(overrides, "evaluate")
