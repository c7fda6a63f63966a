"""Pure preference-alignment losses on summed per-sequence log-probs.

The trust-region part (moving reference model) lives elsewhere: these functions only see the
reference log-probs, whichever reference produced them.
"""

from __future__ import annotations

from tralign.losses.dpo import dpo_loss
from tralign.losses.ipo import ipo_loss
from tralign.losses.kto import kto_loss, kto_pair_loss
from tralign.losses.registry import LOSSES, LossSpec, check_loss_params, get_loss, pair_loss
from tralign.losses.sft import sft_loss
from tralign.losses.types import LossOutput, PairLogps

__all__ = [
    "LOSSES",
    "LossOutput",
    "LossSpec",
    "PairLogps",
    "check_loss_params",
    "dpo_loss",
    "get_loss",
    "ipo_loss",
    "kto_loss",
    "kto_pair_loss",
    "pair_loss",
    "sft_loss",
]
