"""Bench plumbing of issue 16: the trl-best row and the ratio lines, the MFU arithmetic (model FLOPs
against torch's own FLOP counter, the peak and MFU on a known GEMM), the scaling table and plot.
No timing assertions: the clock is a fake wherever a number is checked."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from helpers.models import TINY_NEOX, tiny_neox

from tralign.bench import mfu
from tralign.bench.report import summarize, table
from tralign.bench.scaling import dominated, markdown_table, plot


def fake_run(step_s, tokens, completion, tokens_sq):
    return {
        "step_s": step_s,
        "tokens": tokens,
        "positions": [2 * t for t in tokens],
        "completion_tokens": completion,
        "tokens_sq": tokens_sq,
        "ref_update_s": [0.001],
        "peak_rss_mb": 100.0,
    }


def test_forward_flops_equal_torch_flop_counter_on_a_full_forward() -> None:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    # Eager attention: its QK^T and AV are bmm's the counter sees (CPU SDPA is not counted).
    model = tiny_neox(attn_implementation="eager").eval()
    rows, length = 3, 7
    ids = torch.randint(0, TINY_NEOX["vocab_size"], (rows, length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=ids)
    # The full forward projects every position, so every token counts as a head position here.
    expected = mfu.forward_flops(model.config.to_dict(), rows * length, rows * length, rows * length**2)
    assert counter.get_total_flops() == expected
    assert mfu.step_flops(model.config.to_dict(), 5, 2, 13) == 4 * mfu.forward_flops(
        model.config.to_dict(), 5, 2, 13
    )


def test_peak_and_mfu_arithmetic_on_a_known_gemm() -> None:
    ticks = itertools.count()
    clock = lambda: 0.5 * next(ticks)  # noqa: E731  every call of a @ b "takes" 0.5 s
    peak = mfu.measure_peak([(8, 4, 2), (16, 4, 2)], repeats=2, clock=clock)
    assert [s["flops_per_s"] for s in peak["by_shape"]] == [2 * 8 * 4 * 2 / 0.5, 2 * 16 * 4 * 2 / 0.5]
    assert peak["peak_flops_per_s"] == 2 * 16 * 4 * 2 / 0.5 and peak["dtype"] == "float32"

    # A "model" whose step is exactly that GEMM's FLOPs, run at the peak's time, is at 100%.
    config = {"hidden_size": 4, "intermediate_size": 8, "num_hidden_layers": 1, "vocab_size": 10}
    one_step = mfu.step_flops(config, 6, 3, 20)
    runs = [fake_run([1.0, 3.0], [6, 6], [3, 3], [20, 20])]  # 2 steps in 4 s
    out = mfu.mfu(runs, config, peak_flops_per_s=one_step / 2.0)
    assert out["model_flops_per_s"] == pytest.approx(2 * one_step / 4.0)
    assert out["mfu_vs_matmul_peak"] == pytest.approx(1.0)
    assert mfu.gemm_shapes(config, 100)[-1] == (100, 4, 10)


def test_table_has_the_trl_best_row_and_ends_with_its_ratio() -> None:
    summary = {
        "tralign": summarize([fake_run([1.0], [400], [100], [1000])]),
        "trl": summarize([fake_run([4.0], [400], [100], [1000])]),
        "trl-best": summarize([fake_run([2.0], [400], [100], [1000])]),
    }
    for name, mfu_value in (("tralign", 0.5), ("trl", 0.125), ("trl-best", 0.25)):
        summary[name].update(model_flops_per_s=1e9, mfu_vs_matmul_peak=mfu_value)
    lines = table(summary).splitlines()
    assert [line.split()[0] for line in lines[2:5]] == ["tralign", "trl", "trl-best"]
    assert lines[0].split()[-1] == "MFU" and lines[2].split()[-1] == "50.00%"
    assert lines[-2] == "throughput ratio tralign/trl: 4.00"
    assert lines[-1] == "throughput ratio tralign/trl-best: 2.00"
    del summary["trl-best"]
    assert table(summary).splitlines()[-1] == "throughput ratio tralign/trl: 4.00"


def test_scaling_table_skips_cells_dominated_by_a_timeout(tmp_path: Path) -> None:
    assert dominated((1024, 8), {(512, 8)}) and dominated((512, 8), {(512, 2)})
    assert not dominated((256, 8), {(512, 2)}) and not dominated((1024, 2), {(512, 8)})
    ok = {"status": "ok", "tokens_per_s": 300.0, "peak_mb": 1000.0}
    cells = [
        {
            "model": "m",
            "max_length": 256,
            "pairs": 2,
            "results": {"tralign": ok, "trl": {**ok, "tokens_per_s": 100.0}},
        },
        {
            "model": "m",
            "max_length": 512,
            "pairs": 2,
            "results": {"tralign": ok, "trl": {"status": "timeout"}},
        },
    ]
    lines = markdown_table(cells).splitlines()
    assert lines[0].startswith(
        "| model | max_length | pairs/step | tralign tokens/s | trl tokens/s | tralign/trl"
    )
    assert lines[2] == "| m | 256 | 2 | 300 | 100 | 3.00 | 1000 | 1000 |"
    assert lines[3] == "| m | 512 | 2 | 300 | timeout | - | 1000 | timeout |"
    plot(cells, tmp_path / "scaling.png")
    assert (tmp_path / "scaling.png").read_bytes()[:4] == b"\x89PNG"


def test_phase_clock_splits_a_step_and_sums_to_it() -> None:
    from tralign.bench.breakdown import PHASES, PhaseClock, summarize_phases

    t = iter([0.0, 1.0, 1.5, 3.5, 4.0, 5.0, 5.5, 6.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0, 17.0, 18.0])
    clock = PhaseClock(clock=lambda: next(t))
    update = clock.timed("reference_update", lambda: None)
    ref_forward = clock.timed("reference_forward", lambda: None)
    clock.end_step()  # 0.0: the first step's end (no interval before it)
    update()  # 1.0 -> 1.5: the module's update after the callbacks' batch end: not data
    clock.mark("start")  # 3.5: data = 3.5 - 0 - 0.5
    ref_forward()  # 4.0 -> 5.0
    clock.mark("before_backward")  # 5.5: forward = 5.5 - 3.5 - 1.0
    clock.mark("after_backward")  # 6.0
    clock.mark("optimizer")  # 10.0
    clock.end_step()  # 11.0
    (step,) = clock.steps
    assert step == {
        "data": 3.0,
        "forward": 1.0,
        "reference_forward": 1.0,
        "backward": 0.5,
        "optimizer": 4.0,
        "reference_update": 0.5,
        "other": 1.0,
    }
    shares = summarize_phases(clock.steps)
    assert list(shares) == list(PHASES) and sum(v["share"] for v in shares.values()) == 1.0
