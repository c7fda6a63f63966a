"""The moving reference: one rule, "every τ optimizer steps, θ_ref ← α·θ + (1 − α)·θ_ref".

Soft update (Polyak/EMA) is (α, τ = 1), hard update is (α = 1, τ), the classical frozen
reference is α = 0 (or no schedule at all). Nothing here knows about Lightning: the training
module asks :class:`ReferenceSchedule` whether the optimizer step it just finished is an update
step and then calls :func:`update_reference_`.

The update works on whatever tensors the two modules hold. Under FSDP each rank holds a shard
of every parameter (a ``DTensor`` for FSDP2, a flat local shard for FSDP1); policy and reference
are sharded the same way, so pairing ``parameters()`` pairs local shards and the update needs
no gather and no communication.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

RefUpdateMode = Literal["none", "soft", "hard"]

PRESETS: dict[str, dict[str, float | int]] = {
    # α = 0 makes the update a no-op; τ is irrelevant but kept valid.
    "none": {"alpha": 0.0, "tau": 1},
    "soft": {"alpha": 0.6, "tau": 1},
    "hard": {"alpha": 1.0, "tau": 512},
}


@dataclass(frozen=True)
class ReferenceSchedule:
    """When and how strongly the reference moves.

    ``tau`` counts *applied* optimizer steps (after gradient accumulation; a step the non-finite
    guard skips does not count). The first update happens after applied step ``tau`` (not at
    step 0), then after ``2·tau`` and so on.
    """

    mode: RefUpdateMode = "none"
    alpha: float = 0.0
    tau: int = 1

    def __post_init__(self) -> None:
        problems = schedule_problems(self.mode, self.alpha, self.tau)
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def active(self) -> bool:
        return self.mode != "none" and self.alpha > 0.0

    def is_update_step(self, optimizer_steps_done: int) -> bool:
        """True when the reference should move after ``optimizer_steps_done`` optimizer steps."""
        return self.active and optimizer_steps_done > 0 and optimizer_steps_done % self.tau == 0


def schedule_problems(mode: str, alpha: object, tau: object) -> list[str]:
    """Every problem with a (mode, α, τ) triple, as messages naming the config key: the schedule's
    rules, kept here only (``ReferenceSchedule`` raises them, ``tralign.config`` collects them)."""
    problems = []
    if mode not in PRESETS:
        problems.append(f"ref_update: unknown mode {mode!r}; valid: {', '.join(PRESETS)}")
    if (problem := _alpha_problem(alpha)) is not None:
        problems.append(problem)
    if isinstance(tau, bool) or not isinstance(tau, int) or tau < 1:
        problems.append(f"tau: must be an integer >= 1 (optimizer steps), got {tau!r}")
    return problems


def _alpha_problem(alpha: object) -> str | None:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= float(alpha) <= 1.0:
        return f"alpha: must be a number in [0, 1], got {alpha!r}"
    return None


def _paired_tensors(ref: nn.Module, policy: nn.Module) -> tuple[list[Tensor], list[Tensor]]:
    ref_named = list(ref.named_parameters())
    pol_named = list(policy.named_parameters())
    if len(ref_named) != len(pol_named):
        raise ValueError(
            f"reference has {len(ref_named)} parameters, policy {len(pol_named)}: they must be the same architecture"
        )
    ref_t, pol_t = [], []
    for (rn, rp), (pn, pp) in zip(ref_named, pol_named, strict=True):
        if rn != pn or rp.shape != pp.shape:
            raise ValueError(f"reference/policy mismatch: {rn} {tuple(rp.shape)} vs {pn} {tuple(pp.shape)}")
        ref_t.append(_local(rp))
        pol_t.append(_local(pp))
    return ref_t, pol_t


def _local(t: Tensor) -> Tensor:
    """The rank-local storage of a parameter: a DTensor's shard, else the tensor itself."""
    data = t.detach()
    to_local = getattr(data, "to_local", None)
    return to_local() if callable(to_local) else data


@torch.no_grad()
def soft_update_(ref: nn.Module, policy: nn.Module, alpha: float) -> None:
    """θ_ref ← α·θ + (1 − α)·θ_ref in place, on each rank's local shard.

    α = 0 leaves the reference bitwise unchanged; α = 1 makes it a copy.
    Uses ``torch._foreach_lerp_`` (one fused kernel launch per dtype/device group, no temporaries
    proportional to the model): lerp(ref, policy, α) = ref + α·(policy − ref).
    """
    if (problem := _alpha_problem(alpha)) is not None:
        raise ValueError(problem)
    if alpha == 0.0:
        return
    ref_t, pol_t = _paired_tensors(ref, policy)
    if alpha == 1.0:
        torch._foreach_copy_(ref_t, pol_t)
        return
    _lerp_(ref_t, pol_t, alpha)


def _lerp_(ref_t: list[Tensor], pol_t: list[Tensor], alpha: float) -> None:
    # _foreach_lerp_ needs matching dtypes; a bf16 reference of an fp32 policy is mixed per tensor.
    same = [(r, p) for r, p in zip(ref_t, pol_t, strict=True) if r.dtype == p.dtype]
    mixed = [(r, p) for r, p in zip(ref_t, pol_t, strict=True) if r.dtype != p.dtype]
    if same:
        torch._foreach_lerp_([r for r, _ in same], [p for _, p in same], alpha)
    for r, p in mixed:
        r.lerp_(p.to(r.dtype), alpha)


@torch.no_grad()
def hard_update_(ref: nn.Module, policy: nn.Module) -> None:
    """θ_ref ← θ in place, on each rank's local shard."""
    ref_t, pol_t = _paired_tensors(ref, policy)
    torch._foreach_copy_(ref_t, pol_t)


def update_reference_(ref: nn.Module, policy: nn.Module, alpha: float) -> None:
    """Apply one update of the rule with weight α (α = 1 is the hard update)."""
    move = getattr(ref, "move_toward_policy_", None)
    if move is not None:  # a LoRA reference adapter on the policy's own base (tralign/lora) moves itself
        move(alpha)
        return
    if alpha == 1.0:
        hard_update_(ref, policy)
    else:
        soft_update_(ref, policy, alpha)
