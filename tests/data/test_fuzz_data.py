"""Property-based tests over corrupted data files (truncated gzip, random bytes, wrong types, huge
lines, non-UTF-8): each is a clear one-line DataError naming the file, or rows kept with the bad ones
counted (data.on_bad_rows=skip) — never a raw traceback. Counts and findings: docs/hardening.md."""

from __future__ import annotations

import gzip
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tralign.data.sources import load_split
from tralign.errors import DataError

pytestmark = pytest.mark.fuzz  # hypothesis: python -m pytest -m 'not fuzz' skips these

SETTINGS = settings(
    max_examples=150, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
GOOD = [{"prompt": f"p{i}", "chosen": f" good {i}", "rejected": f" bad {i}"} for i in range(6)]
JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)
FIELD_VALUES = st.one_of(JSON_VALUES, st.text(min_size=1, max_size=20), st.just("x" * 1_000_000))
ROW = st.one_of(
    st.fixed_dictionaries({"prompt": FIELD_VALUES, "chosen": FIELD_VALUES, "rejected": FIELD_VALUES}),
    JSON_VALUES,
)


def _load(path: Path, on_bad_rows: str, name: str = "jsonl"):
    cfg = {"name": name, "path": str(path), "on_bad_rows": on_bad_rows, "val_fraction": 0.3, "split_seed": 0}
    return load_split(cfg)


def _check(path: Path, on_bad_rows: str) -> str:
    """Load; the outcome must be rows or a one-line DataError naming the file."""
    try:
        split = _load(path, on_bad_rows)
    except DataError as err:
        message = str(err)
        assert "\n" not in message, message
        assert path.name in message or "row" in message, message
        return "error"
    assert split.train and split.val
    return "skipped" if split.n_bad else "ok"


def _write(path: Path, content: bytes) -> Path:
    if path.suffix == ".gz":
        content = gzip.compress(content)
    path.write_bytes(content)
    return path


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@SETTINGS
@given(
    st.lists(ROW, min_size=1, max_size=6),
    st.sampled_from(["error", "skip"]),
    st.sampled_from([".jsonl", ".jsonl.gz", ".json"]),
)
def test_rows_of_wrong_types_are_refused_or_counted(rows, on_bad_rows, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp) / f"prefs{suffix}", _jsonl(GOOD + rows))
        outcome = _check(path, on_bad_rows)
        if on_bad_rows == "error":
            assert outcome != "skipped"


@SETTINGS
@given(st.binary(max_size=300), st.sampled_from([".jsonl", ".jsonl.gz", ".json", ".json.gz", ".parquet"]))
def test_random_bytes_are_a_clear_error(content, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"prefs{suffix}"
        path.write_bytes(content)  # raw: a .gz file that is not gzip at all
        _check(path, "skip")


@SETTINGS
@given(st.floats(0.0, 0.999), st.sampled_from(["error", "skip"]))
def test_truncated_gzip_is_a_clear_error(cut, on_bad_rows):
    with tempfile.TemporaryDirectory() as tmp:
        whole = gzip.compress(_jsonl(GOOD * 20))
        path = Path(tmp) / "prefs.jsonl.gz"
        path.write_bytes(whole[: int(cut * len(whole))])
        assert _check(path, on_bad_rows) == "error"


@SETTINGS
@given(st.binary(min_size=1, max_size=8), st.integers(0, 200), st.sampled_from([".jsonl", ".jsonl.gz"]))
def test_non_utf8_bytes_are_a_clear_error(junk, at, suffix):
    with tempfile.TemporaryDirectory() as tmp:
        content = _jsonl(GOOD * 3)
        at = min(at, len(content))
        path = _write(Path(tmp) / f"prefs{suffix}", content[:at] + b"\xff\xfe" + junk + content[at:])
        _check(path, "skip")


@settings(
    max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(
    st.lists(
        st.fixed_dictionaries({"prompt": FIELD_VALUES, "chosen": FIELD_VALUES, "rejected": FIELD_VALUES}),
        min_size=1,
        max_size=4,
    ),
    st.sampled_from(["error", "skip"]),
)
def test_parquet_with_wrong_types_is_refused_or_counted(rows, on_bad_rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    def cell(v):  # parquet columns need one type: store anything that is not a string as JSON text
        return v if isinstance(v, str) else None if v is None else json.dumps(v)

    table = pa.Table.from_pylist([{k: cell(v) for k, v in r.items()} for r in GOOD + rows])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefs.parquet"
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        path.write_bytes(buffer.getvalue())
        _check(path, on_bad_rows)
