"""Property-based tests over random config overrides: each is either a clear validation error that
names the key (tralign.config.validate, before anything is built) or a run that trains — never a
traceback from deep inside training. Deterministic (derandomize=True): CI reruns the same cases.
Counts and findings: docs/hardening.md."""

from __future__ import annotations

import copy
import math

import pytest
from helpers.config import compose_cfg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from tralign.config import validate
from tralign.errors import ConfigError, TralignError
from tralign.train import run

pytestmark = pytest.mark.fuzz  # hypothesis: python -m pytest -m 'not fuzz' skips these

# Leaf keys a user may override, as typed on the command line.
KEYS = [
    "seed", "alpha", "tau", "beta",
    "optim.lr", "optim.weight_decay", "optim.eps", "optim.warmup_steps", "optim.schedule", "optim.betas",
    "data.batch_size", "data.eval_batch_size", "data.max_length", "data.max_prompt_length",
    "data.n_train", "data.n_val", "data.on_bad_rows", "data.group_by_length", "data.num_workers",
    "data.task.n_words", "data.task.n_keys", "data.task.min_len", "data.task.max_len",
    "data.task.label_temperature", "data.golden_eval.n_prompts", "data.golden_eval.max_new_tokens",
    "trainer.max_steps", "trainer.accumulate_grad_batches", "trainer.gradient_clip_val",
    "trainer.val_check_interval", "checkpoint.every_n_steps",
    "guard.on_nonfinite", "guard.max_consecutive_nonfinite", "output.min_free_gb", "output.overwrite",
    "model.config.hidden_size", "model.config.num_attention_heads", "model.config.num_hidden_layers",
]  # fmt: skip

WORDS = st.sampled_from(["abc", "none", "skip", "error", "cosine", "soft", "x1", "stop", "off", "true"])
SCALARS = st.one_of(
    st.integers(-3, 5),
    st.integers(-(10**9), 10**9),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.booleans(),
    st.none(),
    WORDS,
)
VALUES = st.one_of(SCALARS, st.lists(st.one_of(st.integers(-2, 3), st.floats(-2, 2)), max_size=3))


def render(value) -> str:
    """A value as Hydra's override grammar reads it back (same type)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, list):
        return "[" + ",".join(render(v) for v in value) + "]"
    return str(value)


def _short(key: str) -> str:
    return key.split(".")[-1]


CASES = {"validation": 0, "refused": 0, "accepted": 0}
BASE = compose_cfg([])  # composed once; each case sets its values on a copy (Hydra would give the same types)


@settings(
    max_examples=400, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(st.dictionaries(st.sampled_from(KEYS), VALUES, min_size=1, max_size=3))
def test_random_overrides_are_valid_or_a_clear_error_naming_the_key(overrides):
    CASES["validation"] += 1
    cfg = copy.deepcopy(BASE)
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, merge=False)
    try:
        validate(cfg)
    except ConfigError as err:
        CASES["refused"] += 1
        message = str(err)
        assert "\n" not in message
        assert any(_short(key) in message for key in overrides), (overrides, message)
        return
    CASES["accepted"] += 1
    # Accepted: the values are ones training can take. Check the ones validate owns.
    for key, value in overrides.items():
        if key in ("alpha", "beta", "optim.lr", "optim.eps", "optim.weight_decay", "output.min_free_gb"):
            assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)


def test_overrides_through_hydra_give_the_same_types():
    # The fuzz above sets values with OmegaConf (fast); Hydra's grammar reads the same values back.
    values = [None, True, 3, -2, 0.5, float("inf"), float("nan"), "abc", [1, 2.5]]
    cfg = compose_cfg([f"+fuzz.v{i}={render(v)}" for i, v in enumerate(values)])
    for i, value in enumerate(values):
        got = cfg.fuzz[f"v{i}"]
        got = list(got) if OmegaConf.is_list(got) else got
        assert got == value or (value != value and got != got), (value, got)


# A few accepted configs, run for one optimizer step end to end (the run must finish or raise a
# TralignError; anything else is a bug).
PLAUSIBLE = {
    "alpha": st.sampled_from([0.0, 0.5, 1.0]),
    "tau": st.integers(1, 3),
    "beta": st.sampled_from([0.01, 0.1, 2.0]),
    "optim.schedule": st.sampled_from(["constant", "linear", "cosine"]),
    "optim.warmup_steps": st.integers(0, 3),
    "optim.weight_decay": st.sampled_from([0.0, 0.1]),
    "data.batch_size": st.integers(1, 9),
    "data.max_length": st.integers(6, 48),
    "data.max_prompt_length": st.integers(1, 8),
    "data.group_by_length": st.booleans(),
    "trainer.accumulate_grad_batches": st.integers(1, 2),
    "trainer.gradient_clip_val": st.sampled_from([None, 0.5]),
    "guard.on_nonfinite": st.sampled_from(["skip", "stop"]),
    "model.config.num_hidden_layers": st.integers(1, 2),
}
METHODS = st.sampled_from(["dpo", "tr_dpo", "ipo", "tr_kto", "sft", "kto_unpaired"])


@pytest.mark.slow
@settings(
    max_examples=8, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(METHODS, st.fixed_dictionaries({}, optional=PLAUSIBLE))
@pytest.mark.e2e
def test_accepted_configs_train_one_step(tmp_path_factory, method, overrides):
    args = [f"method={method}", "trainer.max_steps=1", "data.n_train=24", "data.n_val=8"]
    args += ["data.golden_eval.n_prompts=4", "data.golden_eval.max_new_tokens=2"]
    if method == "sft":
        args.append("ref_update=none")
    if method == "kto_unpaired":
        args.append("data.unpair=true")
    args += [f"{k}={render(v)}" for k, v in overrides.items()]
    cfg = compose_cfg(args)
    try:
        validate(cfg)
    except ConfigError:
        return
    try:
        summary = run(cfg, tmp_path_factory.mktemp("run"))
    except TralignError as err:
        assert "\n" not in str(err)
        return
    assert summary["status"] == "completed" and summary["global_step"] == 1
