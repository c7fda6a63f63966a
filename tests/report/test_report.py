"""tralign.report: rows from summaries (swept values first, best per method, failed/incomplete/never
started jobs listed), CSV + Markdown, and plots whose numbers are the CSV's. The slow test runs a real
multirun of a shipped sweep with W&B offline, one job failing, and reports it."""

from __future__ import annotations

import csv
import json
import os
import statistics
import struct
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from helpers.config import SHRINK
from matplotlib.collections import PathCollection
from omegaconf import OmegaConf

from tralign.report.__main__ import main
from tralign.report.jobs import load_jobs
from tralign.report.plots import all_plots, pareto_front, plot_against
from tralign.report.table import build_rows, method_label

GRID = [(ref, beta, seed) for ref in ("none", "soft", "hard") for beta in (0.05, 0.1) for seed in (0, 1)]
FAILED, INCOMPLETE, NEVER = 5, 7, (10, 11)  # job numbers


def _summary(ref: str, beta: float, seed: int) -> dict:
    """A completed summary with made-up but distinct numbers."""
    bonus = {"none": 0.0, "soft": 0.2, "hard": 0.1}[ref]
    return {
        "status": "completed", "method": "dpo", "loss": "dpo", "ref_update": ref,
        "alpha": {"none": 0.0, "soft": 0.003, "hard": 1.0}[ref], "tau": {"hard": 250}.get(ref, 1),
        "beta": beta, "seed": seed, "global_batch_size": 32, "global_step": 100, "ref_updates": 3,
        "train": {"train/loss": 0.5}, "val": {"val/loss": 0.6 - bonus, "val/rewards/accuracies": 0.7 + bonus},
        "golden_reward": 1.0 + bonus + beta + 0.01 * seed, "golden_reward_sem": 0.02,
        "golden_kl_init": 2.0 / beta + seed + bonus, "golden_kl_init_sem": 0.3, "golden_reward_init": 0.5,
        "wall_time_s": 10.0,
    }  # fmt: skip


def _fake_sweep(root: Path) -> Path:
    """A multirun folder as Hydra and tralign leave it: 12 jobs asked for, 10 started, 1 failed on a
    config error, 1 started but without a summary, 2 never started."""
    task = ["method=dpo", "ref_update=none,soft,hard", "beta=0.05,0.1", "seed=0,1"]
    multirun = {"hydra": {"sweep": {"dir": str(root), "subdir": "${hydra.job.num}"},
                          "sweeper": {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper",
                                      "params": {}},
                          "overrides": {"task": task}}}  # fmt: skip
    root.mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(multirun), root / "multirun.yaml")
    for num, (ref, beta, seed) in enumerate(GRID):
        if num in NEVER:
            continue
        job = root / str(num)
        (job / ".hydra").mkdir(parents=True)
        overrides = ["method=dpo", f"ref_update={ref}", f"beta={beta}", f"seed={seed}"]
        OmegaConf.save(OmegaConf.create(overrides), job / ".hydra" / "overrides.yaml")
        if num == FAILED:
            failure = {
                "status": "failed",
                "error": "invalid config: tau: must be an integer >= 1",
                "overrides": overrides,
            }
            (job / "summary.json").write_text(json.dumps(failure))
        elif num != INCOMPLETE:
            (job / "summary.json").write_text(json.dumps(_summary(ref, beta, seed)))
    (root / "0" / "eval.json").write_text(json.dumps({"win_rate": {"vs_sft": 0.61}}))
    return root


def _read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_report_lists_every_job_with_swept_values_first(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path / "sweep")
    assert main([str(sweep)]) == 0
    rows = _read_csv(sweep / "results.csv")
    assert [r["job"] for r in rows] == [str(n) for n in range(12)]
    status = {r["job"]: r["status"] for r in rows}
    assert status[str(FAILED)] == "failed" and status[str(INCOMPLETE)] == "incomplete"
    assert [status[str(n)] for n in NEVER] == ["not started", "not started"]
    assert sum(s == "completed" for s in status.values()) == 8
    header = list(rows[0])
    assert header[:5] == ["job", "status", "ref_update", "beta", "seed"]  # method is not swept
    assert rows[FAILED]["beta"] == "0.05" and "tau: must be an integer" in rows[FAILED]["error"]
    assert rows[NEVER[0]]["ref_update"] == "hard" and rows[NEVER[0]]["seed"] == "0"
    assert rows[0]["eval/win_rate/vs_sft"] == "0.61"
    # Best per method by golden_reward: for each label the completed job with the highest value.
    done = [r for r in rows if r["status"] == "completed"]
    for label in {r["label"] for r in done}:
        mine = [r for r in done if r["label"] == label]
        best = max(mine, key=lambda r: float(r["golden_reward"]))
        assert [r["job"] for r in mine if r["best"] == "True"] == [best["job"]]
    assert {r["label"] for r in done} == {"DPO", "TR-DPO soft", "TR-DPO hard"}


def test_markdown_table_marks_best_and_lists_failures(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path / "sweep")
    main([str(sweep), "--out", str(tmp_path / "out")])
    md = (tmp_path / "out" / "results.md").read_text()
    lines = md.splitlines()
    header = next(line for line in lines if line.startswith("| job |"))
    assert header.split("|")[1:6] == [" job ", " status ", " ref_update ", " beta ", " seed "]
    assert "12 jobs: 8 completed, 1 failed, 1 incomplete, 2 not started." in md
    best_lines = [line for line in lines if line.startswith("| ") and line.rstrip().endswith("★ |")]
    assert len(best_lines) == 3 and all("**" in line for line in best_lines)
    assert "## Mean over seeds" in md
    assert f"- job {FAILED} (failed): invalid config: tau: must be an integer >= 1" in md
    assert f"- job {INCOMPLETE} (incomplete): no summary.json" in md
    assert f"- job {NEVER[1]} (not started): never started" in md


def _label_means(rows: list[dict[str, str]], x: str, y: str) -> dict[str, tuple[list[float], list[float]]]:
    groups: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if r["status"] == "completed":
            groups[r["label"]][float(r[x])].append(float(r[y]))
    return {lab: (sorted(g), [statistics.fmean(g[v]) for v in sorted(g)]) for lab, g in groups.items()}


def _curves(ax) -> dict:
    """Legend label -> the data line of each curve (errorbar containers hold the labels)."""
    return {c.get_label(): c.lines[0] for c in ax.containers}


def test_plotted_numbers_are_the_csv_numbers(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path / "sweep")
    main([str(sweep)])
    # α, τ constant: no α or τ plot; no KL range every (method, seed) reaches: no matched-KL plot.
    pngs = sorted(p.name for p in sweep.glob("*.png"))
    assert pngs == ["beta_dpo.png", "frontier.png", "frontier_seeds.png"]
    csv_rows = _read_csv(sweep / "results.csv")
    rows, swept, metric = build_rows(load_jobs(sweep))
    assert metric == "golden_reward" and swept == ["ref_update", "beta", "seed"]
    figures = all_plots(rows, metric, swept)
    assert sorted(figures) == ["beta_dpo", "frontier", "frontier_seeds"]
    # β plot: per method, the line is the mean over seeds, the dots are the jobs.
    ax = figures["beta_dpo"].axes[0]
    expected = _label_means(csv_rows, "beta", "golden_reward")
    lines = _curves(ax)
    assert sorted(lines) == sorted(expected)
    for label, (xs, ys) in expected.items():
        assert list(lines[label].get_xdata()) == xs
        assert list(lines[label].get_ydata()) == pytest.approx(ys, rel=1e-12)
    dots = sorted(tuple(p) for c in ax.collections if isinstance(c, PathCollection) for p in c.get_offsets())
    done = [r for r in csv_rows if r["status"] == "completed"]
    assert dots == sorted((float(r["beta"]), float(r["golden_reward"])) for r in done)
    # Frontier: per method, every job's (KL, golden reward) as in the CSV, and the line through its Pareto front.
    ax = figures["frontier"].axes[0]
    curves = _curves(ax)
    fronts = {
        line.get_gid().removeprefix("front:"): line
        for line in ax.lines
        if (line.get_gid() or "").startswith("front:")
    }
    assert sorted(curves) == sorted(fronts) == sorted(expected)
    for label, line in curves.items():
        mine = sorted(
            (float(r["golden_kl_init"]), float(r["golden_reward"])) for r in done if r["label"] == label
        )
        assert list(zip(line.get_xdata(), line.get_ydata(), strict=True)) == mine
        front = list(zip(fronts[label].get_xdata(), fronts[label].get_ydata(), strict=True))
        assert front == pareto_front(mine) and set(front) <= set(mine)
    (start,) = [
        c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() == "starting policy"
    ]
    assert start.get_offsets().tolist() == [[0.0, 0.5]]  # the starting policy: KL 0, its golden reward
    assert {t.get_text() for t in ax.texts} == {"β=0.05", "β=0.1"}  # swept values beside the points


def test_alpha_and_tau_plots_need_two_values() -> None:
    rows = [{"status": "completed", "label": "TR-DPO soft", "alpha": a, "golden_reward": g}
            for a, g in [(0.1, 1.0), (0.1, 1.2), (0.5, 0.8)]]  # fmt: skip
    fig = plot_against(rows, "alpha", "golden_reward")
    line = _curves(fig.axes[0])["TR-DPO soft"]
    assert list(line.get_xdata()) == [0.1, 0.5]
    assert list(line.get_ydata()) == pytest.approx([1.1, 0.8])
    assert plot_against(rows[:2], "alpha", "golden_reward") is None
    failed = [{**rows[2], "status": "failed"}]
    assert plot_against(rows[:2] + failed, "alpha", "golden_reward") is None  # failed jobs are not plotted


def test_other_swept_values_split_curves_only_seeds_are_averaged() -> None:
    rows = [{"status": "completed", "label": "DPO", "beta": b, "trainer.max_steps": n, "seed": s, "golden_reward": b * n + s}
            for b in (0.1, 0.3) for n in (200, 600) for s in (0, 1)]  # fmt: skip
    fig = plot_against(rows, "beta", "golden_reward", split=["beta", "trainer.max_steps", "seed"])
    curves = _curves(fig.axes[0])
    assert sorted(curves) == ["DPO steps=200", "DPO steps=600"]
    assert list(curves["DPO steps=600"].get_ydata()) == pytest.approx([60.5, 180.5])  # mean of seeds 0 and 1
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["0.1", "0.3"]


def test_pareto_front_keeps_points_nothing_beats() -> None:
    points = [(5.0, 1.0), (1.0, 0.5), (3.0, 0.4), (2.0, 0.9), (8.0, 0.7), (2.0, 0.8)]
    assert pareto_front(points) == [(1.0, 0.5), (2.0, 0.9), (5.0, 1.0)]


def test_method_labels() -> None:
    assert method_label("dpo", "none") == "DPO"
    assert method_label("kto_pair", "hard") == "TR-KTO hard"
    assert method_label("sft", "none") == "SFT"
    assert method_label("tr_ipo", "") == "TR-IPO"  # a failed job: only its method override is known


def test_lower_is_better_for_a_loss_metric(tmp_path: Path) -> None:
    sweep = _fake_sweep(tmp_path / "sweep")
    rows, _, metric = build_rows(load_jobs(sweep), "val/loss")
    assert metric == "val/loss"
    best = [r for r in rows if r["best"]]
    for r in best:
        others = [o["val/loss"] for o in rows if o["label"] == r["label"] and o["status"] == "completed"]
        assert r["val/loss"] == min(others)


def test_empty_folder_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([str(tmp_path)])
    assert info.value.code == 2
    assert "no jobs" in capsys.readouterr().err


def _wandb_records(path: Path) -> list:
    """Records of an offline W&B run file: LevelDB-style log, 32 KiB blocks, 7-byte record headers."""
    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf, records = path.read_bytes(), 7, b"", []
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # block tail padding
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:
            break
        buf += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = pb.Record()
            record.ParseFromString(buf)
            records.append(record)
            buf = b""
    return records


@pytest.mark.slow
@pytest.mark.e2e
def test_real_multirun_then_report(tmp_path: Path) -> None:
    """A shipped sweep, shrunk: τ = 1, 2 run; α = 1.5 fails validation in two jobs, which are
    recorded as failed while the sweep goes on. The report lists all four; W&B groups the two runs."""
    sweep = tmp_path / "tau_hard_test"
    shrink = [s for s in SHRINK if not s.startswith("logger=")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    result = subprocess.run(
        [sys.executable, "-m", "tralign.train", "-m", "+sweep=tau_hard", "alpha=1.0,1.5", "tau=1,2", "seed=0",
         *shrink, "logger=wandb", f"hydra.sweep.dir={sweep}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr[-3000:]  # Hydra: some job failed
    assert "tralign: error: invalid config: alpha" in result.stderr
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1", "2", "3"]

    assert main([str(sweep)]) == 0
    rows = _read_csv(sweep / "results.csv")
    assert [(r["job"], r["status"], r["alpha"], r["tau"]) for r in rows] == [
        ("0", "completed", "1.0", "1"), ("1", "completed", "1.0", "2"),
        ("2", "failed", "1.5", "1"), ("3", "failed", "1.5", "2"),
    ]  # fmt: skip
    assert (
        (sweep / "results.md").is_file()
        and (sweep / "tau.png").is_file()
        and (sweep / "frontier.png").is_file()
    )
    summaries = [json.loads((sweep / n / "summary.json").read_text()) for n in ("0", "1")]
    for n, summary in zip(("0", "1"), summaries, strict=True):  # each job is a CLI run with W&B offline
        assert summary["method"] == "tr_dpo" and summary["status"] == "completed"
        assert list((sweep / n / "wandb").glob("offline-run-*")), "W&B offline run not written"
        assert (sweep / n / ".hydra" / "config.yaml").is_file()
    for row, summary in zip(rows, summaries, strict=False):
        assert float(row["golden_reward"]) == summary["golden_reward"]
        assert float(row["golden_kl_init"]) == summary["golden_kl_init"]
        assert row["ref_updates"] == str(summary["ref_updates"])

    # W&B: one group named after the sweep folder, a name per job from its overrides, α/τ/β as config.
    runs = []
    for n in ("0", "1"):
        (run_file,) = (sweep / n / "wandb").glob("offline-run-*/run-*.wandb")
        records = _wandb_records(run_file)
        run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
        config = {
            i.key: json.loads(i.value_json)
            for r in records
            if r.WhichOneof("record_type") == "config"
            for i in r.config.update
        }
        runs.append((run.run_group, run.display_name, config))
    assert {group for group, _, _ in runs} == {sweep.name}
    assert runs[0][1] != runs[1][1] and all(name.startswith("tr_dpo-hard:") for _, name, _ in runs)
    assert "tau=2" in runs[1][1]
    for (_, _, config), tau in zip(runs, (1, 2), strict=True):
        assert (config["alpha"], config["tau"], config["ref_update"], config["method"]["name"]) == (
            1.0,
            tau,
            "hard",
            "tr_dpo",
        )
        assert "beta" in config
