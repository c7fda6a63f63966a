"""Master weights in fp32 whatever the checkpoint holds (issue 12, point 1): ``model.dtype``,
``model.reference_dtype`` and ``export.dtype``, on tiny random checkpoints saved in fp16/bf16 the way
hub checkpoints are (Pythia ships fp16, Llama-3 bf16)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from helpers.config import compose_cfg
from helpers.models import tiny_model, tiny_neox
from helpers.processes import run_cli
from safetensors.torch import load_file

from tralign.config import validate
from tralign.errors import ConfigError
from tralign.models import build_policy, checkpoint_dtype, master_dtype, reference_dtype, save_as
from tralign.module import AlignmentModule, frozen_copy
from tralign.reference import ReferenceSchedule, update_reference_
from tralign.train import run

HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}
PYTHIA_ROWS = 50304  # the Pythia tokenizer's 50,277 tokens, padded as Pythia pads them


def _tiny(arch: str):
    return tiny_model(
        {"neox": "gpt_neox", "llama": "llama"}[arch], 0, vocab_size=PYTHIA_ROWS, hidden_size=32,
        num_attention_heads=4, intermediate_size=64, max_position_embeddings=256, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"neox-fp16": folder, ...}``: tiny random GPT-NeoX and Llama saved in fp16 and bf16."""
    root = tmp_path_factory.mktemp("hub")
    out = {}
    for arch in ("neox", "llama"):
        for half, dtype in HALF.items():
            out[f"{arch}-{half}"] = root / f"{arch}-{half}"
            _tiny(arch).to(dtype).save_pretrained(out[f"{arch}-{half}"])
    return out


# --- loading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["neox-fp16", "neox-bf16", "llama-fp16", "llama-bf16"])
def test_half_checkpoint_loads_fp32_master_weights(name: str, checkpoints: dict[str, Path]) -> None:
    folder = checkpoints[name]
    model = build_policy({"name_or_path": str(folder)}, None)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The values are the checkpoint's, upcast exactly.
    stored = load_file(folder / "model.safetensors")
    key, weight = next((k, v) for k, v in model.state_dict().items() if k in stored and "layers" in k)
    assert torch.equal(weight, stored[key].float())
    bf16 = build_policy({"name_or_path": str(folder), "dtype": "bfloat16"}, None)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16}
    assert checkpoint_dtype({"name_or_path": str(folder)}) == HALF[name.split("-")[1]]


def test_checkpoint_dtype_without_config_field_reads_the_weights(tmp_path: Path) -> None:
    tiny_neox().to(torch.bfloat16).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config.pop("dtype", None)
    config.pop("torch_dtype", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert checkpoint_dtype({"name_or_path": str(tmp_path)}) == torch.bfloat16
    assert checkpoint_dtype({"name_or_path": None}) == torch.float32  # built from scratch


def test_master_and_reference_dtype_helpers() -> None:
    assert master_dtype({}) == torch.float32
    assert master_dtype({"dtype": "bf16"}) == torch.bfloat16
    assert reference_dtype({"dtype": "bfloat16"}) == torch.bfloat16  # null follows model.dtype
    assert reference_dtype({"dtype": "float32", "reference_dtype": "bfloat16"}) == torch.bfloat16


# --- frozen copies and the reference rule in mixed dtypes ---------------------------------------


def test_frozen_copy_in_bf16_keeps_ties_and_leaves_the_policy() -> None:
    policy = tiny_neox(num_hidden_layers=1, tie_word_embeddings=True)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    clone = frozen_copy(policy, torch.bfloat16)
    assert {p.dtype for p in clone.parameters()} == {torch.bfloat16}
    assert clone.get_output_embeddings().weight is clone.get_input_embeddings().weight
    assert not any(p.requires_grad for p in clone.parameters()) and not clone.training
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    for k, v in policy.state_dict().items():
        assert torch.equal(v, before[k]), k
        assert torch.equal(clone.state_dict()[k], v.to(torch.bfloat16)), k


def test_bf16_reference_of_fp32_policy_follows_the_rule() -> None:
    """model.reference_dtype=bfloat16: the module's reference and starting copies are bf16, the
    policy fp32; soft updates give α·θ + (1 − α)·θ_ref up to bf16 rounding, hard updates θ in bf16."""
    module = AlignmentModule(
        tiny_neox(),
        loss="dpo",
        loss_params={"beta": 0.1},
        schedule=ReferenceSchedule("soft", 0.5, 1),
        optim={"lr": 1e-6},
        max_steps=1,
        frozen_dtype=torch.bfloat16,
    )
    assert {p.dtype for p in module.reference.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.initial.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in module.policy.parameters()} == {torch.float32}
    with torch.no_grad():
        for p in module.policy.parameters():
            p.add_(0.1 * torch.randn_like(p))  # the policy moves far beyond bf16 rounding
    ref0 = {k: v.float().clone() for k, v in module.reference.named_parameters()}
    pol = {k: v.detach().clone() for k, v in module.policy.named_parameters()}
    update_reference_(module.reference, module.policy, 0.5)
    for k, r in module.reference.named_parameters():
        assert r.dtype == torch.bfloat16
        expected = 0.5 * pol[k] + 0.5 * ref0[k]
        torch.testing.assert_close(r.float(), expected, rtol=1.6e-2, atol=1e-3, msg=k)
        assert (expected - ref0[k]).abs().max() > 0.05, k  # a skipped update would fail above
    update_reference_(module.reference, module.policy, 1.0)
    for k, r in module.reference.named_parameters():
        assert torch.equal(r, pol[k].to(torch.bfloat16)), k
    for k, p in module.policy.named_parameters():
        assert torch.equal(p, pol[k]), k  # the rule never writes the policy


# --- export -------------------------------------------------------------------------------------


def test_save_as_casts_the_export_not_the_model(tmp_path: Path) -> None:
    model = tiny_neox()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    save_as(model, tmp_path, torch.float16)
    saved = load_file(tmp_path / "model.safetensors")
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "float16"
    for k, v in model.state_dict().items():
        assert v.dtype == before[k].dtype and torch.equal(v, before[k]), k


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["model.dtype=float16"], "model.dtype=float16: float16 master weights are refused"),
        (["model.dtype=int8"], "model.dtype: must be float32 (default) or bfloat16, got 'int8'"),
        (["model.reference_dtype=fp16"], "model.reference_dtype=fp16: float16 frozen copies are refused"),
        (["export.dtype=float64"], "export.dtype: must be float32, bfloat16, float16 or null"),
        (
            ["trainer.precision=bf16-true"],
            "trainer.precision=bf16-true casts the trained weights to bfloat16",
        ),
        (["trainer.precision=16-true"], "trainer.precision=16-true casts the trained weights to float16"),
    ],
)
def test_bad_dtypes_are_one_line_naming_the_key(overrides: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        validate(compose_cfg(overrides))
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert len(info.value.problems) == 1, info.value.problems


def test_allowed_dtypes_validate() -> None:
    validate(compose_cfg(["model.dtype=bfloat16", "trainer.precision=bf16-true"]))
    validate(compose_cfg(["model.reference_dtype=bfloat16", "export.dtype=float16"]))


# --- end to end: the commands -----------------------------------------------------------


def _real_run(folder: Path, shared: Path, *extra: str) -> list[str]:
    return [
        "model=pythia-410m",
        f"model.name_or_path={folder}",
        f"model.tokenizer={shared / 'tokenizers' / 'pythia'}",
        "data=hh",
        f"data.path={shared / 'data' / 'hh-rlhf' / 'harmless-base' / 'test.jsonl.gz'}",
        "data.limit=48",
        "data.max_length=96",
        "data.max_prompt_length=64",
        "data.batch_size=4",
        "data.eval_batch_size=8",
        "data.cache=false",
        "optim.lr=1e-6",
        "trainer.max_steps=3",
        "trainer.val_check_interval=3",
        "trainer.enable_progress_bar=false",
        "checkpoint.every_n_steps=3",
        "logger=none",
        *extra,
    ]


def _changed_fraction(trained: dict[str, torch.Tensor], start: dict[str, torch.Tensor]) -> float:
    """Of the decoder blocks' weights (every one gets a gradient, unlike unseen embedding rows)."""
    keys = [k for k in start if "layers" in k and start[k].is_floating_point()]
    changed = sum(int((trained[k] != start[k].float()).sum()) for k in keys)
    return changed / sum(start[k].numel() for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["neox-fp16", "neox-bf16", "llama-fp16", "llama-bf16"])
@pytest.mark.e2e
def test_half_checkpoint_trains_fp32_at_lr_1e6(
    name: str, checkpoints: dict[str, Path], shared: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: fp16 stopped after step 1 (non-finite weights, fp16 AdamW state); bf16 trained bf16
    master weights and ~96% of the 1e-6 updates rounded away."""
    folder, stored = checkpoints[name], HALF[name.split("-")[1]]
    # Llama runs also keep a bf16 reference (soft updates in mixed dtypes) and export it in fp32.
    extra = ["model.reference_dtype=bfloat16", "export.reference=true", "export.dtype=float32"]
    extra = extra if name.startswith("llama") else []
    with caplog.at_level(logging.INFO, logger="tralign"):
        summary = run(compose_cfg(_real_run(folder, shared, *extra), shrink=False), tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 3
    assert math.isfinite(summary["val"]["val/loss"])
    state = torch.load(tmp_path / "checkpoints" / "step-000003.ckpt", map_location="cpu", weights_only=True)
    policy = {k.removeprefix("policy."): v for k, v in state["state_dict"].items() if k.startswith("policy.")}
    assert {v.dtype for v in policy.values() if v.is_floating_point()} == {torch.float32}
    assert all(bool(torch.isfinite(v).all()) for v in policy.values())
    adam = state["optimizer_states"][0]["state"]
    assert {t.dtype for s in adam.values() for k, t in s.items() if k != "step"} == {torch.float32}
    # lr 1e-6 with the paper's 100 warm-up steps: steps of ~1e-8, kept by fp32, lost by bf16.
    assert _changed_fraction(policy, load_file(folder / "model.safetensors")) > 0.5
    exported = load_file(tmp_path / "policy" / "model.safetensors")
    config = json.loads((tmp_path / "policy" / "config.json").read_text())
    export = torch.float32 if extra else stored  # default: the checkpoint's own dtype
    assert {v.dtype for v in exported.values() if v.is_floating_point()} == {export}
    assert config["dtype"] == str(export).removeprefix("torch.")
    reference = "bfloat16" if extra else "float32"
    assert summary["dtypes"] == {
        "master": "float32",
        "reference": reference,
        "compute": "float32",
        "export": str(export).removeprefix("torch."),
    }
    assert (summary["lr"], summary["warmup_steps"], summary["precision"]) == (1e-6, 100, "32-true")
    setup = [r.getMessage() for r in caplog.records if r.getMessage().startswith("setup:")]
    assert setup and f"reference={reference}" in setup[0] and "lr=1e-06 warmup_steps=100" in setup[0]
    if extra:
        refs = {k: v for k, v in state["state_dict"].items() if k.startswith("reference.")}
        assert {v.dtype for v in refs.values() if v.is_floating_point()} == {torch.bfloat16}
        ref_export = load_file(tmp_path / "reference" / "model.safetensors")
        assert {v.dtype for v in ref_export.values() if v.is_floating_point()} == {torch.float32}


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize(
    ("name", "base_dtype"),
    [("llama-bf16", "bfloat16"), ("neox-fp16", "float32")],
    ids=["llama-bf16-base", "neox-fp16-upcast"],
)
def test_lora_on_a_half_checkpoint_trains_fp32_adapters(
    name: str, base_dtype: str, checkpoints: dict[str, Path], shared: Path, tmp_path: Path
) -> None:
    """LoRA from a hub-style half checkpoint at the paper's lr: the frozen base stays in ``model.dtype``
    (bf16 keeps an 8B base at 16 GB) and is never changed, while the adapters, their gradients and AdamW's
    state are float32 (a bf16 adapter would round 1e-6-sized updates away), with a moving reference adapter."""
    folder = checkpoints[name]
    extra = ["model.lora.r=4", f"model.dtype={base_dtype}", "ref_update=soft", "alpha=0.6"]
    summary = run(compose_cfg(_real_run(folder, shared, *extra), shrink=False), tmp_path)
    assert summary["status"] == "completed" and summary["global_step"] == 3
    assert math.isfinite(summary["val"]["val/loss"]) and summary["ref_updates"] == 3
    assert summary["dtypes"]["master"] == "float32" and summary["dtypes"]["base"] == base_dtype
    state = torch.load(tmp_path / "checkpoints" / "step-000003.ckpt", map_location="cpu", weights_only=True)
    weights = state["state_dict"]
    adapters = {k: v for k, v in weights.items() if "lora_" in k}
    base = {
        k: v
        for k, v in weights.items()
        if k.startswith("policy.") and "lora_" not in k and v.is_floating_point()
    }
    assert adapters and {v.dtype for v in adapters.values()} == {torch.float32}
    assert {v.dtype for v in base.values()} == {getattr(torch, base_dtype)}
    adam = state["optimizer_states"][0]["state"]
    assert {t.dtype for st in adam.values() for k, t in st.items() if k != "step"} == {torch.float32}
    # The trained adapter moved (B starts at 0); the base is the checkpoint's, exactly (frozen).
    trained_b = [v for k, v in adapters.items() if ".lora_B.default." in k]
    assert trained_b and all(bool(torch.isfinite(v).all()) for v in trained_b)
    assert any(bool((v != 0).any()) for v in trained_b)
    # The checkpoint as transformers names it in a model (GPT-NeoX's stored embed_out is lm_head).
    start = build_policy({"name_or_path": str(folder), "dtype": base_dtype}, None).state_dict()
    for key, value in start.items():
        head, _, leaf = f"policy.base_model.model.{key}".rpartition(".")
        mine = base.get(f"{head}.{leaf}", base.get(f"{head}.base_layer.{leaf}"))
        assert mine is not None and torch.equal(mine, value.to(mine.dtype)), key


@pytest.mark.slow
@pytest.mark.e2e
def test_bf16_llama_checkpoint_trains_fp32_on_two_fsdp2_ranks(
    checkpoints: dict[str, Path], shared: Path, tmp_path: Path
) -> None:
    """The real-model path end to end where it is used: a half-precision checkpoint of a non-NeoX
    architecture, read in slices onto 2 gloo ranks under fsdp2, trains fp32 master weights at lr 1e-6."""
    folder = checkpoints["llama-bf16"]
    sharded = ["trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=2"]
    sharded += ["trainer.strategy.mixed_precision=null", "export.dtype=float32", "export.reference=true"]
    result = run_cli(
        "tralign.train", _real_run(folder, shared, *sharded, f"hydra.run.dir={tmp_path}/run"), tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["global_step"] == 3 and summary["world_size"] == 2
    assert math.isfinite(summary["val"]["val/loss"])
    assert summary["dtypes"]["master"] == "float32" and summary["ref_updates"] == 3
    exported = load_file(tmp_path / "run" / "policy" / "model.safetensors")
    assert {v.dtype for v in exported.values() if v.is_floating_point()} == {torch.float32}
    # lr 1e-6 steps survive only in fp32 master weights (bf16 would round most of them away).
    assert _changed_fraction(exported, load_file(folder / "model.safetensors")) > 0.5


@pytest.mark.slow
@pytest.mark.e2e
def test_cli_refuses_fp16_master_weights_in_one_line(
    checkpoints: dict[str, Path], shared: Path, tmp_path: Path
) -> None:
    args = _real_run(checkpoints["neox-fp16"], shared, "model.dtype=float16", f"hydra.run.dir={tmp_path}/run")
    result = run_cli("tralign.train", args, tmp_path)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("tralign: error")]
    assert len(lines) == 1 and "model.dtype=float16: float16 master weights are refused" in lines[0]
    assert "Traceback" not in result.stderr
