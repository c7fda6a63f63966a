"""The reference rule on LoRA factors, as pure tensor functions (no peft, no modules).

A LoRA adapter stores a weight delta ΔW = s·B·A (B: out × r, A: r × in, s = alpha / r). The rule
θ_ref ← α·θ + (1 − α)·θ_ref on the merged weights is, since the base is shared and frozen,

    ΔW_ref ← α·ΔW + (1 − α)·ΔW_ref.

- α = 1 (hard update): copying the factors is exact (:func:`hard_factors`).
- 0 < α < 1 (soft update): the EMA of the factors is *not* this rule, because
  B'·A' = (αB + (1−α)B_ref)(αA + (1−α)A_ref) ≠ α·BA + (1−α)·B_ref·A_ref
  (:func:`ema_factors`, ``model.lora.ref_mode=factors``, an approximation). The rule itself is the
  product of the concatenated factors [√(αs)·B, √((1−α)s_ref)·B_ref]·[√(αs)·A; √((1−α)s_ref)·A_ref]
  of rank r + r_ref, which :func:`compress` brings back to rank r_ref by QR + SVD
  (:func:`svd_factors`, ``ref_mode=svd``): the best rank-r_ref approximation (Eckart–Young), exact
  whenever the new ΔW_ref has rank ≤ r_ref, in particular at r_ref = min(out, in)
  (``model.lora.ref_rank=full``), up to float32 rounding.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def delta(B: Tensor, A: Tensor, scale: float) -> Tensor:
    """ΔW = scale·B·A (out × in), in float32 at least."""
    return scale * (B.float() @ A.float())


def compress(B: Tensor, A: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Factors (B' out × rank, A' rank × in) of the best rank-``rank`` approximation of B·A, and the
    singular values it drops. Never forms B·A: QR of each factor, SVD of the small core
    (k × k for inner size k). The singular values are split evenly (B' = Q_B·U·√Σ, A' = √Σ·Vᵀ·Q_Aᵀ),
    so the two factors stay of comparable size; missing rank is zero-padded."""
    B, A = B.float(), A.float()
    q_b, r_b = torch.linalg.qr(B)  # (out, k'), (k', k)
    q_a, r_a = torch.linalg.qr(A.T)  # (in, k''), (k'', k)
    u, s, vh = torch.linalg.svd(r_b @ r_a.T)  # core (k', k'')
    keep = min(rank, s.numel())
    root = s[:keep].sqrt()
    B_new = (q_b @ u[:, :keep]) * root  # (out, keep)
    A_new = root[:, None] * (vh[:keep] @ q_a.T)  # (keep, in)
    if keep < rank:
        B_new = torch.cat([B_new, B_new.new_zeros(B_new.shape[0], rank - keep)], 1)
        A_new = torch.cat([A_new, A_new.new_zeros(rank - keep, A_new.shape[1])], 0)
    return B_new, A_new, s[keep:]


def svd_factors(
    B: Tensor, A: Tensor, scale: float, B_ref: Tensor, A_ref: Tensor, scale_ref: float, alpha: float
) -> tuple[Tensor, Tensor, Tensor]:
    """New (B_ref, A_ref) with scale_ref·B_ref·A_ref = α·scale·B·A + (1 − α)·scale_ref·B_ref·A_ref,
    compressed to the reference's rank; also the dropped singular values (in units of ΔW/scale_ref),
    whose root sum of squares is the Frobenius error of this update."""
    a = math.sqrt(alpha * scale / scale_ref)
    c = math.sqrt(1.0 - alpha)
    B_cat = torch.cat([a * B.float(), c * B_ref.float()], 1)  # (out, r + r_ref)
    A_cat = torch.cat([a * A.float(), c * A_ref.float()], 0)  # (r + r_ref, in)
    B_new, A_new, dropped = compress(B_cat, A_cat, B_ref.shape[1])
    return B_new.to(B_ref.dtype), A_new.to(A_ref.dtype), dropped * scale_ref


def ema_factors(B: Tensor, A: Tensor, B_ref: Tensor, A_ref: Tensor, alpha: float) -> tuple[Tensor, Tensor]:
    """The factor EMA (an approximation of the rule, see the module docstring):
    B_ref ← αB + (1−α)B_ref, A_ref ← αA + (1−α)A_ref. Needs equal ranks and scales."""
    return torch.lerp(B_ref, B.to(B_ref.dtype), alpha), torch.lerp(A_ref, A.to(A_ref.dtype), alpha)


def hard_factors(B: Tensor, A: Tensor, B_ref: Tensor, A_ref: Tensor) -> None:
    """The hard update (α = 1), exact: copy the factors in place."""
    B_ref.copy_(B)
    A_ref.copy_(A)
