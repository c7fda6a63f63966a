"""Each validation rule has one owner: the loss registry for loss parameters, the reference module
for the schedule; ``tralign.config.validate`` only collects their problems under the config keys."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.config import compose_cfg
from helpers.models import tiny_neox

from tralign.config import validate
from tralign.errors import ConfigError
from tralign.losses import PairLogps, check_loss_params, pair_loss
from tralign.reference import ReferenceSchedule, schedule_problems, soft_update_


def _problems(overrides: list[str]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    return info.value.problems


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (
            ["+method.gamma=1"],
            "method.gamma: unknown parameter 'gamma'; valid parameters: beta, label_smoothing",
        ),
        (["method.label_smoothing=0.7"], "method.label_smoothing must be a number in [0, 0.5), got 0.7"),
        (["beta=-1"], "beta must be a finite number > 0, got -1"),
        (["beta=inf"], "beta must be a finite number > 0, got inf"),
        # The registry's rule, not a second copy in the config: sft has no loss beta, but the
        # top-level key is read by every run's summary.
        (["method=sft", "ref_update=none", "beta=0"], "beta must be a finite number > 0, got 0"),
        (
            ["method=tr_kto", "method.desirable_weight=inf"],
            "method.desirable_weight must be a finite number > 0",
        ),
    ],
)
def test_loss_parameter_problems_name_the_config_key_once(overrides: list[str], problem: str) -> None:
    problems = _problems(overrides)
    matching = [p for p in problems if problem in p]
    assert len(matching) == 1 and matching[0].startswith(problem), problems


def test_the_loss_entry_point_applies_the_same_rules() -> None:
    four = torch.zeros(2)
    lp = PairLogps(four, four, four, four, torch.ones(2), torch.ones(2))
    for bad in ({"beta": -1.0}, {"beta": math.inf}, {"beta": 0.1, "label_smoothing": 0.5}):
        with pytest.raises(ValueError) as info:
            pair_loss("dpo", lp, **bad)
        assert str(info.value) == "; ".join(check_loss_params("dpo", bad))


def test_alpha_has_one_rule_for_the_schedule_and_the_update() -> None:
    ref, pol = tiny_neox(0), tiny_neox(1)
    (expected,) = schedule_problems("soft", 1.5, 1)
    with pytest.raises(ValueError) as update:
        soft_update_(ref, pol, 1.5)
    with pytest.raises(ValueError) as schedule:
        ReferenceSchedule("soft", 1.5, 1)
    assert str(update.value) == str(schedule.value) == expected
    assert [p for p in _problems(["alpha=1.5"]) if p.startswith("alpha")] == [expected]
