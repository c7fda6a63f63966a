"""Data sources: each turns its input into canonical records, checked strictly before training.

Canonical records (``Row``), one kind per :class:`Split`:
    pair      {"prompt": str, "chosen": str, "rejected": str}      preference pairs (DPO, IPO, KTO-pair)
    sft       {"prompt": str, "completion": str}                    SFT targets
    unpaired  {"prompt": str, "completion": str, "label": bool}    unpaired KTO (true = desirable)
A completion is appended to its prompt as it is, so it carries its own leading space where the
format wants one (" answer" after "Assistant:" or "TL;DR:"). SFT on pair rows uses ``chosen``.

A source is ``fn(data_cfg, *, tokenizer=None) -> Split`` registered by name in :data:`SOURCES`
(``data.name`` picks it); the tokenizer is only used to render chat messages with its template.
Real-data sources read ``data.path`` (a local file or saved ``datasets`` folder, see
:mod:`tralign.data.readers`) or, when it is null, ``data.hub_id`` with ``datasets.load_dataset``.

Checking: every row is checked; all bad rows are reported together as ``PLACE: reason`` (up to
:data:`MAX_REPORTED_PROBLEMS`) in one :class:`DataError`, or with ``data.on_bad_rows=skip`` dropped,
counted in ``Split.n_bad`` (the first places in ``Split.bad_rows``) and logged in one warning.
Rows a format handles on purpose rather than refuses (e.g. HH dialogues that diverge early, CNN/DM
rows among TL;DR comparisons) are counted by key in ``Split.counts`` and logged.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from tralign.data import readers
from tralign.data.formats.chat import chat_pair, is_chat
from tralign.data.formats.fields import BadRow, Converter, Row, Tally, string_fields
from tralign.data.formats.hh import hh_pair, hh_sft
from tralign.data.formats.tldr import tldr_pair, tldr_sft
from tralign.data.formats.unpaired import unpair, unpaired_row
from tralign.data.synthetic import SyntheticTask
from tralign.errors import DataError

log = logging.getLogger(__name__)

Kind = Literal["pair", "sft", "unpaired"]
PAIR_FIELDS = ("prompt", "chosen", "rejected")
MAX_REPORTED_PROBLEMS = 20
BAD_ROWS_LOGGED = 5
ON_BAD_ROWS = ("error", "skip")


@dataclass(frozen=True)
class Split:
    train: list[Row]
    val: list[Row]
    golden_task: SyntheticTask | None = None  # set when the data has a known golden reward
    kind: Kind = "pair"
    n_bad: int = 0  # rows dropped by data.on_bad_rows=skip
    bad_rows: list[str] = field(default_factory=list)  # the first of them, "PLACE: reason"
    counts: dict[str, int] = field(default_factory=dict)  # rows a format handled on purpose, by key


# --------------------------------------------------------------------------- synthetic


def synthetic_task(data_cfg: Mapping[str, Any]) -> SyntheticTask:
    return SyntheticTask(**dict(data_cfg["task"]))


def synthetic_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    task = synthetic_task(data_cfg)
    # Train and validation rows come from disjoint sample streams of the same task.
    train = task.preference_rows(int(data_cfg["n_train"]), seed=1000 * task.seed + 1)
    val = task.preference_rows(int(data_cfg["n_val"]), seed=1000 * task.seed + 2)
    return Split(train=train, val=val, golden_task=task)


# --------------------------------------------------------------------------- reading and checking


def _bad_rows_message(problems: list[str], total: int) -> str:
    more = f" (and {total - len(problems)} more)" if total > len(problems) else ""
    return f"{total} bad row(s): " + "; ".join(problems) + more


class _Reader:
    """Converts raw rows with one format, collecting bad rows and notes over every read of a source."""

    def __init__(self, convert: Converter):
        self.convert = convert
        self.tally = Tally()
        self.problems: list[str] = []
        self.n_bad = 0

    def read(self, records: Iterable[readers.Record], where: str, limit: int | None = None) -> list[Row]:
        rows: list[Row] = []
        seen = 0
        for place, raw in records:
            if limit is not None and len(rows) >= limit:
                break
            seen += 1
            self.tally.where = place
            try:
                row = self.convert(raw, self.tally)
            except BadRow as err:
                self.n_bad += 1
                if len(self.problems) < MAX_REPORTED_PROBLEMS:
                    self.problems.append(f"{place}: {err}")
                continue
            if row is not None:
                rows.append(row)
        if not seen:
            raise DataError(f"{where}: no rows")
        return rows

    def why_empty(self) -> str:
        left_out = [f"{count} {key}" for key, count in self.tally.counts.items()]
        parts = ([f"{self.n_bad} bad row(s) skipped"] if self.n_bad else []) + left_out
        return f" ({', '.join(parts)})" if parts else ""

    def finish(self, on_bad_rows: str, name: str) -> None:
        """Raise on bad rows (on_bad_rows=error) or log them; log what the format handled on purpose."""
        if self.n_bad and on_bad_rows != "skip":
            raise DataError(
                _bad_rows_message(self.problems, self.n_bad) + " (data.on_bad_rows=skip drops bad rows)"
            )
        if self.n_bad:
            shown = "; ".join(self.problems[:BAD_ROWS_LOGGED])
            log.warning("data=%s: skipped %d bad row(s) (data.on_bad_rows=skip): %s", name, self.n_bad, shown)
        for key, count in self.tally.counts.items():
            places = ", ".join(self.tally.places[key])
            log.info("data=%s: %d row(s): %s (first: %s)", name, count, self.tally.descriptions[key], places)


def _hold_out(rows: list[Row], data_cfg: Mapping[str, Any], where: str) -> tuple[list[Row], list[Row]]:
    """(train, val): a val_fraction of the rows, deterministic in data.split_seed; both keep file order."""
    order = list(range(len(rows)))
    random.Random(int(data_cfg.get("split_seed", 0))).shuffle(order)
    n_val = max(1, round(float(data_cfg.get("val_fraction", 0.05)) * len(rows)))
    if n_val >= len(rows):
        raise DataError(f"{where}: {len(rows)} row(s) leave nothing to train on after holding out {n_val}")
    val = [rows[i] for i in sorted(order[:n_val])]
    train = [rows[i] for i in sorted(order[n_val:])]
    return train, val


def _hub(data_cfg: Mapping[str, Any], split: str) -> tuple[Iterable[readers.Record], str]:
    hub_id = str(data_cfg["hub_id"])
    records = readers.hub_records(
        hub_id,
        split,
        config=data_cfg.get("hub_config"),
        data_dir=data_cfg.get("hub_data_dir"),
        revision=data_cfg.get("hub_revision"),
    )
    return records, f"{hub_id} ({split})"


def load_rows(data_cfg: Mapping[str, Any], convert: Converter, *, kind: Kind = "pair") -> Split:
    """Train and validation rows of one format from ``data.path`` or ``data.hub_id``.

    Validation rows: ``data.val_path`` if set; else ``data.val_split`` of the hub dataset or of a
    saved ``DatasetDict`` folder that has it; else a held-out ``data.val_fraction`` of the training
    rows. ``data.limit`` caps the rows kept from each read (the first ones).
    """
    name = str(data_cfg.get("name"))
    on_bad_rows = str(data_cfg.get("on_bad_rows") or "error")
    if on_bad_rows not in ON_BAD_ROWS:
        raise DataError(f"data.on_bad_rows: must be one of {', '.join(ON_BAD_ROWS)}, got {on_bad_rows!r}")
    reader = _Reader(convert)
    limit = data_cfg.get("limit")
    limit = None if limit is None else int(limit)
    path, val_path = data_cfg.get("path"), data_cfg.get("val_path")
    train_split = str(data_cfg.get("hub_split") or "train")
    val_split = data_cfg.get("val_split")
    if path:
        where = str(path)
        train = reader.read(readers.local_records(path, split=train_split), where, limit)
    elif data_cfg.get("hub_id"):
        records, where = _hub(data_cfg, train_split)
        train = reader.read(records, where, limit)
    else:
        raise DataError(f"data={name}: set data.path (a local file or folder) or data.hub_id")
    val: list[Row] | None = None
    if val_path:
        val_records = readers.local_records(val_path, split=str(val_split or train_split))
        val = reader.read(val_records, str(val_path), limit)
    elif val_split and not path:
        records, val_where = _hub(data_cfg, str(val_split))
        val = reader.read(records, val_where, limit)
    elif val_split and val_split in (readers.saved_splits(path) or ()):
        val = reader.read(readers.local_records(path, split=val_split), f"{path} ({val_split})", limit)
    reader.finish(on_bad_rows, name)
    if not train:
        raise DataError(f"{where}: no usable rows{reader.why_empty()}")
    if val is None:
        train, val = _hold_out(train, data_cfg, where)
    elif not val:
        raise DataError(f"data={name}: no usable validation rows{reader.why_empty()}")
    return Split(
        train=train,
        val=val,
        kind=kind,
        n_bad=reader.n_bad,
        bad_rows=list(reader.problems[:MAX_REPORTED_PROBLEMS]),
        counts=dict(reader.tally.counts),
    )


# --------------------------------------------------------------------------- sources


def jsonl_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    """Generic preference rows: prompt/chosen/rejected strings, or chat messages (see formats.chat)."""

    def convert(raw: Any, tally: Tally) -> Row:
        if isinstance(raw, Mapping) and is_chat(raw, PAIR_FIELDS):
            return chat_pair(raw, tokenizer, tally)
        return string_fields(raw, PAIR_FIELDS)

    return load_rows(data_cfg, convert)


def hh_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    """Anthropic HH-RLHF whole dialogues (formats.hh); ``data.sft=true``: SFT rows from ``chosen``."""
    if data_cfg.get("sft"):
        return load_rows(data_cfg, hh_sft, kind="sft")
    return load_rows(data_cfg, hh_pair)


def tldr_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    """TL;DR comparisons, canonical or OpenAI's layout (formats.tldr)."""
    return load_rows(data_cfg, tldr_pair)


def tldr_sft_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    """TL;DR posts with their human reference summary, for the SFT stage (formats.tldr)."""
    return load_rows(data_cfg, tldr_sft, kind="sft")


def unpaired_source(data_cfg: Mapping[str, Any], *, tokenizer: Any = None) -> Split:
    """Unpaired {prompt, completion, label} rows for unpaired KTO (formats.unpaired)."""
    return load_rows(data_cfg, lambda raw, tally: unpaired_row(raw, tokenizer, tally), kind="unpaired")


SourceFn = Callable[..., Split]
SOURCES: dict[str, SourceFn] = {
    "synthetic": synthetic_source,
    "jsonl": jsonl_source,
    "hh": hh_source,
    "tldr": tldr_source,
    "tldr_sft": tldr_sft_source,
    "unpaired": unpaired_source,
}
SFT_SOURCES = {"tldr_sft"}
UNPAIRED_SOURCES = {"unpaired"}


def data_kind(data_cfg: Mapping[str, Any]) -> Kind:
    """The kind of rows a data config gives, known before reading anything."""
    name = data_cfg.get("name")
    if name in SFT_SOURCES or data_cfg.get("sft"):
        return "sft"
    if name in UNPAIRED_SOURCES or data_cfg.get("unpair"):
        return "unpaired"
    return "pair"


def unpair_split(split: Split) -> Split:
    """Each pair -> a desirable (chosen) and an undesirable (rejected) row, in the same half."""
    if split.kind != "pair":
        raise DataError(f"data.unpair=true needs preference pairs, but this data gives {split.kind} rows")
    return replace(split, train=unpair(split.train), val=unpair(split.val), kind="unpaired")


def load_split(data_cfg: Mapping[str, Any], tokenizer: Any = None) -> Split:
    """The rows ``data_cfg`` describes; ``tokenizer`` (optional) renders chat messages with its template."""
    name = data_cfg["name"]
    if name not in SOURCES:
        raise DataError(f"data.name: unknown source {name!r}; valid: {', '.join(sorted(SOURCES))}")
    split = SOURCES[name](data_cfg, tokenizer=tokenizer)
    if data_cfg.get("unpair"):
        split = unpair_split(split)
    return split
