"""Property-based tests of the DataModule over random preference rows.

Random rows (unicode of every kind: control characters, NUL, emoji, RTL and bidi marks, zero-width
characters, lone surrogate escapes, special-token text, very long strings, empty or blank prompts
and answers, identical chosen/rejected, chat messages) are written to a ``.jsonl`` file and loaded
through the real :class:`PreferenceDataModule` in every mode, with tiny ``max_length`` /
``max_prompt_length`` and both ``data.on_bad_rows`` values. The outcome is a one-line
:class:`TralignError` naming the file or row, or a data module whose every example is the
documented encoding of its row (checked against an independent per-row tokenisation) and whose
every collated batch keeps the batch invariants (:func:`check_batch`). Counts and findings:
docs/hardening.md.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers.paths import pythia_tokenizer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tralign.data.collate import pad_fraction
from tralign.data.datamodule import PreferenceDataModule
from tralign.data.synthetic import SyntheticTask
from tralign.errors import TralignError

pytestmark = pytest.mark.fuzz  # hypothesis: python -m pytest -m 'not fuzz' skips these


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture(scope="module", params=["synthetic", "pythia"])
def tok(request):
    if request.param == "synthetic":
        return SyntheticTask().build_tokenizer()
    return pythia_tokenizer()


# --------------------------------------------------------------------------- random rows

WORDS = [*SyntheticTask().words()[:10], "Q:", "->"]  # known to the synthetic tokenizer
ODD = [
    "\x00", "\x01", "\x1b[31m", "\x7f", "\x85", "\x1c", "\t", "\r\n", "\n\n", " ", "\u00a0", "\u3000",
    "\u200b", "\u200d", "\u200e", "\u202e", "\u2066", "\ufeff", "\u2028", "e\u0301", "\U0001f600",
    "\U0001f44d\U0001f3fd", "\U0001f468\u200d\U0001f469\u200d\U0001f467", "مرحبا", "שלום", "日本語",
    "<|endoftext|>", "<|padding|>", "<eos>", "<pad>", "<unk>", "\\u0000", '"', "\\",
]  # fmt: skip
BLANK = st.sampled_from(["", " ", "\n", "\t \u3000", "\u200b"])
PIECE = st.one_of(
    st.sampled_from(WORDS), st.sampled_from(WORDS), st.sampled_from(ODD), st.text(min_size=1, max_size=4)
)
TEXT = st.one_of(
    st.lists(PIECE, min_size=1, max_size=8).map(" ".join),
    st.lists(PIECE, min_size=1, max_size=8).map("".join),
    st.builds(lambda piece, n: piece * n, PIECE, st.integers(50, 2000)),  # very long
    BLANK,
)
SURROGATE = st.sampled_from(["\ud800", "\udfff", "\udc80x"])  # lone halves: valid JSON escapes only


@st.composite
def spoiled(draw, text: st.SearchStrategy[str]) -> str:
    """Mostly ``text``; sometimes with a lone surrogate in it."""
    value = draw(text)
    return value + draw(SURROGATE) if draw(st.integers(0, 40)) == 17 else value


def _user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


def _answer(text: str) -> list[dict[str, str]]:
    return [{"role": "assistant", "content": text}]


@st.composite
def pair_rows(draw) -> dict[str, Any]:
    prompt, chosen = draw(st.one_of(spoiled(TEXT), BLANK)), draw(spoiled(TEXT))
    rejected = draw(st.one_of(spoiled(TEXT), st.sampled_from([chosen, chosen + " ", " " + chosen])))
    layout = draw(st.sampled_from(["strings", "strings", "chat_answer", "chat_whole"]))
    if layout == "strings":
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if layout == "chat_answer":
        system = [{"role": "system", "content": draw(TEXT)}] if draw(st.booleans()) else []
        chat_prompt = draw(st.sampled_from([prompt, system + _user(prompt)]))
        return {"prompt": chat_prompt, "chosen": _answer(chosen), "rejected": _answer(rejected)}
    other = draw(st.sampled_from([prompt, prompt, prompt + "?"]))  # differing turns: a bad row
    return {"chosen": _user(prompt) + _answer(chosen), "rejected": _user(other) + _answer(rejected)}


@st.composite
def unpaired_rows(draw) -> dict[str, Any]:
    prompt, completion = draw(st.one_of(spoiled(TEXT), BLANK)), draw(spoiled(TEXT))
    label = draw(st.sampled_from([True, False, True, False, "yes", 1, None]))
    if draw(st.booleans()):
        return {"prompt": prompt, "completion": completion, "label": label}
    return {"prompt": _user(prompt), "completion": _answer(completion), "label": label}


def _good(i: int, unpaired: bool) -> dict[str, Any]:
    prompt = f"Q: {WORDS[i % 10]} {WORDS[(i + 3) % 10]} ->"
    if unpaired:
        return {"prompt": prompt, "completion": f" {WORDS[(i + 1) % 10]}", "label": i % 2 == 0}
    return {"prompt": prompt, "chosen": f" {WORDS[(i + 1) % 10]}", "rejected": f" {WORDS[(i + 2) % 10]}"}


# max_prompt_length in [1, 16], max_length up to 12 above it
LENGTHS = st.tuples(st.integers(1, 16), st.integers(1, 12)).map(lambda t: (t[0] + t[1], t[0]))
# (mode, data.name, data.unpair): pair rows from jsonl (as pairs, or unpaired), unpaired rows; the
# last three are refused (the mode does not train on the source's kind of rows)
SETUPS = st.sampled_from(
    [("pair", "jsonl", False), ("sft", "jsonl", False), ("unpaired", "jsonl", True)] * 3
    + [("unpaired", "unpaired", False)] * 3
    + [("pair", "unpaired", False), ("sft", "jsonl", True), ("unpaired", "jsonl", False)]
)


# --------------------------------------------------------------------------- expected encoding


def expected(tok, row: dict[str, Any], mode: str, max_length: int, max_prompt_length: int):
    """The documented encoding of one row, one tokenizer call per text (the data module batches):
    (prompt_ids, completion ids per side, truncated?, cannot train?)."""
    eos = tok.eos_token_id

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    sides = (
        ("chosen", "rejected") if mode == "pair" else ("completion",) if "completion" in row else ("chosen",)
    )
    prompt = ids(row["prompt"]) or [tok.eos_token_id if tok.bos_token_id is None else tok.bos_token_id]
    truncated = len(prompt) > max_prompt_length
    prompt = prompt[len(prompt) - max_prompt_length :] if truncated else prompt
    completions, bad = [], False
    for side in sides:
        text_ids = ids(row[side])
        kept = (text_ids + [eos])[: max_length - len(prompt)]
        truncated |= len(kept) < len(text_ids) + 1
        bad |= not text_ids
        completions.append(kept)
    bad |= mode == "pair" and completions[0] == completions[1]
    return prompt, completions, truncated, bad


def check_examples(dm: PreferenceDataModule, tok, mode: str) -> None:
    """Every kept example is its row's encoding; bad rows were dropped; the stats count both."""
    ml, mpl = dm.lengths.max_length, dm.lengths.max_prompt_length
    for name, rows, examples in (
        ("train", dm.split.train, dm.train_examples),
        ("val", dm.split.val, dm.val_examples),
    ):
        encoded = [expected(tok, row, mode, ml, mpl) for row in rows]
        kept = [(e, row) for e, row in zip(encoded, rows, strict=True) if not e[3]]
        assert len(examples) == len(kept) == dm.stats[f"data/{name}_rows"]
        assert dm.stats[f"data/{name}_dropped"] == len(rows) - len(kept)
        assert dm.stats[f"data/{name}_truncated"] == sum(e[2] for e, _ in kept)
        assert dm.stats[f"data/{name}_truncated"] == sum(dm.tables[name]["truncated"])
        for k, ((prompt, completions, _, _), row) in enumerate(kept):
            example = examples[k]
            assert example["prompt_ids"] == prompt
            if mode == "pair":
                assert [example["chosen_ids"], example["rejected_ids"]] == completions
            else:
                assert [example["completion_ids"]] == completions
            if mode == "unpaired":
                assert example["label"] is row["label"]


def _check_block(ids, attention, loss, rows, pad_id: int, max_length: int) -> None:
    """One padded block: right padding, loss exactly on each row's completion, nothing too long."""
    width = max(len(p) + len(c) for p, c in rows)
    assert ids.shape == attention.shape == loss.shape == (len(rows), width)
    assert width <= max_length
    assert loss.dtype == torch.bool
    assert not (loss & (attention == 0)).any()  # loss_mask within attention_mask
    for r, (prompt, completion) in enumerate(rows):
        n_p, n = len(prompt), len(prompt) + len(completion)
        assert n_p >= 1 and len(completion) >= 1 and n <= max_length
        assert ids[r, :n].tolist() == prompt + completion
        assert attention[r, :n].all() and not attention[r, n:].any()  # padding: attention 0
        assert (ids[r, n:] == pad_id).all()
        assert not loss[r, :n_p].any()  # prompt tokens never in the loss
        assert loss[r, n_p:n].all() and not loss[r, n:].any()
        assert not loss[r, 0] and loss[r, 1:].sum() >= 1  # >= 1 token that something predicts


def check_batch(batch: dict[str, torch.Tensor], examples: list[dict], mode: str, dm) -> None:
    pad_id, ml = dm.tokenizer.pad_token_id, dm.lengths.max_length
    if mode == "pair":
        rows = [(e["prompt_ids"], e["chosen_ids"]) for e in examples]
        rows += [(e["prompt_ids"], e["rejected_ids"]) for e in examples]
    else:
        rows = [(e["prompt_ids"], e["completion_ids"]) for e in examples]
    ids, attention, loss = batch["input_ids"], batch["attention_mask"], batch["loss_mask"]
    _check_block(ids, attention, loss, rows, pad_id, ml)
    if mode == "pair":  # chosen row i and rejected row B + i share the prompt's tokens
        b = len(examples)
        for i, e in enumerate(examples):
            n_p = len(e["prompt_ids"])
            assert torch.equal(ids[i, :n_p], ids[b + i, :n_p])
            assert not loss[i, :n_p].any() and not loss[b + i, :n_p].any()
    positions = len(rows) * max(len(p) + len(c) for p, c in rows)
    assert pad_fraction(batch) == pytest.approx(1 - sum(len(p) + len(c) for p, c in rows) / positions)
    if mode == "unpaired":
        assert batch["labels"].tolist() == [bool(e["label"]) for e in examples]
        kl_rows = [(e["prompt_ids"], None) for e in examples]
        kl_ids = batch["kl_input_ids"]
        for i, e in enumerate(examples):  # prompt i + the start of another row's completion
            n_p = len(e["prompt_ids"])
            borrowed = kl_ids[i, n_p : int(batch["kl_attention_mask"][i].sum())].tolist()
            assert any(o["completion_ids"][: len(borrowed)] == borrowed for o in examples)
            kl_rows[i] = (e["prompt_ids"], borrowed)
        _check_block(kl_ids, batch["kl_attention_mask"], batch["kl_loss_mask"], kl_rows, pad_id, ml)


def check_batches(dm: PreferenceDataModule, mode: str) -> None:
    loader = dm.train_dataloader()
    indices = list(loader.batch_sampler)  # a function of (seed, epoch): the loader's own batches
    batches = list(loader)
    assert len(batches) == len(indices) >= 1
    seen = [i for batch in indices for i in batch]
    assert len(seen) == len(set(seen))  # no row twice in an epoch
    for idx, batch in zip(indices, batches, strict=True):
        check_batch(batch, [dm.train_examples[i] for i in idx], mode, dm)
    size = int(dm.cfg["eval_batch_size"])
    val = list(dm.val_dataloader())
    assert len(val) == -(-len(dm.val_examples) // size)
    for b, batch in enumerate(val):
        check_batch(batch, list(dm.val_examples[b * size : (b + 1) * size]), mode, dm)


# --------------------------------------------------------------------------- the property


def _jsonl(rows: list[Any], ascii_only: bool) -> bytes:
    lines = []
    for row in rows:
        line = json.dumps(row, ensure_ascii=ascii_only)
        try:
            lines.append(line.encode("utf-8"))
        except UnicodeEncodeError:  # a lone surrogate: only its \\u escape is valid JSON text
            lines.append(json.dumps(row).encode())
    return b"".join(line + b"\n" for line in lines)


def load_and_check(tok, rows: list[Any], mode: str, **data: Any) -> str:
    """Build the data module from ``rows``; return "error: MESSAGE" (a one-line TralignError naming
    the file or a row) or "ok" (after checking every example and batch)."""
    ascii_only = data.pop("ascii_only", True)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "prefs.jsonl"
        path.write_bytes(_jsonl(rows, ascii_only))
        cfg = {
            "name": "jsonl",
            "path": str(path),
            "val_fraction": 0.25,
            "split_seed": 0,
            "batch_size": 3,
            "eval_batch_size": 2,
            "num_workers": 0,
            "cache": False,
            **data,
        }
        try:
            dm = PreferenceDataModule(cfg, tok, mode=mode, seed=0)
        except TralignError as err:
            message = str(err)
            assert len(message.splitlines()) == 1, message
            assert path.name in message or "row" in message, message
            return f"error: {message.replace(str(path), 'FILE')}"
        check_examples(dm, tok, mode)
        check_batches(dm, mode)
        return "ok"


def _event(outcome: str) -> None:
    event(outcome[:60])


@fuzz(150)
@given(
    st.data(),
    st.integers(0, 6),
    SETUPS,
    st.sampled_from(["error", "skip"]),
    LENGTHS,
    st.booleans(),
    st.booleans(),
)
def test_random_rows_load_cleanly_or_fail_in_one_line(
    tok, data, n_good, setup, on_bad_rows, lengths, group_by_length, ascii_only
):
    mode, name, unpair = setup
    unpaired_layout = name == "unpaired"
    layout = st.one_of(*[unpaired_rows()] * 4, pair_rows()) if unpaired_layout else pair_rows()
    rows = data.draw(st.lists(layout, min_size=0 if n_good else 1, max_size=5))
    rows = [_good(i, unpaired_layout) for i in range(n_good)] + rows
    outcome = load_and_check(
        tok,
        rows,
        mode,
        name=name,
        unpair=unpair,
        on_bad_rows=on_bad_rows,
        max_length=lengths[0],
        max_prompt_length=lengths[1],
        group_by_length=group_by_length,
        ascii_only=ascii_only,
    )
    _event(outcome)
    # Good rows only, of a kind the mode trains on: never an error.
    if n_good >= 2 and len(rows) == n_good and setup in SETUPS.elements[:4]:
        assert outcome == "ok", outcome


@fuzz(80)
@given(
    st.lists(pair_rows(), min_size=0, max_size=6),
    st.sampled_from(["pair", "sft"]),
    st.sampled_from(["error", "skip"]),
    LENGTHS,
    st.booleans(),
)
def test_rows_with_long_and_blank_text_in_good_company(tok, rows, mode, on_bad_rows, lengths, cache):
    """Six good rows and a few random ones: with on_bad_rows=skip the random ones are dropped and
    counted, never an error. ``cache``: through the Arrow cache (conftest points it at a temp dir)."""
    outcome = load_and_check(
        tok,
        [_good(i, False) for i in range(6)] + rows,
        mode,
        on_bad_rows=on_bad_rows,
        max_length=lengths[0],
        max_prompt_length=lengths[1],
        cache=cache,
    )
    _event(outcome)
    if on_bad_rows == "skip":  # good rows always train; the held-out ones may all be bad
        assert outcome == "ok" or "no validation rows left" in outcome, outcome
