"""Examples → padded tensors. Right padding; ``loss_mask`` marks the completion tokens.

A preference batch of B pairs becomes one (2B, T) tensor: rows 0..B-1 are prompt+chosen,
rows B..2B-1 prompt+rejected, so the policy runs one forward over both halves. An unpaired batch
of B rows carries a second (B, T') block of mismatched rows for KTO's KL estimate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def _pad(rows: Sequence[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Tensor]:
    width = max(len(p) + len(c) for p, c in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, n_p:n] = True
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask}


class PairCollator:
    """Collates {prompt_ids, chosen_ids, rejected_ids} examples into one concatenated batch."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, Tensor]:
        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
        return _pad(rows, self.pad_id)


class SFTCollator:
    """Collates {prompt_ids, completion_ids} examples; loss on the completion only."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: Sequence[dict[str, list[int]]]) -> dict[str, Tensor]:
        return _pad([(e["prompt_ids"], e["completion_ids"]) for e in examples], self.pad_id)


class UnpairedCollator:
    """Collates {prompt_ids, completion_ids, label} examples for unpaired KTO.

    Keys: ``input_ids``/``attention_mask``/``loss_mask`` for the B rows; the same three prefixed
    ``kl_`` for B *mismatched* rows, whose mean log-ratio estimates KL(policy || ref): prompt i +
    the completion of row (i + 1) mod B (TRL's KTOTrainer shifts completions within the batch the
    same way), or of the next row after it whose prompt differs, so that the two rows of an
    unpaired pair (``data.unpair=true`` puts them side by side) never count as mismatched;
    ``labels`` (B,) bool, True = desirable. A borrowed completion is cut to fit ``max_length``
    after its new prompt (keeping its start, as tokenisation does). The blocks are padded
    separately: the KL rows only need a no-grad forward, which should not pay for the other
    block's width.
    """

    def __init__(self, pad_id: int, max_length: int):
        self.pad_id = pad_id
        self.max_length = max_length

    def __call__(self, examples: Sequence[dict]) -> dict[str, Tensor]:
        n = len(examples)
        batch = _pad([(e["prompt_ids"], e["completion_ids"]) for e in examples], self.pad_id)
        mismatched = []
        for i, e in enumerate(examples):
            j = (i + 1) % n
            while j != i and examples[j]["prompt_ids"] == e["prompt_ids"]:
                j = (j + 1) % n
            borrowed = examples[j if j != i else (i + 1) % n]["completion_ids"]
            mismatched.append((e["prompt_ids"], borrowed[: self.max_length - len(e["prompt_ids"])]))
        batch.update({f"kl_{k}": v for k, v in _pad(mismatched, self.pad_id).items()})
        batch["labels"] = torch.tensor([bool(e["label"]) for e in examples], dtype=torch.bool)
        return batch


def pad_fraction(batch: dict[str, Tensor]) -> float:
    """Share of positions in the batch that are padding (cost paid for nothing)."""
    mask = batch["attention_mask"]
    return 1.0 - mask.sum().item() / mask.numel()
