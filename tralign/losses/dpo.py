"""Direct Preference Optimization loss (Rafailov et al., 2023), with conservative label smoothing."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from tralign.losses.types import LossOutput, check_batch


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    label_smoothing: float = 0.0,
) -> LossOutput:
    """Per-example DPO loss.

    r_w = pc - rc,  r_l = pr - rr,  h = r_w - r_l
    L = -(1 - eps) * log sigma(beta * h) - eps * log sigma(-beta * h)

    ``label_smoothing`` (eps) is conservative DPO: it assumes a fraction eps of the labels are
    flipped. eps = 0 is plain DPO. Rewards are beta * r_w and beta * r_l, detached.
    """
    check_batch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    logits = beta * (chosen_logratios - rejected_logratios)
    # logsigmoid rather than log(sigmoid(.)): the latter underflows to -inf for large margins.
    losses = -(1.0 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return LossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )
