"""``model.lora``: the settings, read and checked before anything is built.

``model.lora.r`` null (or ``model.lora`` null) is full fine-tuning; an integer turns LoRA on. The
block's defaults come from conf/lora/default.yaml (package ``model.lora``), so ``model.lora.r=16``
works on the command line as well as a YAML block in a model or experiment file.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

RefMode = Literal["svd", "factors"]
REF_MODES = ("svd", "factors")
FULL = "full"
# Strategies whose models are whole on every rank: the adapters are replicated like the policy.
SUPPORTED_STRATEGIES = ("auto", "ddp", "ddp_spawn", "single_device", None)


@dataclass(frozen=True)
class LoraSettings:
    r: int
    alpha: float  # ΔW = (alpha / r)·B·A
    dropout: float
    target_modules: str | list[str]
    ref_mode: RefMode  # soft update of the moving reference adapter
    ref_rank: int | Literal["full"]  # rank of the moving reference adapter

    @property
    def scale(self) -> float:
        return self.alpha / self.r


def _block(model_cfg: Mapping[str, Any]) -> Mapping[str, Any] | None:
    block = model_cfg.get("lora") if hasattr(model_cfg, "get") else None
    return block if block is not None and block.get("r") is not None else None


def lora_settings(model_cfg: Mapping[str, Any]) -> LoraSettings | None:
    """The LoRA settings, or None for full fine-tuning. Assumes :func:`lora_problems` passed."""
    block = _block(model_cfg)
    if block is None:
        return None
    r = int(block["r"])
    targets = block.get("target_modules", "all-linear")
    ref_rank = block.get("ref_rank")
    return LoraSettings(
        r=r,
        alpha=float(block.get("alpha") if block.get("alpha") is not None else r),
        dropout=float(block.get("dropout", 0.0)),
        target_modules=targets if isinstance(targets, str) else list(targets),
        ref_mode=block.get("ref_mode", "svd"),
        ref_rank=r if ref_rank is None else ref_rank,
    )


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def lora_problems(cfg: Any) -> list[str]:
    """Every problem with ``model.lora`` and what it is combined with, one line each naming the key."""
    block = cfg.model.get("lora")
    if block is None:
        return []
    if not hasattr(block, "get"):
        return [f"model.lora: must be a block of settings (r, alpha, ...) or null, got {block!r}"]
    r = block.get("r")
    if r is None:
        return []
    problems = []
    if importlib.util.find_spec("peft") is None:
        problems.append("model.lora: needs peft (pip install 'tralign[lora]'), or model.lora.r=null")
    if not _is_int(r) or r < 1:
        problems.append(f"model.lora.r: must be an integer >= 1 (or null: full fine-tuning), got {r!r}")
    alpha = block.get("alpha")
    if alpha is not None and (not _is_number(alpha) or alpha <= 0):
        problems.append(f"model.lora.alpha: must be a number > 0 (or null: r), got {alpha!r}")
    dropout = block.get("dropout", 0.0)
    if not _is_number(dropout) or not 0 <= dropout < 1:
        problems.append(f"model.lora.dropout: must be a number in [0, 1), got {dropout!r}")
    targets = block.get("target_modules", "all-linear")
    if not isinstance(targets, str) and not (
        hasattr(targets, "__len__") and len(targets) and all(isinstance(t, str) for t in targets)
    ):
        problems.append(
            f"model.lora.target_modules: must be all-linear or a list of module names, got {targets!r}"
        )
    mode = block.get("ref_mode", "svd")
    if mode not in REF_MODES:
        problems.append(f"model.lora.ref_mode: must be one of {', '.join(REF_MODES)}, got {mode!r}")
    ref_rank = block.get("ref_rank")
    if ref_rank is not None and ref_rank != FULL and not (_is_int(ref_rank) and ref_rank >= 1):
        problems.append(
            f"model.lora.ref_rank: must be an integer >= 1, full, or null (= r), got {ref_rank!r}"
        )
    if mode == "factors" and ref_rank not in (None, r):
        problems.append(
            f"model.lora.ref_rank={ref_rank}: ref_mode=factors averages the factors, so it needs ref_rank = r (null)"
        )
    hard = cfg.get("ref_update") == "hard" or cfg.get("alpha") == 1.0
    if hard and ref_rank not in (None, r):
        problems.append(
            f"model.lora.ref_rank={ref_rank}: the hard update copies the adapter, so it needs null (= r)"
        )
    if block.get("quantize") is not None:
        problems.append(
            f"model.lora.quantize={block.get('quantize')}: quantised bases (QLoRA) need bitsandbytes' CUDA "
            "kernels and are not supported by tralign yet; use model.lora.quantize=null"
        )
    strategy = cfg.trainer.get("strategy")
    strategy = strategy.get("name") if hasattr(strategy, "get") else strategy
    if strategy not in SUPPORTED_STRATEGIES:
        problems.append(
            f"trainer.strategy={strategy}: model.lora runs on one device or DDP (the adapters are small: "
            "replicate them); fsdp/fsdp2 with LoRA is not supported, use trainer=ddp"
        )
    return problems
