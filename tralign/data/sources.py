"""Data sources: each turns its input into canonical rows ``{"prompt", "chosen", "rejected"}``.

A source is a function ``(data_cfg) -> Split`` registered by name in :data:`SOURCES`; the data
config's ``name`` picks it. Everything downstream (tokenisation, collation, the module) only
sees canonical rows.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tralign.data.synthetic import SyntheticTask
from tralign.errors import DataError

Row = dict[str, str]
PAIR_FIELDS = ("prompt", "chosen", "rejected")
MAX_REPORTED_PROBLEMS = 20


@dataclass(frozen=True)
class Split:
    train: list[Row]
    val: list[Row]
    golden_task: SyntheticTask | None = None  # set when the data has a known golden reward


def synthetic_task(data_cfg: Mapping[str, Any]) -> SyntheticTask:
    return SyntheticTask(**dict(data_cfg["task"]))


def synthetic_source(data_cfg: Mapping[str, Any]) -> Split:
    task = synthetic_task(data_cfg)
    # Train and validation rows come from disjoint sample streams of the same task.
    train = task.preference_rows(int(data_cfg["n_train"]), seed=1000 * task.seed + 1)
    val = task.preference_rows(int(data_cfg["n_val"]), seed=1000 * task.seed + 2)
    return Split(train=train, val=val, golden_task=task)


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark (some editors write one) is not part of the first JSON line.
    return gzip.open(path, "rt", encoding="utf-8-sig") if path.suffix == ".gz" else path.open(encoding="utf-8-sig")


def read_jsonl(path: str | Path, fields: tuple[str, ...] = PAIR_FIELDS, limit: int | None = None) -> list[Row]:
    """Read JSON Lines (optionally gzipped) rows with non-empty string ``fields``.

    Every problem is reported at once (up to a cap) as ``FILE:LINE: reason``; a row whose chosen
    equals its rejected is refused because it carries no preference.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    rows: list[Row] = []
    problems: list[str] = []
    try:
        for lineno, line in _numbered_lines(path):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            problem, row = _parse_row(line, fields)
            if problem:
                problems.append(f"{path}:{lineno}: {problem}")
            else:
                rows.append(row)
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable ({type(err).__name__}: {err})") from None
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = f" (and {len(problems) - len(shown)} more)" if len(problems) > len(shown) else ""
        raise DataError(f"{len(problems)} bad row(s): " + "; ".join(shown) + more)
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows


def _numbered_lines(path: Path) -> Iterator[tuple[int, str]]:
    with _open_text(path) as fh:
        yield from enumerate(fh, start=1)


def _parse_row(line: str, fields: tuple[str, ...]) -> tuple[str | None, Row]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not valid JSON ({err.msg} at column {err.colno})", {}
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}", {}
    for field in fields:
        if field not in obj:
            return f"missing field {field!r}", {}
        if not isinstance(obj[field], str):
            return f"field {field!r} must be a string, got {type(obj[field]).__name__}", {}
        if field != "prompt" and not obj[field].strip():
            return f"field {field!r} is empty", {}
    if "chosen" in fields and "rejected" in fields and obj["chosen"] == obj["rejected"]:
        return "chosen and rejected are identical", {}
    return None, {f: obj[f] for f in fields}


def jsonl_source(data_cfg: Mapping[str, Any]) -> Split:
    limit = data_cfg.get("limit")
    rows = read_jsonl(data_cfg["path"], limit=limit)
    if data_cfg.get("val_path"):
        return Split(train=rows, val=read_jsonl(data_cfg["val_path"], limit=limit))
    order = list(range(len(rows)))
    random.Random(int(data_cfg.get("split_seed", 0))).shuffle(order)
    n_val = max(1, round(float(data_cfg["val_fraction"]) * len(rows)))
    if n_val >= len(rows):
        raise DataError(f"{data_cfg['path']}: {len(rows)} row(s) leave nothing to train on after holding out {n_val}")
    val = [rows[i] for i in sorted(order[:n_val])]
    train = [rows[i] for i in sorted(order[n_val:])]
    return Split(train=train, val=val)


SOURCES: dict[str, Callable[[Mapping[str, Any]], Split]] = {
    "synthetic": synthetic_source,
    "jsonl": jsonl_source,
}


def load_split(data_cfg: Mapping[str, Any]) -> Split:
    name = data_cfg["name"]
    if name not in SOURCES:
        raise DataError(f"data.name: unknown source {name!r}; valid: {', '.join(sorted(SOURCES))}")
    return SOURCES[name](data_cfg)
