"""Build the tokenizer and the policy: a hub id, a local folder, an earlier run's export, or a
small config built from scratch (the embedded default and the tests)."""

from __future__ import annotations

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
from tralign.errors import TralignError

# Pythia pads its embedding matrix to a multiple of 128 rows (50,277 tokens -> 50,304 rows).
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


def build_policy(model_cfg: Mapping[str, Any], tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    """The starting policy. ``init_from`` (an earlier run's export) wins over ``name_or_path``."""
    trust = bool(model_cfg.get("trust_remote_code", False))
    source, key = model_cfg.get("init_from"), "model.init_from"
    if not source:
        source, key = model_cfg.get("name_or_path"), "model.name_or_path"
    if source:
        if key == "model.init_from" and not Path(str(source)).is_dir():
            raise TralignError(f"model.init_from={source}: no such folder (expected <run dir>/policy)")
        try:
            config = AutoConfig.from_pretrained(
                str(source), trust_remote_code=trust, **dict(model_cfg.get("config") or {})
            )
            model = AutoModelForCausalLM.from_pretrained(str(source), config=config, trust_remote_code=trust)
        except (OSError, ValueError) as err:
            raise _load_failed(key, str(source), err) from None
    else:
        model = _from_scratch(model_cfg, tokenizer)
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
