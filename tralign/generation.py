"""Batched sampling from a causal LM for held-out prompts (left padding, stop at EOS), and the
log-probability of given completions under a model (for KL estimates from samples).

Prompts are encoded by :func:`tralign.data.tokenize.encode_prompts`, the encoding training uses,
so a prompt's ids here are the ids the policy was trained on (the same BOS, once)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from tralign.data.collate import SFTCollator
from tralign.data.tokenize import encode_prompts
from tralign.logprobs import sequence_logps


@dataclass(frozen=True)
class Samples:
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]  # generated tokens up to and including the first EOS
    texts: list[str]  # decoded without special tokens


@torch.no_grad()
def sample(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    batch_size: int = 64,
    seed: int = 0,
) -> Samples:
    """One sampled completion per prompt.

    The sampling RNG is seeded from ``seed`` alone (and restored afterwards), so two models
    sampled with the same seed see the same random stream: a fair side-by-side.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id
    prompt_ids: list[list[int]] = []
    completion_ids: list[list[int]] = []
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = encode_prompts(tokenizer, prompts[start : start + batch_size])
                input_ids, attention_mask = _left_pad(chunk, pad)
                out = model.generate(
                    input_ids=input_ids.to(device),
                    attention_mask=attention_mask.to(device),
                    do_sample=temperature > 0,
                    temperature=temperature if temperature > 0 else None,
                    top_p=top_p,
                    top_k=0,
                    max_new_tokens=max_new_tokens,
                    pad_token_id=pad,
                    eos_token_id=tokenizer.eos_token_id,
                    use_cache=True,
                )
                for ids, generated in zip(chunk, out[:, input_ids.shape[1] :], strict=True):
                    prompt_ids.append(ids)
                    completion_ids.append(_until_eos(generated.tolist(), tokenizer.eos_token_id))
    finally:
        model.train(was_training)
    texts = tokenizer.batch_decode(completion_ids, skip_special_tokens=True)
    return Samples(prompt_ids, completion_ids, texts)


def _left_pad(rows: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    """(input_ids, attention_mask), each (B, T), padded on the left: generation appends on the right."""
    width = max(len(r) for r in rows)
    input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    attention_mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    return input_ids, attention_mask


def _until_eos(ids: list[int], eos: int) -> list[int]:
    return ids[: ids.index(eos) + 1] if eos in ids else ids


@torch.no_grad()
def completion_logps(model: nn.Module, samples: Samples, *, pad_id: int, batch_size: int = 64) -> Tensor:
    """Summed log-probability of each sample's completion under ``model``, shape (N,)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    collate = SFTCollator(pad_id)
    out = []
    try:
        for start in range(0, len(samples.completion_ids), batch_size):
            examples = [
                {"prompt_ids": p, "completion_ids": c}
                for p, c in zip(
                    samples.prompt_ids[start : start + batch_size],
                    samples.completion_ids[start : start + batch_size],
                    strict=True,
                )
            ]
            batch = {k: v.to(device) for k, v in collate(examples).items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            out.append(sequence_logps(logits, batch["input_ids"], batch["loss_mask"])[0].cpu())
    finally:
        model.train(was_training)
    return torch.cat(out)
