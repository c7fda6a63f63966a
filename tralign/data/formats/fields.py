"""Field checks shared by every format, and the types a format works with.

A format is a :data:`Converter`: ``(raw row, tally) -> canonical record``, raising :class:`BadRow`
(its message is the reason shown after the row's place, e.g. ``FILE:LINE: field 'chosen' is empty``)
or returning None for a row left out on purpose (after ``tally.note(...)`` says why).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# A canonical record: pair {"prompt","chosen","rejected"}, sft {"prompt","completion"} or unpaired
# {"prompt","completion","label"}; every value is a string except the unpaired boolean label.
Row = dict[str, Any]

# How many places to keep per note (the log line shows them, the count covers all).
NOTE_PLACES = 5


class BadRow(ValueError):
    """A row that cannot become a canonical record; ``str(err)`` is the reason."""


@dataclass
class Tally:
    """Rows a format handled on purpose rather than refused (e.g. HH dialogues that diverge early):
    a count per key, a one-line description, and the first few places."""

    counts: dict[str, int] = field(default_factory=dict)
    descriptions: dict[str, str] = field(default_factory=dict)
    places: dict[str, list[str]] = field(default_factory=dict)
    where: str = ""  # the current row's place, set by the reading loop

    def note(self, key: str, description: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        self.descriptions.setdefault(key, description)
        shown = self.places.setdefault(key, [])
        if len(shown) < NOTE_PLACES:
            shown.append(self.where)


Converter = Callable[[Any, Tally], "Row | None"]


def as_object(obj: Any) -> Mapping[str, Any]:
    if isinstance(obj, BadRow):  # the reader could not parse it (e.g. invalid JSON)
        raise obj
    if not isinstance(obj, Mapping):
        raise BadRow(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def text(obj: Mapping[str, Any], key: str, *, allow_empty: bool = False, name: str | None = None) -> str:
    """``obj[key]`` as a string; missing, non-string and (unless allowed) blank values are refused."""
    name = name or key
    if key not in obj:
        raise BadRow(f"missing field {name!r}")
    value = obj[key]
    if not isinstance(value, str):
        raise BadRow(f"field {name!r} must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise BadRow(f"field {name!r} is empty")
    return value


def pair(prompt: str, chosen: str, rejected: str) -> Row:
    if chosen == rejected:
        raise BadRow("chosen and rejected are identical")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def string_fields(obj: Any, fields: tuple[str, ...]) -> Row:
    """A row of string ``fields`` (the prompt may be empty, nothing else may); extra keys dropped."""
    obj = as_object(obj)
    for key in fields:
        text(obj, key, allow_empty=key == "prompt")
    if "chosen" in fields and "rejected" in fields and obj["chosen"] == obj["rejected"]:
        raise BadRow("chosen and rejected are identical")
    return {key: obj[key] for key in fields}


def lead(summary: str) -> str:
    """A completion in the leading-space convention: ``prompt + completion`` reads naturally."""
    return " " + summary.strip()
