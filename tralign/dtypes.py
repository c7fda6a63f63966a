"""Which dtype each copy of the model lives in, and what the config may ask for.

- ``model.dtype``: the trained (master) weights and AdamW's state. float32 by default, whatever the
  checkpoint stores: at lr 1e-6 most bf16 updates round away and fp16 state goes non-finite.
  bfloat16 is allowed as a memory choice; float16 is refused.
- ``model.reference_dtype``: the frozen copies (moving reference, starting policy). null follows
  ``model.dtype``; bfloat16 halves their memory (the soft update then rounds into bf16 per tensor).
- ``export.dtype``: what ``<run>/policy`` and ``<run>/reference`` are saved in. null: the starting
  checkpoint's own dtype (float32 for a model built from scratch).
- ``trainer.precision``: the compute (autocast) precision, independent of the three above.

Nothing here imports transformers or Lightning: :func:`dtype_problems` runs in config validation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

NAMES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
TRAINABLE = (torch.float32, torch.bfloat16)  # model.dtype and model.reference_dtype
# Lightning precisions that cast the whole module (master weights included) to a half dtype.
CASTING_PRECISIONS = {"bf16-true": torch.bfloat16, "16-true": torch.float16}


def parse_dtype(value: Any) -> torch.dtype:
    """``"float32"``, ``"bf16"`` … (or a ``torch.dtype``) as a ``torch.dtype``; ValueError otherwise."""
    if isinstance(value, torch.dtype):
        return value
    if isinstance(value, str) and value.removeprefix("torch.") in NAMES:
        return NAMES[value.removeprefix("torch.")]
    raise ValueError(f"unknown dtype {value!r}")


def name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``, the spelling config files and config.json use."""
    return str(dtype).removeprefix("torch.")


def master_dtype(model_cfg: Mapping[str, Any]) -> torch.dtype:
    """``model.dtype``: the trained weights and optimizer state (float32 when unset)."""
    return parse_dtype(model_cfg.get("dtype") or "float32")


def reference_dtype(model_cfg: Mapping[str, Any]) -> torch.dtype:
    """``model.reference_dtype``: the frozen copies; null follows :func:`master_dtype`."""
    value = model_cfg.get("reference_dtype")
    return master_dtype(model_cfg) if value is None else parse_dtype(value)


def compute_dtype(trainer_cfg: Mapping[str, Any], master: torch.dtype) -> torch.dtype:
    """The dtype the matmuls run in: autocast's under ``*-mixed``, the gathered parameters' under
    fsdp2's ``mixed_precision``, else the weights' own."""
    precision = str(trainer_cfg.get("precision", "32-true"))
    strategy = trainer_cfg.get("strategy")
    if isinstance(strategy, Mapping) and strategy.get("name") == "fsdp2" and strategy.get("mixed_precision"):
        return parse_dtype(strategy["mixed_precision"])
    if precision.startswith("bf16"):
        return torch.bfloat16
    if precision.startswith("16"):
        return torch.float16
    if precision.startswith("64"):
        return torch.float64
    return master


def dtype_problems(cfg: Mapping[str, Any]) -> list[str]:
    """Problems with ``model.dtype``, ``model.reference_dtype``, ``export.dtype`` and their pairing
    with ``trainer.precision``, as one-line messages naming the key."""
    problems: list[str] = []
    model, export = cfg.get("model") or {}, cfg.get("export") or {}
    parsed: dict[str, torch.dtype] = {}
    for key, value, choices in (
        ("model.dtype", model.get("dtype"), "float32 (default) or bfloat16"),
        ("model.reference_dtype", model.get("reference_dtype"), "float32, bfloat16 or null (= model.dtype)"),
        ("export.dtype", export.get("dtype"), "float32, bfloat16, float16 or null (the checkpoint's)"),
    ):
        if value is None:
            continue
        try:
            dtype = parse_dtype(value)
        except ValueError:
            problems.append(f"{key}: must be {choices}, got {value!r}")
            continue
        if key == "model.dtype" and dtype not in TRAINABLE:
            problems.append(
                f"{key}={value}: float16 master weights are refused (AdamW's steps and state overflow or "
                f"round to zero in fp16, the run goes non-finite); use {choices}"
            )
        elif key == "model.reference_dtype" and dtype not in TRAINABLE:
            problems.append(
                f"{key}={value}: float16 frozen copies are refused (fp16's range overflows where "
                f"bfloat16's, at the same size, does not); use {choices}"
            )
        else:
            parsed[key] = dtype
    if model.get("dtype") is not None and "model.dtype" not in parsed:
        return problems  # the pairing below would only repeat that model.dtype is wrong
    master = parsed.get("model.dtype", torch.float32)
    precision = str((cfg.get("trainer") or {}).get("precision", "32-true"))
    cast = CASTING_PRECISIONS.get(precision)
    if cast is not None and cast != master:
        problems.append(
            f"trainer.precision={precision} casts the trained weights to {name(cast)}, but model.dtype is "
            f"{name(master)}: use {precision.replace('-true', '-mixed')} (compute in {name(cast)}, "
            f"{name(master)} weights)" + (" or model.dtype=bfloat16" if cast == torch.bfloat16 else "")
        )
    return problems
