"""python -m tralign.evaluate end to end: golden on the embedded task, several policies in one
table, the api judge against a local server with a planted key that must appear nowhere."""

from __future__ import annotations

import json
import secrets

import pytest
import torch
from helpers.chat_server import ChatServer, prefers_good
from helpers.models import tiny_neox
from helpers.paths import CONF
from helpers.processes import run_cli
from hydra import compose, initialize_config_dir

from tralign.data.synthetic import SyntheticTask
from tralign.errors import TralignError
from tralign.evaluate import comparisons_for, run


def tiny_policy(path, *, sft_steps: int = 0, seed: int = 0):
    """A tiny GPT-NeoX on the embedded task; sft_steps > 0 trains it on the task's oracle answers
    (an aligned policy, in golden-reward terms)."""
    task = SyntheticTask()
    tokenizer = task.build_tokenizer()
    model = tiny_neox(
        seed, tokenizer=tokenizer, hidden_size=32, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64, rotary_pct=0.25,
    )  # fmt: skip
    if sft_steps:
        rows = task.preference_rows(256, seed=7)
        texts = [r["prompt"] + task.oracle_completion(r["prompt"]) + "<eos>" for r in rows]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        opt = torch.optim.Adam(model.parameters(), lr=3e-3)
        for step in range(sft_steps):
            idx = torch.randint(0, len(texts), (64,), generator=torch.Generator().manual_seed(step))
            loss = model(
                input_ids=enc["input_ids"][idx], attention_mask=enc["attention_mask"][idx], labels=labels[idx]
            ).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def compose_eval(overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("evaluate", overrides=["logger=none", "generation.n_prompts=32", *overrides])


@pytest.mark.slow
@pytest.mark.e2e
def test_golden_aligned_policy_beats_its_start_and_multi_run_table(tmp_path, capsys):
    start = tiny_policy(tmp_path / "start")
    aligned = tiny_policy(tmp_path / "aligned", sft_steps=150)
    cfg = compose_eval(
        [f"policy=[{aligned},{start}]", f"baseline={start}", f"sft={start}", f"cache_dir={tmp_path / 'c'}"]
    )
    out = run(cfg, tmp_path / "run")
    [c] = out["comparisons"]  # the baseline is not compared with itself
    assert c["policy"] == aligned and c["n"] == 32
    assert c["golden_policy"] > c["golden_baseline"] + 0.5
    assert c["win_rate"] > 0.7 and c["ci_low"] <= c["win_rate"] <= c["ci_high"]
    assert c["kl_sft"] > 0 and c["kl_sft_sem"] > 0
    lines = [json.loads(x) for x in (tmp_path / "run" / "judgments.jsonl").read_text().splitlines()]
    assert len(lines) == 32 and {x["outcome"] for x in lines} <= {"a", "b", "tie"}
    assert len((tmp_path / "run" / "generations.jsonl").read_text().splitlines()) == 64
    assert json.loads((tmp_path / "run" / "eval.json").read_text()) == json.loads(json.dumps(out))
    assert "| policy | baseline | win rate" in capsys.readouterr().out
    # Every pair of models; generations come from the cache (no new cache files).
    cached = sorted((tmp_path / "c" / "generations").iterdir())
    out = run(
        compose_eval([f"policy=[{aligned},{start}]", "pairs=all", f"cache_dir={tmp_path / 'c'}"]),
        tmp_path / "r2",
    )
    assert [(c["policy"], c["baseline"]) for c in out["comparisons"]] == [(aligned, start)]
    assert sorted((tmp_path / "c" / "generations").iterdir()) == cached


def test_comparisons_and_bad_input(tmp_path):
    assert comparisons_for(["a", "b"], "x", "baseline") == [("a", "x"), ("b", "x")]
    assert comparisons_for(["a", "b", "c"], None, "all") == [("a", "b"), ("a", "c"), ("b", "c")]
    with pytest.raises(TralignError, match="baseline: required"):
        comparisons_for(["a"], None, "baseline")
    with pytest.raises(TralignError, match="policy=.*no such model folder"):
        run(compose_eval([f"policy={tmp_path / 'nope'}", f"baseline={tmp_path / 'nope'}2"]), tmp_path / "run")


@pytest.mark.slow
@pytest.mark.e2e
def test_api_run_never_writes_the_key(tmp_path):
    """The whole CLI with judge=api (HC ratings on, W&B offline) against a local server: outputs as
    expected, and the planted key is in no file, log or printed line."""
    key = "sk-planted-" + secrets.token_hex(16)
    policy, base = tiny_policy(tmp_path / "p", seed=0), tiny_policy(tmp_path / "b", seed=1)
    # The key-missing error names the variable, not a value.
    bad = run_cli("tralign.evaluate", [f"policy={policy}", f"baseline={base}", "judge=api", "judge.api_key_env=TRALIGN_NO_KEY", "logger=none", f"hydra.run.dir={tmp_path / 'bad'}"], tmp_path)  # fmt: skip
    assert (
        bad.returncode == 2 and "tralign: error: judge=api: environment variable TRALIGN_NO_KEY" in bad.stderr
    )
    with ChatServer(prefers_good) as server:
        args = [
            f"policy={policy}", f"baseline={base}", "judge=api", f"judge.base_url={server.url}",
            "judge.model=judge-model", "judge.hc=true", "judge.backoff_s=0.01", f"judge.cache_dir={tmp_path / 'jc'}",
            f"cache_dir={tmp_path / 'gc'}", "generation.n_prompts=8", "logger=wandb", "logger.mode=offline",
            f"hydra.run.dir={tmp_path / 'run'}",
        ]  # fmt: skip
        proc = run_cli("tralign.evaluate", args, tmp_path, OPENAI_API_KEY=key)
        assert proc.returncode == 0, proc.stderr[-2000:]
        # Pairs in both orders + ratings of both models, less requests repeated word for word (cached).
        assert 8 < server.calls <= 8 * 2 + 2 * 8
        assert set(server.auth) == {f"Bearer {key}"}  # the key was really used...
    out = json.loads((tmp_path / "run" / "eval.json").read_text())
    [c] = out["comparisons"]
    assert c["n"] + c["unparsable"] == 8 and c["hc_coherence_policy"] == 7.0
    assert c["hc_coherence_policy_unparsable"] == 0 and c["hc_harmlessness_baseline_unparsable"] == 0
    assert list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    files = [f for f in tmp_path.rglob("*") if f.is_file() and f.suffix != ".safetensors"]
    assert len(files) > 10
    leaks = [str(f) for f in files if key.encode() in f.read_bytes()]
    assert leaks == [] and key not in proc.stdout + proc.stderr  # ...and written nowhere


@pytest.mark.parametrize("judge", sorted(p.stem for p in (CONF / "judge").glob("*.yaml")))
def test_every_judge_config_composes(judge):
    cfg = compose_eval(["policy=x", "baseline=y", f"judge={judge}", "judge.path=rm"] if judge == "reward_model" else ["policy=x", f"judge={judge}"])  # fmt: skip
    assert cfg.judge.name == judge and cfg.generation.n_prompts == 32
    assert str(cfg.judge.get("api_key_env", "X")).isupper()  # a variable's name, not a key


def test_generation_defaults_follow_the_data():
    assert compose_eval(["policy=x"]).generation.max_new_tokens == 12  # the embedded task's golden_eval
    assert compose_eval(["policy=x", "data=hh"]).generation.max_new_tokens == 256
