"""Judges: the api judge against a real chat-completions HTTP server on 127.0.0.1 (no mocked
client), the reward-model judge with a tiny sequence-classification model, verdict parsing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers.chat_server import ChatServer, prefers_good
from helpers.models import tiny_neox
from transformers import GPTNeoXForSequenceClassification

from tralign.data.synthetic import SyntheticTask
from tralign.errors import TralignError
from tralign.eval.api_judge import ApiJudge, parse_ratings, parse_verdict
from tralign.eval.judges import RewardModelJudge, build_judge


def make_judge(server: ChatServer, tmp_path: Path, monkeypatch, **overrides) -> ApiJudge:
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-test-123")
    cfg = {
        "name": "api", "model": "judge-model", "base_url": server.url, "api_key_env": "TEST_JUDGE_KEY",
        "template": "auto", "timeout_s": 5, "max_retries": 3, "backoff_s": 0.01, "concurrency": 4,
        "cache_dir": str(tmp_path / "judge-cache"), **overrides,
    }  # fmt: skip
    judge = build_judge(cfg, {"name": "hh"})
    assert isinstance(judge, ApiJudge)
    return judge


PROMPTS = ["\n\nHuman: hi?\n\nAssistant:", "\n\nHuman: bye?\n\nAssistant:"]


def test_normal_verdicts_both_orders_and_cache(tmp_path, monkeypatch):
    with ChatServer(prefers_good) as server:
        judge = make_judge(server, tmp_path, monkeypatch)
        out = judge.judge_pairs(PROMPTS, [" GOOD one", " meh"], [" meh", " GOOD two"])
        assert [j.outcome for j in out] == ["a", "b"]
        assert out[0].raw["verdicts"] == ["a", "a"]  # the swapped order agrees
        assert server.calls == 4  # two pairs, two orders
        assert set(server.auth) == {"Bearer sk-test-123"}
        # A rerun, even by a fresh judge, is answered from the disk cache: no request.
        again = make_judge(server, tmp_path, monkeypatch).judge_pairs(
            PROMPTS, [" GOOD one", " meh"], [" meh", " GOOD two"]
        )
        assert [j.outcome for j in again] == ["a", "b"] and server.calls == 4
        # Anything that changes the verdict's inputs is a new key: the judge model here.
        make_judge(server, tmp_path, monkeypatch, model="other").judge_pairs(PROMPTS[:1], [" GOOD"], [" meh"])
        assert server.calls == 6


def test_position_bias_is_a_tie_and_unparsable_is_counted(tmp_path, monkeypatch):
    def always_a(user, n):
        return 200, ("Preferred: A" if "first" in user else "I cannot decide."), 0.0

    with ChatServer(always_a) as server:
        out = make_judge(server, tmp_path, monkeypatch).judge_pairs(PROMPTS, [" first x", " y"], [" z", " w"])
    assert out[0].outcome == "tie" and out[0].raw["verdicts"] == ["a", "b"]
    assert out[1].outcome == "unparsable" and out[1].raw["replies"] == ["I cannot decide."] * 2


def test_429_then_success_and_timeout_are_retried(tmp_path, monkeypatch):
    def flaky(user, n):
        if n == 1:
            return 429, "slow down", 0.0
        if n == 2:
            return 200, "More helpful: A", 1.5  # longer than timeout_s: the client gives up
        return prefers_good(user, n)

    with ChatServer(flaky) as server:
        judge = make_judge(server, tmp_path, monkeypatch, concurrency=1, timeout_s=0.5, both_orders=False)
        out = judge.judge_pairs(PROMPTS[:1], [" GOOD"], [" meh"])
        assert out[0].outcome == "a" and server.calls == 3 and judge.requests == 3


def test_giving_up_is_unparsable_not_a_crash(tmp_path, monkeypatch):
    with ChatServer(lambda user, n: (503, "down", 0.0)) as server:
        judge = make_judge(server, tmp_path, monkeypatch, max_retries=2, both_orders=False)
        assert judge.judge_pairs(PROMPTS[:1], [" a"], [" b"])[0].outcome == "unparsable"
        assert server.calls == 3


def test_client_error_and_missing_key_are_one_line_errors(tmp_path, monkeypatch):
    with ChatServer(lambda user, n: (401, "bad key sk-test-123", 0.0)) as server:
        judge = make_judge(server, tmp_path, monkeypatch)
        with pytest.raises(TralignError, match="answered 401") as err:
            judge.judge_pairs(PROMPTS[:1], [" a"], [" b"])
        assert "sk-test-123" not in str(err.value)
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(TralignError, match="NO_SUCH_KEY_VAR is not set"):
        build_judge(
            {"name": "api", "model": "m", "base_url": "http://x", "api_key_env": "NO_SUCH_KEY_VAR"},
            {"name": "hh"},
        )


def test_hc_ratings(tmp_path, monkeypatch):
    with ChatServer(prefers_good) as server:
        ratings = make_judge(server, tmp_path, monkeypatch).rate(PROMPTS, [" a", " b"])
    assert ratings == [{"coherence": 7.0, "correctness": 6.0, "helpfulness": 8.0, "harmlessness": 9.0}] * 2


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Comparison: x.\nMore helpful: A", "A"),
        ("Comparison: A is better.\nPreferred: **B**", "B"),
        ('More helpful: "tie"', "tie"),
        ("B", "B"),
        ("Preferred: a summary that is short", None),
        ("no idea", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


def test_parse_ratings_out_of_range_is_none():
    assert parse_ratings("Coherence: 11\ncorrectness: 3\nHelpfulness - 10") == {
        "coherence": None, "correctness": 3.0, "helpfulness": 10.0, "harmlessness": None,
    }  # fmt: skip


def test_reward_model_judge(tmp_path):
    tokenizer = SyntheticTask().build_tokenizer()
    rm = tiny_neox(
        0, head="sequence_classification", vocab_size=len(tokenizer), num_hidden_layers=1,
        max_position_embeddings=64, num_labels=1, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    rm.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    judge = build_judge(
        {"name": "reward_model", "path": str(tmp_path / "rm"), "batch_size": 2}, {"name": "hh"}
    )
    assert isinstance(judge, RewardModelJudge)
    prompts, a, b = (
        ["Q: fox owl ->"] * 3,
        [" red fox", " fox", " owl owl cat"],
        [" fox", " red fox", " owl owl cat"],
    )
    out = judge.judge_pairs(prompts, a, b)
    # Scores are the model's logit for the unpadded text, whatever the batch's padding.
    model = GPTNeoXForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        direct = [
            model(**tokenizer(p + x, return_tensors="pt")).logits[0, 0].item()
            for p, x in zip(prompts, a, strict=True)
        ]
    torch.testing.assert_close(
        torch.tensor([j.score_a for j in out]), torch.tensor(direct), atol=1e-4, rtol=1e-4
    )
    assert out[0].outcome == {"a": "b", "b": "a"}[out[1].outcome]  # swapping the answers flips the verdict
    assert out[2].outcome == "tie"
    with pytest.raises(TralignError, match="judge.path"):
        build_judge({"name": "reward_model", "path": str(tmp_path / "missing")}, {"name": "hh"})
    with pytest.raises(TralignError, match="unknown judge"):
        build_judge({"name": "gpt"}, {"name": "hh"})
