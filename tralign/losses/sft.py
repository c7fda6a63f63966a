"""Supervised fine-tuning loss: token-level NLL on completion tokens."""

from __future__ import annotations

from torch import Tensor

from tralign.losses.types import LossOutput, check_batch


def sft_loss(policy_logps: Tensor, lengths: Tensor) -> LossOutput:
    """Per-example SFT loss whose batch mean is the token-level mean NLL.

    losses_i = -policy_logps_i * B / sum_j lengths_j,   so   losses.mean() = sum_i(-logp_i) / sum_j len_j

    Why not -logp_i / len_i: averaging per-sequence means weights a short answer's tokens more
    than a long one's; the usual SFT objective (and HF's causal-LM loss) weights every completion
    token equally across the batch. Keeping a (B,) output lets callers treat every loss alike
    (``losses.mean()``). Rewards are None: SFT has no implicit reward.
    """
    check_batch(policy_logps, lengths)
    batch_size = policy_logps.shape[0]
    # clamp: an all-empty batch has sum(-logp) = 0 as well, so the loss is 0 instead of 0/0 = NaN.
    total_tokens = lengths.to(policy_logps.dtype).sum().clamp(min=1)
    losses = -policy_logps * (batch_size / total_tokens)
    return LossOutput(losses=losses, chosen_rewards=None, rejected_rewards=None)
