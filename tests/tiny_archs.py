"""Tiny random-init causal LMs of the architectures a user is likely to load, built offline.

Each is 2 layers, 32 wide, vocabulary 96, with a large initialiser range so the logits are O(1-10)
and an architecture's own logit processing (Granite's ``logits_scaling``, Cohere's ``logit_scale``,
Gemma's final soft-capping) changes the log-probs visibly.
"""

from __future__ import annotations

import torch

COMMON = dict(
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
GQA = dict(num_key_value_heads=2)

# name -> (config class, model class, extra config kwargs); the values of the processing knobs are
# the released checkpoints' (Granite-3 8B: 16, Cohere: 0.0625), except Gemma's cap, set low enough
# that these small logits reach the soft cap's curved part.
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


def tiny_arch(name: str, seed: int = 0) -> torch.nn.Module:
    import transformers

    config_cls, model_cls, extra = ARCHS[name]
    config = getattr(transformers, config_cls)(**COMMON, **extra)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    with torch.no_grad():  # some inits keep the head small whatever the range: make logits O(1-10)
        model.get_output_embeddings().weight.normal_(0, 0.5)
    return model.eval()


def arch_batch(vocab: int = 96, seed: int = 0):
    """4 right-padded rows of 12 tokens with prompt/completion masks."""
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


if __name__ == "__main__":  # PYTHONPATH=<a tralign checkout> python tests/tiny_archs.py
    _compare()
