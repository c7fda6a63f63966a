"""Canonical records → token ids, with one documented truncation policy.

Policy: the prompt keeps its *end* (the most recent turns matter most), at most
``max_prompt_length`` tokens; the completion keeps its *start*, whatever room ``max_length`` leaves
after the prompt. The completion gets the tokenizer's EOS appended before truncation, so a
completion that fits ends in EOS and one that does not is cut (and counted as truncated).

Special tokens. A prompt starts with the special tokens the tokenizer's own call puts before a text
(:func:`special_prefix`: ``[BOS]`` for Llama-3, nothing for Pythia), exactly once: a prompt whose
text already starts with them (a chat template that writes ``{{ bos_token }}``) gets none added. The
tokenizer's suffix tokens (an EOS some tokenizers append) are never added to a prompt, since the
completion continues it. :func:`encode_prompts` is the one prompt encoding: training (here),
generation and evaluation (``tralign.generation.sample``) all use it, so they see the same ids.
Truncation keeps those leading special tokens and the prompt's end.

An empty prompt (or one that tokenises to nothing) becomes the prefix, or, for a tokenizer that
adds none, one token, the tokenizer's BOS (EOS when it has none): position 0 of a sequence is never
scored (nothing predicts it), so without a prompt token the completion's first token would never
train.

Because ``max_prompt_length < max_length``, every completion keeps at least one token: a prompt
can never leave "no room". A completion can still carry nothing of its own (its text tokenises to
nothing, so only EOS is left), and two sides of a pair can become identical once cut; such rows
are reported as problems (see :func:`encode_columns`) and the data module refuses or drops them
according to ``data.on_bad_rows``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from transformers import PreTrainedTokenizerBase

from tralign.errors import TralignError

Mode = Literal["pair", "sft", "unpaired"]
MODES: tuple[Mode, ...] = ("pair", "sft", "unpaired")
# Bump when the encoding below changes: it is part of the tokenised-data cache key.
# 2: an empty prompt is [BOS] (or [EOS]); 3: prompts start with the tokenizer's own special prefix
ENCODING_VERSION = 3


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


def start_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The one token an empty prompt becomes when the tokenizer adds no prefix: BOS, else EOS (a
    document boundary either way)."""
    bos = tokenizer.bos_token_id
    return tokenizer.eos_token_id if bos is None else bos


def special_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The special tokens ``tokenizer(text)`` puts before ``text``'s own tokens: ``[BOS]`` for
    Llama-3 (or any post-processor that writes BOS), ``[]`` for Pythia.

    Read off the tokenizer's own call on a one-token probe (the first ordinary vocabulary entry),
    so it follows whatever the tokenizer does (post-processor, ``add_bos_token``) without knowing
    the model family.
    """
    special = set(tokenizer.all_special_ids)
    ordinary = (i for i in range(len(tokenizer)) if i not in special)
    for _, probe_id in zip(range(64), ordinary, strict=False):
        probe = tokenizer.decode([probe_id])
        plain = _ids(tokenizer, probe)
        if not probe or not plain or special.intersection(plain):
            continue
        full = tokenizer(probe)["input_ids"]
        for start in range(len(full) - len(plain) + 1):
            if full[start : start + len(plain)] == plain:
                return full[:start]
    raise TralignError(
        "model.tokenizer: cannot tell which special tokens the tokenizer adds before a text "
        "(no ordinary token encodes to itself)"
    )


def encode_prompts(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    """The prompt encoding used by training, generation and evaluation: each text's tokens after
    the tokenizer's :func:`special_prefix`, exactly once (a text that already starts with it, as a
    chat template writing BOS does, gets none added); an empty result becomes ``[start_id]``."""
    prefix = special_prefix(tokenizer)
    start = [start_id(tokenizer)]
    return [_with_prefix(ids, prefix) or start for ids in _batch_ids(tokenizer, texts)]


def encode_prompt(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """:func:`encode_prompts` for one text."""
    return encode_prompts(tokenizer, [text])[0]


def _with_prefix(ids: list[int], prefix: list[int]) -> list[int]:
    return ids if ids[: len(prefix)] == prefix else prefix + ids


def truncate(
    prompt_ids: list[int], completions: Sequence[list[int]], lengths: Lengths, *, keep: int = 0
) -> tuple[list[int], list[list[int]], bool]:
    """The policy on ids: keep the prompt's first ``keep`` tokens (its special prefix) and its end,
    then each completion's start (EOS already appended)."""
    truncated = len(prompt_ids) > lengths.max_prompt_length
    if truncated:
        head = min(keep, lengths.max_prompt_length)
        tail = lengths.max_prompt_length - head
        prompt_ids = prompt_ids[:head] + (prompt_ids[-tail:] if tail else [])
    room = lengths.max_length - len(prompt_ids)  # >= 1: max_prompt_length < max_length
    out = []
    for ids in completions:
        if len(ids) > room:
            truncated = True
            ids = ids[:room]
        out.append(ids)
    return prompt_ids, out, truncated


def encode_prompt_completions(
    tokenizer: PreTrainedTokenizerBase, prompt: str, completions: list[str], lengths: Lengths
) -> tuple[list[int], list[list[int]], bool]:
    """Tokenise one prompt and its completions (chosen, rejected or a single SFT target).

    Returns (prompt_ids, completion_ids per completion, truncated?). The prompt is shared, so both
    sides of a pair see exactly the same prompt tokens.
    """
    eos = tokenizer.eos_token_id
    prompt_ids = encode_prompt(tokenizer, prompt)
    keep = _kept(prompt_ids, special_prefix(tokenizer))
    return truncate(prompt_ids, [_ids(tokenizer, c) + [eos] for c in completions], lengths, keep=keep)


def _kept(prompt_ids: list[int], prefix: list[int]) -> int:
    """How many leading tokens truncation must keep: the special prefix, where the prompt has it."""
    return len(prefix) if prefix and prompt_ids[: len(prefix)] == prefix else 0


def completion_fields(mode: Mode, columns: Sequence[str]) -> tuple[str, ...]:
    """The row fields that are completions in ``mode``: SFT takes ``completion`` or else ``chosen``."""
    if mode == "pair":
        return ("chosen", "rejected")
    return ("completion",) if "completion" in columns or mode == "unpaired" else ("chosen",)


def example_fields(mode: Mode) -> tuple[str, ...]:
    """The keys of an encoded example, as the collator of ``mode`` takes them."""
    if mode == "pair":
        return ("prompt_ids", "chosen_ids", "rejected_ids")
    return (
        ("prompt_ids", "completion_ids", "label") if mode == "unpaired" else ("prompt_ids", "completion_ids")
    )


def encode_row(
    tokenizer: PreTrainedTokenizerBase, row: Mapping[str, Any], lengths: Lengths, *, mode: Mode
) -> tuple[dict[str, Any], bool]:
    """One canonical row → an example for the collator (the per-row reference of :func:`encode_columns`).

    Pair rows have prompt/chosen/rejected; SFT takes ``completion`` or, from a preference row,
    ``chosen``; unpaired rows have prompt/completion/label and keep the label as a bool.
    """
    sides = completion_fields(mode, list(row))
    prompt_ids, completions, truncated = encode_prompt_completions(
        tokenizer, row["prompt"], [row[s] for s in sides], lengths
    )
    if mode == "pair":
        return {
            "prompt_ids": prompt_ids,
            "chosen_ids": completions[0],
            "rejected_ids": completions[1],
        }, truncated
    example: dict[str, Any] = {"prompt_ids": prompt_ids, "completion_ids": completions[0]}
    if mode == "unpaired":
        example["label"] = bool(row["label"])
    return example, truncated


def encode_columns(
    tokenizer: PreTrainedTokenizerBase, columns: Mapping[str, Sequence[Any]], lengths: Lengths, *, mode: Mode
) -> dict[str, list[Any]]:
    """Encode a batch of rows given column-wise (``datasets.Dataset.map(batched=True)``'s layout).

    Same ids as :func:`encode_row` per row (one batched tokenizer call per field, which is what makes
    large sets fast), plus per-row metadata columns:

    - ``truncated``: the prompt or a completion was cut;
    - ``problem``: "" or why the row cannot train (a completion with no tokens of its own; chosen
      and rejected identical after truncation);
    - ``length``: the longest sequence the row puts in a batch (prompt + longest completion), the
      key of length-grouped batching;
    - ``raw_<field>``: token counts before truncation (EOS not counted), for ``tralign.data.inspect``.
    """
    sides = completion_fields(mode, list(columns))
    eos = tokenizer.eos_token_id
    prefix = special_prefix(tokenizer)
    raw_prompts = encode_prompts(tokenizer, columns["prompt"])
    raw = {side: _batch_ids(tokenizer, columns[side]) for side in sides}
    out: dict[str, list[Any]] = {f: [] for f in example_fields(mode)}
    out.update({"truncated": [], "problem": [], "length": [], "raw_prompt": []})
    out.update({f"raw_{side}": [] for side in sides})
    for i, prompt in enumerate(raw_prompts):
        completions = [raw[s][i] + [eos] for s in sides]
        prompt_ids, completions, truncated = truncate(
            prompt, completions, lengths, keep=_kept(prompt, prefix)
        )
        out["prompt_ids"].append(prompt_ids)
        for side, ids in zip(sides, completions, strict=True):
            out["completion_ids" if mode != "pair" else f"{side}_ids"].append(ids)
        if mode == "unpaired":
            out["label"].append(bool(columns["label"][i]))
        out["truncated"].append(truncated)
        out["problem"].append(_problem(sides, [raw[s][i] for s in sides], completions))
        out["length"].append(len(prompt_ids) + max(len(ids) for ids in completions))
        out["raw_prompt"].append(len(prompt))
        for side in sides:
            out[f"raw_{side}"].append(len(raw[side][i]))
    return out


def _batch_ids(tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]) -> list[list[int]]:
    return tokenizer(list(texts), add_special_tokens=False)["input_ids"] if len(texts) else []


def _problem(sides: Sequence[str], raw: Sequence[list[int]], kept: Sequence[list[int]]) -> str:
    """Why an encoded row must not train, or ""."""
    for side, text_ids, ids in zip(sides, raw, kept, strict=True):
        # Only EOS (or nothing) left: the row would train "answer with EOS", which no source meant.
        if min(len(text_ids), len(ids)) == 0:
            return f"{side} has no tokens after tokenisation and truncation"
    if len(kept) == 2 and kept[0] == kept[1]:
        return f"chosen and rejected are identical after truncation to {len(kept[0])} tokens"
    return ""
