"""Secrets: API keys come only from the environment and are written nowhere — not in Hydra's files,
config_resolved.yaml, summary.json, train.log, W&B's offline files or the console. (The evaluation
entry point's planted-key run is tests/test_evaluate.py::test_api_run_never_writes_the_key.)"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest
from helpers.config import SHRINK, compose_cfg
from helpers.processes import run_cli

from tralign.config import validate
from tralign.errors import ConfigError
from tralign.eval.judges import build_judge
from tralign.safety import SecretInConfigError, find_secrets, redact_files


def _leaks(folder: Path, key: str) -> list[str]:
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert files
    return [str(f) for f in files if key.encode() in f.read_bytes()]


@pytest.mark.parametrize(
    "override",
    [
        "+judge.api_key=KEY",
        "+logger.api_key=KEY",
        "+data.hf_token=KEY",
        "+model.access_token=KEY",
        "+password=KEY",
        "+logger.notes=sk-KEY",  # a value shaped like an OpenAI key, whatever its name
    ],
)
def test_credentials_in_the_config_are_refused_naming_the_key(override):
    key = "planted" + secrets.token_hex(12)
    with pytest.raises(SecretInConfigError) as err:
        validate(compose_cfg([override.replace("KEY", key), "tau=0"]))
    name = override.split("=")[0].lstrip("+")
    assert f"{name}: looks like a credential" in str(err.value) and "environment variable" in str(err.value)
    assert "tau:" in str(err.value)  # every other problem still reported in the same line
    assert key not in str(err.value)


def test_ordinary_names_are_not_mistaken_for_credentials():
    keys, _ = find_secrets(
        {
            "judge": {"api_key_env": "OPENAI_API_KEY", "max_tokens": 256},
            "generation": {"max_new_tokens": 12},
            "model": {"tokenizer": "synthetic", "pad_token": "<pad>", "config": {"eos_token_id": 0}},
            "data": {"hub_revision": "0123456789abcdef0123456789abcdef01234567"},
        }
    )
    assert keys == []
    validate(compose_cfg([]))  # the shipped defaults hold no credential
    with pytest.raises(ConfigError, match="judge.api_key: looks like a credential"):
        build_judge(
            {"name": "api", "api_key": "x" * 20, "model": "m", "base_url": "u"}, {"name": "synthetic"}
        )


def test_redaction_replaces_the_value_in_hydra_files(tmp_path):
    (tmp_path / ".hydra").mkdir()
    (tmp_path / ".hydra" / "overrides.yaml").write_text("- +judge.api_key=sk-secret-value-123456789\n")
    (tmp_path / "train.log").write_text("nothing here\n")
    changed = redact_files(tmp_path, ["sk-secret-value-123456789"])
    assert changed == [tmp_path / ".hydra" / "overrides.yaml"]
    assert _leaks(tmp_path, "sk-secret-value-123456789") == []


@pytest.mark.e2e
def test_cli_key_on_the_command_line_is_refused_and_redacted_from_hydra_files(tmp_path):
    key = "sk-planted-" + secrets.token_hex(16)
    result = run_cli(
        "tralign.train", [*SHRINK, f"+judge.api_key={key}", f"hydra.run.dir={tmp_path}/run"], tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("tralign: error:")]
    assert len(errors) == 1 and "judge.api_key: looks like a credential" in errors[0]
    assert (tmp_path / "run" / ".hydra" / "overrides.yaml").is_file()  # Hydra wrote it; we redacted it
    assert _leaks(tmp_path / "run", key) == []
    assert key not in result.stdout + result.stderr


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_training_with_planted_env_keys_writes_them_nowhere(tmp_path):
    # Keys in the environment, as they should be: a W&B (offline) training run must not copy them
    # into any file (configs, summary.json, train.log, wandb/ offline files) or the console.
    openai_key = "sk-planted-" + secrets.token_hex(16)
    wandb_key = "planted" + secrets.token_hex(16)  # 40 characters, like a real W&B key
    shrink = [s for s in SHRINK if not s.startswith("logger=")]
    result = run_cli(
        "tralign.train",
        [*shrink, "logger=wandb", "logger.mode=offline", f"hydra.run.dir={tmp_path}/run"],
        tmp_path,
        OPENAI_API_KEY=openai_key,
        WANDB_API_KEY=wandb_key,
        HF_TOKEN="hf_" + secrets.token_hex(16),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    run_dir = tmp_path / "run"
    assert list(run_dir.glob("wandb/offline-run-*/files/config.yaml")) or list(
        run_dir.glob("wandb/offline-run-*")
    )
    for key in (openai_key, wandb_key):
        assert _leaks(tmp_path, key) == [], key
        assert key not in result.stdout + result.stderr
    # Exports are safetensors only: nothing that unpickles.
    exported = {p.suffix for p in (run_dir / "policy").iterdir()}
    assert ".safetensors" in exported and not exported & {".bin", ".pt", ".pth", ".pkl", ".ckpt"}
