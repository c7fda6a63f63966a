"""tralign.report.meaning: which metrics keep their meaning under a moving reference, which are relative
to the reference, and which are empty by construction (reference = policy after the last step)."""

from __future__ import annotations

import math

import pytest

from tralign.report.meaning import (
    describe,
    metric_kind,
    ordered_metrics,
    reference_equals_policy,
    summary_lines,
)


def _summary(ref: str, alpha: float, tau: int, steps: int, updates: int) -> dict:
    hard_end = alpha == 1.0 and updates and steps % tau == 0
    return {
        "ref_update": ref, "alpha": alpha, "tau": tau, "global_step": steps, "applied_steps": steps,
        "ref_updates": updates,
        "train": {"train/loss": 0.5, "train/rewards/accuracies": 0.8},
        "val": {"val/loss": math.log(2) if hard_end else 0.55, "val/rewards/accuracies": 0.0 if hard_end else 0.7,
                "val/init/rewards/accuracies": 0.7, "val/init/rewards/margins": 0.8, "val/logps/chosen": -35.0},
        "golden_reward": 1.2, "golden_reward_init": 0.2, "golden_kl_init": 19.0, "wall_time_s": 80.0,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("ref", "alpha", "tau", "steps", "updates", "empty"),
    [
        ("hard", 1.0, 250, 1000, 4, True),  # the default hard run: last update at the final step
        ("hard", 1.0, 1, 8, 8, True),  # τ = 1: reference = policy after every step
        ("hard", 1.0, 250, 900, 3, False),  # 150 steps since the last update
        ("hard", 1.0, 250, 200, 0, False),  # never updated: the reference is still the start
        ("soft", 1.0, 5, 10, 2, True),  # α = 1 is a copy whatever the mode's name
        ("soft", 0.003, 1, 1000, 1000, False),  # trails the policy, never equals it
        ("none", 0.0, 1, 1000, 0, False),
    ],
)
def test_reference_equals_policy(
    ref: str, alpha: float, tau: int, steps: int, updates: int, empty: bool
) -> None:
    summary = _summary(ref, alpha, tau, steps, updates)
    assert reference_equals_policy(summary) is empty
    assert (metric_kind("val/loss", summary) == "empty") is empty
    assert (metric_kind("val/rewards/accuracies", summary) == "empty") is empty
    # Training metrics were computed before the final update; the start-relative ones never change kind.
    assert metric_kind("train/loss", summary) == "reference"
    for key in ("golden_reward", "golden_kl_init", "val/init/rewards/accuracies", "val/logps/chosen"):
        assert metric_kind(key, summary) == "start"
    assert metric_kind("wall_time_s", summary) == "other"


def test_reference_equals_policy_without_the_fields_is_false() -> None:
    assert reference_equals_policy({}) is False
    assert reference_equals_policy({"ref_update": "hard"}) is False
    assert metric_kind("val/loss") == "reference"  # no summary: the kind, not the emptiness


def test_ordered_metrics_lead_with_start_relative_and_put_empty_last() -> None:
    summary = _summary("hard", 1.0, 250, 1000, 4)
    ordered = ordered_metrics(summary)
    keys = [k for k, _, _ in ordered]
    assert keys[:5] == [
        "golden_reward", "golden_kl_init", "golden_reward_init",
        "val/init/rewards/accuracies", "val/init/rewards/margins",
    ]  # fmt: skip
    kinds = [kind for _, _, kind in ordered]
    assert kinds == sorted(kinds, key=["start", "reference", "empty"].index)
    assert {k for k, _, kind in ordered if kind == "empty"} == {"val/loss", "val/rewards/accuracies"}
    assert "wall_time_s" not in keys
    assert [k for k, _, _ in ordered_metrics(summary, ["val/loss", "golden_reward", "nope"])] == [
        "golden_reward",
        "val/loss",
    ]
    assert describe("val/loss", math.log(2), "empty") == "empty: reference = policy at the last step"
    assert describe("val/loss", 0.55, "reference") == "0.55 (vs reference)"
    assert describe("golden_reward", 1.2345678, "start") == "1.235"


def test_summary_lines_for_the_console() -> None:
    lines = summary_lines(
        _summary("hard", 1.0, 250, 1000, 4), ["val/loss", "golden_reward", "val/rewards/accuracies"]
    )
    assert [line.split()[0] for line in lines] == ["golden_reward", "val/loss", "val/rewards/accuracies"]
    assert lines[0].endswith("  1.2") and "0.6931" not in "".join(lines)
    assert lines[1].endswith("empty: reference = policy at the last step")
    soft = summary_lines(_summary("soft", 0.003, 1, 1000, 1000), ["val/loss"])
    assert soft == ["val/loss  0.55 (vs reference)"]
