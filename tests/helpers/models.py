"""The one tiny-model builder of the tests: a seeded random GPT-NeoX (Pythia's architecture) small
enough to build in milliseconds, with any ``GPTNeoXConfig`` field overridden."""

from __future__ import annotations

from typing import Any

# A 2-layer, 16-wide GPT-NeoX over 32 tokens: every code path of the real architecture (rotary
# attention, parallel residual, untied head), nothing else.
TINY_NEOX = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}


def tiny_neox(seed: int = 0, *, tokenizer: Any = None, head: str = "causal_lm", **overrides: Any):
    """A tiny GPT-NeoX from a fixed seed (weights depend only on ``seed`` and the config).

    ``tokenizer``: size the vocabulary to it and take its pad/eos ids. ``head``: ``causal_lm`` or
    ``sequence_classification`` (a reward model; pass ``num_labels=1``). ``overrides``: any
    ``GPTNeoXConfig`` field, e.g. ``intermediate_size=48`` for an architecture mismatch.
    """
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, GPTNeoXForSequenceClassification

    fields = dict(TINY_NEOX)
    if tokenizer is not None:
        fields.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    fields.update(overrides)
    cls = {"causal_lm": GPTNeoXForCausalLM, "sequence_classification": GPTNeoXForSequenceClassification}[head]
    torch.manual_seed(seed)
    return cls(GPTNeoXConfig(**fields))
