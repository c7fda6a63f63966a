"""Markdown cells and tables shared by the report's tables (tralign.report.table, .seed_tables)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

KL_KEY = "golden_kl_init"  # KL(policy ‖ starting policy) on the embedded task


def number(value: Any) -> float | None:
    """A finite int or float as a float; None for anything else (bools, strings, NaN, missing)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def fmt(value: Any, digits: str = "g") -> str:
    """A Markdown cell: ``digits="#.4g"`` for metrics (4 significant digits, trailing zeros kept)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "★" if value else ""
    if isinstance(value, float):
        return format(value, digits)
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], body: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return lines
