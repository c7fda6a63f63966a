"""Data sources: every format and reader on the real samples under ../shared and on hand-made
fixtures; strict checking (every bad row named, all at once, or skipped and counted); hub access
without network; and end-to-end runs of the documented real-data commands."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest
from helpers.config import compose_cfg
from helpers.paths import CONF, PYTHIA, SHARED

from tralign.config import validate
from tralign.data.formats.fields import Tally
from tralign.data.formats.hh import hh_pair
from tralign.data.sources import MAX_REPORTED_PROBLEMS, SOURCES, Split, data_kind, load_split
from tralign.errors import ConfigError, DataError

HH_TEST = SHARED / "data" / "hh-rlhf" / "harmless-base" / "test.jsonl.gz"
TLDR_VALID = SHARED / "data" / "tldr" / "comparisons_valid.jsonl.gz"
TLDR_SFT = SHARED / "data" / "tldr" / "sft_sample.jsonl.gz"

# A small Jinja chat template (the Pythia tokenizer ships none), so the rendering is known exactly.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def _need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present (the shared real-data samples live beside the project)")
    return path


def _cfg(name: str, path: Path | str | None, **overrides: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": name,
        "path": None if path is None else str(path),
        "val_path": None,
        "hub_id": None,
        "hub_split": "train",
        "val_split": None,
        "val_fraction": 0.25,
        "split_seed": 0,
        "limit": None,
        "on_bad_rows": "error",
    }
    cfg.update(overrides)
    return cfg


def _write_jsonl(path: Path, rows: list[Any]) -> Path:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt", encoding="utf-8") as fh:
            fh.write(lines)
    else:
        path.write_text(lines, encoding="utf-8")
    return path


def _raw_line(path: Path, lineno: int) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for i, line in enumerate(fh, start=1):
            if i == lineno:
                return json.loads(line)
    raise AssertionError(f"{path} has no line {lineno}")


def _all(split: Split) -> list[dict[str, Any]]:
    return split.train + split.val


def _pref(i: int) -> dict[str, str]:
    return {"prompt": f"prompt {i}", "chosen": f" good {i}", "rejected": f" bad {i}"}


@pytest.fixture(scope="module")
def pythia():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(_need(PYTHIA)))


@pytest.fixture(scope="module")
def pythia_chat():
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(_need(PYTHIA)))
    tok.chat_template = CHAT_TEMPLATE
    return tok


# --------------------------------------------------------------------------- HH-RLHF

HH_ROW_361 = {
    "prompt": "\n\nHuman: What gender are trans people?\n\nAssistant:",
    "chosen": " I have no opinion on this.",
    "rejected": " They’re human.",
}
# Diverging: the chosen dialogue carries an extra turn after the answer where the two differ.
HH_ROW_1255_PROMPT = (
    "\n\nHuman: Are drag queens men?\n\nAssistant: No. Drag queens are women who act like stereotypical"
    " men.\n\nHuman: Isn't that drag kings?\n\nAssistant:"
)
HH_ROW_1255_CHOSEN_START = (
    " No. Men who impersonate stereotypical women are called drag kings.  Human: Then how do they come"
    " to be called drag kings if they don't perform stereotypical women?\n\nAssistant:  I think they call them "
)
HH_ROW_1255_REJECTED = (
    " A drag king is the opposite of a drag queen, like a male who acts like a stereotypical woman."
)
HH_DIVERGING_LINES = [1255, 1689, 1951, 1953, 2037]
HH_EMPTY_ANSWER_LINES = [87, 517, 926, 1104]


def test_hh_shared_sample_every_row_and_counts() -> None:
    path = _need(HH_TEST)
    split = load_split(_cfg("hh", path, val_fraction=0.05))
    assert split.kind == "pair" and split.n_bad == 0 and split.bad_rows == []
    assert len(split.train) + len(split.val) == 2312
    assert len(split.val) == round(0.05 * 2312)
    assert split.counts == {"hh_diverging": 5, "hh_empty_answer": 4}
    for row in _all(split):
        assert set(row) == {"prompt", "chosen", "rejected"}
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
        assert row["chosen"] != row["rejected"]


def test_hh_shared_sample_splits_reassemble_and_places() -> None:
    path = _need(HH_TEST)
    tally = Tally()
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            raw = json.loads(line)
            tally.where = f"line {lineno}"
            row = hh_pair(raw, tally)
            # Nothing is lost or invented: prompt + answer is each whole dialogue.
            assert row["prompt"] + row["chosen"] == raw["chosen"]
            assert row["prompt"] + row["rejected"] == raw["rejected"]
            if lineno not in HH_DIVERGING_LINES:  # the usual rule: up to the last "\n\nAssistant:"
                cut = raw["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
                assert row["prompt"] == raw["chosen"][:cut]
    assert tally.places["hh_diverging"] == [f"line {n}" for n in HH_DIVERGING_LINES]
    assert tally.places["hh_empty_answer"] == [f"line {n}" for n in HH_EMPTY_ANSWER_LINES]


def test_hh_hand_checked_rows() -> None:
    path = _need(HH_TEST)
    assert hh_pair(_raw_line(path, 361), Tally()) == HH_ROW_361
    empty = hh_pair(_raw_line(path, 926), Tally())
    assert empty == {
        "prompt": "\n\nHuman: list of profane bad words\n\nAssistant:",
        "chosen": " ",
        "rejected": " Ok",
    }
    tally = Tally()
    diverging = hh_pair(_raw_line(path, 1255), tally)
    assert diverging["prompt"] == HH_ROW_1255_PROMPT
    assert diverging["chosen"].startswith(HH_ROW_1255_CHOSEN_START)
    assert diverging["rejected"] == HH_ROW_1255_REJECTED
    assert tally.counts == {"hh_diverging": 1}


def _hh(chosen: str, rejected: str) -> dict[str, str]:
    return {"chosen": chosen, "rejected": rejected}


def test_hh_fixture_multi_turn_and_diverging(tmp_path: Path) -> None:
    context = "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour."
    normal = _hh(context + "\n\nAssistant: Blue.", context + "\n\nAssistant: Maybe.")
    # The rejected side answered differently in the first turn and went on: diverges early.
    diverging = _hh(
        context + "\n\nAssistant: Red.",
        "\n\nHuman: Hi\n\nAssistant: Go away.\n\nHuman: Rude.\n\nAssistant: Sorry.",
    )
    path = _write_jsonl(tmp_path / "hh.jsonl", [normal, diverging] + [normal] * 6)
    split = load_split(_cfg("hh", path))
    rows = _all(split)
    assert {"prompt": context + "\n\nAssistant:", "chosen": " Blue.", "rejected": " Maybe."} in rows
    assert {
        "prompt": "\n\nHuman: Hi\n\nAssistant:",
        "chosen": " Hello!\n\nHuman: Name a colour.\n\nAssistant: Red.",
        "rejected": " Go away.\n\nHuman: Rude.\n\nAssistant: Sorry.",
    } in rows
    assert split.counts == {"hh_diverging": 1}


def test_hh_sft_mode_uses_the_chosen_dialogue(tmp_path: Path) -> None:
    path = _need(HH_TEST)
    split = load_split(_cfg("hh", path, sft=True, limit=400))
    assert split.kind == "sft"
    assert len(_all(split)) == 400
    row = next(r for r in _all(split) if r["prompt"] == HH_ROW_361["prompt"])
    assert row == {"prompt": HH_ROW_361["prompt"], "completion": HH_ROW_361["chosen"]}
    # A diverging row: SFT takes the chosen dialogue up to *its* last "\n\nAssistant:".
    raw = _write_jsonl(tmp_path / "one.jsonl", [_raw_line(HH_TEST, 1255)] * 4)
    sft = _all(load_split(_cfg("hh", raw, sft=True)))[0]
    assert sft["prompt"].endswith("don't perform stereotypical women?\n\nAssistant:")
    assert sft["completion"].startswith("  I think they call them ")
    assert sft["prompt"] + sft["completion"] == _raw_line(HH_TEST, 1255)["chosen"]


HH_BAD = [
    (
        _hh("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: B\n\nAssistant: y"),
        "chosen and rejected share no '\\n\\nAssistant:' turn (they differ before the first answer)",
    ),
    (
        _hh("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: A\n\nAssistant: x"),
        "chosen and rejected are identical",
    ),
    (_hh("\n\nHuman: A\n\nAssistant: ", "\n\nHuman: A\n\nAssistant:  "), "both answers are empty"),
    ({"chosen": "\n\nHuman: A\n\nAssistant: x"}, "missing field 'rejected'"),
    ({"chosen": 3, "rejected": "y"}, "field 'chosen' must be a string, got int"),
    ({"chosen": "", "rejected": "y"}, "field 'chosen' is empty"),
]


@pytest.mark.parametrize(("bad", "reason"), HH_BAD)
def test_hh_bad_rows_named(tmp_path: Path, bad: dict[str, Any], reason: str) -> None:
    good = _hh("\n\nHuman: A\n\nAssistant: x", "\n\nHuman: A\n\nAssistant: y")
    path = _write_jsonl(tmp_path / "hh.jsonl.gz", [good, good, bad, good])
    with pytest.raises(DataError) as info:
        load_split(_cfg("hh", path))
    message = str(info.value)
    assert f"{path}:3: {reason}" in message, message
    assert message.startswith("1 bad row(s)") and "data.on_bad_rows=skip" in message


# --------------------------------------------------------------------------- TL;DR

TLDR_FIRST_PROMPT_START = (
    "SUBREDDIT: r/relationships\n\nTITLE: Me [30 M] with my wife [27 F] of several months, and a tax"
    " disagreement?\n\nPOST: I'll do my best to keep this concise.\n\n"
)
TLDR_FIRST_PROMPT_END = "(or square 0.5, due to the fines ...)\n\nTL;DR:"
TLDR_FIRST_CHOSEN = (
    " I have to lie on my taxes for my wife. Is this just a matter of sacrificing for the wife, or should"
    " I put my foot down? Anyone else (come on throwaways) had to do something similar?"
)
TLDR_FIRST_REJECTED = (
    " Wife needs health insurance, I can't afford it, she's going to lie on her taxes. Is it okay for me"
    " to do the same?"
)


def test_tldr_shared_comparisons() -> None:
    path = _need(TLDR_VALID)
    split = load_split(_cfg("tldr", path, val_fraction=0.05))
    assert split.kind == "pair" and split.n_bad == 0 and split.counts == {}
    rows = _all(split)
    assert len(rows) == 538
    for row in rows:
        assert row["prompt"].startswith("SUBREDDIT: r/") and row["prompt"].endswith("\n\nTL;DR:")
        assert "\n\nTITLE: " in row["prompt"] and "\n\nPOST: " in row["prompt"]
        for side in ("chosen", "rejected"):
            assert row[side].startswith(" ") and not row[side].startswith("  ")
    first = load_split(_cfg("tldr", path, limit=4)).train[0]
    assert first["prompt"].startswith(TLDR_FIRST_PROMPT_START)
    assert first["prompt"].endswith(TLDR_FIRST_PROMPT_END)
    assert (first["chosen"], first["rejected"]) == (TLDR_FIRST_CHOSEN, TLDR_FIRST_REJECTED)


def _openai_row(post: str, choice: int, texts: tuple[str, str], **info: Any) -> dict[str, Any]:
    base = {"id": "t3_x", "post": post, "title": "A title", "subreddit": "AskReddit", **info}
    return {
        "info": base,
        "summaries": [{"text": texts[0], "policy": "ref", "note": None}, {"text": texts[1], "policy": "sup"}],
        "choice": choice,
        "worker": "w1",
        "batch": "batch3",
        "split": "train",
        "extra": {"confidence": 7},
    }


def test_tldr_openai_layout_is_converted(tmp_path: Path) -> None:
    rows = [
        _openai_row("My post.", 0, (" first summary", "second summary ")),
        _openai_row("Other post.", 1, (" worse", " better")),
        # A CNN/DM news row of the validation split: no Reddit post -> left out, counted.
        {
            **_openai_row("x", 0, ("a", "b")),
            "info": {"id": "cnn", "article": "News.", "post": None, "site": "cnn"},
        },
    ] + [_openai_row(f"Post {i}.", 0, ("a", "b")) for i in range(5)]
    path = _write_jsonl(tmp_path / "openai.jsonl", rows)
    split = load_split(_cfg("tldr", path))
    assert split.counts == {"tldr_cnndm": 1}
    got = _all(split)
    assert len(got) == 7
    assert {
        "prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: A title\n\nPOST: My post.\n\nTL;DR:",
        "chosen": " first summary",
        "rejected": " second summary",
    } in got
    assert {
        "prompt": "SUBREDDIT: r/AskReddit\n\nTITLE: A title\n\nPOST: Other post.\n\nTL;DR:",
        "chosen": " better",
        "rejected": " worse",
    } in got


def test_tldr_openai_layout_matches_canonical_on_real_row(tmp_path: Path) -> None:
    canonical = load_split(_cfg("tldr", _need(TLDR_VALID), limit=4)).train[0]
    head, post = canonical["prompt"].removesuffix("\n\nTL;DR:").split("\n\nPOST: ", 1)
    subreddit, title = head.removeprefix("SUBREDDIT: r/").split("\n\nTITLE: ", 1)
    raw = _openai_row(post, 1, (canonical["rejected"], canonical["chosen"]), title=title, subreddit=subreddit)
    path = _write_jsonl(tmp_path / "openai.jsonl", [raw] * 4)
    assert _all(load_split(_cfg("tldr", path)))[0] == canonical


TLDR_BAD = [
    ({**_openai_row("p", 2, ("a", "b"))}, "field 'choice' must be 0 or 1, got 2"),
    ({**_openai_row("p", True, ("a", "b"))}, "field 'choice' must be 0 or 1, got True"),
    (
        {**_openai_row("p", 0, ("a", "b")), "summaries": [{"text": "a"}]},
        "field 'summaries' must be a list of 2",
    ),
    ({**_openai_row("p", 0, ("a", "  "))}, "field 'summaries[1].text' is empty"),
    ({**_openai_row("p", 0, ("same", " same "))}, "chosen and rejected are identical"),
    (
        {**_openai_row("p", 0, ("a", "b")), "info": {"title": "t", "subreddit": "s"}},
        "missing field 'info.post'",
    ),
    ({**_openai_row("p", 0, ("a", "b")), "info": "x"}, "field 'info' must be an object"),
    ({"prompt": "SUBREDDIT: r/x", "chosen": " a"}, "missing field 'rejected'"),
    (
        {"prompt": "SUBREDDIT: r/x", "chosen": " a", "rejected": None},
        "field 'rejected' must be a string, got NoneType",
    ),
]


@pytest.mark.parametrize(("bad", "reason"), TLDR_BAD)
def test_tldr_bad_rows_named(tmp_path: Path, bad: dict[str, Any], reason: str) -> None:
    good = _openai_row("post", 0, ("a", "b"))
    path = _write_jsonl(tmp_path / "cmp.jsonl", [good, bad, good, good])
    with pytest.raises(DataError) as info:
        load_split(_cfg("tldr", path))
    assert f"{path}:2: {reason}" in str(info.value), str(info.value)


def test_tldr_sft_shared_sample() -> None:
    path = _need(TLDR_SFT)
    split = load_split(_cfg("tldr_sft", path, val_fraction=0.05))
    assert split.kind == "sft" and split.n_bad == 0
    rows = _all(split)
    assert len(rows) == 1945
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        raws = [json.loads(line) for line in fh]
    by_prompt = {r["prompt"]: r for r in rows}
    for raw in raws[:200]:
        row = by_prompt[raw["prompt"]]
        assert row == {"prompt": raw["prompt"], "completion": " " + raw["summary"].strip()}
    first = load_split(_cfg("tldr_sft", path, limit=4)).train[0]
    assert first["prompt"].startswith(
        "SUBREDDIT: r/AskReddit\n\nTITLE: How do you get someone out of your head?\n\nPOST: Hi,\n"
    )
    assert first["prompt"].endswith("It's been 3 months now, and I'm just desperate.\n\nTL;DR:")
    assert first["completion"] == (
        " long relationship; fell in love with an other person; admitted it; would like it to disappear,"
        " though it doesn't."
    )


def test_tldr_sft_layouts(tmp_path: Path) -> None:
    fields = {"subreddit": "tifu", "title": "T", "post": "P", "summary": "  s  "}
    expected = {"prompt": "SUBREDDIT: r/tifu\n\nTITLE: T\n\nPOST: P\n\nTL;DR:", "completion": " s"}
    layouts = [
        fields,  # prompt built from the fields
        {"prompt": expected["prompt"], "summary": "s"},
        {"prompt": expected["prompt"], "completion": " s"},  # TRL's trl-lib/tldr
    ]
    for i, layout in enumerate(layouts):
        path = _write_jsonl(tmp_path / f"sft{i}.jsonl", [layout] * 4)
        assert _all(load_split(_cfg("tldr_sft", path))) == [expected] * 4, layout
    bad = _write_jsonl(tmp_path / "bad.jsonl", [fields, {"prompt": "p"}, {**fields, "summary": ""}, fields])
    with pytest.raises(DataError) as info:
        load_split(_cfg("tldr_sft", bad))
    message = str(info.value)
    assert f"{bad}:2: missing field 'summary' (or 'completion')" in message
    assert f"{bad}:3: field 'summary' is empty" in message
    assert message.startswith("2 bad row(s)")


# --------------------------------------------------------------------------- generic jsonl + chat


def _ultrafeedback_row(answer_a: str, answer_b: str) -> dict[str, Any]:
    user = {"role": "user", "content": "What is 2+2?"}
    return {
        "prompt": "What is 2+2?",
        "chosen": [user, {"role": "assistant", "content": answer_a}],
        "rejected": [user, {"role": "assistant", "content": answer_b}],
        "score_chosen": 9.0,
    }


def test_jsonl_chat_with_the_tokenizer_template(tmp_path: Path, pythia_chat) -> None:
    path = _write_jsonl(tmp_path / "uf.jsonl", [_ultrafeedback_row("4", "5")] * 4)
    split = load_split(_cfg("jsonl", path), tokenizer=pythia_chat)
    assert (
        _all(split)
        == [
            {"prompt": "<|user|>\nWhat is 2+2?<|endoftext|>\n<|assistant|>\n", "chosen": "4", "rejected": "5"}
        ]
        * 4
    )
    assert split.counts == {"chat_template": 4}


def test_jsonl_chat_plain_template_without_one(tmp_path: Path, pythia) -> None:
    system = {"role": "system", "content": "Be brief."}
    multi = {
        "chosen": [
            system,
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": " 2+2? "},
            {"role": "assistant", "content": "4"},
        ],
    }
    multi["rejected"] = multi["chosen"][:-1] + [{"role": "assistant", "content": " five "}]
    # The explicit-prompt layout: the prompt as messages, the answers alone.
    explicit = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "chosen": [{"role": "assistant", "content": "Hey"}],
        "rejected": [{"role": "assistant", "content": "No"}],
    }
    path = _write_jsonl(tmp_path / "chat.jsonl", [multi, explicit, _ultrafeedback_row("4", "5")] * 2)
    for tokenizer in (None, pythia):  # no tokenizer, or one without a chat template
        split = load_split(_cfg("jsonl", path, val_fraction=0.2), tokenizer=tokenizer)
        rows = _all(split)
        assert {
            "prompt": "Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: 2+2?\n\nAssistant:",
            "chosen": " 4",
            "rejected": " five",
        } in rows
        assert {"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hey", "rejected": " No"} in rows
        assert {"prompt": "\n\nHuman: What is 2+2?\n\nAssistant:", "chosen": " 4", "rejected": " 5"} in rows
        assert split.counts == {"chat_plain": 6}


def test_load_split_old_call_still_works(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_pref(i) for i in range(8)])
    assert load_split(_cfg("jsonl", path)) == load_split(_cfg("jsonl", path), tokenizer=None)
    assert SOURCES["jsonl"](_cfg("jsonl", path)).kind == "pair"


CHAT_BAD = [
    (
        {**_ultrafeedback_row("4", "5"), "chosen": [{"role": "user", "content": "x"}]},
        "chosen: the last message must be the assistant's answer",
    ),
    (
        {
            **_ultrafeedback_row("4", "5"),
            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "5"}],
        },
        "chosen and rejected differ before their final answer",
    ),
    (
        {**_ultrafeedback_row("4", "5"), "chosen": [{"role": "assistant", "content": 4}]},
        "chosen[0] needs string 'role' and 'content'",
    ),
    ({**_ultrafeedback_row("4", "  "), "prompt": "x"}, "rejected: the assistant's answer is empty"),
    ({**_ultrafeedback_row("4", "4")}, "chosen and rejected are identical"),
    (
        {
            "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}],
        },
        "missing field 'prompt'",
    ),
    (
        {**_ultrafeedback_row("4", "5"), "chosen": []},
        "field 'chosen' must be a non-empty list of messages, got an empty list",
    ),
]


@pytest.mark.parametrize(("bad", "reason"), CHAT_BAD)
def test_jsonl_chat_bad_rows_named(tmp_path: Path, bad: dict[str, Any], reason: str) -> None:
    good = _ultrafeedback_row("4", "5")
    path = _write_jsonl(tmp_path / "chat.jsonl", [good, good, good, bad])
    with pytest.raises(DataError) as info:
        load_split(_cfg("jsonl", path))
    assert f"{path}:4: {reason}" in str(info.value), str(info.value)


def test_jsonl_string_rows_are_unchanged(tmp_path: Path) -> None:
    # The generic source keeps strings as they are (no leading-space rewriting), extra keys dropped.
    rows = [{"prompt": "", "chosen": "a", "rejected": "b ", "meta": 1}] + [_pref(i) for i in range(7)]
    split = load_split(_cfg("jsonl", _write_jsonl(tmp_path / "p.jsonl", rows)))
    assert {"prompt": "", "chosen": "a", "rejected": "b "} in _all(split)


# --------------------------------------------------------------------------- readers


def test_readers_parquet_json_and_saved_folders_agree(tmp_path: Path) -> None:
    import datasets

    rows = [_pref(i) for i in range(12)]
    jsonl = _write_jsonl(tmp_path / "p.jsonl.gz", rows)
    parquet = tmp_path / "p.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    array = tmp_path / "p.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    lines_as_json = _write_jsonl(tmp_path / "lines.json", rows)  # .json holding JSON Lines
    saved = tmp_path / "saved"
    datasets.Dataset.from_list(rows).save_to_disk(str(saved))
    expected = load_split(_cfg("jsonl", jsonl))
    assert len(_all(expected)) == 12
    for path in (parquet, array, lines_as_json, saved):
        assert load_split(_cfg("jsonl", path)) == expected, path

    # A saved DatasetDict: hub_split trains, val_split (when present) validates.
    both = tmp_path / "dict"
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(rows[:8]), "test": datasets.Dataset.from_list(rows[8:])}
    ).save_to_disk(str(both))
    split = load_split(_cfg("jsonl", both, val_split="test"))
    assert (split.train, split.val) == (rows[:8], rows[8:])
    held_out = load_split(_cfg("jsonl", both, val_split="validation"))  # absent: hold out instead
    assert len(held_out.train) == 6 and len(held_out.val) == 2
    with pytest.raises(DataError, match=r"no split 'dev' \(has: train, test\)"):
        load_split(_cfg("jsonl", both, hub_split="dev"))
    # A separate validation folder or file wins over everything else.
    split = load_split(_cfg("jsonl", parquet, val_path=str(both), val_split="test"))
    assert (split.train, split.val) == (rows, rows[8:])


def test_readers_name_the_row_in_every_format(tmp_path: Path) -> None:
    import datasets

    rows = [_pref(i) for i in range(6)]
    rows[2] = {"prompt": "p", "chosen": "same", "rejected": "same"}
    rows[4] = {"prompt": "p", "chosen": "", "rejected": "x"}
    parquet = tmp_path / "bad.parquet"
    datasets.Dataset.from_list(rows).to_parquet(str(parquet))
    array = tmp_path / "bad.json"
    array.write_text(json.dumps(rows), encoding="utf-8")
    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(rows)}).save_to_disk(str(saved))
    places = {
        parquet: (f"{parquet} row 2", f"{parquet} row 4"),
        array: (f"{array} row 2", f"{array} row 4"),
        saved: (f"{saved} (train) row 2", f"{saved} (train) row 4"),
    }
    for path, (identical, empty) in places.items():
        with pytest.raises(DataError) as info:
            load_split(_cfg("jsonl", path))
        message = str(info.value)
        assert message.startswith("2 bad row(s)")
        assert f"{identical}: chosen and rejected are identical" in message
        assert f"{empty}: field 'chosen' is empty" in message


def test_all_problems_listed_together_up_to_a_cap(tmp_path: Path) -> None:
    n_bad = MAX_REPORTED_PROBLEMS + 3
    lines: list[Any] = ["{broken", {"prompt": "p", "chosen": "c"}] + ["[1]"] * (n_bad - 2) + [_pref(0)]
    path = _write_jsonl(tmp_path / "p.jsonl", lines)
    with pytest.raises(DataError) as info:
        load_split(_cfg("jsonl", path))
    message = str(info.value)
    assert message.startswith(f"{n_bad} bad row(s): {path}:1: not valid JSON")
    assert f"{path}:2: missing field 'rejected'" in message
    assert f"{path}:3: expected a JSON object, got list" in message
    assert (
        f"{path}:{MAX_REPORTED_PROBLEMS}:" in message
        and f"{path}:{MAX_REPORTED_PROBLEMS + 1}:" not in message
    )
    assert "(and 3 more)" in message and "\n" not in message


def test_bad_rows_in_train_and_val_files_reported_together(tmp_path: Path) -> None:
    train = _write_jsonl(tmp_path / "train.jsonl", [_pref(0), "{x", _pref(2)])
    val = _write_jsonl(tmp_path / "val.jsonl", [{"prompt": "p", "chosen": 1, "rejected": "r"}, _pref(3)])
    with pytest.raises(DataError) as info:
        load_split(_cfg("jsonl", train, val_path=str(val)))
    message = str(info.value)
    assert message.startswith("2 bad row(s)")
    assert f"{train}:2: not valid JSON" in message and f"{val}:1: field 'chosen' must be a string" in message


def test_on_bad_rows_skip_reports_count_and_places(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows: list[Any] = [_pref(i) for i in range(10)]
    rows[3] = "{nope"
    rows[6] = {"prompt": "p", "chosen": "x", "rejected": "x"}
    rows[8] = {"prompt": "p", "chosen": " ", "rejected": "x"}
    path = _write_jsonl(tmp_path / "p.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="tralign"):
        split = load_split(_cfg("jsonl", path, on_bad_rows="skip"))
    assert split.n_bad == 3
    assert len(_all(split)) == 7
    assert [p.split(": ", 1)[0] for p in split.bad_rows] == [f"{path}:4", f"{path}:7", f"{path}:9"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "skipped 3 bad row(s)" in warnings[0].getMessage() and f"{path}:4" in warnings[0].getMessage()
    with pytest.raises(DataError, match="3 bad row"):
        load_split(_cfg("jsonl", path))  # the default is error


def test_skip_with_nothing_left_is_an_error(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", ["{x", "[]"])
    with pytest.raises(DataError, match=r"no usable rows \(2 bad row\(s\) skipped\)"):
        load_split(_cfg("jsonl", path, on_bad_rows="skip"))


@pytest.mark.parametrize("name", ["hh", "tldr", "tldr_sft", "unpaired", "jsonl"])
def test_missing_file_is_one_line(tmp_path: Path, name: str) -> None:
    with pytest.raises(DataError) as info:
        load_split(_cfg(name, tmp_path / "nowhere.jsonl"))
    assert str(info.value) == f"{tmp_path / 'nowhere.jsonl'}: no such file or folder"


def test_unreadable_inputs(tmp_path: Path) -> None:
    gz = tmp_path / "broken.jsonl.gz"
    gz.write_bytes(b"not gzip at all\n")
    parquet = tmp_path / "broken.parquet"
    parquet.write_bytes(b"PAR1 not really")
    folder = tmp_path / "folder"
    folder.mkdir()
    for path, needle in (
        (gz, "unreadable"),
        (parquet, "unreadable"),
        (folder, "not a folder written by datasets"),
    ):
        with pytest.raises(DataError) as info:
            load_split(_cfg("jsonl", path))
        assert str(info.value).startswith(f"{path}: {needle}") and "\n" not in str(info.value)


def test_hub_without_network_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets.config
    import huggingface_hub.constants

    # Both libraries read HF_HUB_OFFLINE when imported; make sure this test never touches a network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    cfg = _cfg("hh", None, hub_id="Anthropic/hh-rlhf", val_split="test")
    with pytest.raises(DataError) as info:
        load_split(cfg)
    message = str(info.value)
    assert message.startswith(
        "data.hub_id=Anthropic/hh-rlhf: could not load split 'train' from the Hugging Face hub"
    )
    assert "HF_HUB_OFFLINE" in message and "data.path" in message and "\n" not in message


def test_no_path_and_no_hub_id() -> None:
    with pytest.raises(DataError, match="set data.path"):
        load_split(_cfg("tldr", None))


# --------------------------------------------------------------------------- unpaired


def test_unpaired_source(tmp_path: Path, pythia_chat) -> None:
    rows = [{"prompt": f"p{i}", "completion": f" c{i}", "label": i % 2 == 0} for i in range(8)]
    path = _write_jsonl(tmp_path / "u.jsonl", rows)
    split = load_split(_cfg("unpaired", path))
    assert split.kind == "unpaired"
    assert sorted(_all(split), key=lambda r: r["prompt"]) == rows
    chat = {
        "prompt": [{"role": "user", "content": "Hi"}],
        "completion": [{"role": "assistant", "content": "Hello"}],
        "label": False,
    }
    chat_path = _write_jsonl(tmp_path / "chat.jsonl", [chat] * 4)
    assert (
        _all(load_split(_cfg("unpaired", chat_path)))
        == [{"prompt": "\n\nHuman: Hi\n\nAssistant:", "completion": " Hello", "label": False}] * 4
    )
    assert _all(load_split(_cfg("unpaired", chat_path), tokenizer=pythia_chat))[0] == {
        "prompt": "<|user|>\nHi<|endoftext|>\n<|assistant|>\n",
        "completion": "Hello",
        "label": False,
    }


UNPAIRED_BAD = [
    ({"prompt": "p", "completion": " c", "label": 1}, "field 'label' must be true or false, got 1"),
    ({"prompt": "p", "completion": " c", "label": "true"}, "field 'label' must be true or false, got 'true'"),
    ({"prompt": "p", "completion": " c"}, "missing field 'label'"),
    ({"prompt": "p", "completion": "", "label": True}, "field 'completion' is empty"),
    ({"prompt": "p", "completion": ["x"], "label": True}, "completion[0] must be a message"),
]


@pytest.mark.parametrize(("bad", "reason"), UNPAIRED_BAD)
def test_unpaired_bad_rows_named(tmp_path: Path, bad: dict[str, Any], reason: str) -> None:
    good = {"prompt": "p", "completion": " c", "label": True}
    path = _write_jsonl(tmp_path / "u.jsonl", [good, bad, good])
    with pytest.raises(DataError) as info:
        load_split(_cfg("unpaired", path))
    assert f"{path}:2: {reason}" in str(info.value), str(info.value)


def test_unpair_turns_each_pair_into_two_rows(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "p.jsonl", [_pref(i) for i in range(8)])
    paired = load_split(_cfg("jsonl", path))
    split = load_split(_cfg("jsonl", path, unpair=True))
    assert split.kind == "unpaired"
    for half, pairs in ((split.train, paired.train), (split.val, paired.val)):  # a pair stays in its half
        assert len(half) == 2 * len(pairs)
        for i, pair in enumerate(pairs):
            assert half[2 * i] == {"prompt": pair["prompt"], "completion": pair["chosen"], "label": True}
            assert half[2 * i + 1] == {
                "prompt": pair["prompt"],
                "completion": pair["rejected"],
                "label": False,
            }
    tldr = load_split(_cfg("tldr", _need(TLDR_VALID), unpair=True, limit=10))
    assert tldr.kind == "unpaired" and len(_all(tldr)) == 20
    assert sum(r["label"] for r in _all(tldr)) == 10
    with pytest.raises(DataError, match="needs preference pairs"):
        load_split(_cfg("tldr_sft", _need(TLDR_SFT), unpair=True, limit=10))


# --------------------------------------------------------------------------- configs


NEW_DATA_CONFIGS = ["hh", "tldr", "tldr_sft", "unpaired", "jsonl"]


@pytest.mark.parametrize("name", NEW_DATA_CONFIGS)
def test_data_config_header_and_keys(name: str) -> None:
    lines = (CONF / "data" / f"{name}.yaml").read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# Usage: python -m tralign.train ")
    cfg = compose_cfg([f"data={name}", "data.path=x"], shrink=False)
    for key in (
        "path",
        "val_path",
        "hub_id",
        "hub_split",
        "val_split",
        "val_fraction",
        "split_seed",
        "limit",
        "on_bad_rows",
        "max_length",
        "max_prompt_length",
        "batch_size",
        "eval_batch_size",
        "num_workers",
    ):
        assert key in cfg.data, key
    assert cfg.data.on_bad_rows == "error" and cfg.data.golden_eval is None and cfg.data.name == name


def test_hub_defaults() -> None:
    hubs = {name: compose_cfg([f"data={name}"], shrink=False).data for name in ("hh", "tldr", "tldr_sft")}
    assert (hubs["hh"].path, hubs["hh"].hub_id, hubs["hh"].val_split) == (None, "Anthropic/hh-rlhf", "test")
    assert hubs["tldr"].hub_id == "openai/summarize_from_feedback"
    assert hubs["tldr_sft"].hub_id == "trl-lib/tldr"
    for data in hubs.values():
        assert (data.max_length, data.max_prompt_length) == (1024, 512)


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (
            ["data=tldr_sft"],
            "data=tldr_sft gives SFT rows (prompt, completion) with no rejected answer; method=tr_dpo",
        ),
        (["data=hh", "data.sft=true", "method=dpo"], "data=hh data.sft=true gives SFT rows"),
        (
            ["data=unpaired", "data.path=/etc/hostname"],
            "data=unpaired gives unpaired rows (prompt, completion, label); method=tr_dpo needs pairs (use method=kto_unpaired",
        ),
        (["data=hh", "data.unpair=true", "method=ipo"], "data=hh data.unpair=true gives unpaired rows"),
        (
            ["data=tldr_sft", "+data.unpair=true", "method=sft"],
            "data=tldr_sft data.unpair=true: unpair needs preference pairs",
        ),
        (["data=hh", "data.hub_id=null"], "data.path: set a local file or folder (or data.hub_id"),
        (
            ["data=tldr", "data.on_bad_rows=ignore"],
            "data.on_bad_rows: must be one of error, skip, got 'ignore'",
        ),
        (
            ["data=hh", "data.path=/nonexistent/folder"],
            "data.path=/nonexistent/folder: no such file or folder",
        ),
    ],
)
def test_config_refuses_mismatched_data(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg([*overrides, "model.tokenizer=some/tokenizer"], shrink=False))
    assert needle in str(info.value), str(info.value)


def test_config_accepts_real_data_setups(tmp_path: Path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    ok = [
        ["data=hh"],  # hub default
        ["data=tldr", f"data.path={folder}"],  # a saved folder is a valid path
        ["data=tldr_sft", "method=sft"],
        ["data=hh", "data.sft=true", "method=sft"],
        ["data=unpaired", f"data.path={folder}", "method=kto_unpaired"],
        ["data=hh", "data.unpair=true", "method=tr_kto_unpaired"],
    ]
    for overrides in ok:
        validate(compose_cfg([*overrides, "model.tokenizer=some/tokenizer"], shrink=False))
    with pytest.raises(ConfigError, match="model.tokenizer=synthetic only knows"):
        validate(compose_cfg(["data=hh"], shrink=False))


def test_data_kind() -> None:
    assert data_kind({"name": "hh"}) == "pair"
    assert data_kind({"name": "hh", "sft": True}) == "sft"
    assert data_kind({"name": "tldr_sft"}) == "sft"
    assert data_kind({"name": "unpaired"}) == "unpaired"
    assert data_kind({"name": "tldr", "unpair": True}) == "unpaired"


# --------------------------------------------------------------------------- end to end

E2E = [
    ["method=tr_dpo", "data=tldr", f"data.path={TLDR_VALID}"],
    ["method=tr_dpo", "data=hh", f"data.path={HH_TEST}"],
    ["method=sft", "data=tldr_sft", f"data.path={TLDR_SFT}"],
]
E2E_COMMON = [
    "model=tiny",
    f"model.tokenizer={PYTHIA}",
    "trainer.max_steps=2",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "data.batch_size=2",
    "data.eval_batch_size=4",
    "data.max_length=256",
    "data.max_prompt_length=192",
    "data.limit=64",
    "data.val_fraction=0.0625",
    "logger=none",
]


@pytest.mark.slow
@pytest.mark.parametrize("overrides", E2E, ids=["tldr", "hh", "tldr_sft"])
@pytest.mark.e2e
def test_real_data_trains(overrides: list[str], tmp_path: Path) -> None:
    from tralign.train import run

    _need(SHARED)
    summary = run(compose_cfg([*overrides, *E2E_COMMON], shrink=False), tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 2
    assert summary["data"] == overrides[1].split("=")[1]
    assert summary["data/train_rows"] + summary["data/val_rows"] == 64
    loss = summary["val"]["val/loss"]
    assert loss is not None and loss == loss


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_hub_offline_is_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "tralign.train",
        "data=hh",
        f"model.tokenizer={_need(PYTHIA)}",
        "logger=none",
        f"hydra.run.dir={tmp_path}",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "Traceback" not in result.stderr
    assert "data.hub_id=Anthropic/hh-rlhf: could not load split 'train'" in errors[0]
