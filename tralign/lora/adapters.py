"""Three models, one base: the policy is the base plus the trained adapter (``default``); a moving
reference is a second adapter (``reference``) on the same modules; a frozen reference, and the
starting policy, are the base with adapters disabled (the trained adapter starts at ΔW = 0, so the
base *is* the starting policy). No model is copied.

The frozen views hold the policy without registering it as a submodule: the policy's state dict
already holds both adapters, so checkpoints carry the moving reference once, and the optimizer
sees only the trained adapter (the reference adapter never requires grad).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from tralign.errors import TralignError
from tralign.lora.config import FULL, LoraSettings, lora_settings
from tralign.lora.update import ema_factors, hard_factors, svd_factors

POLICY, REFERENCE = "default", "reference"


def is_lora(model: Any) -> bool:
    return getattr(model, "tralign_lora", None) is not None


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The (name, layer) pairs of the model's LoRA linear layers."""
    from peft.tuners.lora import LoraLayer

    return [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]


def with_lora(model: nn.Module, model_cfg: Any, *, moving_reference: bool) -> nn.Module:
    """``model`` itself for full fine-tuning; with ``model.lora.r`` set, a ``PeftModel`` with the
    trained adapter and, for a moving reference, the reference adapter (equal to the trained one's
    start: ΔW_ref = 0)."""
    settings = lora_settings(model_cfg)
    return model if settings is None else apply_lora(model, settings, moving_reference=moving_reference)


def apply_lora(model: nn.Module, settings: LoraSettings, *, moving_reference: bool) -> nn.Module:
    from peft import LoraConfig, get_peft_model

    _check_targets(model, settings.target_modules)
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, config)
    if moving_reference:
        _add_reference_adapter(peft_model, settings)
    _fp32_adapters(peft_model)
    peft_model.tralign_lora = settings
    return peft_model


def _fp32_adapters(peft_model: nn.Module) -> None:
    """Adapters are the trained (master) weights: float32 whatever the base's dtype, so a bf16 or
    fp16 base (``model.dtype=bfloat16``) never rounds away their small updates (peft's
    ``autocast_adapter_dtype`` does the same today; this does not depend on it)."""
    for name, param in peft_model.named_parameters():
        if "lora_" in name and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()


def _check_targets(model: nn.Module, targets: str | list[str]) -> None:
    """Every listed name must name a module: peft silently skips one that matches nothing."""
    if isinstance(targets, str):
        return
    names = [n for n, _ in model.named_modules()]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise TralignError(
            f"model.lora.target_modules: no module named {', '.join(missing)} in {type(model).__name__} "
            f"(its linear layers: {', '.join(linear)})"
        )


def _add_reference_adapter(peft_model: nn.Module, settings: LoraSettings) -> None:
    from peft import LoraConfig

    layers = lora_layers(peft_model.get_base_model())
    ranks = {}
    for name, layer in layers:
        out_f, in_f = layer.get_base_layer().weight.shape
        ranks[name] = min(out_f, in_f) if settings.ref_rank == FULL else int(settings.ref_rank)
    default_rank = settings.r if settings.ref_rank == FULL else int(settings.ref_rank)
    # The same scale s as the policy's adapter (lora_alpha = s·rank), so the hard update is a copy.
    patterns = {re.escape(n): k for n, k in ranks.items() if k != default_rank}
    config = LoraConfig(
        r=default_rank,
        lora_alpha=settings.scale * default_rank,
        lora_dropout=0.0,  # the reference runs without dropout
        target_modules=sorted(peft_model.peft_config[POLICY].target_modules),
        rank_pattern=patterns,
        alpha_pattern={p: settings.scale * k for p, k in patterns.items()},
        bias="none",
        task_type="CAUSAL_LM",
    )
    peft_model.add_adapter(REFERENCE, config)
    with torch.no_grad():
        for _, layer in layers:
            a, b = layer.lora_A[REFERENCE].weight, layer.lora_B[REFERENCE].weight
            pa, pb = layer.lora_A[POLICY].weight, layer.lora_B[POLICY].weight
            if a.shape == pa.shape:
                hard_factors(pb, pa, b, a)  # the start: the policy's A, B = 0 (ΔW_ref = 0)
            else:
                a.zero_()
                b.zero_()
            a.requires_grad_(False)
            b.requires_grad_(False)


class AdapterView(nn.Module):
    """The policy's base with adapter ``adapter`` active, or with adapters disabled (None); always
    in eval mode (no dropout), whatever mode the policy is in. Forwards, ``generate`` and the head
    lookup go to the policy under that setting; the policy is not a submodule of the view."""

    def __init__(self, peft_model: nn.Module, adapter: str | None):
        super().__init__()
        self._model = [peft_model]  # a list: not registered, no second copy in state_dict
        self.adapter = adapter
        self._layers = [layer for _, layer in lora_layers(peft_model)]

    @property
    def model(self) -> nn.Module:
        return self._model[0]

    @property
    def config(self) -> Any:
        return self.model.config

    def get_output_embeddings(self) -> nn.Module:
        return self.model.get_output_embeddings()

    def parameters(self, recurse: bool = True) -> Iterator[nn.Parameter]:
        # The device and dtype of the weights this view runs on (tralign.generation reads them).
        return self.model.parameters(recurse)

    @contextmanager
    def active(self) -> Iterator[None]:
        saved = [(layer._active_adapter, layer._disable_adapters) for layer in self._layers]
        modes = [(m, m.training) for m in self.model.modules()]
        self.model.eval()
        try:
            for layer in self._layers:
                if self.adapter is None:
                    layer._disable_adapters = True
                else:
                    layer._active_adapter = [self.adapter]
                    layer._disable_adapters = False
            yield
        finally:
            for layer, (active, disabled) in zip(self._layers, saved, strict=True):
                layer._active_adapter, layer._disable_adapters = active, disabled
            for m, mode in modes:
                m.training = mode

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.active():
            return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.active():
            return self.model.generate(*args, **kwargs)


class ReferenceAdapter(AdapterView):
    """The moving reference: adapter ``reference``. :func:`tralign.reference.update_reference_`
    calls :meth:`move_toward_policy_` (the rule on the factors, tralign/lora/update.py)."""

    def __init__(self, peft_model: nn.Module):
        super().__init__(peft_model, REFERENCE)
        self.mode = peft_model.tralign_lora.ref_mode
        self.dropped_sq = 0.0  # Σ of squared singular values the SVD mode has dropped (its Frobenius error²)

    @torch.no_grad()
    def move_toward_policy_(self, alpha: float) -> None:
        for layer in self._layers:
            B, A = layer.lora_B[POLICY].weight, layer.lora_A[POLICY].weight
            B_ref, A_ref = layer.lora_B[REFERENCE].weight, layer.lora_A[REFERENCE].weight
            if alpha == 1.0 and B.shape == B_ref.shape:
                hard_factors(B, A, B_ref, A_ref)
            elif alpha == 0.0:
                continue
            elif self.mode == "factors":
                new_B, new_A = ema_factors(B, A, B_ref, A_ref, alpha)
                B_ref.copy_(new_B)
                A_ref.copy_(new_A)
            else:
                s, s_ref = layer.scaling[POLICY], layer.scaling[REFERENCE]
                new_B, new_A, dropped = svd_factors(B, A, s, B_ref, A_ref, s_ref, alpha)
                B_ref.copy_(new_B)
                A_ref.copy_(new_A)
                self.dropped_sq += float(dropped.square().sum())


def frozen_views(
    peft_model: nn.Module, *, needs_reference: bool, moving: bool, keep_initial: bool
) -> tuple[nn.Module | None, nn.Module | None]:
    """(reference, initial) for a LoRA policy, as AlignmentModule holds them for full fine-tuning:
    a frozen reference is the base (adapters disabled), and is then also the starting policy."""
    if not needs_reference:
        return None, None
    if not moving:
        return AdapterView(peft_model, None), None
    return ReferenceAdapter(peft_model), (AdapterView(peft_model, None) if keep_initial else None)


def adapter_tensors(peft_model: nn.Module, adapter: str) -> list[Tensor]:
    """The adapter's parameters (the A and B of every LoRA layer)."""
    return [p for n, p in peft_model.named_parameters() if f".{adapter}." in n and "lora_" in n]
