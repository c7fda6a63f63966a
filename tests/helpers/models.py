"""The one tiny-model builder of the tests: seeded random models of real architectures, small enough
to build in milliseconds, any config field overridden. Built offline (no hub download).

- :func:`tiny_model` / :func:`tiny_config`: any architecture of :data:`ARCHS` from the :data:`TINY`
  defaults (plus the architecture's own extras), with any config field overridden.
- :func:`tiny_neox`: the GPT-NeoX (Pythia's architecture) most tests use.
- :func:`tiny_arch` / :func:`arch_batch`: the log-prob tests' variant, wider and with a large
  initialiser range so that an architecture's own logit processing (Granite's ``logits_scaling``,
  Cohere's ``logit_scale``, Gemma's final soft-capping) changes the log-probs visibly.
"""

from __future__ import annotations

from typing import Any

# A 2-layer, 16-wide model over 32 tokens: every code path of the real architecture (for GPT-NeoX:
# rotary attention, parallel residual, untied head), nothing else.
TINY = {
    "vocab_size": 32,
    "hidden_size": 16,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
TINY_NEOX = TINY  # the name older tests use

GQA = {"num_key_value_heads": 2}

# name -> (config class, model class, extra config kwargs); the values of the processing knobs are
# the released checkpoints' (Granite-3 8B: 16, Cohere: 0.0625), except Gemma's cap, set low enough
# that tiny_arch's small logits reach the soft cap's curved part.
ARCHS: dict[str, tuple[str, str, dict]] = {
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", GQA),
    "mistral": ("MistralConfig", "MistralForCausalLM", GQA),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", GQA),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**GQA, "head_dim": 8, "final_logit_softcapping": 2.0, "attn_logit_softcapping": 5.0},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        "Gemma3ForCausalLM",
        {**GQA, "head_dim": 8, "final_logit_softcapping": 2.0, "sliding_window": 4},
    ),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {**GQA, "logits_scaling": 16.0}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {**GQA, "logit_scale": 0.0625}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", GQA),
    "olmo": ("OlmoConfig", "OlmoForCausalLM", GQA),
}
HEADS = {"causal_lm": "ForCausalLM", "sequence_classification": "ForSequenceClassification"}


def tiny_config(arch: str = "gpt_neox", *, tokenizer: Any = None, **overrides: Any):
    """The config of a tiny ``arch``: :data:`TINY`, the architecture's extras, then ``overrides``.

    ``tokenizer``: size the vocabulary to it and take its pad/eos ids (overrides still win)."""
    import transformers

    config_cls, _, extra = ARCHS[arch]
    fields = {**TINY, **extra}
    if tokenizer is not None:
        fields.update(
            vocab_size=len(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    fields.update(overrides)
    return getattr(transformers, config_cls)(**fields)


def tiny_model(
    arch: str = "gpt_neox", seed: int = 0, *, tokenizer: Any = None, head: str = "causal_lm", **overrides: Any
):
    """A tiny ``arch`` model from a fixed seed (weights depend only on ``seed`` and the config).

    ``head``: ``causal_lm`` or ``sequence_classification`` (a reward model; pass ``num_labels=1``).
    ``overrides``: any config field, e.g. ``intermediate_size=48`` for an architecture mismatch."""
    import torch
    import transformers

    config = tiny_config(arch, tokenizer=tokenizer, **overrides)
    model_cls = getattr(transformers, ARCHS[arch][1].replace("ForCausalLM", HEADS[head]))
    torch.manual_seed(seed)
    return model_cls(config)


def tiny_neox(seed: int = 0, *, tokenizer: Any = None, head: str = "causal_lm", **overrides: Any):
    """A tiny GPT-NeoX (see :func:`tiny_model`)."""
    return tiny_model("gpt_neox", seed, tokenizer=tokenizer, head=head, **overrides)


# tiny_arch: 2 layers, 32 wide, vocabulary 96, initialiser range 0.2 (logits O(1-10)).
ARCH_COMMON = dict(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=64,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
COMMON = ARCH_COMMON  # the name older tests use


def tiny_arch(name: str, seed: int = 0):
    """A tiny ``name`` model for the log-prob tests (:data:`ARCH_COMMON`), in eval mode."""
    import torch

    model = tiny_model(name, seed, **ARCH_COMMON)
    with torch.no_grad():  # some inits keep the head small whatever the range: make logits O(1-10)
        model.get_output_embeddings().weight.normal_(0, 0.5)
    return model.eval()


def arch_batch(vocab: int = 96, seed: int = 0):
    """4 right-padded rows of 12 tokens with prompt/completion masks."""
    import torch

    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (4, 12), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 8:] = 0
    attention_mask[3, 6:] = 0
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for b, (start, end) in enumerate([(4, 12), (3, 8), (6, 12), (2, 6)]):
        loss_mask[b, start:end] = True
    return input_ids, attention_mask, loss_mask


def _compare() -> None:
    """Print max |model_sequence_logps - sequence_logps(model(...).logits)| per sequence, per arch."""
    import torch

    from tralign.logprobs import model_sequence_logps, sequence_logps

    print("arch      fp32-policy  fp32-reference  bf16-autocast-policy")
    for name in ARCHS:
        model = tiny_arch(name)
        ids, am, lm = arch_batch()
        full = sequence_logps(model(input_ids=ids, attention_mask=am).logits, ids, lm)[0].detach()
        policy = model_sequence_logps(model, ids, am, lm)[0].detach()
        with torch.no_grad():
            reference = model_sequence_logps(model, ids, am, lm)[0]
            with torch.autocast("cpu", dtype=torch.bfloat16):
                full_bf16 = sequence_logps(model(input_ids=ids, attention_mask=am).logits, ids, lm)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            policy_bf16 = model_sequence_logps(model, ids, am, lm)[0].detach()
        diffs = [
            float((a - b).abs().max())
            for a, b in ((full, policy), (full, reference), (full_bf16, policy_bf16))
        ]
        print(f"{name:9s} {diffs[0]:11.2e} {diffs[1]:14.2e} {diffs[2]:14.2e}")


if __name__ == "__main__":  # PYTHONPATH=<a tralign checkout> python tests/helpers/models.py
    _compare()
