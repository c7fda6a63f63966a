"""python -m tralign.report <sweep dir> [--out DIR] [--metric KEY]

Writes results.csv (one row per job, every metric, full precision), results.md (the table for a paper:
swept values first, best job per method marked, mean over seeds, failed and never-started jobs listed)
and the PNG plots the jobs support: alpha.png, tau.png, beta_<loss>.png, frontier.png (with seeds:
frontier_seeds.png, matched_kl.png, and lag.png when the learning rate is swept too).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tralign.cli import user_errors
from tralign.report.jobs import load_jobs
from tralign.report.plots import all_plots, save
from tralign.report.steps import STEP_KEY, step_rows
from tralign.report.table import build_rows, mark_best, markdown, write_csv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tralign-report", description=__doc__.split("\n\n")[1])
    parser.add_argument(
        "sweep_dir", type=Path, help="a multirun sweep folder (or a folder of sweeps or runs)"
    )
    parser.add_argument("--out", type=Path, help="where to write the results (default: the sweep folder)")
    parser.add_argument(
        "--metric",
        help="quality metric for 'best' and the plots (default: golden_reward, else val/init/rewards/accuracies)",
    )
    parser.add_argument(
        "--steps",
        action="store_true",
        help="one row per checkpointed training length (golden_steps.json from python -m tralign.report.steps)",
    )
    parser.add_argument(
        "--baseline",
        help="label every other method is paired with (e.g. DPO); default: each TR-X with its X",
    )
    args = parser.parse_args(argv)
    with user_errors():  # a user error (e.g. a malformed summary.json): one line, exit code 2
        return _report(parser, args)


def _report(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not args.sweep_dir.is_dir():
        parser.error(f"{args.sweep_dir}: no such folder")
    jobs = load_jobs(args.sweep_dir)
    if not jobs:
        parser.error(f"{args.sweep_dir}: no jobs (no summary.json, .hydra/ or multirun.yaml below it)")
    out = args.out or args.sweep_dir
    out.mkdir(parents=True, exist_ok=True)
    rows, swept, metric = build_rows(jobs, args.metric)
    if args.steps:
        rows = step_rows(rows)
        swept = [*swept, STEP_KEY]
        mark_best(rows, metric)
    baselines = {"*": args.baseline} if args.baseline else None
    write_csv(rows, out / "results.csv")
    (out / "results.md").write_text(
        markdown(rows, swept, metric, f"Results: {args.sweep_dir}", baselines), encoding="utf-8"
    )
    pngs = save(all_plots(rows, metric, swept, baselines), out) if metric else []
    counts = ", ".join(
        f"{sum(r['status'] == s for r in rows)} {s}"
        for s in ("completed", "failed", "incomplete", "not started")
    )
    print(f"{len(rows)} jobs ({counts}); metric: {metric}")
    for path in [out / "results.csv", out / "results.md", *pngs]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
