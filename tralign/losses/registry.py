"""Name -> loss lookup, parameter checking, and one uniform entry point for paired losses."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from tralign.losses.dpo import dpo_loss
from tralign.losses.ipo import ipo_loss
from tralign.losses.kto import kto_pair_loss
from tralign.losses.sft import sft_loss
from tralign.losses.types import LossOutput, MeanFn, PairLogps

# The data modes of tralign.data.tokenize.Mode, spelled out here so that losses import no data code.
DataMode = Literal["pair", "sft", "unpaired"]


@dataclass(frozen=True)
class LossSpec:
    """Static facts about a loss.

    ``params`` are the keyword parameters ``pair_loss`` accepts for it (the config surface), which
    are not always the pure function's keywords (ipo: ``length_normalize`` decides whether the
    lengths are passed).
    """

    name: str
    needs_reference: bool
    paired: bool
    params: frozenset[str]

    @property
    def data_mode(self) -> DataMode:
        """The data it trains on: SFT rows (no reference), pairs, or unpaired labelled rows."""
        if not self.needs_reference:
            return "sft"
        return "pair" if self.paired else "unpaired"


_KTO_PARAMS = frozenset({"beta", "desirable_weight", "undesirable_weight"})

LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec("dpo", needs_reference=True, paired=True, params=frozenset({"beta", "label_smoothing"})),
        LossSpec("ipo", needs_reference=True, paired=True, params=frozenset({"beta", "length_normalize"})),
        LossSpec("kto_pair", needs_reference=True, paired=True, params=_KTO_PARAMS),
        LossSpec("kto", needs_reference=True, paired=False, params=_KTO_PARAMS),
        LossSpec("sft", needs_reference=False, paired=True, params=frozenset()),
    )
}


def _valid_names() -> str:
    return ", ".join(sorted(LOSSES))


def get_loss(name: str) -> LossSpec:
    """Look up a loss by name; unknown names raise ValueError listing the valid ones."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; valid losses: {_valid_names()}") from None


def _finite_number(value: Any) -> bool:
    # bool is an int subclass, but `beta: true` in a config is a mistake, not 1.0.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# The one rule of each loss parameter: (accepts the value, what it must be).
PARAM_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "beta": (lambda v: _finite_number(v) and v > 0, "a finite number > 0"),
    "label_smoothing": (lambda v: _finite_number(v) and 0 <= v < 0.5, "a number in [0, 0.5)"),
    "desirable_weight": (lambda v: _finite_number(v) and v > 0, "a finite number > 0"),
    "undesirable_weight": (lambda v: _finite_number(v) and v > 0, "a finite number > 0"),
    "length_normalize": (lambda v: isinstance(v, bool), "true or false"),
}


def param_problem(key: str, value: Any) -> str | None:
    """``"<key> must be <rule>, got <value>"`` when ``value`` breaks ``key``'s rule, else None."""
    ok, rule = PARAM_RULES[key]
    return None if ok(value) else f"{key} must be {rule}, got {value!r}"


def param_problems(name: str, params: Mapping[str, Any]) -> list[str]:
    """Every unknown parameter of loss ``name`` and every value that breaks its rule, each message
    starting with the parameter's name, so that the caller can prefix the place (a config key, the
    loss). ``name`` must be known."""
    spec = get_loss(name)
    valid = ", ".join(sorted(spec.params)) or "(none)"
    problems = [
        f"{key}: unknown parameter {key!r}; valid parameters: {valid}"
        for key in sorted(set(params) - spec.params)
    ]
    for key in sorted(set(params) & spec.params):
        problem = param_problem(key, params[key])
        if problem is not None:
            problems.append(problem)
    return problems


def check_loss_params(name: str, params: Mapping[str, Any]) -> list[str]:
    """Return every problem with ``params`` for loss ``name`` (empty list when fine); never raises.

    Collecting instead of raising lets the config validator report all mistakes at once.
    """
    if name not in LOSSES:
        return [f"unknown loss {name!r}; valid losses: {_valid_names()}"]
    return [f"loss {name!r}: {problem}" for problem in param_problems(name, params)]


def pair_loss(name: str, logps: PairLogps, *, kl_mean: MeanFn | None = None, **params: Any) -> LossOutput:
    """Compute a paired loss (dpo, ipo, kto_pair, sft) from a ``PairLogps`` batch.

    ipo: ``length_normalize`` (default True) decides whether completion lengths are passed.
    sft: uses only ``policy_chosen`` and ``chosen_lengths``.
    ``kl_mean`` is forwarded to kto_pair only (the other losses have no batch statistics).
    Unknown names, the unpaired ``kto`` and parameters :func:`check_loss_params` refuses raise
    ValueError.
    """
    spec = get_loss(name)
    if not spec.paired:
        raise ValueError(f"loss {name!r} is not a paired loss; pair_loss handles paired losses only")
    problems = check_loss_params(name, params)
    if problems:
        raise ValueError("; ".join(problems))

    four = (logps.policy_chosen, logps.policy_rejected, logps.ref_chosen, logps.ref_rejected)
    if name == "dpo":
        return dpo_loss(*four, **params)
    if name == "ipo":
        ipo_params = dict(params)
        if ipo_params.pop("length_normalize", True):
            return ipo_loss(
                *four,
                chosen_lengths=logps.chosen_lengths,
                rejected_lengths=logps.rejected_lengths,
                **ipo_params,
            )
        return ipo_loss(*four, **ipo_params)
    if name == "kto_pair":
        return kto_pair_loss(*four, kl_mean=kl_mean, **params)
    if name == "sft":
        return sft_loss(logps.policy_chosen, logps.chosen_lengths)
    raise AssertionError(f"paired loss {name!r} has no pair_loss branch")  # registry/branch drift
