"""Kahneman-Tversky Optimisation losses (Ethayarajh et al., 2024): paired and unpaired."""

from __future__ import annotations

import torch
from torch import Tensor

from tralign.losses.types import LossOutput, MeanFn, check_batch


def kto_pair_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_mean: MeanFn | None = None,
) -> LossOutput:
    """Per-example KTO loss on paired data ("KTO-pair"), on the KTO authors' scale.

    r_w = pc - rc,  r_l = pr - rr
    z_w = stopgrad(max(0, mean_batch(r_l))),  z_l = stopgrad(max(0, mean_batch(r_w)))
    L = (lambda_D * (1 - sigma(beta * (r_w - z_w))) + lambda_U * (1 - sigma(beta * (z_l - r_l)))) / 2

    The chosen answer is desirable and the rejected one undesirable; each side's reference point
    is a batch KL estimate taken from the *other* side. ``kl_mean`` replaces ``torch.mean`` for
    those batch means (pass an all-reduce mean under distributed training so z covers the global
    batch). Rewards are beta * r_w and beta * r_l, detached.

    Normalisation. A batch of B pairs holds 2B KTO terms (B desirable, B undesirable). The authors'
    library (HALOs) and TRL's former ``loss_type="kto_pair"`` average over those 2B terms; summing
    the two terms of a pair instead (``mean_B(term_w + term_l)``) is exactly twice that, which
    doubles every gradient, so a clip norm of 2 acts like 1 in their setup and their beta does not
    transfer. We use their normalisation: the per-pair loss is the *mean* of its two terms, so
    ``mean_B(L) == mean_2B(terms)``.
    """
    check_batch(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps)
    mean = torch.mean if kl_mean is None else kl_mean
    chosen_logratios = policy_chosen_logps - ref_chosen_logps
    rejected_logratios = policy_rejected_logps - ref_rejected_logps
    # z is a baseline, not something to optimise: gradients through it would let the policy lower
    # the loss by moving the *other* half of the batch. Detach before the mean so the hook (e.g.
    # an all-reduce) never sees a graph.
    chosen_kl = mean(rejected_logratios.detach()).clamp(min=0)
    rejected_kl = mean(chosen_logratios.detach()).clamp(min=0)
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (chosen_logratios - chosen_kl)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (rejected_kl - rejected_logratios)))
    losses = 0.5 * (desirable + undesirable)  # the mean of the pair's two terms, as the authors do
    return LossOutput(
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
    )


def kto_loss(
    policy_logps: Tensor,
    ref_logps: Tensor,
    policy_kl_logps: Tensor,
    ref_kl_logps: Tensor,
    labels: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
    kl_mean: MeanFn | None = None,
) -> LossOutput:
    """Per-example unpaired KTO loss (TRL KTOTrainer style).

    r = policy - ref,   z = stopgrad(max(0, mean_batch(policy_kl - ref_kl)))
    L_i = lambda_D * (1 - sigma(beta * (r_i - z)))   if labels_i (desirable)
    L_i = lambda_U * (1 - sigma(beta * (z - r_i)))   otherwise

    ``policy_kl_logps``/``ref_kl_logps`` are log-probs of *mismatched* prompt/completion pairs
    (built by the caller), so their mean log-ratio estimates KL(policy || ref); they may have a
    different length from the main batch. ``kl_mean`` replaces ``torch.mean`` (all-reduce mean
    under distributed training).

    Rewards: unlike the paired losses, ``chosen_rewards`` = beta * r[labels] and
    ``rejected_rewards`` = beta * r[~labels] (detached), so they are variable-length, not (B,):
    a row is either desirable or undesirable, and filling the other slot with NaN would poison
    any logging mean. ``losses`` is still (B,) in the original row order.
    """
    check_batch(policy_logps, ref_logps, labels)
    check_batch(policy_kl_logps, ref_kl_logps)
    mean = torch.mean if kl_mean is None else kl_mean
    labels = labels.bool()
    logratios = policy_logps - ref_logps
    # Detached for the same reason as in kto_pair_loss: z is a baseline, not a target.
    kl = mean((policy_kl_logps - ref_kl_logps).detach()).clamp(min=0)
    desirable = desirable_weight * (1.0 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1.0 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    rewards = (beta * logratios).detach()
    return LossOutput(losses=losses, chosen_rewards=rewards[labels], rejected_rewards=rewards[~labels])
