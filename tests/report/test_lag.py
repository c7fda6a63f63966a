"""tralign.report.lag: the reference's mean age (closed form), the lag points a regime sweep yields
(paired with DPO at the same learning rate and seed), their Markdown section and plot."""

from __future__ import annotations

import math

import pytest

from tralign.report.lag import lag_plot, lag_points, lag_section, lag_steps, lr_key


def test_lag_steps_closed_form() -> None:
    assert lag_steps("hard", 1.0, 64) == 32.0  # the newest snapshot is τ/2 old on average
    assert lag_steps("soft", 0.5, 1) == pytest.approx(1.5)  # 1/α − 1/2
    assert lag_steps("soft", 0.6, 1) == pytest.approx(1 / 0.6 - 0.5)
    assert lag_steps("soft", 0.1, 10) == pytest.approx(95.0)  # soft every τ steps: τ(1/α − 1/2)
    assert lag_steps("none", 0.0, 1) == math.inf
    # The EMA's weights α(1−α)^k on snapshots k·τ back, plus τ/2: the same number summed directly.
    alpha, tau = 0.2, 4
    direct = sum(alpha * (1 - alpha) ** k * k * tau for k in range(2000)) + tau / 2
    assert lag_steps("soft", alpha, tau) == pytest.approx(direct)


def _row(label: str, ref: str, alpha: float, tau: int, lr: float, seed: int, reward: float) -> dict:
    return {"status": "completed", "label": label, "ref_update": ref, "alpha": alpha, "tau": tau,
            "optim.lr": lr, "seed": seed, "golden_reward": reward}  # fmt: skip


def test_lag_points_pair_with_dpo_at_the_same_learning_rate() -> None:
    swept = ["seed", "ref_update", "alpha", "tau", "optim.lr"]
    assert lr_key(swept) == "optim.lr" and lr_key(["seed", "beta"]) is None
    rows = []
    for lr, base in ((1e-4, 1.0), (1e-3, 2.0)):
        for seed in range(3):
            rows.append(_row("DPO", "none", 0.0, 1, lr, seed, base + seed))
            rows.append(_row("TR-DPO soft", "soft", 0.5, 1, lr, seed, base + seed - 0.1 * (seed + 1)))
            rows.append(_row("TR-DPO hard", "hard", 1.0, 8, lr, seed, base + seed + 0.2))
    points = lag_points(rows, swept, "golden_reward", {"*": "DPO"})
    assert [(p.label, p.lr) for p in points] == [
        ("TR-DPO soft", 1e-4),
        ("TR-DPO hard", 1e-4),
        ("TR-DPO soft", 1e-3),
        ("TR-DPO hard", 1e-3),
    ]  # fmt: skip — by lag: 1.5e-4, 4e-4, 1.5e-3, 4e-3
    assert [p.lag for p in points] == pytest.approx([1.5e-4, 4e-4, 1.5e-3, 4e-3])
    soft = points[0].diff.stats
    assert (soft.n, soft.mean) == (3, pytest.approx(-0.2))  # differences −0.1, −0.2, −0.3
    assert points[1].diff.stats.mean == pytest.approx(0.2) and points[1].diff.stats.sem == pytest.approx(0.0)
    text = "\n".join(lag_section(points, "golden_reward"))
    assert "| TR-DPO soft | 0.5 | 1 | 0.0001 | 1.5 | 0.00015 | TR-DPO soft − DPO | -0.200 ± 0.058" in text
    assert lag_plot(points, "golden_reward") is not None
    # No learning rate swept: nothing to relate the lag to.
    assert lag_points(rows, ["seed", "ref_update", "alpha", "tau"], "golden_reward", {"*": "DPO"}) == []
    assert lag_section([], "golden_reward") == [] and lag_plot(points[:1], "golden_reward") is None
