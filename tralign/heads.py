"""Completion log-probs from a causal LM's own forward, its LM head applied to completion positions only.

How (:func:`model_token_logps`): the model runs its *own* forward, with the ``forward`` of its output
embedding (``get_output_embeddings()``, an ``nn.Linear``) swapped for a function that takes the
final hidden states (N, T, H), keeps the M positions that predict a completion token and computes
their log-probs chunk by chunk (:func:`tralign.chunked_logps.head_logps`): no (N, T, V) or (M, V) logits
exist, in the forward or the backward pass. Running the model's own forward, rather than its
backbone and head one by one, is what makes this work on sharded models: FSDP2 (``fully_shard``,
DTensor parameters) and FSDP1 (``use_orig_params=True``) gather the head's weight in the forward of
the unit that owns it, and the swapped head reads ``weight`` at call time, so it sees the gathered
tensor; the backward re-gathers it as for any layer. The swapped head hands its (N, T-1) result out
through a side channel and returns it, as (N, T, 1), to the model, whose output is tied into the
result with weight 0 so that FSDP's pre-backward hooks (registered on the forward's outputs) fire.

Whatever the architecture does *before* its head (MiniCPM-style hidden scaling, Gemma's attention
soft-capping ...) is kept as it is. What it does *after* its head is not: Granite divides the logits
by ``logits_scaling``, Cohere multiplies them by ``logit_scale``, Gemma-2/3 soft-cap them at
``final_logit_softcapping``. All are the elementwise map y = c * tanh(s * x / c) (y = s * x without a
cap), :class:`tralign.chunked_logps.LogitMap`, which the chunked head applies to every chunk.

Which map, and whether the shortcut is right at all, is decided once per model class and config by
a probe (:func:`plan_for`, cached), on the model itself, without gradients, autocast or dropout:

1. measure the map: the head returns known values x (a (1, P, V) grid from 2^-7 to 1e6) and the
   model's output gives f(x); s and c are read off f(2^-7) and f(1e6) and f must then match the
   fitted map on the whole grid;
2. compare: the completion log-probs of a P-token input through the shortcut (with the fitted map)
   must equal ``sequence_logps`` of the model's full forward, up to the rounding of the weights'
   dtype.

A model that fails either step (its head is not an ``nn.Linear``, is bypassed or called twice, its
post-head processing is not of that form, or the numbers differ) gets the full forward and a
warning naming the reason: the shortcut is never silently wrong, only sometimes not taken. The
fallback materialises the (N, T, V) logits, sharded or not. All ranks of a sharded model run the
same probe at the same call, and both branches run the model's forward once, so the collectives
match even if ranks were to disagree.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from tralign.chunked_logps import LogitMap, head_logps, masked_token_logps

log = logging.getLogger(__name__)

PROBE_TOKENS = 8
_SMALL = 2.0**-7  # where f is linear: its slope s (a power of 2, exact in any dtype)
_LARGE = 1e6  # where a soft cap c has saturated


@dataclass(frozen=True)
class HeadPlan:
    """The probe's verdict for one model class and config: the map to apply, or None (full forward)."""

    logit_map: LogitMap | None
    reason: str


_PLANS: dict[tuple[str, str], HeadPlan] = {}


class ShortcutError(RuntimeError):
    """The model's forward did not call its head once on the (N, T, H) hidden states."""


def model_token_logps(
    model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor, *, chunk_size: int = 512
) -> Tensor:
    """Per-token completion log-probs (N, T-1) float32, 0 outside ``loss_mask[:, 1:]``: equal to
    ``masked_token_logps(model(input_ids, attention_mask).logits, input_ids, loss_mask)``."""
    head = output_head(model)
    plan = plan_for(model, head, input_ids.device) if head is not None else None
    if plan is None or plan.logit_map is None:
        return _full(model, input_ids, attention_mask, loss_mask)
    return _shortcut(model, head, plan.logit_map, input_ids, attention_mask, loss_mask, chunk_size)


def model_sequence_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    *,
    chunk_size: int = 512,
) -> tuple[Tensor, Tensor]:
    """``sequence_logps(model(input_ids, attention_mask).logits, input_ids, loss_mask)``, computed
    with the LM head applied to completion positions only: (logps, counts), both (N,) float32.

    The model runs its own forward (so a sharded model gathers its parameters as usual, and whatever
    the architecture does before its head is kept), with the head swapped for the chunked
    completion-positions-only log-probs; the architecture's logit processing is reproduced, and a
    model whose forward the shortcut cannot reproduce gets the full forward. See this module's docstring.
    """
    if loss_mask.shape != input_ids.shape:
        raise ValueError(
            f"loss_mask shape {tuple(loss_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    per_token = model_token_logps(model, input_ids, attention_mask, loss_mask, chunk_size=chunk_size)
    return per_token.sum(-1), loss_mask[:, 1:].bool().sum(-1).to(torch.float32)


def output_head(model: nn.Module) -> nn.Linear | None:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return head if isinstance(head, nn.Linear) else None


def _full(model: nn.Module, input_ids: Tensor, attention_mask: Tensor, loss_mask: Tensor) -> Tensor:
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return masked_token_logps(logits, input_ids, loss_mask)


@contextmanager
def _swapped_forward(head: nn.Module, forward: Callable[..., Tensor]) -> Iterator[None]:
    own = head.__dict__.get("forward")  # an instance-level forward (hooks of other libraries), if any
    head.forward = forward
    try:
        yield
    finally:
        if own is None:
            del head.forward
        else:
            head.forward = own


def _run_with_head(
    model: nn.Module, head: nn.Module, input_ids: Tensor, attention_mask: Tensor, head_forward
) -> tuple[Tensor, list]:
    """The model's forward with ``head_forward(hidden, calls_so_far) -> (returned, kept)`` as its head:
    the model's logits (computed from ``returned``) and what each head call kept."""
    kept: list = []

    def forward(hidden: Tensor, *args, **kwargs) -> Tensor:
        returned, keep = head_forward(hidden, len(kept))
        kept.append(keep)
        return returned

    with _swapped_forward(head, forward):
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    return logits, kept


def _shortcut(
    model: nn.Module,
    head: nn.Linear,
    logit_map: LogitMap,
    input_ids: Tensor,
    attention_mask: Tensor,
    loss_mask: Tensor,
    chunk_size: int,
) -> Tensor:
    mask = loss_mask[:, 1:].bool()  # (N, T-1): position t predicts token t + 1
    targets = input_ids[:, 1:][mask]  # (M,)

    def head_forward(hidden: Tensor, calls: int) -> tuple[Tensor, Tensor | None]:
        if calls or hidden.dim() != 3 or hidden.shape[:2] != input_ids.shape:
            # Never raise inside a (possibly sharded) forward: report after it.
            return hidden.new_zeros((*hidden.shape[:-1], 1)), None
        selected = head_logps(hidden[:, :-1][mask], head, targets, chunk_size=chunk_size, logit_map=logit_map)
        per_token = selected.new_zeros(mask.shape).masked_scatter(mask, selected)  # (N, T-1)
        returned = nn.functional.pad(per_token, (0, 1)).unsqueeze(-1).to(hidden.dtype)  # (N, T, 1)
        return returned, per_token

    logits, kept = _run_with_head(model, head, input_ids, attention_mask, head_forward)
    if len(kept) != 1 or kept[0] is None:
        raise ShortcutError(
            f"{type(model).__name__}: the LM head was called {len(kept)} times, expected once on hidden "
            f"states {tuple(input_ids.shape)} + (H,)"
        )
    per_token = kept[0]
    if torch.is_grad_enabled() and logits.requires_grad:
        # Weight 0, but on the graph: FSDP's pre-backward hooks (which re-gather the head's weight)
        # sit on the forward's outputs. Without this the backward reads the freed weight (FSDP2:
        # "setStorage: ... out of bounds for storage of size 0").
        per_token = per_token + logits.float().sum() * 0.0
    return per_token


# --- the probe ----------------------------------------------------------------------------------
def plan_for(model: nn.Module, head: nn.Linear, device: torch.device) -> HeadPlan:
    """The cached probe verdict for ``model`` (see the module docstring). A collective under FSDP:
    every rank calls it at the same point (it runs inside :func:`model_token_logps`)."""
    key = _cache_key(model)
    plan = _PLANS.get(key)
    if plan is None:
        plan = _probe(model, head, device)
        _PLANS[key] = plan
        if plan.logit_map is None:
            log.warning(
                "%s: log-probs from the full forward, which builds (N, T, V) logits: %s", key[0], plan.reason
            )
        else:
            log.info("%s: completion-positions-only LM head, %s", key[0], plan.reason)
    return plan


def clear_cache() -> None:
    _PLANS.clear()


def _cache_key(model: nn.Module) -> tuple[str, str]:
    inner = getattr(model, "module", model)  # FSDP1 wraps the Hugging Face model
    name = f"{type(inner).__module__}.{type(inner).__qualname__}"
    config = getattr(model, "config", None)
    try:
        return name, config.to_json_string(use_diff=False)
    except Exception:  # no (serialisable) config: probe this instance
        return name, f"id={id(inner)}"


def _probe(model: nn.Module, head: nn.Linear, device: torch.device) -> HeadPlan:
    modes = {m: m.training for m in model.modules()}
    model.eval()  # dropout would make the two forwards differ
    try:
        with torch.no_grad(), torch.autocast(device.type, enabled=False):
            return _probe_eval(model, head, device)
    except Exception as err:  # a post-head step that fails on the shortcut's (N, T, 1) output ...
        return HeadPlan(None, f"the shortcut fails: {type(err).__name__}: {err}")
    finally:
        for m, training in modes.items():
            m.training = training


def _probe_eval(model: nn.Module, head: nn.Linear, device: torch.device) -> HeadPlan:
    vocab = head.out_features
    config_vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if isinstance(config_vocab, int) and 0 < config_vocab < vocab:
        vocab = config_vocab  # a head padded past the tokenizer's vocabulary
    input_ids = ((torch.arange(PROBE_TOKENS, device=device) * 7919 + 3) % vocab).unsqueeze(0)  # (1, P)
    attention_mask = torch.ones_like(input_ids)

    # 1. The map f after the head, measured on a grid of known head outputs.
    grid = _grid(PROBE_TOKENS * head.out_features, device).view(1, PROBE_TOKENS, head.out_features)
    seen, kept = _run_with_head(
        model, head, input_ids, attention_mask, lambda hidden, _: (grid, hidden.dtype)
    )
    if len(kept) != 1 or seen.shape != grid.shape:
        return HeadPlan(None, f"the head is called {len(kept)} times, or its output is reshaped")
    logit_map = _fit(grid.flatten().double(), seen.flatten().double())
    if logit_map is None:
        return HeadPlan(None, "the logits are not y = c*tanh(s*x/c) or y = s*x of the head's output x")

    # 2. The shortcut with that map against the model's own full forward.
    loss_mask = torch.ones_like(input_ids)
    full_logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    full = masked_token_logps(full_logits, input_ids, loss_mask)
    fast = _shortcut(model, head, logit_map, input_ids, attention_mask, loss_mask, chunk_size=3)
    exact = full_logits.dtype == kept[0] == torch.float32
    rel = 2e-3 if exact else 2**-5  # fp32 (TF32 matmuls on GPUs) / 16-bit rounding of the logits
    tol = rel * (1 + float(full_logits.float().abs().max()))
    diff = float((full - fast).abs().max())
    if not diff <= tol:
        return HeadPlan(
            None, f"shortcut and full forward differ by {diff:.3g} nats per token (tolerance {tol:.3g})"
        )
    return HeadPlan(logit_map, f"{logit_map}, probe difference {diff:.2g} nats per token")


def _grid(n: int, device: torch.device) -> Tensor:
    anchors = torch.tensor([_SMALL, -_SMALL, _LARGE, -_LARGE], dtype=torch.float32)
    spread = torch.linspace(-100.0, 100.0, max(n - 4, 1))
    return torch.cat([anchors, spread])[:n].to(device)


def _fit(x: Tensor, y: Tensor) -> LogitMap | None:
    """The LogitMap with f(x) = y on the grid (x[:4] the anchors of :func:`_grid`), or None."""
    if not bool(torch.isfinite(y).all()) or float(y[0]) == 0.0:
        return None
    slope, big = float(y[0]) / _SMALL, float(y[2])
    softcap = None if abs(big) > 0.5 * abs(slope) * _LARGE else abs(big)
    if softcap == 0.0:
        return None
    # Exact s from f(x0) = c*tanh(s*x0/c); 1 read off in fp32 may come out as 1 - 1e-8.
    scale = slope if softcap is None else softcap * math.atanh(float(y[0]) / softcap) / _SMALL
    scale = 1.0 if abs(scale - 1.0) < 1e-5 else scale
    fitted = LogitMap(scale=scale, softcap=softcap)
    if not bool(torch.allclose(fitted(x), y, rtol=1e-3, atol=1e-4)):
        return None
    return fitted
