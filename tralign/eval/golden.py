"""Golden-reward evaluation on the embedded task: sample the trained and the starting policy on
the same held-out prompts with the same seed, score both with the task's known reward, and
estimate KL(policy ‖ starting policy) from the policy's own samples."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from tralign.data.synthetic import SyntheticTask, batch_golden_reward
from tralign.eval.metrics import sem
from tralign.generation import completion_logps, sample


def golden_eval(
    policy: nn.Module,
    initial: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    task: SyntheticTask,
    prompts: Sequence[str],
    cfg: Mapping[str, Any],
    *,
    seed: int,
    samples_path: Path | None = None,
) -> dict[str, float]:
    """``golden_kl_init`` is the sequence-level Monte Carlo estimate E_y~π[log π(y|x) − log π_0(y|x)];
    it is KL(π ‖ π_0) exactly when sampling at temperature 1 with top_p 1 (the default)."""
    prompts = list(prompts)[: int(cfg["n_prompts"])]
    kwargs = {
        "max_new_tokens": int(cfg["max_new_tokens"]),
        "temperature": float(cfg["temperature"]),
        "top_p": float(cfg["top_p"]),
        "batch_size": int(cfg["batch_size"]),
        "seed": seed,
    }
    samples = sample(policy, tokenizer, prompts, **kwargs)
    samples_init = sample(initial, tokenizer, prompts, **kwargs)
    rewards = batch_golden_reward(task, prompts, samples.texts)
    rewards_init = batch_golden_reward(task, prompts, samples_init.texts)
    batch = {"pad_id": tokenizer.pad_token_id, "batch_size": int(cfg["batch_size"])}
    log_ratio = (
        completion_logps(policy, samples, **batch) - completion_logps(initial, samples, **batch)
    ).tolist()
    if samples_path is not None:
        keys = (
            "prompt",
            "completion",
            "golden_reward",
            "log_ratio_init",
            "completion_init",
            "golden_reward_init",
        )
        with samples_path.open("w", encoding="utf-8") as fh:
            rows = zip(
                prompts, samples.texts, rewards, log_ratio, samples_init.texts, rewards_init, strict=True
            )
            for row in rows:
                fh.write(json.dumps(dict(zip(keys, row, strict=True))) + "\n")
    return {
        "golden_reward": statistics.fmean(rewards),
        "golden_reward_init": statistics.fmean(rewards_init),
        "golden_reward_sem": sem(rewards),
        "golden_kl_init": statistics.fmean(log_ratio),
        "golden_kl_init_sem": sem(log_ratio),
        "golden_n_prompts": len(prompts),
        "golden_mean_words": statistics.fmean(len(t.split()) for t in samples.texts),
    }
