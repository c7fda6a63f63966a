"""Tests for the embedded synthetic preference task (tralign.data.synthetic)."""

from __future__ import annotations

import json
import math
import os
import random
import statistics
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from helpers.paths import REPO

from tralign.data.synthetic import (
    GOLDEN_REWARD_MAX,
    GOLDEN_REWARD_MIN,
    SPECIAL_TOKENS,
    TEMPLATE_WORDS,
    SyntheticTask,
    batch_golden_reward,
)

if TYPE_CHECKING:  # transformers is slow to import; the fixture builds the tokenizer lazily
    from transformers import PreTrainedTokenizerFast

REPO_ROOT = REPO
TASK = SyntheticTask()
PROMPT = "Q: fox owl ->"


def _reward(completion: str, prompt: str = PROMPT, task: SyntheticTask = TASK) -> float:
    return task.golden_reward(prompt, completion)


def _label_accuracy(task: SyntheticTask, n: int, seed: int) -> tuple[float, float, int]:
    """(fraction chosen > rejected, same among unequal-reward pairs, number of ties)."""
    diffs = [
        task.golden_reward(r["prompt"], r["chosen"]) - task.golden_reward(r["prompt"], r["rejected"])
        for r in task.preference_rows(n, seed)
    ]
    better = sum(d > 0 for d in diffs)
    unequal = sum(d != 0 for d in diffs)
    return better / len(diffs), better / unequal, len(diffs) - unequal


# --------------------------------------------------------------------------- the world


def test_world_pinned_for_seed_0() -> None:
    # Results in the project refer to the default world; changing it must be deliberate.
    scores = TASK.word_scores()
    assert TASK.words()[:4] == ["red", "blue", "green", "gold"]
    assert scores["cow"] == 1.0
    assert scores["dog"] == -1.0
    assert scores["red"] == pytest.approx(13 / 23)
    assert scores["fox"] == pytest.approx(5 / 23)
    assert scores["owl"] == pytest.approx(9 / 23)


@pytest.mark.parametrize(
    "task", [SyntheticTask(), SyntheticTask(seed=7, n_words=40), SyntheticTask(n_words=2)]
)
def test_word_scores_contract(task: SyntheticTask) -> None:
    words = task.words()
    scores = task.word_scores()
    assert len(words) == task.n_words == len(set(words))
    assert list(scores) == words
    assert all(w.isalpha() and w.islower() for w in words)
    assert not set(words) & (set(TEMPLATE_WORDS) | set(SPECIAL_TOKENS.values()))
    assert all(-1.0 <= s <= 1.0 for s in scores.values())
    assert max(scores.values()) == 1.0 and min(scores.values()) == -1.0
    assert abs(statistics.fmean(scores.values())) < 1e-12
    assert task.word_scores() == scores  # deterministic


def test_world_depends_on_seed_only_through_scores() -> None:
    a, b = SyntheticTask(seed=0), SyntheticTask(seed=1)
    assert a.words() == b.words()
    assert a.word_scores() != b.word_scores()
    # Same data seed, different world: same prompts and completion pairs, labelled differently.
    rows_a, rows_b = a.preference_rows(300, 5), b.preference_rows(300, 5)
    assert [r["prompt"] for r in rows_a] == [r["prompt"] for r in rows_b]
    assert [{r["chosen"], r["rejected"]} for r in rows_a] == [{r["chosen"], r["rejected"]} for r in rows_b]
    assert rows_a != rows_b


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_words": 1},
        {"n_words": 10_000},
        {"n_keys": -1},
        {"n_keys": 25},
        {"min_len": 0},
        {"min_len": 5, "max_len": 4},
        {"label_temperature": -0.1},
        {"label_temperature": math.inf},
    ],
)
def test_invalid_parameters_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SyntheticTask(**kwargs)


# --------------------------------------------------------------------------- rows


def test_preference_rows_format() -> None:
    vocab = set(TASK.words())
    rows = TASK.preference_rows(500, 0)
    assert len(rows) == 500
    for r in rows:
        assert set(r) == {"prompt", "chosen", "rejected"}
        assert all(isinstance(v, str) for v in r.values())
        assert r["chosen"] != r["rejected"]
        head, *keys, tail = r["prompt"].split(" ")
        assert (head, tail) == TEMPLATE_WORDS
        assert len(keys) == TASK.n_keys == len(set(keys)) and set(keys) <= vocab
        for c in (r["chosen"], r["rejected"]):
            assert c.startswith(" ") and not c.startswith("  ") and c == c.rstrip()
            words = c.split()
            assert TASK.min_len <= len(words) <= TASK.max_len
            assert set(words) <= vocab
    # The behaviour distribution must cover the whole length range and sometimes copy keys.
    lengths = {len(r["chosen"].split()) for r in rows}
    assert lengths == set(range(TASK.min_len, TASK.max_len + 1))
    assert any(set(r["prompt"].split()[1:-1]) <= set(r["chosen"].split()) for r in rows)


def test_preference_rows_deterministic() -> None:
    assert TASK.preference_rows(200, 0) == TASK.preference_rows(200, 0)
    assert SyntheticTask().preference_rows(200, 0) == TASK.preference_rows(200, 0)
    assert TASK.preference_rows(200, 1) != TASK.preference_rows(200, 0)
    assert TASK.preference_rows(50, 0) == TASK.preference_rows(200, 0)[:50]  # a prefix, not a reshuffle
    assert TASK.preference_rows(0, 0) == []
    with pytest.raises(ValueError):
        TASK.preference_rows(-1, 0)


def test_rows_identical_across_processes() -> None:
    """Different PYTHONHASHSEEDs must not change anything (no hash() of str anywhere)."""
    code = (
        "import json; from tralign.data.synthetic import SyntheticTask as T; t = T(seed=3);"
        "print(json.dumps([t.preference_rows(40, 11), t.sft_rows(20, 11), t.word_scores()]))"
    )
    outs = []
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, check=True
        )
        outs.append(json.loads(proc.stdout))
    task = SyntheticTask(seed=3)
    here = json.loads(json.dumps([task.preference_rows(40, 11), task.sft_rows(20, 11), task.word_scores()]))
    assert outs[0] == outs[1] == here


def test_sft_rows() -> None:
    rows = TASK.sft_rows(1000, 0)
    assert rows == TASK.sft_rows(1000, 0) and rows != TASK.sft_rows(1000, 1)
    assert all(set(r) == {"prompt", "completion"} and r["completion"].startswith(" ") for r in rows)
    sft = statistics.fmean(TASK.golden_reward(r["prompt"], r["completion"]) for r in rows)
    rng = random.Random(0)
    behaviour = []
    for _ in range(1000):
        prompt = TASK.make_prompt(rng)
        behaviour.append(TASK.golden_reward(prompt, TASK.sample_completion(prompt, rng)))
    beh = statistics.fmean(behaviour)
    assert beh + 0.15 < sft < GOLDEN_REWARD_MAX - 0.3, f"behaviour {beh:.3f}, sft {sft:.3f}"


# --------------------------------------------------------------------------- golden reward


S = TASK.word_scores()


@pytest.mark.parametrize(
    ("prompt", "completion", "expected"),
    [
        # quality (mean per-word score, keys count +1) + coverage (fraction of keys present)
        (PROMPT, " fox owl", 1.0 + 1.0),
        (PROMPT, " owl fox", 2.0),
        (PROMPT, " fox", 1.0 + 0.5),
        (PROMPT, " fox fox fox", 1.0 + 0.5),  # repeating a key does not add coverage
        (PROMPT, " cow", 1.0 + 0.0),
        (PROMPT, " dog", -1.0 + 0.0),
        (PROMPT, " cow dog", 0.0),
        (PROMPT, " fox dog", (1.0 - 1.0) / 2 + 0.5),
        (PROMPT, " red fox zebra", (13 / 23 + 1.0 - 1.0) / 3 + 0.5),
        (PROMPT, " fox owl cow cow", 2.0),
        (PROMPT, " fox owl dog dog", 0.0 + 1.0),
        (PROMPT, "red\tfox\nowl ", (13 / 23 + 2.0) / 3 + 1.0),  # any whitespace separates words
        ("Q: cow owl ->", " fox", 5 / 23),  # fox is not a key here: its own score, no coverage
        ("Q: fox fox ->", " fox", 2.0),  # keys are distinct words
        # unknown / template / special / case / punctuation count -1
        (PROMPT, " zebra", -1.0),
        (PROMPT, " Fox", -1.0),
        (PROMPT, " fox.", -1.0),
        (PROMPT, " Q: ->", -1.0),
        (PROMPT, " <unk>", -1.0),
        (PROMPT, " fox <unk>", 0.0 + 0.5),
        # <eos> ends the answer, <pad> is ignored
        (PROMPT, " fox owl <eos> dog dog", 2.0),
        (PROMPT, " fox owl<eos>dog", 2.0),  # <eos> need not be whitespace-separated
        (PROMPT, " <pad> fox <pad>", 1.5),
        # empty answers
        (PROMPT, "", -1.0),
        (PROMPT, "   ", -1.0),
        (PROMPT, " <eos> fox owl", -1.0),
        (PROMPT, " <pad> <pad>", -1.0),
        # prompts without keys: coverage is vacuously 1
        ("hello world", " cow", 2.0),
        ("", " dog", 0.0),
        ("", "", -1.0),
    ],
)
def test_golden_reward_hand_checked(prompt: str, completion: str, expected: float) -> None:
    assert TASK.golden_reward(prompt, completion) == pytest.approx(expected, abs=1e-12)


def test_golden_reward_bounded_on_arbitrary_strings() -> None:
    rng = random.Random(1234)
    pieces = [
        *TASK.words(),
        *TEMPLATE_WORDS,
        *SPECIAL_TOKENS.values(),
        "zebra",
        "Fox",
        ".",
        "",
        "é",
        "<eos>x",
    ]
    seps = [" ", "  ", "\n", "\t", ""]
    seen = []
    for _ in range(5000):
        text = "".join(rng.choice(pieces) + rng.choice(seps) for _ in range(rng.randint(0, 20)))
        prompt = TASK.make_prompt(rng) if rng.random() < 0.8 else "".join(rng.choices(pieces, k=3))
        r = TASK.golden_reward(prompt, text)
        assert math.isfinite(r) and GOLDEN_REWARD_MIN <= r <= GOLDEN_REWARD_MAX, (prompt, text, r)
        seen.append(r)
    # The generator reaches both ends of the range, so the bounds above were really exercised.
    assert min(seen) == GOLDEN_REWARD_MIN and max(seen) == GOLDEN_REWARD_MAX


def test_golden_reward_not_rewarding_length() -> None:
    rng = random.Random(99)
    for _ in range(300):
        prompt = TASK.make_prompt(rng)
        c = TASK.sample_completion(prompt, rng)
        assert TASK.golden_reward(prompt, c * 5) == pytest.approx(TASK.golden_reward(prompt, c), abs=1e-12)


def test_batch_golden_reward() -> None:
    rows = TASK.preference_rows(50, 2)
    prompts = [r["prompt"] for r in rows]
    chosen = [r["chosen"] for r in rows]
    assert batch_golden_reward(TASK, prompts, chosen) == [
        TASK.golden_reward(p, c) for p, c in zip(prompts, chosen, strict=True)
    ]
    assert batch_golden_reward(TASK, [], []) == []
    with pytest.raises(ValueError):
        batch_golden_reward(TASK, prompts, chosen[:-1])


def test_random_baseline_near_zero_and_oracle_at_max() -> None:
    rng = random.Random(7)
    tokenizer_vocab = [*SPECIAL_TOKENS.values(), *TEMPLATE_WORDS, *TASK.words()]
    content, any_token = [], []
    for _ in range(4000):
        prompt = TASK.make_prompt(rng)
        n = rng.randint(TASK.min_len, TASK.max_len)
        content.append(TASK.golden_reward(prompt, " " + " ".join(rng.choices(TASK.words(), k=n))))
        any_token.append(TASK.golden_reward(prompt, " " + " ".join(rng.choices(tokenizer_vocab, k=n))))
    content_mean, any_mean = statistics.fmean(content), statistics.fmean(any_token)
    # Uniform over all tokenizer tokens (a random-init policy) ~ 0; over content words only,
    # slightly positive because random words sometimes hit a key.
    assert abs(any_mean) < 0.2, f"uniform-token baseline {any_mean:.3f}"
    assert 0.0 < content_mean < 0.4, f"uniform-content-word baseline {content_mean:.3f}"
    oracle = [
        TASK.golden_reward(p, TASK.oracle_completion(p)) for p in (TASK.make_prompt(rng) for _ in range(500))
    ]
    assert min(oracle) == GOLDEN_REWARD_MAX, f"oracle min {min(oracle):.3f}"
    assert min(oracle) - content_mean > 1.5, f"oracle {min(oracle):.3f} vs random {content_mean:.3f}"
    best = max(S, key=S.__getitem__)
    assert TASK.golden_reward(PROMPT, f" fox {best} owl {best}") == GOLDEN_REWARD_MAX


def test_oracle_completion_respects_min_len_and_keyless_prompts() -> None:
    task = SyntheticTask(n_keys=1, min_len=3)
    c = task.oracle_completion("Q: fox ->")
    assert c == " fox cow cow" and task.golden_reward("Q: fox ->", c) == GOLDEN_REWARD_MAX
    assert TASK.oracle_completion("nothing here") == " cow cow"  # min_len = 2


# --------------------------------------------------------------------------- labels


def test_labels_prefer_higher_reward() -> None:
    frac, frac_unequal, _ = _label_accuracy(TASK, 2000, 0)
    assert frac >= 0.7, f"chosen better in {frac:.3f} of pairs at T={TASK.label_temperature}"


def test_labels_deterministic_at_zero_temperature() -> None:
    frac, frac_unequal, ties = _label_accuracy(SyntheticTask(label_temperature=0.0), 2000, 0)
    assert frac_unequal == 1.0, f"T=0: chosen better in {frac_unequal:.4f} of unequal pairs ({ties} ties)"


def test_label_temperature_controls_noise() -> None:
    sharp, _, _ = _label_accuracy(SyntheticTask(label_temperature=0.1), 2000, 0)
    default, _, _ = _label_accuracy(TASK, 2000, 0)
    soft, _, _ = _label_accuracy(SyntheticTask(label_temperature=1.0), 2000, 0)
    noise, _, _ = _label_accuracy(SyntheticTask(label_temperature=1e6), 2000, 0)
    assert sharp > default > soft > noise, (sharp, default, soft, noise)
    assert abs(noise - 0.5) < 0.05, f"T=1e6 should be a coin flip, got {noise:.3f}"
    # Temperature changes labels only, never which pairs are drawn.
    pairs = [{r["chosen"], r["rejected"]} for r in TASK.preference_rows(300, 4)]
    assert pairs == [
        {r["chosen"], r["rejected"]} for r in SyntheticTask(label_temperature=0).preference_rows(300, 4)
    ]


# --------------------------------------------------------------------------- tokenizer


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return TASK.build_tokenizer()


def test_tokenizer_vocab(tokenizer: PreTrainedTokenizerFast) -> None:
    assert len(tokenizer) < 64
    assert len(tokenizer) == len(SPECIAL_TOKENS) + len(TEMPLATE_WORDS) + TASK.n_words
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id)
    assert ids == (0, 1, 2)
    assert (tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token) == tuple(SPECIAL_TOKENS.values())
    assert tokenizer.model_max_length == 128
    assert tokenizer.get_vocab() == TASK.build_tokenizer().get_vocab()  # deterministic order
    assert tokenizer("zebra Fox")["input_ids"] == [tokenizer.unk_token_id] * 2
    # No special tokens are added on encode: the collate path appends <eos> itself.
    assert tokenizer(" fox owl")["input_ids"] == tokenizer.convert_tokens_to_ids(["fox", "owl"])


def test_tokenizer_round_trip_on_rows(tokenizer: PreTrainedTokenizerFast) -> None:
    rows = TASK.preference_rows(300, 0)
    sft = TASK.sft_rows(100, 0)
    texts = [r[k] for r in rows for k in ("prompt", "chosen", "rejected")] + [r["completion"] for r in sft]
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids, text
        assert len(ids) == len(text.split())
        assert tokenizer.decode(ids).strip() == text.strip()
    for r in rows:
        # The collate path tokenises prompt + completion; the prompt part must not change.
        for c in (r["chosen"], r["rejected"]):
            joined = tokenizer(r["prompt"] + c)["input_ids"]
            assert joined == tokenizer(r["prompt"])["input_ids"] + tokenizer(c)["input_ids"]
    ids = tokenizer(rows[0]["prompt"] + rows[0]["chosen"])["input_ids"] + [
        tokenizer.eos_token_id,
        tokenizer.pad_token_id,
    ]
    assert tokenizer.decode(ids, skip_special_tokens=True) == (rows[0]["prompt"] + rows[0]["chosen"])
    decoded = tokenizer.decode(ids)
    assert TASK.golden_reward(
        rows[0]["prompt"], decoded.removeprefix(rows[0]["prompt"])
    ) == TASK.golden_reward(rows[0]["prompt"], rows[0]["chosen"])


def test_tokenizer_save_and_reload(
    tokenizer: PreTrainedTokenizerFast, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from transformers import AutoTokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.get_vocab() == tokenizer.get_vocab()
    assert (reloaded.pad_token_id, reloaded.eos_token_id, reloaded.unk_token_id) == (0, 1, 2)
    assert reloaded.model_max_length == tokenizer.model_max_length
    texts = [r["prompt"] + r["chosen"] for r in TASK.preference_rows(50, 3)] + ["zebra <eos> fox"]
    for text in texts:
        assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert reloaded.decode(reloaded(text)["input_ids"]) == tokenizer.decode(tokenizer(text)["input_ids"])
