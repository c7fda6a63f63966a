"""What a judge says about one pair of answers (its own module so every judge can import it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Outcome = Literal["a", "b", "tie", "unparsable"]


@dataclass(frozen=True)
class Judgment:
    outcome: Outcome
    score_a: float | None = None  # golden / reward-model scores
    score_b: float | None = None
    raw: dict[str, Any] = field(default_factory=dict)  # api: the replies and per-order verdicts
