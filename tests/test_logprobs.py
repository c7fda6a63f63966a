"""Tests for tralign.logprobs: chunked log-probs must equal a naive full log_softmax."""

from __future__ import annotations

import pytest
import torch
from helpers.models import tiny_neox

from tralign.logprobs import head_logps, model_sequence_logps, sequence_logps, token_logps

B, T, V = 5, 7, 11


def naive_sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor):
    """Reference: full fp32 log_softmax, gather, mask, sum."""
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    mask = loss_mask[:, 1:].float()
    return (tok * mask).sum(-1), mask.sum(-1)


def make_batch(seed: int = 0, dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(B, T, V, generator=g)).to(dtype)
    input_ids = torch.randint(0, V, (B, T), generator=g)
    # Prompt of varying length, then completion, then right padding.
    loss_mask = torch.zeros(B, T, dtype=torch.bool)
    for b, (start, end) in enumerate([(2, 7), (1, 4), (3, 6), (4, 5), (1, 7)]):
        loss_mask[b, start:end] = True
    return logits, input_ids, loss_mask


@pytest.mark.parametrize("chunk_size", [1, 2, 3, B, 64])
def test_matches_naive_reference(chunk_size: int) -> None:
    logits, input_ids, loss_mask = make_batch()
    logps, counts = sequence_logps(logits, input_ids, loss_mask, chunk_size=chunk_size)
    ref_logps, ref_counts = naive_sequence_logps(logits, input_ids, loss_mask)
    assert logps.dtype == torch.float32 and logps.shape == (B,)
    torch.testing.assert_close(logps, ref_logps)
    torch.testing.assert_close(counts, ref_counts)


def test_token_logps_matches_log_softmax() -> None:
    logits, input_ids, _ = make_batch(seed=1)
    out = token_logps(logits, input_ids, chunk_size=2)
    ref = torch.log_softmax(logits[:, :-1], -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    assert out.shape == (B, T - 1)
    torch.testing.assert_close(out, ref)


def test_counts_equal_mask_sums_excluding_position_zero() -> None:
    logits, input_ids, loss_mask = make_batch()
    loss_mask[0, 0] = True  # position 0 has no predictor, so it must not count
    _, counts = sequence_logps(logits, input_ids, loss_mask.int())
    assert counts.dtype == torch.float32
    assert counts.tolist() == loss_mask[:, 1:].sum(-1).float().tolist()
    assert counts.tolist() == [5.0, 3.0, 3.0, 1.0, 6.0]


def test_bf16_input_gives_fp32_output_of_upcast_logits() -> None:
    logits, input_ids, loss_mask = make_batch(dtype=torch.bfloat16)
    logps, counts = sequence_logps(logits, input_ids, loss_mask, chunk_size=2)
    ref_logps, _ = naive_sequence_logps(logits.float(), input_ids, loss_mask)
    assert logps.dtype == torch.float32 and counts.dtype == torch.float32
    torch.testing.assert_close(logps, ref_logps, rtol=1e-5, atol=1e-5)


def test_masked_positions_do_not_affect_result() -> None:
    logits, input_ids, loss_mask = make_batch()
    before, _ = sequence_logps(logits, input_ids, loss_mask, chunk_size=2)
    # Logits at position t predict token t+1, so they are unused when loss_mask[:, t+1] is 0.
    unused = torch.zeros(B, T, dtype=torch.bool)
    unused[:, :-1] = ~loss_mask[:, 1:]
    unused[:, -1] = True
    garbage = logits.clone()
    garbage[unused] = float("inf")
    b, t = unused.nonzero()[0].tolist()
    garbage[b, t] = float("nan")
    # Masked target ids may be ignore-index values.
    ids = torch.where(loss_mask, input_ids, torch.full_like(input_ids, -100))
    after, _ = sequence_logps(garbage.requires_grad_(), ids, loss_mask, chunk_size=2)
    torch.testing.assert_close(after, before)
    after.sum().backward()
    assert torch.isfinite(garbage.grad).all()
    assert (garbage.grad[unused] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gradient_matches_naive(dtype: torch.dtype) -> None:
    logits, input_ids, loss_mask = make_batch(seed=2, dtype=dtype)
    weights = torch.linspace(-1.0, 2.0, B)  # non-uniform upstream gradient per row
    chunked = logits.clone().requires_grad_()
    logps, _ = sequence_logps(chunked, input_ids, loss_mask, chunk_size=2)
    (logps * weights).sum().backward()
    naive = logits.clone().requires_grad_()
    ref, _ = naive_sequence_logps(naive, input_ids, loss_mask)
    (ref * weights).sum().backward()
    assert chunked.grad.dtype == dtype
    tol = {} if dtype == torch.float32 else {"rtol": 1e-2, "atol": 1e-2}
    torch.testing.assert_close(chunked.grad, naive.grad, **tol)
    assert chunked.grad.abs().sum() > 0


def test_gradcheck_double_precision() -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, 4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    input_ids = torch.randint(0, 5, (3, 4), generator=g)
    # Output is float32 by contract, so gradcheck the float64 path via token_logps' Function
    # with a loose tolerance instead of exact float64 numerics.
    assert torch.autograd.gradcheck(
        lambda x: token_logps(x, input_ids, chunk_size=2), (logits,), eps=1e-3, atol=1e-3, rtol=1e-3
    )


def test_rejects_bad_chunk_size_and_shapes() -> None:
    logits, input_ids, loss_mask = make_batch()
    with pytest.raises(ValueError):
        sequence_logps(logits, input_ids, loss_mask, chunk_size=0)
    with pytest.raises(ValueError):
        sequence_logps(logits, input_ids, loss_mask[:, 1:])


# --- the LM head on completion positions only ---------------------------------------------------
def tiny_lm(seed: int = 0, bias: bool = False):
    model = tiny_neox(seed, vocab_size=37, tie_word_embeddings=False)
    if bias:  # Pythia's head has no bias; other models' may
        head = torch.nn.Linear(16, 37, bias=True)
        model.set_output_embeddings(head)
    return model


def lm_batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 37, (4, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 6:] = 0  # right padding
    attention_mask[3, 4:] = 0
    loss_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    for b, (start, end) in enumerate([(3, 9), (2, 6), (5, 9), (1, 4)]):
        loss_mask[b, start:end] = True
    return input_ids, attention_mask, loss_mask


@pytest.mark.parametrize(("chunk_size", "bias"), [(1, False), (3, True), (512, False)])
def test_model_sequence_logps_matches_full_logits_values_and_gradients(chunk_size: int, bias: bool) -> None:
    model = tiny_lm(bias=bias)
    input_ids, attention_mask, loss_mask = lm_batch()
    weights = torch.tensor([1.0, -2.0, 0.5, 3.0])

    logps, counts = model_sequence_logps(model, input_ids, attention_mask, loss_mask, chunk_size=chunk_size)
    (logps * weights).sum().backward()
    fast = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
    ref, ref_counts = naive_sequence_logps(logits, input_ids, loss_mask)
    (ref * weights).sum().backward()

    torch.testing.assert_close(logps, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(counts, ref_counts)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fast[name], p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert model.get_output_embeddings().weight.grad.abs().sum() > 0


def test_head_logps_gradcheck_double_precision() -> None:
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    head = torch.nn.Linear(4, 6, bias=True).double()
    targets = torch.randint(0, 6, (5,), generator=g)
    expected = torch.log_softmax(head(hidden), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(
        head_logps(hidden, head, targets, chunk_size=2).double(), expected, rtol=1e-6, atol=1e-6
    )
    # float32 output by design, so check gradients against autograd on the same formula
    out = head_logps(hidden, head, targets, chunk_size=2)
    grads = torch.autograd.grad(out.sum(), [hidden, head.weight, head.bias])
    ref = torch.autograd.grad(expected.sum(), [hidden, head.weight, head.bias])
    for a, b in zip(grads, ref, strict=True):
        torch.testing.assert_close(a.double(), b, rtol=1e-5, atol=1e-6)


def test_model_sequence_logps_ignores_padding_and_prompt_tokens() -> None:
    model = tiny_lm()
    input_ids, attention_mask, loss_mask = lm_batch()
    logps, _ = model_sequence_logps(model, input_ids, attention_mask, loss_mask)
    changed = input_ids.clone()
    changed[1, 7:] = 5  # padding of row 1 (attention_mask 0, loss_mask 0)
    again, _ = model_sequence_logps(model, changed, attention_mask, loss_mask)
    torch.testing.assert_close(again, logps)
    changed[0, 2] = (input_ids[0, 2] + 1) % 37  # a prompt token conditions the completion
    assert not torch.allclose(model_sequence_logps(model, changed, attention_mask, loss_mask)[0][0], logps[0])


def test_head_logps_under_autocast_runs_forward_and_backward_in_the_autocast_dtype() -> None:
    """bf16 autocast: values and gradients close to autograd through the same bf16 head; and the
    backward's GEMMs are bf16 (not silently fp32, which would cost the speed the head saves)."""
    from tralign.logprobs import head_logps

    torch.manual_seed(0)
    head = torch.nn.Linear(16, 40, bias=False)
    hidden = torch.randn(12, 16, requires_grad=True)
    targets = torch.randint(0, 40, (12,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head_logps(hidden, head, targets, chunk_size=5)
        want = torch.log_softmax(head(hidden).float(), -1).gather(-1, targets[:, None]).squeeze(-1)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=2e-2)
    (g_got,) = torch.autograd.grad(got.sum(), hidden)
    (g_want,) = torch.autograd.grad(want.sum(), hidden)
    torch.testing.assert_close(g_got, g_want, atol=3e-2, rtol=3e-2)
    dtypes = []
    original = torch.Tensor.__matmul__

    def spy(a, b):
        dtypes.append(a.dtype)
        return original(a, b)

    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head_logps(hidden, head, targets, chunk_size=5)
    torch.Tensor.__matmul__ = spy
    try:
        out.sum().backward()
    finally:
        torch.Tensor.__matmul__ = original
    assert dtypes and set(dtypes) == {torch.bfloat16}
