"""An audit of a training run from inside the loop (a Lightning callback), for ``tralign.gpu_check``.

What it checks, each as a named fact with ``ok``:
- ``copies``: policy, reference and starting policy are DTensors (under fsdp2) on the expected device,
  every parameter fp32 (the master weights; the compute dtype comes from the shard plan);
- ``rotary``: every rotary ``inv_freq`` buffer is fp32 (a bf16 one shifts the positional phases);
- ``head_input``: the LM heads see hidden states in the expected compute dtype (bf16 on GPUs);
- ``update``: the first few reference updates follow ``ref ← ref + α·(policy − ref)`` on every
  local shard to fp32 rounding (see :func:`update_error`), and no collective runs while they do;
- ``clipping``: after Lightning's gradient clipping the policy's gradient norm is at most the limit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor

from tralign.gpu_check.ops import OpRecorder

COLLECTIVES = (
    "all_reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter",
    "reduce_scatter_tensor",
    "broadcast",
    "barrier",
    "send",
    "recv",
    "all_to_all",
    "all_to_all_single",
    "gather",
    "scatter",
    "reduce",
)


FP32_EPS = 2.0**-23


def update_error(
    ref_before: list[Tensor], policy: list[Tensor], ref_after: list[Tensor], alpha: float
) -> tuple[float, float]:
    """How far ``ref_after`` is from ``ref_before + α·(policy − ref_before)``, and how large that
    change was, both in fp32 units of rounding of each element (``eps·(|ref| + |policy|)``), the
    largest over all elements. An exact update is a few units off; a reference that did not move
    (or moved by another α) is off by about the change, so a check needs a change of many units."""
    error = change = 0.0
    for before, pol, after in zip(ref_before, policy, ref_after, strict=True):
        if not before.numel():
            continue
        b, p = before.double(), pol.double()
        unit = FP32_EPS * (b.abs() + p.abs()) + 1e-30
        step = alpha * (p - b)
        error = max(error, ((after.double() - (b + step)).abs() / unit).max().item())
        change = max(change, (step.abs() / unit).max().item())
    return error, change


def _local(t: Tensor) -> Tensor:
    t = t.detach()
    return t.to_local() if hasattr(t, "to_local") else t


class AuditCallback(L.Callback):
    """Records ``self.facts`` (name → {"ok": bool, ...}) during ``fit``; ``problems()`` lists the
    failed ones. ``head_dtype`` is the expected LM-head input dtype, ``device`` the device type."""

    def __init__(self, device: str, head_dtype: torch.dtype, sharded: bool = True, updates: int = 3):
        self.device, self.head_dtype, self.sharded, self.updates = device, head_dtype, sharded, updates
        self.facts: dict[str, dict[str, Any]] = {}
        self._head_dtypes: set[str] = set()
        self._update_errors: list[tuple[float, float]] = []
        self._collectives: list[str] = []
        self._norms: list[tuple[float, float, float]] = []  # (before, after, limit)

    # --- static facts, once the strategy has placed and sharded the copies ------------------------
    def on_train_start(self, trainer: L.Trainer, module: Any) -> None:
        copies = {n: getattr(module, n, None) for n in ("policy", "reference", "initial")}
        found: dict[str, Any] = {}
        for name, model in copies.items():
            if model is None:
                found[name] = "missing"
                continue
            params = list(model.parameters())
            found[name] = {
                "dtensor": all(hasattr(p, "to_local") for p in params),
                "devices": sorted({p.device.type for p in params}),
                "dtypes": sorted({str(p.dtype) for p in params}),
            }
        self.facts["copies"] = {
            "ok": all(
                isinstance(f, dict)
                and f["devices"] == [self.device]
                and f["dtypes"] == ["torch.float32"]
                and (f["dtensor"] or not self.sharded)
                for f in found.values()
            ),
            **found,
        }
        rotary = {
            f"{name}.{b}": str(buf.dtype)
            for name, model in copies.items()
            if model is not None
            for b, buf in model.named_buffers()
            if "inv_freq" in b
        }
        self.facts["rotary"] = {"ok": bool(rotary) and set(rotary.values()) == {"torch.float32"}, **rotary}
        for model in copies.values():
            head = model.get_output_embeddings() if model is not None else None
            if head is not None:
                head.register_forward_pre_hook(lambda _m, args: self._head_dtypes.add(str(args[0].dtype)))
        module.step_reference = self._audited(trainer, module, module.step_reference)
        module.configure_gradient_clipping = self._clip_audited(module.configure_gradient_clipping)

    # --- the reference update: the rule, shard by shard, and no collective ---------------------
    def _audited(self, trainer: L.Trainer, module: Any, step_reference: Callable[[], None]):
        def audited() -> None:
            before_updates = module.ref_updates
            check = len(self._update_errors) < self.updates and module.reference is not None
            ref = [_local(p).clone() for p in module.reference.parameters()] if check else []
            pol = [_local(p).clone() for p in module.policy.parameters()] if check else []
            calls: list[str] = []
            dist = torch.distributed
            originals = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}
            for name, fn in originals.items():
                setattr(dist, name, lambda *a, _n=name, _f=fn, **k: (calls.append(_n), _f(*a, **k))[1])
            recorder = OpRecorder()
            try:
                with recorder:
                    step_reference()
            finally:
                for name, fn in originals.items():
                    setattr(dist, name, fn)
            if check and module.ref_updates > before_updates:
                after = [_local(p) for p in module.reference.parameters()]
                self._update_errors.append(update_error(ref, pol, after, float(module.schedule.alpha)))
                del ref, pol
                self._collectives += calls + [n for n in recorder.names if "c10d" in n]

        return audited

    def _clip_audited(self, clip: Callable[..., None]):
        def audited(optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
            before = self._grad_norm()
            clip(optimizer, gradient_clip_val, gradient_clip_algorithm)
            if gradient_clip_val and gradient_clip_algorithm in (None, "norm"):
                self._norms.append((before, self._grad_norm(), float(gradient_clip_val)))

        return audited

    def _grad_norm(self) -> float:
        squares = torch.zeros((), dtype=torch.float64)
        for p in self._policy_params:
            if p.grad is not None:
                g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
                squares += g.detach().double().pow(2).sum().cpu()
        return float(squares.sqrt())

    def setup(self, trainer: L.Trainer, module: Any, stage: str) -> None:
        self._module = module

    @property
    def _policy_params(self) -> list[Tensor]:
        return list(self._module.policy.parameters())

    # --- the verdict ------------------------------------------------------------------------------
    def on_fit_end(self, trainer: L.Trainer, module: Any) -> None:
        self.facts["head_input"] = {
            "ok": self._head_dtypes == {str(self.head_dtype)},
            "seen": sorted(self._head_dtypes),
            "expected": str(self.head_dtype),
        }
        errors = [e for e, _ in self._update_errors]
        changes = [c for _, c in self._update_errors]
        self.facts["update"] = {
            # exact to fp32 rounding, a change large enough that a frozen reference would show, no collective
            "ok": bool(errors) and max(errors) <= 4 and min(changes) >= 100 and not self._collectives,
            "checked": len(errors),
            "max_error_units": max(errors, default=None),
            "min_change_units": min(changes, default=None),
            "collectives": sorted(set(self._collectives)),
        }
        self.facts["clipping"] = {
            "ok": bool(self._norms)
            and all(after <= limit * (1 + 1e-3) + 1e-6 for _, after, limit in self._norms),
            "steps": len(self._norms),
            "clipped_steps": sum(before > limit for before, _, limit in self._norms),
            "max_norm_after": max((after for _, after, _ in self._norms), default=None),
            "max_norm_before": max((before for before, _, _ in self._norms), default=None),
        }

    def problems(self) -> list[str]:
        return [name for name, fact in self.facts.items() if not fact["ok"]]
