"""GPT-NeoX architectures for the bench, built from scratch (random init): no download.

The numbers are the Pythia suite's (Biderman et al. 2023, their config.json files); ``tiny`` is
for tests. The vocabulary comes from the tokenizer (Pythia's: 50,277 tokens).
"""

from __future__ import annotations

from typing import Any

_PYTHIA = {"rotary_pct": 0.25, "max_position_embeddings": 2048, "use_parallel_residual": True}

PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 256},
    "pythia-14m-arch": {
        "hidden_size": 128,
        "num_hidden_layers": 6,
        "num_attention_heads": 4,
        "intermediate_size": 512,
    },
    "pythia-70m-arch": {
        "hidden_size": 512,
        "num_hidden_layers": 6,
        "num_attention_heads": 8,
        "intermediate_size": 2048,
    },
    "pythia-160m-arch": {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
    },
    "pythia-410m-arch": {
        "hidden_size": 1024,
        "num_hidden_layers": 24,
        "num_attention_heads": 16,
        "intermediate_size": 4096,
    },
    "pythia-1b-arch": {
        "hidden_size": 2048,
        "num_hidden_layers": 16,
        "num_attention_heads": 8,
        "intermediate_size": 8192,
    },
    "pythia-2.8b-arch": {
        "hidden_size": 2560,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 10240,
    },
    "pythia-6.9b-arch": {
        "hidden_size": 4096,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "intermediate_size": 16384,
    },
    "pythia-12b-arch": {
        "hidden_size": 5120,
        "num_hidden_layers": 36,
        "num_attention_heads": 40,
        "intermediate_size": 20480,
    },
}


def model_config(name: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """GPTNeoXConfig keyword arguments of a preset, dropout off, untied head (as Pythia)."""
    if name not in PRESETS:
        raise KeyError(f"model={name}: unknown preset; valid: {', '.join(PRESETS)}")
    base = {**_PYTHIA, **PRESETS[name], "hidden_dropout": 0.0, "attention_dropout": 0.0}
    base["tie_word_embeddings"] = False
    if name == "tiny":
        base["max_position_embeddings"] = 1024
    return {**base, **dict(overrides or {})}
