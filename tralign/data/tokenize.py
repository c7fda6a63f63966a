"""Canonical records → token ids, with one documented truncation policy.

Policy: the prompt keeps its *end* (the most recent turns matter most), at most
``max_prompt_length`` tokens; the completion keeps its *start*, whatever room ``max_length`` leaves
after the prompt. The completion gets the tokenizer's EOS appended before truncation, so a
completion that fits ends in EOS and one that does not is cut (and counted as truncated).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase


@dataclass(frozen=True)
class Lengths:
    max_length: int
    max_prompt_length: int

    def __post_init__(self) -> None:
        if not 0 < self.max_prompt_length < self.max_length:
            raise ValueError(
                f"need 0 < data.max_prompt_length ({self.max_prompt_length}) < data.max_length ({self.max_length})"
            )


def _ids(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompt_completions(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completions: list[str], lengths: Lengths
) -> tuple[list[int], list[list[int]], bool]:
    """Tokenise one prompt and its completions (chosen, rejected or a single SFT target).

    Returns (prompt_ids, completion_ids per completion, truncated?). The prompt is shared, so both
    sides of a pair see exactly the same prompt tokens.
    """
    prompt_ids = _ids(tokenizer, prompt)
    truncated = len(prompt_ids) > lengths.max_prompt_length
    if truncated:
        prompt_ids = prompt_ids[-lengths.max_prompt_length :]
    room = lengths.max_length - len(prompt_ids)
    out = []
    for completion in completions:
        ids = _ids(tokenizer, completion) + [tokenizer.eos_token_id]
        if len(ids) > room:
            truncated = True
            ids = ids[:room]
        out.append(ids)
    return prompt_ids, out, truncated


def encode_row(
    tokenizer: PreTrainedTokenizerBase, row: Mapping[str, str], lengths: Lengths, *, mode: str
) -> tuple[dict[str, list[int]], bool]:
    """One canonical row → an example for the collator. ``mode`` is "pair" or "sft".

    Pair rows have prompt/chosen/rejected; SFT takes ``completion`` or, from a preference row, ``chosen``.
    """
    if mode == "pair":
        prompt_ids, (chosen, rejected), truncated = encode_prompt_completions(
            tokenizer, row["prompt"], [row["chosen"], row["rejected"]], lengths
        )
        return {"prompt_ids": prompt_ids, "chosen_ids": chosen, "rejected_ids": rejected}, truncated
    target = row["completion"] if "completion" in row else row["chosen"]
    prompt_ids, (completion,), truncated = encode_prompt_completions(tokenizer, row["prompt"], [target], lengths)
    return {"prompt_ids": prompt_ids, "completion_ids": completion}, truncated
