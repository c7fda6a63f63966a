"""Frontier helpers shared by the report's plots (tralign.report.plots, .plots_seeds)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _short(key: str, value: Any) -> str:
    name = {"alpha": "α", "tau": "τ", "beta": "β", "trainer.max_steps": "steps"}.get(
        key, key.rsplit(".", 1)[-1]
    )
    return f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (KL, quality) points no other point beats on both counts (lower or equal KL and higher
    quality), by increasing KL: the best quality a method reached within each KL budget."""
    front: list[tuple[float, float]] = []
    for kl, quality in sorted(points, key=lambda p: (p[0], -p[1])):
        if not front or quality > front[-1][1]:
            front.append((kl, quality))
    return front
