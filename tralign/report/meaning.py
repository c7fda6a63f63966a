"""What a summary metric means under a moving reference. Pure functions over a ``summary.json`` dict,
shared by the sweep report and the end-of-run console summary.

Three kinds of metric:

- ``start``: measured against the starting policy or a fixed yardstick, so it means the same whatever
  the reference did: ``golden_*`` (golden reward, KL from the start), ``val/init/*`` (preferences
  learned relative to the starting policy), ``val/logps/*`` (the policy's own log-probabilities).
- ``reference``: relative to the reference *as it is at the end*: ``val/loss``, ``val/rewards/*``
  (and ``train/loss``, ``train/rewards/*`` during training). Under DPO that is the starting policy;
  under TR-DPO it is a trailing copy of the policy, so these measure the last few hundred steps at
  most, not what was learned.
- ``empty``: a reference-relative validation metric taken when the reference *equals* the policy
  (a hard update, or α = 1, at the final optimizer step): accuracy 0.000, margins 0, DPO loss
  ln 2 = 0.6931, by construction. It reports nothing about the run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

Kind = Literal["start", "reference", "empty", "other"]

# The metrics a table or console summary leads with, in this order (when present).
LEADING = (
    "golden_reward",
    "golden_kl_init",
    "golden_reward_init",
    "val/init/rewards/accuracies",
    "val/init/rewards/margins",
)
REFERENCE_PREFIXES = ("val/rewards/", "train/rewards/")
REFERENCE_KEYS = ("val/loss", "train/loss")
START_PREFIXES = ("golden_", "val/init/", "val/logps/", "eval/")


def reference_equals_policy(summary: Mapping[str, Any]) -> bool:
    """True when the run's last optimizer step copied the policy into the reference (α = 1 and the
    final applied step a multiple of τ), so the closing validation compares the policy with itself."""
    if summary.get("ref_update") in (None, "none"):
        return False
    try:
        alpha, tau = float(summary["alpha"]), int(summary["tau"])
        steps = int(summary.get("applied_steps", summary.get("global_step")))
        updates = int(summary.get("ref_updates", 0))
    except (KeyError, TypeError, ValueError):
        return False
    return alpha == 1.0 and updates > 0 and steps > 0 and steps % tau == 0


def metric_kind(key: str, summary: Mapping[str, Any] | None = None) -> Kind:
    """``start``, ``reference``, ``empty`` (reference-relative validation with reference == policy)
    or ``other`` (wall time, data counts, ...) for one flat metric key of a run's summary."""
    if key.startswith(START_PREFIXES):
        return "start"
    if key in REFERENCE_KEYS or key.startswith(REFERENCE_PREFIXES):
        if key.startswith("val/") and summary is not None and reference_equals_policy(summary):
            return "empty"
        return "reference"
    return "other"


def flat_metrics(summary: Mapping[str, Any]) -> dict[str, Any]:
    """The summary's metrics as one flat dict: top-level ``golden_*`` and the ``train``/``val`` parts."""
    out = {k: v for k, v in summary.items() if k.startswith("golden_")}
    for part in ("val", "train"):
        if isinstance(summary.get(part), Mapping):
            out.update(summary[part])
    return out


def ordered_metrics(
    summary: Mapping[str, Any], keys: Iterable[str] | None = None
) -> list[tuple[str, Any, Kind]]:
    """``(key, value, kind)`` for the summary's metrics (or ``keys``), those that keep their meaning
    first (``LEADING`` order, then the other ``start`` metrics), then the reference-relative ones,
    the empty ones last; ``other`` keys are left out. For console summaries and report columns."""
    flat = flat_metrics(summary)
    keys = list(flat) if keys is None else [k for k in keys if k in flat]
    rank = {"start": 0, "reference": 1, "empty": 2}
    picked = [(k, flat[k], metric_kind(k, summary)) for k in keys]
    picked = [p for p in picked if p[2] in rank]
    lead = {k: i for i, k in enumerate(LEADING)}
    return sorted(picked, key=lambda p: (rank[p[2]], lead.get(p[0], len(lead)), keys.index(p[0])))


def describe(key: str, value: Any, kind: Kind, digits: str = ".4g") -> str:
    """One cell/line: the value, with ``(vs reference)`` for reference-relative metrics and, for an
    empty one, no number at all but why: ``empty: reference = policy at the last step``."""
    if kind == "empty":
        return "empty: reference = policy at the last step"
    text = format(value, digits) if isinstance(value, float) else str(value)
    return f"{text} (vs reference)" if kind == "reference" else text


def summary_lines(summary: Mapping[str, Any], keys: Iterable[str] | None = None) -> list[str]:
    """The end-of-run console lines, ``key  value``, in :func:`ordered_metrics` order: what keeps its
    meaning first; reference-relative values say ``(vs reference)``; empty ones say why, with no number."""
    ordered = ordered_metrics(summary, keys)
    width = max((len(k) for k, _, _ in ordered), default=0)
    return [f"{key:<{width}}  {describe(key, value, kind)}" for key, value, kind in ordered]
