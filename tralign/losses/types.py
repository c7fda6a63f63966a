"""Shared types for the pure loss functions."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

# A batch-mean reducer: Tensor -> 0-d Tensor. The default is ``torch.mean``; under distributed
# training the caller passes an all-reduce mean so KTO's KL estimate covers the global batch.
MeanFn = Callable[[Tensor], Tensor]


class LossOutput(NamedTuple):
    """What every loss returns.

    ``losses`` is the (B,) per-example loss; the batch loss is ``losses.mean()``.
    ``chosen_rewards``/``rejected_rewards`` are the detached implicit rewards (B,) for logging,
    ``None`` for SFT. Exception: the unpaired ``kto_loss`` returns the rewards of the desirable
    and undesirable rows respectively, so there they are variable-length (see its docstring).
    """

    losses: Tensor
    chosen_rewards: Tensor | None
    rejected_rewards: Tensor | None


@dataclass(frozen=True)
class PairLogps:
    """Summed completion log-probs for a batch of preference pairs; all tensors are 1-D (B,).

    ``*_lengths`` are completion token counts (float or long).
    """

    policy_chosen: Tensor
    policy_rejected: Tensor
    ref_chosen: Tensor
    ref_rejected: Tensor
    chosen_lengths: Tensor
    rejected_lengths: Tensor


def check_batch(*tensors: Tensor) -> None:
    """Raise ValueError unless all tensors are 1-D with the same length.

    Broadcasting would otherwise silently turn a (B,1) vs (B,) mistake into a (B,B) loss.
    """
    shapes = [tuple(t.shape) for t in tensors]
    if any(len(s) != 1 for s in shapes) or len(set(shapes)) != 1:
        raise ValueError(f"expected 1-D tensors of equal length, got shapes {shapes}")
