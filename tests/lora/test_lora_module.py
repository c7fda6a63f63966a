"""Three models on one base (tralign/lora/adapters.py) inside AlignmentModule: the disabled-adapter
reference is the base, the moving reference adapter follows the rule, views leave the policy as it
was, exports round-trip, and summary params count what each reference costs."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers.config import compose_cfg, synthetic_data_cfg

from tralign.data.datamodule import PreferenceDataModule
from tralign.data.synthetic import SyntheticTask
from tralign.logprobs import model_sequence_logps
from tralign.lora.adapters import POLICY, REFERENCE, adapter_tensors, apply_lora, lora_layers
from tralign.lora.config import lora_settings
from tralign.lora.export import export_lora
from tralign.lora.params import param_counts
from tralign.lora.update import delta
from tralign.losses import pair_loss
from tralign.models import build_policy
from tralign.module import AlignmentModule, frozen_copy
from tralign.reference import ReferenceSchedule, update_reference_


@pytest.fixture(scope="module")
def tok():
    return SyntheticTask().build_tokenizer()


@pytest.fixture(scope="module")
def batch(tok) -> dict[str, torch.Tensor]:
    dm = PreferenceDataModule(synthetic_data_cfg(), tok, mode="pair")
    return dm.collate([dm.train_examples[i] for i in range(4)])  # 4 chosen rows, then 4 rejected


def _base(tok):
    return build_policy(compose_cfg().model, tok)  # the tiny model, fixed init_seed: same base every call


def _settings(**lora):
    return lora_settings(compose_cfg([f"model.lora.{k}={v}" for k, v in {"r": 4, **lora}.items()]).model)


def _perturb(peft_model, adapter: str, seed: int, scale: float = 0.2) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in adapter_tensors(peft_model, adapter):
            p.add_(scale * torch.randn(p.shape, generator=g))


def _module(
    policy, schedule: ReferenceSchedule, loss: str = "dpo", keep_initial: bool = True
) -> AlignmentModule:
    module = AlignmentModule(
        policy,
        loss=loss,
        loss_params={"beta": 0.1},
        schedule=schedule,
        optim={"lr": 1e-3},
        max_steps=1,
        keep_initial=keep_initial,
    )
    module.trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False)
    return module


def _logps(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model_sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["loss_mask"])[0]


def test_disabled_adapter_dpo_equals_a_full_copy_frozen_reference(tok, batch) -> None:
    base = _base(tok)
    full_copy = frozen_copy(base)  # what full fine-tuning would hold as its reference
    policy = apply_lora(base, _settings(), moving_reference=False)
    _perturb(policy, POLICY, 0)  # a trained adapter: the policy is no longer the base
    module = _module(policy, ReferenceSchedule())
    assert module.initial is None and module.initial_model is module.reference  # no copy, no third model
    out, pair = module._pair_step(batch)
    ref = _logps(full_copy, batch)
    n = ref.shape[0] // 2
    assert (pair.policy_chosen - ref[:n]).abs().max() > 1e-3  # the adapter matters
    torch.testing.assert_close(pair.ref_chosen, ref[:n], rtol=0, atol=1e-6)
    torch.testing.assert_close(pair.ref_rejected, ref[n:], rtol=0, atol=1e-6)
    full = pair_loss("dpo", dataclasses.replace(pair, ref_chosen=ref[:n], ref_rejected=ref[n:]), beta=0.1)
    torch.testing.assert_close(out.losses, full.losses, rtol=0, atol=1e-6)


def test_views_leave_the_policy_training_with_its_own_adapter(tok, batch) -> None:
    policy = apply_lora(_base(tok), _settings(dropout=0.0), moving_reference=True)
    _perturb(policy, POLICY, 1)
    module = _module(policy, ReferenceSchedule("soft", 0.5, 1))
    module.train()
    before = _logps(policy, batch)
    _logps(module.reference, batch)
    _logps(module.initial, batch)
    assert policy.training and all(m.training for m in policy.modules())
    assert all(
        layer.active_adapters == [POLICY] and not layer.disable_adapters for _, layer in lora_layers(policy)
    )
    torch.testing.assert_close(_logps(policy, batch), before, rtol=0, atol=0)
    trained = {id(p) for g in module.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert trained == {id(p) for p in adapter_tensors(policy, POLICY)}  # never the base or the reference


def test_hard_update_copies_the_adapter_and_the_reference_becomes_the_policy(tok, batch) -> None:
    policy = apply_lora(_base(tok), _settings(), moving_reference=True)
    module = _module(policy, ReferenceSchedule("hard", 1.0, 4))
    torch.testing.assert_close(_logps(module.reference, batch), _logps(module.initial, batch), rtol=0, atol=0)
    _perturb(policy, POLICY, 2)
    update_reference_(module.reference, module.policy, 1.0)
    for p, r in zip(adapter_tensors(policy, POLICY), adapter_tensors(policy, REFERENCE), strict=True):
        assert torch.equal(p, r)
    torch.testing.assert_close(_logps(module.reference, batch), _logps(policy, batch), rtol=0, atol=0)


@pytest.mark.parametrize(("ref_rank", "tolerance"), [("full", 1e-5), (4, None)])
def test_svd_soft_updates_match_the_dense_rule_within_the_stated_error(tok, ref_rank, tolerance) -> None:
    """Full rank: the dense rule up to float32 rounding. Rank r: the error is at most what the
    module reports dropping (the triangle inequality over updates bounds the accumulated error)."""
    alpha = 0.3
    policy = apply_lora(_base(tok), _settings(ref_rank=ref_rank), moving_reference=True)
    module = _module(policy, ReferenceSchedule("soft", alpha, 1))
    layers = lora_layers(policy)
    dense = {n: torch.zeros_like(layer.get_base_layer().weight, dtype=torch.float64) for n, layer in layers}
    for step in range(4):
        _perturb(policy, POLICY, 10 + step, scale=0.3)
        for n, layer in layers:
            s = layer.scaling[POLICY]
            dense[n] = (
                alpha * delta(layer.lora_B[POLICY].weight, layer.lora_A[POLICY].weight, s).double()
                + (1 - alpha) * dense[n]
            )
        update_reference_(module.reference, module.policy, alpha)
    err_sq = sum(
        (
            delta(
                layer.lora_B[REFERENCE].weight, layer.lora_A[REFERENCE].weight, layer.scaling[REFERENCE]
            ).double()
            - dense[n]
        )
        .square()
        .sum()
        for n, layer in layers
    )
    total = sum(d.square().sum() for d in dense.values())
    rel = float((err_sq / total).sqrt())
    if tolerance is not None:
        assert rel < tolerance
    else:
        assert rel > 1e-4  # rank 4 cannot hold 4 updates of rank 4: compressed
        bound = 4 * module.reference.dropped_sq**0.5 / float(total.sqrt())
        assert rel <= bound


def test_export_round_trips_merged_and_adapter(tok, batch, tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    policy = apply_lora(_base(tok), _settings(), moving_reference=True)
    _perturb(policy, POLICY, 3)
    _perturb(policy, REFERENCE, 4)
    module = _module(policy, ReferenceSchedule("soft", 0.5, 1))

    def save(model, tokenizer, path):
        model.save_pretrained(path)

    export_lora(policy, tok, tmp_path, policy=True, reference=True, save_model=save)
    for name, live in (("policy", policy), ("reference", module.reference)):
        want = _logps(live, batch)
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / name, dtype=torch.float32)
        torch.testing.assert_close(_logps(merged, batch), want, rtol=0, atol=1e-5)
        adapter = PeftModel.from_pretrained(_base(tok), tmp_path / f"{name}_adapter")
        torch.testing.assert_close(_logps(adapter, batch), want, rtol=0, atol=1e-5)
    assert any(p.abs().max() > 0 for p in adapter_tensors(policy, POLICY))  # the live policy is untouched


def test_params_count_what_each_reference_costs(tok) -> None:
    full = _module(_base(tok), ReferenceSchedule("soft", 0.5, 1))
    n = sum(p.numel() for p in full.policy.parameters())
    assert param_counts(full) == {"total": n, "trainable": n, "reference_extra": n}
    moving = _module(
        apply_lora(_base(tok), _settings(), moving_reference=True), ReferenceSchedule("soft", 0.5, 1)
    )
    adapter = sum(p.numel() for p in adapter_tensors(moving.policy, POLICY))
    assert param_counts(moving) == {"total": n + adapter, "trainable": adapter, "reference_extra": adapter}
    frozen = _module(apply_lora(_base(tok), _settings(), moving_reference=False), ReferenceSchedule())
    assert param_counts(frozen)["reference_extra"] == 0
    sft = _module(
        apply_lora(copy.deepcopy(_base(tok)), _settings(), moving_reference=False),
        ReferenceSchedule(),
        loss="sft",
    )
    assert sft.reference is None and param_counts(sft)["reference_extra"] == 0


def test_adapters_are_float32_on_a_bf16_base_whatever_peft_does() -> None:
    """``_fp32_adapters`` casts every adapter (trained and reference) to float32 and leaves the base
    alone; here peft's own autocast is off, so the bf16 adapters it built must come out float32."""
    from helpers.models import tiny_neox
    from peft import LoraConfig, get_peft_model

    from tralign.lora.adapters import _fp32_adapters

    model = tiny_neox(0).to(torch.bfloat16)
    peft_model = get_peft_model(
        model,
        LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
        autocast_adapter_dtype=False,
    )
    peft_model.add_adapter(
        REFERENCE,
        LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"),
        autocast_adapter_dtype=False,
    )
    named = dict(peft_model.named_parameters())
    assert {p.dtype for n, p in named.items() if "lora_" in n} == {torch.bfloat16}  # the case to mend
    _fp32_adapters(peft_model)
    named = dict(peft_model.named_parameters())
    assert {p.dtype for n, p in named.items() if "lora_" in n} == {torch.float32}
    assert {p.dtype for n, p in named.items() if "lora_" not in n} == {torch.bfloat16}
    assert any(f".{REFERENCE}." in n for n in named if "lora_" in n)
