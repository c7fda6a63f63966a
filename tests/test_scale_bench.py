"""scale_bench's arithmetic: FLOPs with the LM head on completion positions only, MFU, the dense
bf16 peak table, and peak memory measured over the steps (not the model build)."""

from __future__ import annotations

import pytest
import torch

from tralign import scale_bench


def test_step_flops_count_the_head_on_completion_positions_only() -> None:
    policy, _ = scale_bench.build("tiny", torch.device("cpu"), torch.float32, 32)
    h, inner, layers, vocab = 64, 256, 2, 50304  # tralign.bench.presets "tiny", Pythia's vocabulary
    # GPT-NeoX block: qkv h·3h+3h, dense h·h+h, MLP 2·h·I+I+h, two LayerNorms 4h; final LayerNorm 2h.
    blocks = layers * (4 * h * h + 2 * h * inner + 9 * h + inner) + 2 * h
    tokens, seq = 2 * 1 * 32, 32
    attention = layers * h * seq * tokens
    for positions in (0, 30, 62):
        want = 8 * blocks * tokens + 16 * attention + 8 * vocab * h * positions
        assert scale_bench.step_flops(policy, 1, seq, positions) == want
    # The head on every token would be 8·V·h·tokens: with half the positions, far fewer FLOPs.
    full = scale_bench.step_flops(policy, 1, seq, tokens)
    assert scale_bench.step_flops(policy, 1, seq, 31 * 2) < full


def test_mfu_is_achieved_over_peak() -> None:
    assert scale_bench.mfu(989e12 / 2, 1.0, 989.0) == pytest.approx(0.5)
    assert scale_bench.mfu(312e12, 4.0, 312.0) == pytest.approx(0.25)
    assert scale_bench.mfu(1e12, 1.0, None) is None


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 80GB HBM3", 989.0),  # SXM
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA H200 NVL", 835.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA L40S", 362.0),
        ("Tesla T4", None),
    ],
)
def test_peak_table_gives_dense_bf16_by_device_name(name: str, tflops: float | None) -> None:
    assert scale_bench.peak_tflops_for(name) == tflops


@pytest.mark.e2e
def test_peak_memory_is_reset_after_the_models_are_built(monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    build = scale_bench.build
    monkeypatch.setattr(scale_bench, "build", lambda *a: (events.append("build"), build(*a))[1])
    monkeypatch.setattr(scale_bench, "_reset_peak", lambda device: events.append("reset"))
    argv = ["--device", "cpu", "--archs", "tiny", "--steps", "1", "--warmup", "0", "--seq", "16"]
    (row,) = scale_bench.main([*argv, "--batch", "1", "--ref-updates", "1"])
    assert events == ["build", "reset"] and row["step_s_median"] > 0


def test_models_are_built_in_their_final_dtype_and_the_default_dtype_is_restored() -> None:
    policy, reference = scale_bench.build("tiny", torch.device("cpu"), torch.bfloat16, 16)
    assert {p.dtype for p in [*policy.parameters(), *reference.parameters()]} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32
    torch.testing.assert_close(policy.state_dict(), reference.state_dict(), rtol=0, atol=0)
