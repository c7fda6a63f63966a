"""Tests for the data pipeline: tokenisation, collation, sources and the data module.

Hand-built examples use known ids; the real-data checks use the Pythia tokenizer and the TL;DR
comparisons under ``../shared`` (skipped when that folder is absent).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from helpers.config import SYNTH_TASK, synthetic_data_cfg
from helpers.paths import SHARED

from tralign.data.collate import PairCollator, SFTCollator, pad_fraction
from tralign.data.datamodule import PreferenceDataModule
from tralign.data.formats.fields import string_fields
from tralign.data.sources import (
    MAX_REPORTED_PROBLEMS,
    SOURCES,
    Split,
    jsonl_source,
    load_split,
    synthetic_source,
)
from tralign.data.synthetic import SyntheticTask
from tralign.data.tokenize import Lengths, encode_prompt_completions, encode_row
from tralign.errors import DataError
from tralign.logprobs import sequence_logps

if TYPE_CHECKING:
    pass

TLDR_VALID = SHARED / "data" / "tldr" / "comparisons_valid.jsonl.gz"

# The synthetic tokenizer's documented vocabulary: <pad>=0, <eos>=1, <unk>=2, "Q:"=3, "->"=4, words.
PAD, EOS = 0, 1
Q, ARROW = 3, 4
WORD_ID = {w: 5 + i for i, w in enumerate(SyntheticTask().words())}


def wid(text: str) -> list[int]:
    """Expected synthetic ids of whitespace-separated words (independent of the tokenizer)."""
    special = {"Q:": Q, "->": ARROW}
    return [special.get(w, WORD_ID.get(w)) for w in text.split()]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tldr_rows() -> list[dict[str, str]]:
    if not TLDR_VALID.is_file():
        pytest.skip("../shared not present")
    rows = []
    with gzip.open(TLDR_VALID, "rt", encoding="utf-8") as fh:
        for line in fh:
            rows.append(json.loads(line))
            if len(rows) == 2:
                break
    return rows


# --------------------------------------------------------------------------- tokenize


def test_lengths_accepts_valid() -> None:
    lengths = Lengths(10, 9)
    assert (lengths.max_length, lengths.max_prompt_length) == (10, 9)


@pytest.mark.parametrize("max_length, max_prompt_length", [(10, 10), (10, 11), (10, 0), (10, -3)])
def test_lengths_rejects_invalid(max_length: int, max_prompt_length: int) -> None:
    with pytest.raises(ValueError, match="max_prompt_length"):
        Lengths(max_length, max_prompt_length)


def test_synthetic_eos_appended_no_truncation(synth_tok) -> None:
    prompt_ids, (c1, c2), truncated = encode_prompt_completions(
        synth_tok, "Q: fox owl ->", [" red fox", " blue"], Lengths(48, 16)
    )
    assert prompt_ids == wid("Q: fox owl ->") == [Q, WORD_ID["fox"], WORD_ID["owl"], ARROW]
    assert c1 == wid("red fox") + [EOS]
    assert c2 == wid("blue") + [EOS]
    assert truncated is False


def test_synthetic_prompt_truncation_keeps_end(synth_tok) -> None:
    prompt = "Q: red blue green gold pink ->"
    prompt_ids, (completion,), truncated = encode_prompt_completions(
        synth_tok, prompt, [" fox owl"], Lengths(20, 3)
    )
    assert prompt_ids == wid("gold pink ->")
    assert completion == wid("fox owl") + [EOS]  # plenty of room: only the prompt was cut
    assert truncated is True


def test_synthetic_prompt_exactly_at_limit_not_truncated(synth_tok) -> None:
    prompt_ids, _, truncated = encode_prompt_completions(synth_tok, "Q: fox owl ->", [" red"], Lengths(20, 4))
    assert prompt_ids == wid("Q: fox owl ->")
    assert truncated is False


def test_synthetic_completion_truncation_keeps_start(synth_tok) -> None:
    # Prompt 3 tokens, max_length 6 -> room 3 for the completion (4 words + EOS = 5).
    prompt_ids, (completion,), truncated = encode_prompt_completions(
        synth_tok, "Q: fox ->", [" red blue green gold"], Lengths(6, 3)
    )
    assert prompt_ids == wid("Q: fox ->")
    assert completion == wid("red blue green")
    assert EOS not in completion
    assert truncated is True


def test_synthetic_completion_fit_boundary(synth_tok) -> None:
    lengths = Lengths(6, 3)  # room 3 after a 3-token prompt
    _, (fits,), truncated = encode_prompt_completions(synth_tok, "Q: fox ->", [" red blue"], lengths)
    assert fits == wid("red blue") + [EOS]
    assert truncated is False
    # One more word: the text itself fits but the EOS is cut, which still counts as truncated.
    _, (cut,), truncated = encode_prompt_completions(synth_tok, "Q: fox ->", [" red blue green"], lengths)
    assert cut == wid("red blue green")
    assert truncated is True


def test_synthetic_room_depends_on_kept_prompt(synth_tok) -> None:
    # A longer (untruncated) prompt leaves less room for the completion.
    _, (short_prompt,), _ = encode_prompt_completions(synth_tok, "Q: ->", [" red blue green"], Lengths(5, 4))
    _, (long_prompt,), _ = encode_prompt_completions(
        synth_tok, "Q: fox owl ->", [" red blue green"], Lengths(5, 4)
    )
    assert short_prompt == wid("red blue green")  # room 3 (EOS dropped)
    assert long_prompt == wid("red")  # room 1


def test_synthetic_truncated_if_any_completion_is(synth_tok) -> None:
    _, (a, b), truncated = encode_prompt_completions(
        synth_tok, "Q: fox ->", [" red", " red blue green gold"], Lengths(6, 3)
    )
    assert a == wid("red") + [EOS]
    assert b == wid("red blue green")
    assert truncated is True


def test_encode_row_pair_mode(synth_tok) -> None:
    row = {"prompt": "Q: fox owl ->", "chosen": " red", "rejected": " blue cat"}
    example, truncated = encode_row(synth_tok, row, Lengths(48, 16), mode="pair")
    assert example == {
        "prompt_ids": wid("Q: fox owl ->"),
        "chosen_ids": wid("red") + [EOS],
        "rejected_ids": wid("blue cat") + [EOS],
    }
    assert truncated is False


def test_encode_row_sft_prefers_completion(synth_tok) -> None:
    row = {"prompt": "Q: fox ->", "completion": " gold", "chosen": " red", "rejected": " blue"}
    example, truncated = encode_row(synth_tok, row, Lengths(48, 16), mode="sft")
    assert example == {"prompt_ids": wid("Q: fox ->"), "completion_ids": wid("gold") + [EOS]}
    assert truncated is False


def test_encode_row_sft_falls_back_to_chosen(synth_tok) -> None:
    row = {"prompt": "Q: fox ->", "chosen": " red cat", "rejected": " blue"}
    example, _ = encode_row(synth_tok, row, Lengths(48, 16), mode="sft")
    assert example == {"prompt_ids": wid("Q: fox ->"), "completion_ids": wid("red cat") + [EOS]}


def test_encode_row_sft_reports_truncation(synth_tok) -> None:
    row = {"prompt": "Q: fox owl ->", "completion": " red blue green gold cat"}
    example, truncated = encode_row(synth_tok, row, Lengths(6, 2), mode="sft")
    assert example["prompt_ids"] == wid("owl ->")
    assert example["completion_ids"] == wid("red blue green gold")
    assert truncated is True


def test_pythia_eos_appended(pythia) -> None:
    prompt, completion = "TITLE: a question\n\nTL;DR:", " short answer here"
    prompt_ids, (ids,), truncated = encode_prompt_completions(pythia, prompt, [completion], Lengths(64, 32))
    expected = pythia(completion, add_special_tokens=False)["input_ids"]
    assert prompt_ids == pythia(prompt, add_special_tokens=False)["input_ids"]
    assert ids == expected + [pythia.eos_token_id]
    assert truncated is False


def test_pythia_prompt_truncation_keeps_end(pythia) -> None:
    prompt = " ".join(f"word{i}" for i in range(40)) + "\n\nTL;DR:"
    full = pythia(prompt, add_special_tokens=False)["input_ids"]
    assert len(full) > 16
    prompt_ids, (ids,), truncated = encode_prompt_completions(pythia, prompt, [" yes"], Lengths(64, 16))
    assert prompt_ids == full[-16:]
    assert pythia.decode(prompt_ids).endswith("TL;DR:")
    assert ids[-1] == pythia.eos_token_id
    assert truncated is True


def test_pythia_completion_truncation_keeps_start(pythia) -> None:
    completion = " " + " ".join(f"token{i}" for i in range(30))
    full = pythia(completion, add_special_tokens=False)["input_ids"]
    prompt_ids, (ids,), truncated = encode_prompt_completions(pythia, "Hi:", [completion], Lengths(12, 4))
    room = 12 - len(prompt_ids)
    assert len(full) + 1 > room
    assert ids == full[:room]
    assert pythia.eos_token_id not in ids
    assert truncated is True


# --------------------------------------------------------------------------- collate

EX1 = {"prompt_ids": [10, 11], "chosen_ids": [20, 21, 1], "rejected_ids": [30, 1]}
EX2 = {"prompt_ids": [12], "chosen_ids": [22, 1], "rejected_ids": [31, 32, 33, 34, 1]}


def test_pair_collator_layout() -> None:
    batch = PairCollator(pad_id=0)([EX1, EX2])
    assert batch["input_ids"].tolist() == [
        [10, 11, 20, 21, 1, 0],  # prompt1 + chosen1
        [12, 22, 1, 0, 0, 0],  # prompt2 + chosen2
        [10, 11, 30, 1, 0, 0],  # prompt1 + rejected1
        [12, 31, 32, 33, 34, 1],  # prompt2 + rejected2 (widest row: no padding)
    ]
    assert batch["attention_mask"].tolist() == [
        [1, 1, 1, 1, 1, 0],
        [1, 1, 1, 0, 0, 0],
        [1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ]
    assert batch["loss_mask"].tolist() == [
        [False, False, True, True, True, False],
        [False, True, True, False, False, False],
        [False, False, True, True, False, False],
        [False, True, True, True, True, True],
    ]
    assert batch["input_ids"].dtype == torch.long
    assert batch["loss_mask"].dtype == torch.bool


def test_pair_collator_uses_pad_id() -> None:
    batch = PairCollator(pad_id=99)([EX1, EX2])
    ids, attn = batch["input_ids"], batch["attention_mask"]
    assert (ids[attn == 0] == 99).all()
    assert (ids[attn == 1] != 99).all()
    assert int((attn == 0).sum()) == 1 + 3 + 2 + 0


def test_pair_collator_single_example() -> None:
    batch = PairCollator(pad_id=7)([EX1])
    assert batch["input_ids"].tolist() == [[10, 11, 20, 21, 1], [10, 11, 30, 1, 7]]
    assert batch["loss_mask"].sum(-1).tolist() == [3, 2]


def test_sft_collator_layout() -> None:
    examples = [
        {"prompt_ids": [5, 6, 7], "completion_ids": [8, 1]},
        {"prompt_ids": [9], "completion_ids": [10, 11, 12, 1]},
    ]
    batch = SFTCollator(pad_id=0)(examples)
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 1], [9, 10, 11, 12, 1]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert batch["loss_mask"].tolist() == [[False, False, False, True, True], [False, True, True, True, True]]

    batch = SFTCollator(pad_id=42)(examples[:1] + [{"prompt_ids": [9], "completion_ids": [1]}])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 1], [9, 1, 42, 42, 42]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]]
    assert batch["loss_mask"].tolist() == [
        [False, False, False, True, True],
        [False, True, False, False, False],
    ]


def test_pad_fraction_hand_made() -> None:
    batch = {"attention_mask": torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])}
    assert pad_fraction(batch) == pytest.approx(0.5)
    assert pad_fraction({"attention_mask": torch.ones(3, 5, dtype=torch.long)}) == 0.0
    assert pad_fraction({"attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}) == pytest.approx(
        1 / 8
    )


def test_pad_fraction_of_collated_batch() -> None:
    batch = PairCollator(pad_id=0)([EX1, EX2])
    # 24 positions, 5 + 3 + 4 + 6 = 18 real tokens.
    assert pad_fraction(batch) == pytest.approx(6 / 24)


# --------------------------------------------------------------------------- real row, Pythia


def _pythia_roundtrip(tok, text: str) -> str:
    return tok.decode(tok(text, add_special_tokens=False)["input_ids"])


def test_real_row_loss_mask_is_exactly_the_completion(pythia, tldr_rows) -> None:
    lengths = Lengths(1024, 512)  # large enough that nothing is cut
    examples = []
    for row in tldr_rows:
        example, truncated = encode_row(pythia, row, lengths, mode="pair")
        assert truncated is False
        examples.append(example)
    batch = PairCollator(pythia.pad_token_id)(examples)
    n = len(tldr_rows)
    ids, attn, loss = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    assert ids.shape[0] == 2 * n
    assert (attn.sum(-1) < ids.shape[1]).any(), "expected at least one padded row"
    assert not (loss & (attn == 0)).any(), "padding in the loss mask"
    eos = pythia.eos_token
    for i, row in enumerate(tldr_rows):
        for r, side in ((i, "chosen"), (i + n, "rejected")):
            completion = pythia.decode(ids[r][loss[r]].tolist())
            assert completion == _pythia_roundtrip(pythia, row[side]) + eos
            assert completion == row[side] + eos  # Pythia's BPE round-trips this text exactly
            prompt_part = ids[r][(attn[r] == 1) & ~loss[r]].tolist()
            assert pythia.decode(prompt_part) == _pythia_roundtrip(pythia, row["prompt"])
            # The mask is one contiguous run right after the prompt.
            positions = loss[r].nonzero().flatten().tolist()
            assert positions == list(range(len(prompt_part), len(prompt_part) + len(positions)))


def test_real_row_prompt_truncation(pythia, tldr_rows) -> None:
    row = tldr_rows[0]
    full_prompt = pythia(row["prompt"], add_special_tokens=False)["input_ids"]
    lengths = Lengths(512, 64)
    assert len(full_prompt) > 64
    example, truncated = encode_row(pythia, row, lengths, mode="pair")
    assert truncated is True
    assert example["prompt_ids"] == full_prompt[-64:]
    batch = PairCollator(pythia.pad_token_id)([example])
    loss = batch["loss_mask"]
    assert pythia.decode(batch["input_ids"][0][loss[0]].tolist()) == row["chosen"] + pythia.eos_token
    assert pythia.decode(batch["input_ids"][1][loss[1]].tolist()) == row["rejected"] + pythia.eos_token


def test_real_row_logps_ignore_prompt_and_padding_logits(pythia, tldr_rows) -> None:
    lengths = Lengths(56, 24)  # keeps the (2B, T, V) logits small
    examples = [encode_row(pythia, row, lengths, mode="pair")[0] for row in tldr_rows]
    batch = PairCollator(pythia.pad_token_id)(examples)
    ids, loss = batch["input_ids"], batch["loss_mask"]
    rows, width = ids.shape
    vocab = max(len(pythia), int(ids.max()) + 1)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, width, vocab, generator=g)
    logps, counts = sequence_logps(logits, ids, loss)
    assert counts.tolist() == [float(len(e["chosen_ids"])) for e in examples] + [
        float(len(e["rejected_ids"])) for e in examples
    ]

    # Logits at position t predict token t + 1: only positions whose next token is a completion
    # token may matter. Everything else (prompt, the last completion token, padding) is free.
    matters = torch.zeros(rows, width, dtype=torch.bool)
    matters[:, :-1] = loss[:, 1:]
    assert matters.any() and (~matters).any()
    assert (~matters & (batch["attention_mask"] == 0)).any(), "expected padding positions"
    perturbed = logits.clone()
    perturbed[~matters] = 50 * torch.randn(int((~matters).sum()), vocab, generator=g)
    logps2, _ = sequence_logps(perturbed, ids, loss)
    torch.testing.assert_close(logps2, logps)

    # Control: perturbing a position that predicts a completion token does change the result.
    r, t = matters.nonzero()[0].tolist()
    perturbed[r, t, ids[r, t + 1]] += 5.0
    logps3, _ = sequence_logps(perturbed, ids, loss)
    assert logps3[r] > logps[r] + 1.0
    others = [i for i in range(rows) if i != r]
    torch.testing.assert_close(logps3[others], logps[others])


# --------------------------------------------------------------------------- sources


def _row(i: int) -> dict[str, str]:
    return {"prompt": f"prompt {i}", "chosen": f"good {i}", "rejected": f"bad {i}"}


def _write(path: Path, lines: list[str]) -> Path:
    text = "".join(line + "\n" for line in lines)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def _rows_file(path: Path, n: int) -> Path:
    return _write(path, [json.dumps(_row(i)) for i in range(n)])


def read_jsonl(path: Path | str, limit: int | None = None) -> list[dict[str, str]]:
    """The training rows data=jsonl reads from ``path`` (validation rows come from another file, so
    none are held out and every bad row is counted once)."""
    val = _write(Path(path).parent / "val-only.jsonl", [json.dumps(_row(99))])
    cfg = {"name": "jsonl", "path": str(path), "val_path": str(val), "limit": limit}
    return jsonl_source(cfg).train


@pytest.mark.parametrize("name", ["prefs.jsonl", "prefs.jsonl.gz"])
def test_read_jsonl_plain_and_gzip(tmp_path: Path, name: str) -> None:
    extra = {**_row(1), "meta": {"x": 1}, "score": 3}
    path = _write(tmp_path / name, [json.dumps(_row(0)), "", "   ", json.dumps(extra)])
    assert read_jsonl(path) == [_row(0), _row(1)]  # blank lines skipped, extra fields dropped


def test_read_jsonl_gz_is_really_decompressed(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl.gz", 3)
    assert path.read_bytes()[:2] == b"\x1f\x8b"
    assert read_jsonl(str(path)) == [_row(0), _row(1), _row(2)]


def test_read_jsonl_allows_empty_prompt(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [json.dumps({"prompt": "", "chosen": "a", "rejected": "b"})])
    assert read_jsonl(path) == [{"prompt": "", "chosen": "a", "rejected": "b"}]


BAD_LINES = [
    ('{"prompt": "p", "chosen": "a"', "not valid JSON"),
    ('{"prompt": "p", "chosen": "a"}', "missing field 'rejected'"),
    ('{"prompt": "p", "chosen": 1, "rejected": "b"}', "field 'chosen' must be a string, got int"),
    ('{"prompt": null, "chosen": "a", "rejected": "b"}', "field 'prompt' must be a string, got NoneType"),
    ('{"prompt": "p", "chosen": "  ", "rejected": "b"}', "field 'chosen' is empty"),
    ('{"prompt": "p", "chosen": "a", "rejected": ""}', "field 'rejected' is empty"),
    ('{"prompt": "p", "chosen": "same", "rejected": "same"}', "chosen and rejected are identical"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('"just a string"', "expected a JSON object, got str"),
]


@pytest.mark.parametrize("suffix", [".jsonl", ".jsonl.gz"])
@pytest.mark.parametrize("bad, reason", BAD_LINES)
def test_read_jsonl_bad_line_named(tmp_path: Path, bad: str, reason: str, suffix: str) -> None:
    path = _write(
        tmp_path / f"prefs{suffix}", [json.dumps(_row(0)), json.dumps(_row(1)), bad, json.dumps(_row(3))]
    )
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert f"{path}:3: {reason}" in message
    assert "1 bad row(s)" in message
    assert f"{path}:1:" not in message and f"{path}:4:" not in message


def test_read_jsonl_lists_all_bad_rows(tmp_path: Path) -> None:
    lines = [
        json.dumps(_row(0)),
        "{oops",
        "",
        json.dumps(_row(3)),
        '{"prompt": "p", "chosen": "x", "rejected": "x"}',
    ]
    path = _write(tmp_path / "prefs.jsonl", lines)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert message.startswith("2 bad row(s)")
    assert f"{path}:2: not valid JSON" in message
    # The blank line 3 still counts in the numbering.
    assert f"{path}:5: chosen and rejected are identical" in message


def test_read_jsonl_caps_reported_problems(tmp_path: Path) -> None:
    n_bad = MAX_REPORTED_PROBLEMS + 5
    path = _write(tmp_path / "prefs.jsonl", ["nope"] * n_bad)
    with pytest.raises(DataError) as info:
        read_jsonl(path)
    message = str(info.value)
    assert message.startswith(f"{n_bad} bad row(s)")
    assert f"{path}:{MAX_REPORTED_PROBLEMS}:" in message
    assert f"{path}:{MAX_REPORTED_PROBLEMS + 1}:" not in message
    assert "(and 5 more)" in message


def test_read_jsonl_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.jsonl"
    with pytest.raises(DataError, match="no such file") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_read_jsonl_directory_is_not_a_file(tmp_path: Path) -> None:
    folder = tmp_path / "rows"
    folder.mkdir()
    with pytest.raises(DataError, match="not a folder written by datasets' save_to_disk") as info:
        read_jsonl(folder)
    assert str(folder) in str(info.value)


def test_read_jsonl_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(DataError, match="no rows") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_read_jsonl_corrupt_gzip(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl.gz"
    path.write_bytes(b"this is not gzip data at all\n")
    with pytest.raises(DataError, match="unreadable") as info:
        read_jsonl(path)
    assert str(path) in str(info.value)


def test_read_jsonl_limit(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl", 10)
    assert read_jsonl(path, limit=3) == [_row(0), _row(1), _row(2)]
    assert len(read_jsonl(path, limit=100)) == 10
    assert len(read_jsonl(path)) == 10


def test_read_jsonl_custom_fields(tmp_path: Path) -> None:
    path = _write(tmp_path / "sft.jsonl", [json.dumps({"prompt": "p", "completion": "c"})])
    assert string_fields(json.loads(path.read_text()), ("prompt", "completion")) == {
        "prompt": "p",
        "completion": "c",
    }
    with pytest.raises(DataError, match="missing field 'chosen'"):
        read_jsonl(path)


def _jsonl_cfg(path: Path, **overrides: Any) -> dict[str, Any]:
    cfg = {
        "name": "jsonl",
        "path": str(path),
        "val_path": None,
        "val_fraction": 0.25,
        "split_seed": 0,
        "limit": None,
    }
    cfg.update(overrides)
    return cfg


def test_jsonl_source_val_fraction_split(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl.gz", 40)
    split = jsonl_source(_jsonl_cfg(path))
    assert len(split.val) == 10 and len(split.train) == 30
    val_ids = {r["prompt"] for r in split.val}
    train_ids = {r["prompt"] for r in split.train}
    assert not val_ids & train_ids
    assert val_ids | train_ids == {_row(i)["prompt"] for i in range(40)}
    assert split.golden_task is None
    # Both sides keep file order.
    for part in (split.train, split.val):
        idx = [int(r["prompt"].split()[1]) for r in part]
        assert idx == sorted(idx)


def test_jsonl_source_split_is_deterministic_in_split_seed(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl", 40)
    a = jsonl_source(_jsonl_cfg(path, split_seed=3))
    b = jsonl_source(_jsonl_cfg(path, split_seed=3))
    c = jsonl_source(_jsonl_cfg(path, split_seed=4))
    assert a.val == b.val and a.train == b.train
    assert a.val != c.val


def test_jsonl_source_val_path(tmp_path: Path) -> None:
    train_path = _rows_file(tmp_path / "train.jsonl", 6)
    val_path = _write(tmp_path / "val.jsonl.gz", [json.dumps(_row(100)), json.dumps(_row(101))])
    split = jsonl_source(_jsonl_cfg(train_path, val_path=str(val_path)))
    assert split.train == [_row(i) for i in range(6)]  # nothing held out
    assert split.val == [_row(100), _row(101)]


def test_jsonl_source_limit(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl", 40)
    split = jsonl_source(_jsonl_cfg(path, limit=8))
    assert len(split.train) + len(split.val) == 8
    assert len(split.val) == 2
    assert {r["prompt"] for r in split.train + split.val} == {_row(i)["prompt"] for i in range(8)}


def test_jsonl_source_nothing_left_to_train(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "one.jsonl", 1)
    with pytest.raises(DataError, match="nothing to train") as info:
        jsonl_source(_jsonl_cfg(path))
    assert str(path) in str(info.value)


def test_load_split_unknown_name_lists_valid() -> None:
    with pytest.raises(DataError) as info:
        load_split({"name": "bogus"})
    message = str(info.value)
    assert "'bogus'" in message
    for name in SOURCES:
        assert name in message
    assert "jsonl" in message and "synthetic" in message


def test_load_split_dispatches_jsonl(tmp_path: Path) -> None:
    path = _rows_file(tmp_path / "prefs.jsonl", 8)
    split = load_split(_jsonl_cfg(path))
    assert len(split.train) + len(split.val) == 8


def test_synthetic_source() -> None:
    cfg = {"name": "synthetic", "n_train": 64, "n_val": 16, "task": dict(SYNTH_TASK)}
    split = synthetic_source(cfg)
    assert len(split.train) == 64 and len(split.val) == 16
    assert split.golden_task == SyntheticTask(**SYNTH_TASK)
    for row in split.train + split.val:
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["chosen"] != row["rejected"]
    # Train and val come from different sample streams (not one stream cut in two).
    assert split.val != split.train[: len(split.val)]
    assert load_split(cfg) == split  # deterministic, and dispatched by name
    other = synthetic_source({**cfg, "task": {**SYNTH_TASK, "seed": 1}})
    assert other.golden_task.seed == 1
    assert other.train != split.train


# --------------------------------------------------------------------------- data module


def test_datamodule_pair_shapes(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok, mode="pair", seed=0)
    train = list(dm.train_dataloader())
    val = list(dm.val_dataloader())
    assert len(train) == 64 // 8 and len(val) == 16 // 8
    for batch in train + val:
        ids = batch["input_ids"]
        assert ids.dim() == 2 and ids.shape[0] == 16 and ids.shape[1] <= 48
        assert batch["attention_mask"].shape == ids.shape == batch["loss_mask"].shape
        # Row i (chosen) and row i + B (rejected) share their prompt tokens.
        first_completion = batch["loss_mask"].int().argmax(-1)
        for i in range(8):
            n_p = int(first_completion[i])
            assert n_p == int(first_completion[i + 8])
            assert ids[i, :n_p].tolist() == ids[i + 8, :n_p].tolist()
            assert ids[i, 0].item() == Q and ids[i, n_p - 1].item() == ARROW
    # Validation keeps row order: the first val batch is the first val rows.
    expected = dm.collate(dm.val_examples[:8])
    assert torch.equal(val[0]["input_ids"], expected["input_ids"])
    assert dm.val_prompts == [r["prompt"] for r in dm.split.val]


def test_datamodule_sft_shapes(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok, mode="sft", seed=0)
    train = list(dm.train_dataloader())
    assert len(train) == 8
    for batch in train + list(dm.val_dataloader()):
        assert batch["input_ids"].shape[0] == 8 and batch["input_ids"].shape[1] <= 48
        assert set(batch) == {"input_ids", "attention_mask", "loss_mask"}
    # SFT on preference rows trains on the chosen completion.
    row, example = dm.split.train[0], dm.train_examples[0]
    assert example["completion_ids"] == wid(row["chosen"]) + [EOS]


def _train_order(dm: PreferenceDataModule) -> list[list[int]]:
    return [ids for batch in dm.train_dataloader() for ids in batch["input_ids"].tolist()]


def test_datamodule_train_order_deterministic_in_seed(synth_tok) -> None:
    cfg = synthetic_data_cfg()
    split = load_split(cfg)
    a = _train_order(PreferenceDataModule(cfg, synth_tok, seed=0, split=split))
    b = _train_order(PreferenceDataModule(cfg, synth_tok, seed=0, split=split))
    c = _train_order(PreferenceDataModule(cfg, synth_tok, seed=1, split=split))
    assert a == b
    assert a != c
    # Shuffled: not the file order.
    dm = PreferenceDataModule(cfg, synth_tok, seed=0, split=split)
    in_order = [
        ids for i in range(0, 64, 8) for ids in dm.collate(dm.train_examples[i : i + 8])["input_ids"].tolist()
    ]
    assert a != in_order


def test_datamodule_uses_given_split(synth_tok) -> None:
    rows = [{"prompt": "Q: fox ->", "chosen": " red", "rejected": " blue"}] * 3
    split = Split(train=rows, val=rows[:1])
    dm = PreferenceDataModule(
        synthetic_data_cfg(name="bogus"), synth_tok, split=split
    )  # name never consulted
    assert dm.split is split
    assert dm.stats["data/train_rows"] == 3 and dm.stats["data/val_rows"] == 1
    batches = list(dm.train_dataloader())
    assert len(batches) == 1 and batches[0]["input_ids"].shape == (6, 5)  # 3 < batch_size: kept


def test_datamodule_drops_last_partial_batch(synth_tok) -> None:
    dm = PreferenceDataModule(synthetic_data_cfg(n_train=20), synth_tok)
    assert [b["input_ids"].shape[0] for b in dm.train_dataloader()] == [16, 16]
    dm = PreferenceDataModule(synthetic_data_cfg(n_val=12), synth_tok)
    assert [b["input_ids"].shape[0] for b in dm.val_dataloader()] == [16, 8]  # val keeps every row


def test_datamodule_stats(synth_tok) -> None:
    # Prompts are 4 tokens ("Q: k1 k2 ->"); max_prompt_length 3 cuts every prompt to 3, leaving
    # room 7 for each completion (2..8 words + EOS), so rows with a 7- or 8-word side are cut too.
    cfg = synthetic_data_cfg(max_length=10, max_prompt_length=3)
    dm = PreferenceDataModule(cfg, synth_tok)
    assert dm.stats["data/train_rows"] == 64 and dm.stats["data/val_rows"] == 16
    assert dm.stats["data/train_truncated"] == 64 and dm.stats["data/val_truncated"] == 16

    cfg = synthetic_data_cfg(max_length=10, max_prompt_length=4)  # prompts fit; room 6 for completion + EOS

    def expected(rows: list[dict[str, str]]) -> int:
        return sum(max(len(r["chosen"].split()), len(r["rejected"].split())) + 1 > 6 for r in rows)

    dm = PreferenceDataModule(cfg, synth_tok)
    n_train, n_val = expected(dm.split.train), expected(dm.split.val)
    assert 0 < n_train < 64
    assert dm.stats == {
        "data/train_rows": 64,
        "data/val_rows": 16,
        "data/train_truncated": n_train,
        "data/val_truncated": n_val,
        "data/train_dropped": 0,
        "data/val_dropped": 0,
        "data/source_bad_rows": 0,
    }
    for batch in dm.train_dataloader():
        assert batch["input_ids"].shape[1] <= 10

    dm = PreferenceDataModule(synthetic_data_cfg(), synth_tok)  # default lengths: nothing is cut
    assert dm.stats["data/train_truncated"] == 0 and dm.stats["data/val_truncated"] == 0


def test_datamodule_rejects_bad_lengths(synth_tok) -> None:
    with pytest.raises(ValueError, match="max_prompt_length"):
        PreferenceDataModule(synthetic_data_cfg(max_length=16, max_prompt_length=16), synth_tok)
