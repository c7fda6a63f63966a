"""Raw rows from a local file or folder, or from the Hugging Face hub, each with its place.

Every reader yields ``(place, row)``: ``place`` names the row for error messages (``FILE:LINE`` for
JSON Lines, ``FILE row I`` (0-based) for a JSON array, Parquet or a saved ``datasets`` folder,
``HUB_ID (SPLIT) row I`` for the hub), ``row`` is the parsed object, or a :class:`BadRow` when the
line could not be parsed (so the caller lists it with the other bad rows). Failures that concern
the whole source (missing file, corrupt gzip, hub unreachable) raise one-line :class:`DataError`.

Local formats, by name: ``*.parquet``; ``*.json`` / ``*.json.gz`` (a JSON array of objects, or JSON
Lines); a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``; anything else is
read as JSON Lines (``*.jsonl``, ``*.jsonl.gz``; ``.gz`` means gzip).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tralign.data.formats.fields import BadRow
from tralign.errors import DataError

Record = tuple[str, Any]
PARQUET_BATCH = 1024
# A \uD800-\uDFFF escape: valid JSON, but alone (not half of a pair) it is no Unicode character.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


def _open_text(path: Path):
    # utf-8-sig: a byte-order mark (some editors write one) is not part of the first JSON line.
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


def _unreadable(path: Path | str, err: BaseException) -> DataError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return DataError(f"{path}: unreadable ({type(err).__name__}: {first})")


def _lone_surrogate(value: Any) -> str | None:
    """The first lone UTF-16 surrogate in a parsed JSON value's strings (keys too), as ``\\udXXX``."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            return f"\\u{ord(value[err.start]):04x}"
        return None
    if isinstance(value, dict):
        parts: Any = (part for item in value.items() for part in item)
    else:
        parts = value if isinstance(value, list) else ()
    return next((found for part in parts if (found := _lone_surrogate(part))), None)


def _checked(value: Any, escaped: bool) -> Any:
    """``value``, or a BadRow when it holds a lone surrogate (only possible when its JSON text has a
    ``\\udXXX`` escape, ``escaped``): valid JSON, but no Unicode text: the tokenizer, Arrow and
    UTF-8 refuse it, json.loads does not."""
    found = _lone_surrogate(value) if escaped else None
    if found:
        return BadRow(f"not valid Unicode (a lone surrogate {found}, half of a UTF-16 pair)")
    return value


def _parse_line(line: str) -> Any:
    try:
        return _checked(json.loads(line), _SURROGATE_ESCAPE.search(line) is not None)
    except json.JSONDecodeError as err:
        return BadRow(f"not valid JSON ({err.msg} at column {err.colno})")


def jsonl_records(path: Path) -> Iterator[Record]:
    """JSON Lines, optionally gzipped; blank lines are skipped but still counted."""
    try:
        with _open_text(path) as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    yield f"{path}:{lineno}", _parse_line(line.rstrip("\r\n"))
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise _unreadable(path, err) from None


def json_records(path: Path) -> Iterator[Record]:
    """A JSON array of objects; a file that is not one JSON value is read as JSON Lines."""
    try:
        with _open_text(path) as fh:
            content = fh.read()
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise _unreadable(path, err) from None
    try:
        value = json.loads(content)
    except json.JSONDecodeError as err:
        if content.lstrip().startswith("["):
            raise DataError(
                f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})"
            ) from None
        yield from jsonl_records(path)
        return
    if isinstance(value, dict):  # a one-line JSON Lines file
        yield f"{path}:1", _checked(value, _SURROGATE_ESCAPE.search(content) is not None)
        return
    if not isinstance(value, list):
        raise DataError(
            f"{path}: expected a JSON array of rows or JSON Lines, got a JSON {type(value).__name__}"
        )
    escaped = _SURROGATE_ESCAPE.search(content) is not None
    for i, row in enumerate(value):
        yield f"{path} row {i}", _checked(row, escaped)


def parquet_records(path: Path) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        i = 0
        for batch in pq.ParquetFile(path).iter_batches(batch_size=PARQUET_BATCH):
            for row in batch.to_pylist():
                yield f"{path} row {i}", row
                i += 1
    except (OSError, pa.ArrowException) as err:
        raise _unreadable(path, err) from None


def _load_saved(path: Path) -> Any:
    import datasets

    try:
        return datasets.load_from_disk(str(path))
    except FileNotFoundError as err:
        first = str(err).strip().splitlines()[0]
        raise DataError(f"{path}: not a folder written by datasets' save_to_disk ({first})") from None


def saved_splits(path: str | Path) -> list[str] | None:
    """The split names of a saved ``DatasetDict`` folder; None for anything else."""
    path = Path(path)
    if not path.is_dir():
        return None
    import datasets

    saved = _load_saved(path)
    return list(saved) if isinstance(saved, datasets.DatasetDict) else None


def saved_records(path: Path, split: str | None) -> Iterator[Record]:
    import datasets

    saved = _load_saved(path)
    label = str(path)
    if isinstance(saved, datasets.DatasetDict):
        if split not in saved:
            raise DataError(f"{path}: no split {split!r} (has: {', '.join(saved)})")
        saved, label = saved[split], f"{path} ({split})"
    for i, row in enumerate(saved):
        yield f"{label} row {i}", row


def local_records(path: str | Path, split: str | None = None) -> Iterator[Record]:
    """Rows of a local file or saved folder; ``split`` picks one split of a saved ``DatasetDict``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        return saved_records(path, split)
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        return parquet_records(path)
    if name.endswith(".json"):
        return json_records(path)
    return jsonl_records(path)


def hub_records(
    hub_id: str,
    split: str,
    *,
    config: str | None = None,
    data_dir: str | None = None,
    revision: str | None = None,
) -> Iterator[Record]:
    """Rows of one split of a hub dataset (``datasets.load_dataset``; cached copies work offline)."""
    import datasets

    try:
        dataset = datasets.load_dataset(hub_id, config, split=split, data_dir=data_dir, revision=revision)
    except Exception as err:  # datasets raises many types here; the user needs one line, not a trace
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
        hint = " (HF_HUB_OFFLINE is set: no hub access)" if offline else ""
        raise DataError(
            f"data.hub_id={hub_id}: could not load split {split!r} from the Hugging Face hub{hint}: "
            f"{type(err).__name__}: {first}; download it where there is network, or set data.path to a local copy"
        ) from None
    label = f"{hub_id} ({split})"
    return ((f"{label} row {i}", row) for i, row in enumerate(dataset))
