"""Per-token and per-sequence log-probs from causal-LM logits, without a full fp32 log_softmax.

A (B, T, V) log_softmax in float32 is the largest tensor in a preference-training step (V ~ 150k),
and plain autograd would keep the upcast copy alive for the backward pass. Here the upcast happens
``chunk_size`` batch rows at a time in both the forward and the backward pass, through a small
custom autograd function, so at most a (chunk_size, T, V) float32 temporary exists at once.

From a model rather than from logits, :func:`tralign.heads.model_sequence_logps` applies the LM head
(and the architecture's :class:`LogitMap`) to completion positions only, chunked (:func:`head_logps`),
inside the model's own forward, and says when it falls back to the full forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


def _check_chunk_size(chunk_size: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


class _ChunkedTokenLogps(torch.autograd.Function):
    """log p(t | ctx) = logit_t - logsumexp(logits), computed and differentiated row-chunk-wise.

    d/d logits_v = g * (1[v = t] - softmax(logits)_v); the softmax is recomputed per chunk in the
    backward from the saved (original-dtype) logits and the saved float32 logsumexp.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, chunk_size: int) -> Tensor:
        # logits: (B, T-1, V) predicting targets: (B, T-1).
        out = torch.empty(targets.shape, dtype=torch.float32, device=logits.device)
        lse = torch.empty_like(out)
        for start in range(0, logits.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            chunk = logits[rows].float()
            lse[rows] = torch.logsumexp(chunk, dim=-1)
            out[rows] = chunk.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        ctx.save_for_backward(logits, targets, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, None, None]:
        logits, targets, lse = ctx.saved_tensors
        grad_logits = torch.empty_like(logits)
        grad_out = grad_out.float()
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad_out[rows].unsqueeze(-1)
            probs = torch.exp(logits[rows].float() - lse[rows].unsqueeze(-1))
            # where, not multiply: positions with zero upstream grad (masked prompt/padding) may hold
            # garbage logits whose softmax is NaN; they must get exactly 0 gradient.
            grad = torch.where(g != 0, -probs * g, 0.0)
            grad.scatter_add_(-1, targets[rows].unsqueeze(-1), g)
            grad_logits[rows] = grad.to(logits.dtype)
        return grad_logits, None, None


def token_logps(logits: Tensor, input_ids: Tensor, *, chunk_size: int = 8) -> Tensor:
    """Per-token log-probs of the next token: (B, T-1) float32.

    out[b, t] = log softmax(logits[b, t])[input_ids[b, t + 1]]

    ``logits`` (B, T, V) may be any float dtype (bf16 included); the softmax is taken in float32,
    ``chunk_size`` batch rows at a time. Gradients flow to ``logits``.
    """
    _check_chunk_size(chunk_size)
    if logits.dim() != 3 or input_ids.shape != logits.shape[:2]:
        raise ValueError(
            f"expected logits (B, T, V) and input_ids (B, T), got {tuple(logits.shape)} "
            f"and {tuple(input_ids.shape)}"
        )
    return _ChunkedTokenLogps.apply(logits[:, :-1], input_ids[:, 1:].long(), chunk_size)


def sequence_logps(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, *, chunk_size: int = 8
) -> tuple[Tensor, Tensor]:
    """Summed completion log-probs and completion token counts, both (B,) float32.

    logps[b]  = sum_{t >= 1, loss_mask[b, t]} log p(input_ids[b, t] | input_ids[b, :t])
    counts[b] = sum_{t >= 1} loss_mask[b, t]

    ``loss_mask`` (B, T) marks the input positions whose token probability counts (completion
    tokens); prompt and padding are 0. Position 0 never counts: nothing predicts it.
    """
    if loss_mask.shape != input_ids.shape:
        raise ValueError(
            f"loss_mask shape {tuple(loss_mask.shape)} != input_ids shape {tuple(input_ids.shape)}"
        )
    per_token = masked_token_logps(logits, input_ids, loss_mask, chunk_size=chunk_size)
    return per_token.sum(-1), loss_mask[:, 1:].bool().sum(-1).to(torch.float32)


def masked_token_logps(
    logits: Tensor, input_ids: Tensor, loss_mask: Tensor, *, chunk_size: int = 8
) -> Tensor:
    """``token_logps`` with the positions outside ``loss_mask[:, 1:]`` set to exactly 0: (B, T-1)."""
    mask = loss_mask[:, 1:].bool()
    # Masked targets may be ignore-index values such as -100; point them at a valid id so the
    # gather stays in range. Their log-probs are discarded below.
    safe_ids = torch.where(loss_mask.bool(), input_ids, torch.zeros_like(input_ids))
    per_token = token_logps(logits, safe_ids, chunk_size=chunk_size)
    # where, not multiply: a garbage (inf/NaN) log-prob at a padding position times 0 is NaN.
    return torch.where(mask, per_token, torch.zeros_like(per_token))


@dataclass(frozen=True)
class LogitMap:
    """The elementwise map a model applies to its LM head's output before the softmax:

        y = softcap * tanh(scale * x / softcap)     (y = scale * x when softcap is None)

    Granite divides by ``logits_scaling`` (scale = 1 / logits_scaling), Cohere multiplies by
    ``logit_scale``, Gemma-2/3 soft-cap at ``final_logit_softcapping``; most models apply nothing
    (the identity, ``LogitMap()``). :mod:`tralign.heads` measures it on the model's own forward.
    """

    scale: float = 1.0
    softcap: float | None = None

    @property
    def is_identity(self) -> bool:
        return self.scale == 1.0 and self.softcap is None

    def __call__(self, x: Tensor) -> Tensor:
        y = x * self.scale if self.scale != 1.0 else x
        return y if self.softcap is None else torch.tanh(y / self.softcap) * self.softcap

    def derivative(self, x: Tensor) -> Tensor:
        """dy/dx, elementwise."""
        if self.softcap is None:
            return torch.full_like(x, self.scale)
        return (1 - torch.tanh(x * (self.scale / self.softcap)).square()) * self.scale


IDENTITY = LogitMap()


class _ChunkedHeadLogps(torch.autograd.Function):
    """log softmax(f(h @ W.T + b))[target] for M selected positions, ``chunk_size`` rows at a time,
    f a :class:`LogitMap`.

    Neither the forward nor the backward keeps an (M, V) tensor: each chunk's logits are made in
    float32, reduced to a log-prob, and recomputed in the backward pass (one extra head matmul per
    chunk buys O(chunk_size * V) memory instead of O(M * V)).
    """

    @staticmethod
    def forward(
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        targets: Tensor,
        chunk_size: int,
        logit_map: LogitMap,
    ) -> Tensor:
        # hidden: (M, H), weight: (V, H), targets: (M,)
        # Under autocast the head's matmuls run in the autocast dtype, forward *and* backward (the
        # backward of a custom Function runs with autocast off): one compute dtype, saved on ctx.
        device = hidden.device.type
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        h, w, b = _cast(hidden, weight, bias, dtype)
        out = torch.empty(targets.shape, dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        with torch.autocast(device, enabled=False):
            for start in range(0, hidden.shape[0], chunk_size):
                rows = slice(start, start + chunk_size)
                logits = logit_map(torch.nn.functional.linear(h[rows], w, b).float())  # (m, V)
                lse[rows] = torch.logsumexp(logits, dim=-1)
                out[rows] = logits.gather(-1, targets[rows].unsqueeze(-1)).squeeze(-1) - lse[rows]
        ctx.save_for_backward(hidden, weight, bias, targets, lse)
        ctx.chunk_size = chunk_size
        ctx.compute_dtype = dtype
        ctx.logit_map = logit_map
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: Tensor):
        hidden, weight, bias, targets, lse = ctx.saved_tensors
        h, w, b = _cast(hidden, weight, bias, ctx.compute_dtype)
        logit_map: LogitMap = ctx.logit_map
        grad_hidden = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = None if bias is None else torch.zeros(bias.shape, dtype=torch.float32, device=bias.device)
        grad_out = grad_out.float()
        for start in range(0, hidden.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad_out[rows].unsqueeze(-1)  # (m, 1)
            raw = torch.nn.functional.linear(h[rows], w, b).float()
            logits = raw if logit_map.is_identity else logit_map(raw)
            # d/d logits = g * (1[t] - p), in place
            grad = logits.sub_(lse[rows].unsqueeze(-1)).exp_().mul_(-g)
            grad.scatter_add_(-1, targets[rows].unsqueeze(-1), g)
            if not logit_map.is_identity:  # chain rule through f: d/d raw = d/d logits * f'(raw)
                grad.mul_(logit_map.derivative(raw))
            grad = grad.to(ctx.compute_dtype)
            if grad_hidden is not None:
                grad_hidden[rows] = grad @ w
            if ctx.compute_dtype == torch.float32:
                grad_weight.addmm_(grad.t(), h[rows])
            else:  # a low-precision GEMM, accumulated in fp32 across chunks
                grad_weight += (grad.t() @ h[rows]).float()
            if grad_bias is not None:
                grad_bias += grad.float().sum(0)
        grad_weight = grad_weight.to(weight.dtype) if ctx.needs_input_grad[1] else None
        if grad_bias is not None:
            grad_bias = grad_bias.to(bias.dtype) if ctx.needs_input_grad[2] else None
        return grad_hidden, grad_weight, grad_bias, None, None, None


def _cast(hidden: Tensor, weight: Tensor, bias: Tensor | None, dtype: torch.dtype):
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def head_logps(
    hidden: Tensor,
    head: torch.nn.Linear,
    targets: Tensor,
    *,
    chunk_size: int = 512,
    logit_map: LogitMap = IDENTITY,
) -> Tensor:
    """Log-probs (M,) float32 of ``targets`` (M,) under ``logit_map(head(hidden))`` for hidden (M, H),
    without materialising the (M, V) logits (chunked, recomputed in the backward pass).

    ``head``'s weight and bias are read when this is called: inside a sharded model's forward they
    are the gathered tensors."""
    _check_chunk_size(chunk_size)
    return _ChunkedHeadLogps.apply(hidden, head.weight, head.bias, targets.long(), chunk_size, logit_map)
