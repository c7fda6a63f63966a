"""Identity Preference Optimisation loss (Azar et al., 2023)."""

from __future__ import annotations

from torch import Tensor

from tralign.losses.types import LossOutput, check_batch


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    chosen_lengths: Tensor | None = None,
    rejected_lengths: Tensor | None = None,
) -> LossOutput:
    """Per-example IPO loss.

    r_w = (pc - rc) / len_w,  r_l = (pr - rr) / len_l   (lengths given: TRL's convention)
    r_w = pc - rc,            r_l = pr - rr             (no lengths: summed log-probs)
    L = (r_w - r_l - 1 / (2 * beta))^2

    The loss is minimised (zero) exactly at h = 1/(2 beta). Lengths must be given both or neither.
    Rewards are beta * r_w and beta * r_l (normalised when lengths are given), detached.
    """
    check_batch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    if (chosen_lengths is None) != (rejected_lengths is None):
        raise ValueError("ipo_loss: pass both chosen_lengths and rejected_lengths, or neither")

    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    if chosen_lengths is not None and rejected_lengths is not None:
        check_batch(policy_chosen_logps, chosen_lengths, rejected_lengths)
        # Lengths may arrive as long counts; clamp at 1 so an empty completion (whose summed
        # log-prob is 0) gives a 0 log-ratio instead of 0/0 = NaN. Real lengths are >= 1 anyway.
        dtype = chosen_logratios.dtype
        chosen_logratios = chosen_logratios / chosen_lengths.to(dtype).clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_lengths.to(dtype).clamp(min=1)

    h = chosen_logratios - rejected_logratios
    losses = (h - 1.0 / (2.0 * beta)) ** 2
    return LossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )
