"""The HH paper bundles share conf/experiment/base/hh_tr_dpo.yaml and set only what differs; each
composes to the values it had when it spelled every setting out (recorded before the base existed)."""

from __future__ import annotations

import pytest
from helpers.config import compose_cfg
from omegaconf import OmegaConf

# What every HH bundle composed to before the shared base (python -m tralign.train experiment=NAME).
SHARED = {
    "method.name": "tr_dpo",
    "method.loss": "dpo",
    "ref_update": "soft",
    "alpha": 0.6,
    "tau": 1,
    "beta": 0.05,
    "data.name": "hh",
    "data.max_length": 1024,
    "data.max_prompt_length": 512,
    "data.global_batch_size": 64,
    "trainer.strategy.name": "fsdp",
    "trainer.strategy.sharding_strategy": "FULL_SHARD",
    "trainer.devices": 8,
    "trainer.max_steps": 2500,
    "trainer.precision": "bf16-mixed",
    "checkpoint.every_n_steps": 250,
    "checkpoint.keep": 3,
    "optim.lr": 1e-06,
    "optim.warmup_steps": 100,
}
# model.name, trainer.val_check_interval, data.batch_size, data.eval_batch_size, model.gradient_checkpointing
OWN = {
    "hh_pythia-2.8b_tr_dpo": ("pythia-2.8b", 500, 8, 16, False),
    "hh_pythia-6.9b_tr_dpo": ("pythia-6.9b", 500, 8, 8, True),
    "hh_pythia-12b_tr_dpo": ("pythia-12b", 500, 8, 8, True),
    "hh_llama3-8b_tr_dpo": ("llama3-8b", 1000, 4, 4, True),
}
OWN_KEYS = (
    "model.name",
    "trainer.val_check_interval",
    "data.batch_size",
    "data.eval_batch_size",
    "model.gradient_checkpointing",
)


def _flat(node, prefix: str = "") -> dict:
    if isinstance(node, dict):
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    return {prefix[:-1]: node}


@pytest.fixture(scope="module")
def bundles() -> dict[str, dict]:
    return {
        name: _flat(OmegaConf.to_container(compose_cfg([f"experiment={name}"], shrink=False), resolve=True))
        for name in OWN
    }


@pytest.mark.parametrize("name", sorted(OWN))
def test_each_hh_bundle_composes_as_before(bundles: dict[str, dict], name: str) -> None:
    flat = bundles[name]
    assert {k: flat[k] for k in SHARED} == SHARED
    assert tuple(flat[k] for k in OWN_KEYS) == OWN[name]


def test_hh_bundles_differ_only_in_their_model_and_memory_knobs(bundles: dict[str, dict]) -> None:
    reference = bundles["hh_pythia-6.9b_tr_dpo"]
    for name, flat in bundles.items():
        differ = {
            k
            for k in set(flat) | set(reference)
            if flat.get(k, "<unset>") != reference.get(k, "<unset>") and not k.startswith("model.")
        }
        assert differ <= set(OWN_KEYS), (name, differ)


@pytest.mark.parametrize("name", sorted(OWN))
def test_hh_bundles_state_only_what_differs(name: str) -> None:
    import yaml
    from helpers.paths import CONF

    own = yaml.safe_load((CONF / "experiment" / f"{name}.yaml").read_text())
    assert "base/hh_tr_dpo" in own.pop("defaults")
    assert set(_flat(own)) <= set(OWN_KEYS) - {"model.name"}  # the model is chosen in the defaults
