"""Compose the real configs (conf/), shrunk for seconds-long CPU runs; small data-module configs."""

from __future__ import annotations

from typing import Any

from helpers.paths import CONF

# Small enough for a few seconds per run, large enough that every code path runs (validation,
# periodic checkpoints, reference updates, golden evaluation).
SHRINK = [
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "data.n_train=64",
    "data.n_val=16",
    "data.batch_size=8",
    "data.eval_batch_size=8",
    "data.golden_eval.n_prompts=8",
    "data.golden_eval.max_new_tokens=4",
    "checkpoint.every_n_steps=2",
    "logger=none",
]


def compose_cfg(overrides: list[str] | None = None, shrink: bool = True):
    """``conf/train.yaml`` composed as the CLI would, with :data:`SHRINK` first (unless ``shrink``
    is false) and then ``overrides``."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=(SHRINK if shrink else []) + list(overrides or []))
    return cfg


# The embedded task's default world (conf/data/synthetic.yaml's task block), for DataModule tests.
SYNTH_TASK = {"seed": 0, "n_words": 24, "n_keys": 2, "min_len": 2, "max_len": 8, "label_temperature": 0.25}


def synthetic_data_cfg(**overrides: Any) -> dict[str, Any]:
    """A small synthetic data config (64 train / 16 val pairs) for building a DataModule directly."""
    cfg = {
        "name": "synthetic",
        "n_train": 64,
        "n_val": 16,
        "task": dict(SYNTH_TASK),
        "max_length": 48,
        "max_prompt_length": 16,
        "batch_size": 8,
        "eval_batch_size": 8,
        "num_workers": 0,
    }
    cfg.update(overrides)
    return cfg
