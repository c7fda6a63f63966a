"""Tokenised data as ``datasets`` Arrow tables, cached on disk so a second run skips tokenisation.

The cache key is a hash of everything the encoded table depends on: the rows' *content* (so any
source, path, hub split, ``limit`` or ``split_seed`` that yields the same rows hits, and any edit
to the data misses, whatever its mtime says), the tokenizer (its full serialised vocabulary and
rules, plus EOS), ``max_length``/``max_prompt_length``, the mode and :data:`ENCODING_VERSION`.
Hashing the rows costs a pass over their text, far less than tokenising it.

Files: ``<data.cache_dir>/tokenized/<key>.arrow``; default ``$TRALIGN_CACHE`` or
``~/.cache/tralign``. ``data.cache`` turns it on or off (default: on, except for the synthetic
task, which tokenises in milliseconds). Delete the folder to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from datasets import Dataset, Features, Value
from datasets import Sequence as ListOf
from transformers import PreTrainedTokenizerBase

from tralign.data import tokenize
from tralign.data.tokenize import ENCODING_VERSION, Lengths, Mode, completion_fields, example_fields

log = logging.getLogger("tralign")

DEFAULT_CACHE_DIR = "~/.cache/tralign"
MAP_BATCH_SIZE = 1000


def cache_dir_for(data_cfg: Mapping[str, Any]) -> Path | None:
    """Where tokenised tables are cached for this data config, or None when caching is off."""
    enabled = data_cfg.get("cache")
    if enabled is None:
        enabled = data_cfg.get("name") != "synthetic"
    if not enabled:
        return None
    root = data_cfg.get("cache_dir") or os.environ.get("TRALIGN_CACHE") or DEFAULT_CACHE_DIR
    return Path(str(root)).expanduser() / "tokenized"


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of what decides the ids: the tokenizer's rules and vocabulary, and its EOS id."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # fast tokenizers: the full tokenizer.json (model, normaliser, pre-tokeniser)
        h.update(backend.to_str().encode())
    else:
        h.update(json.dumps(sorted(tokenizer.get_vocab().items())).encode())
    h.update(json.dumps([tokenizer.eos_token_id, sorted(tokenizer.get_added_vocab().items())]).encode())
    return h.hexdigest()


def rows_fingerprint(rows: Sequence[Mapping[str, Any]]) -> str:
    h = hashlib.sha256()
    for row in rows:
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(b"\n")
    return h.hexdigest()


def cache_key(
    rows: Sequence[Mapping[str, Any]], tokenizer: PreTrainedTokenizerBase, lengths: Lengths, mode: Mode
) -> str:
    parts = [
        f"v{ENCODING_VERSION}",
        mode,
        f"{lengths.max_length}/{lengths.max_prompt_length}",
        tokenizer_fingerprint(tokenizer),
        rows_fingerprint(rows),
    ]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:32]


def _features(mode: Mode, columns: Sequence[str]) -> Features:
    ids = ListOf(Value("int32"))
    features: dict[str, Any] = {f: ids for f in example_fields(mode) if f != "label"}
    if mode == "unpaired":
        features["label"] = Value("bool")
    features.update(truncated=Value("bool"), problem=Value("string"), length=Value("int32"))
    for field in ("prompt", *completion_fields(mode, columns)):
        features[f"raw_{field}"] = Value("int32")
    return Features(features)


def encode_table(
    rows: Sequence[Mapping[str, Any]],
    tokenizer: PreTrainedTokenizerBase,
    lengths: Lengths,
    mode: Mode,
    *,
    cache_dir: Path | None = None,
) -> tuple[Dataset, str | None]:
    """Rows → an Arrow table of encoded examples and their metadata (see ``encode_columns``).

    Returns (table, how): ``how`` is None without a cache, else "hit: PATH" or "written: PATH".
    """
    columns = list(rows[0]) if rows else ["prompt"]
    features = _features(mode, columns)

    def encode(batch: Mapping[str, Sequence[Any]]) -> dict[str, list[Any]]:
        # Looked up at call time, so tests can count the calls.
        return tokenize.encode_columns(tokenizer, batch, lengths, mode=mode)

    if not rows:
        return Dataset.from_dict({name: [] for name in features}, features=features), None
    if cache_dir is None:
        by_column = {c: [row[c] for row in rows] for c in columns}
        return Dataset.from_dict(encode(by_column), features=features), None
    key = cache_key(rows, tokenizer, lengths, mode)
    path = cache_dir / f"{key}.arrow"
    if path.is_file():
        return Dataset.from_file(str(path)), f"hit: {path}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    source = Dataset.from_list([dict(row) for row in rows])
    # datasets writes to a temporary file and moves it into place, so ranks that tokenise the same
    # data at once (DDP, each process builds its data) never read a half-written table.
    table = source.map(
        encode,
        batched=True,
        batch_size=MAP_BATCH_SIZE,
        remove_columns=source.column_names,
        features=features,
        cache_file_name=str(path),
        new_fingerprint=key,
        desc="tokenising",
    )
    log.info("tokenised %d rows into %s", len(rows), path)
    return table, f"written: {path}"
