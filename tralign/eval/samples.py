"""Sampling the models under evaluation, cached on disk, and the KL estimate from samples.

Generations are cached under ``<cache_dir>/generations/<key>.jsonl``, the key a sha256 of the model
folder (resolved path, and name, size and mtime of each weight/config file, so a new export into
the same folder is sampled afresh), the prompts, every sampling setting (seed included) and the prompt encoding's version.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tralign.errors import TralignError

# Turn markers that end an answer, by data.name: a model that keeps going writes the next turn.
STOP_MARKERS = {"hh": ["\n\nHuman:", "\n\nAssistant:"]}


def cache_root(configured: str | None) -> Path:
    """``configured``, else $TRALIGN_CACHE, else ~/.cache/tralign."""
    root = configured or os.environ.get("TRALIGN_CACHE") or Path.home() / ".cache" / "tralign"
    return Path(str(root)).expanduser()


def stop_markers(gen_cfg: Mapping[str, Any], data_name: str) -> list[str]:
    stop = gen_cfg.get("stop", "auto")
    return list(STOP_MARKERS.get(data_name, [])) if stop == "auto" else list(stop or [])


def truncate_at(text: str, markers: Sequence[str]) -> str:
    """``text`` up to the first of ``markers`` (the marker itself dropped)."""
    cut = min((i for m in markers if (i := text.find(m)) >= 0), default=len(text))
    return text[:cut]


def check_model_dir(path: str, key: str) -> Path:
    folder = Path(path).expanduser()
    if not (folder / "config.json").is_file():
        raise TralignError(f"{key}={path}: no such model folder (expected <run dir>/policy with config.json)")
    return folder


def load_model(path: str, device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path).to(device).eval()
    model.config.use_cache = True
    return model, tokenizer


def fingerprint(path: str) -> list[Any]:
    folder = Path(path).expanduser().resolve()
    files = sorted(f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin", ".json"))
    return [str(folder), [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]]


def generate(
    path: str,
    prompts: Sequence[str],
    gen_cfg: Mapping[str, Any],
    markers: Sequence[str],
    *,
    cache_dir: Path,
    device: str,
) -> list[dict[str, Any]]:
    """One sample per prompt from the model at ``path``: rows {prompt, completion, n_tokens,
    prompt_ids, completion_ids}; ``completion`` is cut at the first turn marker, the token ids are
    the full sample (up to EOS or max_new_tokens), which is what the KL estimate scores."""
    from tralign.generation import sample

    settings = {k: gen_cfg[k] for k in ("max_new_tokens", "temperature", "top_p", "seed")}
    from tralign.data.tokenize import ENCODING_VERSION

    # The prompt encoding's version too: samples drawn from differently encoded prompts are stale.
    what = [fingerprint(path), list(prompts), settings, list(markers), ENCODING_VERSION]
    key = json.dumps(what, sort_keys=True)
    file = cache_dir / "generations" / (hashlib.sha256(key.encode()).hexdigest() + ".jsonl")
    if file.is_file():
        return [json.loads(line) for line in file.read_text(encoding="utf-8").splitlines()]
    model, tokenizer = load_model(path, device)
    out = sample(model, tokenizer, prompts, batch_size=int(gen_cfg["batch_size"]), **settings)
    rows = [
        {
            "prompt": p,
            "completion": truncate_at(t, markers),
            "n_tokens": len(c),
            "prompt_ids": pi,
            "completion_ids": c,
        }
        for p, t, pi, c in zip(prompts, out.texts, out.prompt_ids, out.completion_ids, strict=True)
    ]
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    tmp.replace(file)  # whole files only: a crash never leaves a half cache entry
    return rows


def kl_log_ratios(
    policy_path: str, sft_path: str, rows: Sequence[Mapping[str, Any]], *, batch_size: int, device: str
) -> list[float]:
    """log π(y|x) − log π_sft(y|x) for the policy's own samples y ~ π(·|x): their mean estimates
    KL(π ‖ π_sft) (exactly so when sampling at temperature 1, top_p 1)."""
    from tralign.generation import Samples, completion_logps

    samples = Samples(
        [r["prompt_ids"] for r in rows], [r["completion_ids"] for r in rows], [r["completion"] for r in rows]
    )
    policy, tokenizer = load_model(policy_path, device)
    sft, _ = load_model(sft_path, device)
    kw = {"pad_id": tokenizer.pad_token_id, "batch_size": batch_size}
    return (completion_logps(policy, samples, **kw) - completion_logps(sft, samples, **kw)).tolist()
