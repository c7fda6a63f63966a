"""Loading a checkpoint into a sharded run (tralign.loading): no whole model per rank, weights exact.

One 2-rank gloo launch (torchrun, the fsdp2 training path through Lightning) loads a tiny GPT-NeoX
saved in fp32 and a tiny Llama saved in bf16 (each rank reads its own slices of the safetensors
files), and the GPT-NeoX saved as ``pytorch_model.bin`` (rank 0 loads and broadcasts); the gathered policy, reference and starting policy
must equal the checkpoint's weights exactly (bf16 -> fp32 is exact), and the non-persistent buffers
(rotary ``inv_freq``, not in checkpoints) must equal those of a model built the usual way.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.models import tiny_config, tiny_neox
from helpers.paths import REPO
from safetensors.torch import load_file


def _tiny_llama_config():
    # vocab_size odd: the two ranks' shards differ in size
    return tiny_config(
        "llama", vocab_size=37, num_attention_heads=4, intermediate_size=24, max_position_embeddings=64,
        rope_theta=5000.0,
    )  # fmt: skip


def _save_tiny(tmp_path: Path) -> list[Path]:
    from transformers import LlamaForCausalLM

    neox = tiny_neox(0, vocab_size=40, intermediate_size=36, rotary_pct=0.5, tie_word_embeddings=False)
    llama = LlamaForCausalLM(_tiny_llama_config())
    folders = [tmp_path / "neox-fp32", tmp_path / "llama-bf16", tmp_path / "neox-bin"]
    neox.save_pretrained(folders[0], safe_serialization=True)
    # A .bin checkpoint (no safetensors: rank 0 loads it and broadcasts).
    neox.save_pretrained(folders[2])
    (folders[2] / "model.safetensors").rename(folders[2] / "weights.tmp")
    torch.save(load_file(folders[2] / "weights.tmp"), folders[2] / "pytorch_model.bin")
    (folders[2] / "weights.tmp").unlink()
    llama.to(torch.bfloat16).save_pretrained(folders[1], safe_serialization=True)
    return folders


@pytest.mark.slow
@pytest.mark.e2e
def test_two_ranks_load_policy_and_frozen_copies_exactly_from_the_checkpoint(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    folders = _save_tiny(tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "tralign.bench.loading", "role=worker", f"ckpts={','.join(map(str, folders))}"]
    cmd += [f"dump={tmp_path}"]
    result = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    for index, folder in enumerate(folders):
        dumped = torch.load(tmp_path / f"{index}.pt", weights_only=True)
        assert dumped["route"] == ("rank0" if folder.name.endswith("bin") else "slices")
        # The checkpoint's tensors under the model's names (GPT-NeoX saves lm_head as embed_out).
        normal = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        expected = normal.state_dict()
        if dumped["route"] == "slices":
            saved = load_file(folder / "model.safetensors")
            assert sorted(t.float().sum().item() for t in saved.values()) == sorted(
                t.sum().item() for t in expected.values()
            )
        assert set(dumped["states"]) == {"policy", "reference", "initial"}
        for name, state in dumped["states"].items():
            assert set(state) == set(expected), name
            for key, value in expected.items():
                assert state[key].dtype == torch.float32, (name, key)  # fp32 master weights
                torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"{name}.{key}")
        buffers = dict(normal.named_buffers())
        assert any(k.endswith("inv_freq") for k in buffers)
        assert set(dumped["buffers"]) == set(buffers)
        for key, value in buffers.items():
            torch.testing.assert_close(dumped["buffers"][key], value, rtol=0, atol=0, msg=key)


# --- one process: the pieces ----------------------------------------------------------------------
def _tiny_llama_bf16(folder: Path) -> Path:
    from transformers import LlamaForCausalLM

    torch.manual_seed(1)
    LlamaForCausalLM(_tiny_llama_config()).to(torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


FSDP2 = {"name": "fsdp2", "mixed_precision": None}


def test_fsdp2_builds_the_policy_and_its_frozen_copies_without_weights(tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    from tralign.loading import build_policy_for_strategy
    from tralign.module import AlignmentModule
    from tralign.reference import ReferenceSchedule

    folder = _tiny_llama_bf16(tmp_path / "llama")
    policy, deferred = build_policy_for_strategy({"name_or_path": str(folder)}, None, FSDP2)
    assert deferred is not None and deferred.entries is not None and deferred.dtype == torch.float32
    assert all(p.is_meta for p in policy.parameters())
    # Buffers are built for real, equal to a normal build's (rotary inv_freq is in no checkpoint).
    normal = dict(AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).named_buffers())
    built = dict(policy.named_buffers())
    assert set(built) == set(normal) and any(k.endswith("inv_freq") for k in built)
    for key, value in normal.items():
        torch.testing.assert_close(built[key], value, rtol=0, atol=0, msg=key)
    module = AlignmentModule(
        policy,
        loss="dpo",
        loss_params={"beta": 0.1},
        schedule=ReferenceSchedule("soft", 0.5, 1),
        optim={"lr": 1e-6},
        max_steps=1,
        keep_initial=True,
        deferred=deferred,
    )
    for frozen in (module.reference, module.initial):
        assert all(p.is_meta and not p.requires_grad for p in frozen.parameters())
        torch.testing.assert_close(frozen.model.rotary_emb.inv_freq, normal["model.rotary_emb.inv_freq"])


def test_local_reads_give_the_checkpoint_under_the_models_names(tmp_path: Path) -> None:
    """One process (each tensor whole): the reads, the dtype cast and GPT-NeoX's embed_out -> lm_head."""
    from transformers import AutoModelForCausalLM

    from tralign.loading import build_empty_policy, checkpoint_entries, materialize_meta_, read_local_shards_

    tiny_neox().save_pretrained(tmp_path / "neox", safe_serialization=True)
    for folder in (tmp_path / "neox", _tiny_llama_bf16(tmp_path / "llama")):
        model = build_empty_policy({"name_or_path": str(folder)}, torch.float32)
        entries = checkpoint_entries(model, folder)
        assert entries is not None
        materialize_meta_(model, "cpu")
        read_local_shards_(model, entries)
        expected = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).state_dict()
        assert model.state_dict().keys() == expected.keys()
        for key, value in expected.items():
            torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_a_checkpoint_whose_names_do_not_match_goes_through_rank_zero(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from tralign.loading import build_empty_policy, checkpoint_entries

    folder = _tiny_llama_bf16(tmp_path / "llama")
    state = load_file(folder / "model.safetensors")
    save_file({k.replace("mlp", "ffn"): v for k, v in state.items()}, folder / "model.safetensors")
    assert (
        checkpoint_entries(build_empty_policy({"name_or_path": str(folder)}, torch.float32), folder) is None
    )


def test_unsharded_strategies_and_models_from_scratch_are_built_whole() -> None:
    from helpers.config import compose_cfg

    from tralign.loading import build_policy_for_strategy
    from tralign.models import build_policy, build_tokenizer

    cfg = compose_cfg()
    tokenizer = build_tokenizer(cfg.model, cfg.data)
    policy, deferred = build_policy_for_strategy(cfg.model, tokenizer, "auto")
    assert deferred is None
    scratch, deferred = build_policy_for_strategy(cfg.model, tokenizer, FSDP2)
    assert deferred is not None and deferred.source is None and deferred.entries is None
    # model.init_seed decides the weights, as without sharding.
    whole = build_policy(cfg.model, tokenizer)
    for (name, a), (_, b) in zip(scratch.named_parameters(), whole.named_parameters(), strict=True):
        assert not a.is_meta and torch.equal(a, b), name


def test_local_checkpoint_is_the_folder_itself_or_none_offline(tmp_path: Path) -> None:
    from tralign.loading import local_checkpoint

    folder = _tiny_llama_bf16(tmp_path / "llama")
    assert local_checkpoint(str(folder)) == folder
    assert local_checkpoint("no-such-org/no-such-model") is None  # HF_HUB_OFFLINE=1, nothing cached
