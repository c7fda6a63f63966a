"""tralign.report.stats and the report's seed sections: mean ± s.e. with a 95% t-interval over seeds,
paired differences against the baseline with the same seed and setting, on hand-picked numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tralign.report.__main__ import main
from tralign.report.stats import (
    best_within,
    default_baselines,
    kl_budgets,
    matched_kl,
    paired_differences,
    seed_stats,
    setting_keys,
)

T_2 = 4.302652729911275  # Student t, 2 degrees of freedom, 97.5% quantile (tables)
T_3 = 3.182446305284263  # 3 degrees of freedom


def test_seed_stats_closed_form() -> None:
    s = seed_stats([1.0, 2.0, 3.0])  # mean 2, sample sd 1
    assert (s.n, s.mean) == (3, 2.0)
    assert s.sem == pytest.approx(1 / math.sqrt(3))
    assert (s.low, s.high) == pytest.approx((2 - T_2 / math.sqrt(3), 2 + T_2 / math.sqrt(3)))
    assert not s.excludes_zero
    four = seed_stats([2.0, 4.0, 4.0, 6.0])  # mean 4, sd √(8/3)
    assert four.sem == pytest.approx(math.sqrt(8 / 3) / 2)
    assert four.low == pytest.approx(4 - T_3 * math.sqrt(8 / 3) / 2) and four.excludes_zero
    one = seed_stats([0.7])
    assert (one.sem, one.low, one.high) == (None, None, None) and one.cell() == "0.700 (n=1)"
    assert s.cell() == f"2.000 ± 0.577 [{2 - T_2 / 3**0.5:.3f}, {2 + T_2 / 3**0.5:.3f}]"
    with pytest.raises(ValueError):
        seed_stats([])


def _row(label: str, seed: int, reward: float, beta: float = 0.1, **extra) -> dict:
    ref = {"DPO": "none"}.get(label, label.split(" ")[-1])
    return {"status": "completed", "label": label, "ref_update": ref, "seed": seed, "beta": beta,
            "golden_reward": reward, **extra}  # fmt: skip


def test_paired_differences_pair_by_seed_within_a_setting() -> None:
    swept = ["ref_update", "beta", "seed"]
    assert setting_keys(swept) == ["beta"]
    rows = [
        *(_row("DPO", s, r) for s, r in enumerate([1.0, 2.0, 3.0])),
        *(_row("TR-DPO soft", s, r) for s, r in enumerate([1.3, 2.4, 3.5])),  # diffs 0.3, 0.4, 0.5
        *(_row("TR-DPO hard", s, r) for s, r in enumerate([0.5, 1.5])),  # seed 2 missing
        _row("DPO", 0, 9.0, beta=0.3),  # another setting: never paired with β = 0.1
        _row("TR-DPO soft", 0, 8.0, beta=0.3),
        _row("TR-DPO soft", 1, 7.0, beta=0.3),  # no DPO seed 1 at β = 0.3: dropped
        {**_row("DPO", 5, 100.0), "status": "failed"},
    ]
    diffs = {(d.label, d.setting): d for d in paired_differences(rows, swept, "golden_reward")}
    soft = diffs[("TR-DPO soft", (0.1,))]
    assert soft.baseline == "DPO" and soft.seeds == (0, 1, 2)
    # Paired: s.e. of (0.3, 0.4, 0.5) = 0.1/√3, far below the unpaired seeds' spread (s.e. ~0.6).
    assert soft.stats.mean == pytest.approx(0.4) and soft.stats.sem == pytest.approx(0.1 / math.sqrt(3))
    assert soft.stats.low == pytest.approx(0.4 - T_2 * 0.1 / math.sqrt(3)) and soft.stats.excludes_zero
    hard = diffs[("TR-DPO hard", (0.1,))]
    assert (
        hard.seeds == (0, 1) and hard.stats.mean == pytest.approx(-0.5) and hard.stats.sem == pytest.approx(0)
    )
    other = diffs[("TR-DPO soft", (0.3,))]
    assert other.seeds == (0,) and other.stats.mean == pytest.approx(-1.0) and other.stats.sem is None
    assert ("DPO", (0.1,)) not in diffs
    # An explicit baseline for every label.
    vs_hard = {d.label: d for d in paired_differences(rows, swept, "golden_reward", {"*": "TR-DPO hard"})}
    assert vs_hard["DPO"].stats.mean == pytest.approx(0.5) and vs_hard["DPO"].seeds == (0, 1)


def test_default_baselines_are_the_frozen_variant_of_the_same_loss() -> None:
    labels = ["DPO", "TR-DPO soft", "TR-DPO hard", "TR-IPO soft", "KTO", "TR-KTO hard"]
    assert default_baselines(labels) == {"TR-DPO soft": "DPO", "TR-DPO hard": "DPO", "TR-KTO hard": "KTO"}


def _summary(ref: str, seed: int, reward: float, steps: int = 1000) -> dict:
    alpha, tau = {"none": (0.0, 1), "soft": (0.003, 1), "hard": (1.0, 250)}[ref]
    hard_end = ref == "hard" and steps % tau == 0
    val = {"val/loss": math.log(2) if hard_end else 0.55, "val/rewards/accuracies": 0.0 if hard_end else 0.7,
           "val/init/rewards/accuracies": 0.70 + 0.01 * seed}  # fmt: skip
    return {"status": "completed", "method": "dpo", "loss": "dpo", "ref_update": ref, "alpha": alpha, "tau": tau,
            "beta": 0.1, "seed": seed, "global_step": steps, "applied_steps": steps,
            "ref_updates": steps // tau if ref != "none" else 0, "train": {"train/loss": 0.5}, "val": val,
            "golden_reward": reward, "golden_reward_sem": 0.03, "golden_kl_init": 10.0 + seed,
            "golden_reward_init": 0.2}  # fmt: skip


def write_sweep(root: Path, results: dict[str, list[float]], steps: int = 1000) -> Path:
    """A finished multirun: one numbered job per (ref_update, seed) with a summary and its overrides."""
    root.mkdir(parents=True)
    num = 0
    for ref, rewards in results.items():
        for seed, reward in enumerate(rewards):
            job = root / str(num)
            (job / ".hydra").mkdir(parents=True)
            overrides = ["method=dpo", f"ref_update={ref}", f"seed={seed}"]
            OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
            (job / "summary.json").write_text(json.dumps(_summary(ref, seed, reward, steps)))
            num += 1
    return root


def test_report_writes_seed_intervals_paired_differences_and_marks_empty_metrics(tmp_path: Path) -> None:
    sweep = write_sweep(
        tmp_path / "sweep",
        {"none": [1.3, 1.2, 1.4], "soft": [1.4, 1.0, 1.2], "hard": [0.9, 0.8, 1.0]},
    )
    assert main([str(sweep)]) == 0
    md = (sweep / "results.md").read_text()
    # Mean over seeds with the 95% t-interval: DPO 1.3 ± 0.1/√3 ... (sd of 1.2, 1.3, 1.4 is 0.1).
    half = T_2 * 0.1 / math.sqrt(3)
    dpo_line = next(line for line in md.splitlines() if line.startswith("| DPO |"))
    assert f"1.300 ± 0.058 [{1.3 - half:.3f}, {1.3 + half:.3f}]" in dpo_line
    # Paired differences: soft − DPO per seed = 0.1, −0.2, −0.2; hard − DPO = −0.4 each (s.e. 0).
    paired = md[md.index("## Paired differences") :]
    soft = next(
        line for line in paired.splitlines() if "TR-DPO soft − DPO" in line and "golden_reward" in line
    )
    assert "-0.100 ± 0.100" in soft and "*" not in soft.split("|")[3]
    hard = next(
        line for line in paired.splitlines() if "TR-DPO hard − DPO" in line and "golden_reward" in line
    )
    assert "-0.400 ± 0.000" in hard and "*" in hard
    # The hard runs ended on an update (1000 = 4 × 250): their closing val/loss, accuracies are empty.
    header = next(line for line in md.splitlines() if line.startswith("| job |"))
    assert "val/loss (vs ref)" in header and "val/rewards/accuracies (vs ref)" in header
    assert "| val/init/rewards/accuracies |" in header or " val/init/rewards/accuracies " in header
    hard_rows = [
        line
        for line in md.splitlines()
        if line.startswith("| ") and "| TR-DPO hard |" in line and "completed" in line
    ]
    assert len(hard_rows) == 3 and all(line.count("— (ref = policy)") == 2 for line in hard_rows)
    assert all("0.6931" not in line for line in hard_rows)
    assert "— (ref = policy)" not in "".join(line for line in md.splitlines() if "| DPO |" in line)
    # Seed statistics never show reference-relative metrics.
    means = md[md.index("## Mean over seeds") : md.index("## Paired")]
    assert "val/loss" not in means and "val/init/rewards/accuracies" in means


def test_matched_kl_reads_each_seeds_frontier_at_the_budget() -> None:
    points = {
        ("DPO", 0): [(5, 1.0), (10, 1.5), (20, 1.2)], ("DPO", 1): [(4, 0.9), (12, 1.4)],
        ("TR-DPO soft", 0): [(6, 1.1), (9, 1.6)], ("TR-DPO soft", 1): [(5, 1.0), (15, 1.7)],
    }  # fmt: skip
    rows = [
        {"status": "completed", "label": label, "seed": seed, "golden_kl_init": kl, "golden_reward": q}
        for (label, seed), pts in points.items()
        for kl, q in pts
    ]
    assert best_within(points[("DPO", 0)], 12) == 1.5 and best_within(points[("DPO", 0)], 4.9) is None
    # Lowest budget every (method, seed) reaches: 6 (TR seed 0); the largest KL seen: 20.
    assert kl_budgets(rows, "golden_reward", "golden_kl_init", n=3) == [6.0, 13.0, 20.0]
    means, diffs = matched_kl(rows, "golden_reward", "golden_kl_init", [5, 10, 15])
    assert means[("DPO", 10)].mean == pytest.approx(1.2) and means[("DPO", 10)].n == 2
    assert means[("TR-DPO soft", 5)].n == 1  # seed 0 has no point within 5 nats
    by = {d.setting[0]: d for d in diffs}
    assert by[5].seeds == (1,) and by[5].stats.mean == pytest.approx(0.1)
    assert by[10].stats.mean == pytest.approx(0.1) and by[10].stats.sem == pytest.approx(0.0)
    assert by[15].stats.mean == pytest.approx(0.2) and by[15].stats.sem == pytest.approx(0.1)


def test_variants_of_one_method_are_paired_with_the_baseline_separately() -> None:
    """Regime map: TR-DPO soft at two α per learning rate, DPO once per learning rate."""
    swept = ["sweep", "optim.lr", "ref_update", "alpha", "seed"]  # sweep: regime_dpo / regime_soft
    assert setting_keys(swept) == ["optim.lr"]
    rows = []
    for lr, base in ((1e-4, 1.0), (1e-3, 2.0)):
        for seed in (0, 1):
            rows.append({**_row("DPO", seed, base + seed), "optim.lr": lr, "alpha": 0.0})
            for alpha, gain in ((0.01, 0.1), (0.1, -0.2)):
                rows.append(
                    {
                        **_row("TR-DPO soft", seed, base + seed + gain * (1 + seed)),
                        "optim.lr": lr,
                        "alpha": alpha,
                    }
                )
    diffs = {d.setting: d for d in paired_differences(rows, swept, "golden_reward")}
    assert sorted(diffs) == [(0.01, 1e-4), (0.01, 1e-3), (0.1, 1e-4), (0.1, 1e-3)]
    assert diffs[(0.01, 1e-3)].stats.mean == pytest.approx(0.15) and diffs[
        (0.01, 1e-3)
    ].stats.sem == pytest.approx(0.05)
    assert diffs[(0.1, 1e-4)].stats.mean == pytest.approx(-0.3) and diffs[(0.1, 1e-4)].seeds == (0, 1)
