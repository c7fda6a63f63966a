"""``summary.json``'s ``params``: what the run trains and what its reference costs."""

from __future__ import annotations

from typing import Any

from torch import nn


def _count(params: Any) -> int:
    return sum(p.numel() for p in {id(p): p for p in params}.values())


def param_counts(module: nn.Module) -> dict[str, int]:
    """``total``: the policy's parameters (for LoRA: base + trained adapter); ``trainable``: those
    the optimizer updates; ``reference_extra``: what the reference holds beyond what it shares with
    the policy (full fine-tuning: a whole model; LoRA: its adapter, 0 for a frozen reference, which
    is the base)."""
    from tralign.lora.adapters import REFERENCE, AdapterView, adapter_tensors

    policy, reference = module.policy, module.reference
    ref_ids = set()
    if isinstance(reference, AdapterView):
        ref_ids = (
            {id(p) for p in adapter_tensors(policy, REFERENCE)} if reference.adapter == REFERENCE else set()
        )
        extra = _count(p for p in policy.parameters() if id(p) in ref_ids)
    else:
        extra = _count(reference.parameters()) if reference is not None else 0
    mine = [p for p in policy.parameters() if id(p) not in ref_ids]
    return {
        "total": _count(mine),
        "trainable": _count(p for p in mine if p.requires_grad),
        "reference_extra": extra,
    }
