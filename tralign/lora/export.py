"""What a LoRA run writes: merged models any ``AutoModelForCausalLM`` loads, and the adapters in
PEFT format (``PeftModel.from_pretrained(base, <run>/policy_adapter)``)."""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from tralign.lora.adapters import POLICY, REFERENCE


def merged(peft_model: nn.Module, adapter: str | None) -> nn.Module:
    """A plain Hugging Face model: the base with ``adapter`` merged in (None: the base alone).
    Costs one copy of the model while it exists (the live policy is left as it is)."""
    clone = copy.deepcopy(peft_model)
    if adapter is None:
        return clone.unload()
    return clone.merge_and_unload(adapter_names=[adapter])


def save_adapter(peft_model: nn.Module, adapter: str, path: Path) -> None:
    """The adapter alone, in PEFT format, at the top of ``path`` (PEFT itself puts every adapter but
    ``default`` into a subfolder named after it)."""
    peft_model.save_pretrained(str(path), selected_adapters=[adapter])
    nested = path / adapter
    if adapter != POLICY and nested.is_dir():
        for item in nested.iterdir():
            shutil.move(str(item), str(path / item.name))
        nested.rmdir()


def export_lora(
    peft_model: nn.Module,
    tokenizer: Any,
    run_dir: Path,
    *,
    policy: bool,
    reference: bool,
    save_model: Callable[[nn.Module, Any, Path], None],
) -> dict[str, str]:
    """Write ``policy/`` (merged) and ``policy_adapter/``; with ``reference``, ``reference/`` (merged)
    and, for a moving reference, ``reference_adapter/`` (a frozen reference is the base itself).
    ``save_model(model, tokenizer, path)`` saves a plain model (train.py's export, export.dtype)."""
    written = {}
    moving = REFERENCE in peft_model.peft_config
    if policy:
        save_model(merged(peft_model, POLICY), tokenizer, run_dir / "policy")
        save_adapter(peft_model, POLICY, run_dir / "policy_adapter")
        written |= {
            "policy_dir": str(run_dir / "policy"),
            "policy_adapter_dir": str(run_dir / "policy_adapter"),
        }
    if reference:
        save_model(merged(peft_model, REFERENCE if moving else None), tokenizer, run_dir / "reference")
        written["reference_dir"] = str(run_dir / "reference")
        if moving:
            save_adapter(peft_model, REFERENCE, run_dir / "reference_adapter")
            written["reference_adapter_dir"] = str(run_dir / "reference_adapter")
    return written
