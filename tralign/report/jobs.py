"""Read a sweep directory: one :class:`Job` per job directory, plus the jobs Hydra's multirun was asked
for but never started (a job that stops the whole multirun leaves the rest without a directory)."""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from omegaconf import OmegaConf

Status = Literal["completed", "failed", "incomplete", "not started"]
# Hydra's numbered job folders; with any other hydra.sweep.subdir the never-started jobs can't be named.
NUMBERED_SUBDIR = "${hydra.job.num}"
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


@dataclass(frozen=True)
class Job:
    """One job of a sweep. ``overrides`` maps each command-line key to its value as typed."""

    id: str  # path relative to the sweep dir: "3", or "<sweep>/3" for a folder of sweeps
    status: Status
    overrides: dict[str, str] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    error: str = ""
    dir: Path | None = None


def split_override(text: str) -> tuple[str, str]:
    key, _, value = text.partition("=")
    return key, value


def expand_sweep(params: Mapping[str, Any], overrides: Iterable[str]) -> list[list[str]]:
    """The jobs Hydra's basic sweeper launches, in its order: ``hydra.sweeper.params`` first, then the
    command line, a later value of a key replacing an earlier one; the cartesian product of the lists."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(
        [f"{k}={v}" for k, v in params.items()] + list(overrides)
    )
    choices: dict[str, list[str]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_discrete_sweep():
            choices[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        elif override.is_sweep_override():
            raise ValueError(f"{key}: only comma-separated (discrete) sweeps can be expanded")
        else:
            choices[key] = [f"{key}={override.get_value_element_as_str()}"]
    return [list(job) for job in itertools.product(*choices.values())]


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _read_overrides(job_dir: Path) -> dict[str, str]:
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    return dict(split_override(str(item)) for item in OmegaConf.load(path))


def read_job(job_dir: Path, job_id: str) -> Job:
    overrides = _read_overrides(job_dir)
    summary_path = job_dir / "summary.json"
    summary = _read_json(summary_path)
    evaluation = _read_json(job_dir / "eval.json")
    if not summary_path.is_file():
        # Started but no summary: still running, killed, or crashed outside tralign's error path.
        return Job(job_id, "incomplete", overrides, {}, evaluation, "no summary.json", job_dir)
    status = summary.get("status")
    if status == "completed":
        return Job(job_id, "completed", overrides, summary, evaluation, "", job_dir)
    error = str(summary.get("error") or ("unreadable summary.json" if not summary else f"status {status!r}"))
    return Job(job_id, "failed", overrides, summary, evaluation, error, job_dir)


def _not_started(root: Path, found: set[str], prefix: str) -> list[Job]:
    """Jobs listed by ``root/multirun.yaml`` (basic sweeper, numbered job folders) without a folder."""
    raw = OmegaConf.to_container(OmegaConf.load(root / "multirun.yaml"), resolve=False)
    hydra = raw.get("hydra") or {}
    sweeper = hydra.get("sweeper") or {}
    if (
        sweeper.get("_target_") != BASIC_SWEEPER
        or (hydra.get("sweep") or {}).get("subdir") != NUMBERED_SUBDIR
    ):
        return []
    params = sweeper.get("params") or {}
    task = [str(item) for item in (hydra.get("overrides") or {}).get("task") or []]
    try:
        jobs = expand_sweep(params, task)
    except Exception:  # range/interval/glob sweeps: the jobs can't be listed without Hydra's sweeper state
        return []
    return [
        Job(f"{prefix}{num}", "not started", dict(map(split_override, job)), error="never started")
        for num, job in enumerate(jobs)
        if f"{prefix}{num}" not in found
    ]


def _natural(job_id: str) -> list[tuple[int, Any]]:
    return [(0, int(p)) if p.isdigit() else (1, p) for p in job_id.split("/")]


def load_jobs(sweep_dir: Path) -> list[Job]:
    """Every job under ``sweep_dir``: folders holding ``summary.json`` or Hydra's ``.hydra/`` (a sweep, a
    folder of sweeps or a single run), and the never-started jobs of each multirun found."""
    sweep_dir = Path(sweep_dir)
    job_dirs = {p.parent for p in sweep_dir.rglob("summary.json")}
    job_dirs |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml")}
    jobs = []
    for job_dir in job_dirs:
        rel = job_dir.relative_to(sweep_dir).as_posix()
        jobs.append(read_job(job_dir, "." if rel == "." else rel))
    found = {job.id for job in jobs}
    for multirun in sweep_dir.rglob("multirun.yaml"):
        rel = multirun.parent.relative_to(sweep_dir).as_posix()
        jobs += _not_started(multirun.parent, found, "" if rel == "." else rel + "/")
    return sorted(jobs, key=lambda job: _natural(job.id))


def parse_value(text: str) -> Any:
    """A command-line value as a number where it is one (``0.1`` -> 0.1, ``512`` -> 512)."""
    for kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            continue
        return value if math.isfinite(value) else text
    return text
