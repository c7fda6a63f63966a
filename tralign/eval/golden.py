"""Golden-reward evaluation on the embedded task: sample the trained and the starting policy on
the same held-out prompts with the same seed, and score both with the task's known reward."""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from tralign.data.synthetic import SyntheticTask, batch_golden_reward
from tralign.generation import sample


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
    prompts = list(prompts)[: int(cfg["n_prompts"])]
    kwargs = {
        "max_new_tokens": int(cfg["max_new_tokens"]),
        "temperature": float(cfg["temperature"]),
        "top_p": float(cfg["top_p"]),
        "batch_size": int(cfg["batch_size"]),
        "seed": seed,
    }
    completions = sample(policy, tokenizer, prompts, **kwargs)
    completions_init = sample(initial, tokenizer, prompts, **kwargs)
    rewards = batch_golden_reward(task, prompts, completions)
    rewards_init = batch_golden_reward(task, prompts, completions_init)
    if samples_path is not None:
        with samples_path.open("w", encoding="utf-8") as fh:
            for row in zip(prompts, completions, rewards, completions_init, rewards_init, strict=True):
                keys = ("prompt", "completion", "golden_reward", "completion_init", "golden_reward_init")
                fh.write(json.dumps(dict(zip(keys, row, strict=True))) + "\n")
    return {
        "golden_reward": statistics.fmean(rewards),
        "golden_reward_init": statistics.fmean(rewards_init),
        "golden_reward_sem": statistics.stdev(rewards) / len(rewards) ** 0.5 if len(rewards) > 1 else 0.0,
        "golden_n_prompts": len(prompts),
        "golden_mean_words": statistics.fmean(len(c.split()) for c in completions),
    }
