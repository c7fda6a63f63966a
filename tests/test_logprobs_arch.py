"""``model_sequence_logps`` (completion-positions-only head) equals the model's own full forward for
every architecture a user is likely to load, including their logit processing (Granite's
``logits_scaling``, Cohere's ``logit_scale``, Gemma-2/3 soft-capping); a model whose forward the
shortcut cannot reproduce gets the full forward instead of a wrong number."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers.models import ARCHS, arch_batch, tiny_arch

from tralign import heads
from tralign.logprobs import LogitMap, head_logps, model_sequence_logps, sequence_logps

WEIGHTS = torch.tensor([1.0, -2.0, 0.5, 3.0])  # a loss that weighs the rows differently


@pytest.fixture(autouse=True)
def _fresh_probe_cache():
    heads.clear_cache()
    yield
    heads.clear_cache()


def _full(model, ids, am, lm):
    return sequence_logps(model(input_ids=ids, attention_mask=am).logits, ids, lm)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_policy_path_values_and_gradients_equal_the_full_forward_fp32(arch: str) -> None:
    model = tiny_arch(arch).train()
    ids, am, lm = arch_batch()
    logps, counts = model_sequence_logps(model, ids, am, lm, chunk_size=5)
    (logps * WEIGHTS).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ref, ref_counts = _full(model, ids, am, lm)
    (ref * WEIGHTS).sum().backward()
    torch.testing.assert_close(logps, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(counts, ref_counts)
    assert fast.keys() == {n for n, p in model.named_parameters() if p.grad is not None}
    for name, p in model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-5, msg=name)
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


@pytest.mark.parametrize("arch", list(ARCHS))
def test_reference_path_and_bf16_autocast_equal_the_full_forward(arch: str) -> None:
    model = tiny_arch(arch)
    reference = copy.deepcopy(model).requires_grad_(False)
    ids, am, lm = arch_batch()
    with torch.no_grad():  # the reference path
        torch.testing.assert_close(
            model_sequence_logps(reference, ids, am, lm)[0],
            _full(reference, ids, am, lm)[0],
            rtol=1e-5,
            atol=1e-4,
        )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logps = model_sequence_logps(model, ids, am, lm)[0]  # the policy path: with gradients
        ref = _full(model, ids, am, lm)[0]
        with torch.no_grad():
            frozen = model_sequence_logps(reference, ids, am, lm)[0]
    # The full forward rounds its logits to bf16 (|logit| up to ~10: 2^-8 relative per token).
    torch.testing.assert_close(logps, ref, rtol=0, atol=0.2)
    torch.testing.assert_close(frozen, ref, rtol=0, atol=0.2)
    (g_fast,) = torch.autograd.grad((logps * WEIGHTS).sum(), model.get_output_embeddings().weight)
    (g_full,) = torch.autograd.grad((ref * WEIGHTS).sum(), model.get_output_embeddings().weight)
    cos = torch.nn.functional.cosine_similarity(g_fast.flatten().float(), g_full.flatten().float(), dim=0)
    assert cos > 0.99
    assert len(heads._PLANS) == 1  # one probe per model class and config, shared by policy and reference


def _vocab_bias_llama():
    """A Llama that adds a per-token bias after its head: not an elementwise map of the head's output."""
    from transformers import LlamaForCausalLM

    class VocabBiasLlama(LlamaForCausalLM):
        def forward(self, *args, **kwargs):
            out = super().forward(*args, **kwargs)
            out.logits = out.logits + self.vocab_bias
            return out

    model = VocabBiasLlama(tiny_arch("llama").config)
    model.vocab_bias = torch.nn.Parameter(torch.linspace(-3, 3, model.config.vocab_size))
    return model


def _bypassing_llama():
    """A Llama whose forward multiplies by the head's weight itself, never calling the head module."""
    from transformers import LlamaForCausalLM
    from transformers.modeling_outputs import CausalLMOutputWithPast

    class BypassLlama(LlamaForCausalLM):
        def forward(self, input_ids=None, attention_mask=None, **kwargs):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            return CausalLMOutputWithPast(logits=torch.nn.functional.linear(hidden, self.lm_head.weight) * 3)

    return BypassLlama(tiny_arch("llama").config)


@pytest.mark.parametrize("build", [_vocab_bias_llama, _bypassing_llama], ids=["vocab_bias", "bypass"])
def test_what_the_shortcut_cannot_reproduce_gets_the_full_forward(build, caplog) -> None:
    torch.manual_seed(0)
    model = build()
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.5)
    ids, am, lm = arch_batch()
    with caplog.at_level("WARNING", logger="tralign.heads"):
        logps = model_sequence_logps(model, ids, am, lm)[0]
    torch.testing.assert_close(logps, _full(model, ids, am, lm)[0], rtol=1e-5, atol=1e-4)
    (plan,) = heads._PLANS.values()
    assert plan.logit_map is None
    assert "full forward" in caplog.text


def test_measured_maps_are_the_architectures_own() -> None:
    ids, am, lm = arch_batch()
    expected = {
        "llama": LogitMap(),
        "granite": LogitMap(scale=1 / 16),
        "cohere": LogitMap(scale=0.0625),
        "gemma2": LogitMap(softcap=2.0),
    }
    for arch, logit_map in expected.items():
        model = tiny_arch(arch)
        with torch.no_grad():
            model_sequence_logps(model, ids, am, lm)
        assert heads.plan_for(model, model.get_output_embeddings(), ids.device).logit_map == logit_map, arch


@pytest.mark.parametrize("logit_map", [LogitMap(scale=0.3), LogitMap(scale=1.7, softcap=2.0)])
def test_head_logps_with_a_logit_map_matches_autograd_in_double(logit_map: LogitMap) -> None:
    g = torch.Generator().manual_seed(2)
    hidden = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.nn.Linear(5, 11, bias=True).double()
    with torch.no_grad():
        head.weight.mul_(4)
    targets = torch.randint(0, 11, (7,), generator=g)
    expected = torch.log_softmax(logit_map(head(hidden)), -1).gather(-1, targets[:, None]).squeeze(-1)
    got = head_logps(hidden, head, targets, chunk_size=3, logit_map=logit_map)
    torch.testing.assert_close(got.double(), expected, rtol=1e-6, atol=1e-6)
    grads = torch.autograd.grad((got * torch.arange(7.0)).sum(), [hidden, head.weight, head.bias])
    ref = torch.autograd.grad((expected * torch.arange(7.0)).sum(), [hidden, head.weight, head.bias])
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)
