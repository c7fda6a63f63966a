"""Completion log-probs: the public entry points.

- :func:`model_sequence_logps` (model, input_ids, attention_mask, loss_mask) → (per-sequence sums,
  completion token counts): the model's own forward with its LM head applied to completion positions
  only, chunked, architecture-specific logit processing included (:mod:`tralign.heads`).
- :func:`sequence_logps` / :func:`token_logps`: the same from logits you already have, without a full
  fp32 log-softmax; :func:`head_logps`: the chunked head itself (:mod:`tralign.chunked_logps`).

This module only gathers them, so ``tralign.logprobs.model_sequence_logps`` stays the one name to
call; the maths lives in the two modules above (no Lightning, no data, no model building).
"""

from __future__ import annotations

from tralign.chunked_logps import (
    IDENTITY,
    LogitMap,
    head_logps,
    masked_token_logps,
    sequence_logps,
    token_logps,
)
from tralign.heads import model_sequence_logps

__all__ = [
    "IDENTITY",
    "LogitMap",
    "head_logps",
    "masked_token_logps",
    "model_sequence_logps",
    "sequence_logps",
    "token_logps",
]
