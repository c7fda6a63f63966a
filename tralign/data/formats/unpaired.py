"""Unpaired rows for unpaired KTO: ``{"prompt", "completion", "label"}``, label a JSON boolean
(true = desirable). ``prompt``/``completion`` may also be chat messages (TRL's unpaired layout),
rendered as in :mod:`.chat`.

:func:`unpair` turns preference pairs into unpaired rows: each pair gives its chosen answer as a
desirable row and its rejected answer as an undesirable one, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from tralign.data.formats.chat import chat_completion, is_chat
from tralign.data.formats.fields import BadRow, Row, Tally, as_object, text

FIELDS = ("prompt", "completion", "label")


def unpaired_row(obj: Any, tokenizer: Any, tally: Tally) -> Row:
    obj = as_object(obj)
    if is_chat(obj, ("prompt", "completion")):
        prompt, completion = chat_completion(obj, tokenizer, tally)
    else:
        prompt, completion = text(obj, "prompt", allow_empty=True), text(obj, "completion")
    if "label" not in obj:
        raise BadRow("missing field 'label'")
    label = obj["label"]
    if not isinstance(label, bool):
        raise BadRow(f"field 'label' must be true or false, got {label!r}")
    return {"prompt": prompt, "completion": completion, "label": label}


def unpair(rows: Iterable[Row]) -> list[Row]:
    out: list[Row] = []
    for row in rows:
        out.append({"prompt": row["prompt"], "completion": row["chosen"], "label": True})
        out.append({"prompt": row["prompt"], "completion": row["rejected"], "label": False})
    return out
