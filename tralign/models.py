"""Build the tokenizer and the policy: a hub id, a local folder, an earlier run's export, or a
small config built from scratch (the embedded default and the tests)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tralign.data.sources import synthetic_task
from tralign.dtypes import master_dtype, name, reference_dtype
from tralign.errors import TralignError

__all__ = [
    "build_policy",
    "build_tokenizer",
    "checkpoint_dtype",
    "master_dtype",
    "reference_dtype",
    "save_as",
]

# A model built from scratch gets an embedding matrix of len(tokenizer) rows rounded up to a multiple of 8.
VOCAB_MULTIPLE = 8


def _load_failed(key: str, value: str, err: Exception) -> TralignError:
    hint = " (no network? set HF_HUB_OFFLINE=1 and point it at a local folder)" if "/" in value else ""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return TralignError(f"{key}={value}: could not load{hint}: {first}")


def build_tokenizer(model_cfg: Mapping[str, Any], data_cfg: Mapping[str, Any]) -> PreTrainedTokenizerBase:
    source = model_cfg.get("tokenizer")
    if source == "synthetic":
        tokenizer = synthetic_task(data_cfg).build_tokenizer()
    else:
        key = "model.tokenizer"
        if not source:
            source = model_cfg.get("init_from") or model_cfg.get("name_or_path")
            key = "model.init_from" if model_cfg.get("init_from") else "model.name_or_path"
        try:
            tokenizer = AutoTokenizer.from_pretrained(
                str(source), trust_remote_code=bool(model_cfg.get("trust_remote_code", False))
            )
        except (OSError, ValueError) as err:
            raise _load_failed(key, str(source), err) from None
    if tokenizer.pad_token_id is None:
        # Pythia and Llama ship without a pad token; padding is masked out everywhere, so EOS serves.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _source(model_cfg: Mapping[str, Any]) -> tuple[Any, str]:
    """The checkpoint the policy starts from and its config key; ``init_from`` wins."""
    if model_cfg.get("init_from"):
        return model_cfg.get("init_from"), "model.init_from"
    return model_cfg.get("name_or_path"), "model.name_or_path"


def build_policy(model_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The starting policy, its weights in ``model.dtype`` (float32 unless set) whatever the
    checkpoint stores. ``init_from`` (an earlier run's export) wins over ``name_or_path``."""
    trust = bool(model_cfg.get("trust_remote_code", False))
    dtype = master_dtype(model_cfg)
    source, key = _source(model_cfg)
    if source:
        if key == "model.init_from" and not Path(str(source)).is_dir():
            raise TralignError(f"model.init_from={source}: no such folder (expected <run dir>/policy)")
        try:
            config = AutoConfig.from_pretrained(
                str(source), trust_remote_code=trust, **dict(model_cfg.get("config") or {})
            )
            # An explicit dtype: without one transformers 5 keeps the stored dtype (hub Pythia: fp16,
            # Llama-3: bf16), and fp16/bf16 master weights break or silently stall training at lr 1e-6.
            model = AutoModelForCausalLM.from_pretrained(
                str(source), config=config, trust_remote_code=trust, dtype=dtype
            )
        except (OSError, ValueError) as err:
            raise _load_failed(key, str(source), err) from None
    else:
        model = _from_scratch(model_cfg, tokenizer).to(dtype)
    if model_cfg.get("gradient_checkpointing"):
        # Non-reentrant: the form FSDP (1 and 2) and frozen inputs work with.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.config.use_cache = False  # training never reuses the KV cache
    return model


def _from_scratch(model_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    if model_cfg.get("architecture", "gpt_neox") != "gpt_neox":
        raise TralignError(
            "model.architecture: only gpt_neox can be built from a config (set model.name_or_path)"
        )
    vocab = -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
    config = GPTNeoXConfig(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **dict(model_cfg.get("config") or {}),
    )
    # The initial weights depend on model.init_seed only, so runs that differ in `seed` (data
    # order) or method still start from the same policy and compare fairly.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(model_cfg.get("init_seed", 0)))
        return GPTNeoXForCausalLM(config)


def checkpoint_dtype(model_cfg: Mapping[str, Any]) -> torch.dtype:
    """The dtype the starting checkpoint stores its weights in (``export.dtype``'s default):
    its config's ``dtype``, else the first floating tensor of a local safetensors file; float32 for
    a model built from scratch or when neither says."""
    source, key = _source(model_cfg)
    if not source:
        return torch.float32
    try:
        config = AutoConfig.from_pretrained(
            str(source), trust_remote_code=bool(model_cfg.get("trust_remote_code", False))
        )
    except (OSError, ValueError) as err:
        raise _load_failed(key, str(source), err) from None
    stored = getattr(config, "dtype", None)
    if isinstance(stored, str) and stored != "auto":
        stored = getattr(torch, stored, None)
    if isinstance(stored, torch.dtype):
        return stored
    return _safetensors_dtype(Path(str(source))) or torch.float32


SAFETENSORS_DTYPES = {
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "F64": torch.float64,
}


def _safetensors_dtype(folder: Path) -> torch.dtype | None:
    from safetensors import safe_open

    files = [folder / "model.safetensors"]
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = [folder / sorted(set(json.loads(index.read_text())["weight_map"].values()))[0]]
    if not files[0].is_file():
        return None
    with safe_open(str(files[0]), framework="pt") as f:
        for key in f.keys():  # noqa: SIM118 (safe_open is not iterable)
            stored = SAFETENSORS_DTYPES.get(f.get_slice(key).get_dtype())
            if stored is not None:
                return stored
    return None


def save_as(model: PreTrainedModel, path: Path, dtype: torch.dtype) -> None:
    """``model.save_pretrained(path)`` with its floating tensors in ``dtype`` (config.json's ``dtype``
    says so), leaving the live model as it is. A different dtype costs one CPU copy of the weights
    in ``dtype`` (never a second copy on the accelerator)."""
    if model.dtype == dtype:
        model.save_pretrained(path, safe_serialization=True)
        return
    cast: dict[tuple, torch.Tensor] = {}  # by storage, so tied weights stay one tensor

    def convert(t: torch.Tensor) -> torch.Tensor:
        where = (t.data_ptr(), t.device, tuple(t.shape), t.stride())
        if where not in cast:
            cast[where] = t.detach().to("cpu", dtype) if t.is_floating_point() else t.detach().cpu()
        return cast[where]

    state = {k: convert(v) for k, v in model.state_dict().items()}
    model.save_pretrained(path, safe_serialization=True, state_dict=state)
    # save_pretrained wrote the live model's dtype into config.json: record the saved one.
    live = model.config.dtype
    model.config.dtype = name(dtype)
    model.config.save_pretrained(path)
    model.config.dtype = live


def compile_backbone(model: torch.nn.Module) -> None:
    """``model.compile=true``: ``torch.compile`` the model's backbone (``base_model``) in place
    (``nn.Module.compile``: parameter names, state dicts and the reference update are unchanged).
    The LM head stays eager: ``tralign.heads`` swaps it per call for the chunked completion-only head."""
    backbone = getattr(model, "base_model", model)
    backbone.compile()
