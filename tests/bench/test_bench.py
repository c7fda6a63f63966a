"""tralign.bench plumbing: the loss pre-check, the summary/table/ratio line, a two-step run of both
frameworks. No timing assertions: the numbers depend on the machine."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from helpers.models import tiny_neox
from hydra import compose, initialize_config_dir

from tralign.bench import __main__ as bench
from tralign.bench.presets import PRESETS, model_config
from tralign.bench.report import BenchError, check_losses, summarize, table

BENCH_CONF = Path(bench.__file__).parent / "conf"
RATIO_LINE = re.compile(r"^throughput ratio tralign/trl-best: \d+\.\d\d$")


def bench_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(BENCH_CONF), version_base="1.3"):
        return compose("bench", overrides=overrides)


def run_result(step_s, tokens, positions, ref=(0.001, 0.003, 0.002), rss=100.0):
    return {
        "step_s": step_s,
        "tokens": tokens,
        "positions": positions,
        "ref_update_s": list(ref),
        "peak_rss_mb": rss,
    }


def test_check_losses_accepts_equal_and_refuses_different_or_nonfinite() -> None:
    check_losses(0.693147, 0.693147 * (1 + 5e-5), rtol=1e-4)
    with pytest.raises(BenchError, match="tralign 0.700000 vs trl 0.690000"):
        check_losses(0.70, 0.69, rtol=1e-4)
    with pytest.raises(BenchError, match="non-finite"):
        check_losses(float("nan"), 0.69, rtol=1e-4)


def test_summary_pools_repeats_and_table_ends_with_the_ratio() -> None:
    tralign = summarize(
        [run_result([1.0, 1.0], [300, 100], [400, 100]), run_result([2.0], [400], [400], rss=120.0)]
    )
    assert tralign["tokens_per_s"] == pytest.approx(800 / 4.0)  # all tokens / all time
    assert tralign["tokens_per_s_by_repeat"] == pytest.approx([200.0, 200.0])
    assert tralign["step_median_s"] == 1.0
    assert tralign["pad_fraction"] == pytest.approx(1 - 800 / 900)
    assert tralign["peak_rss_mb"] == 120.0
    assert tralign["ref_update_median_s"] == pytest.approx(0.002)
    assert tralign["ref_update_share"] == pytest.approx(0.002)
    trl = summarize([run_result([4.0, 4.0], [400, 400], [800, 800])])
    lines = table({"tralign": tralign, "trl": trl}).splitlines()
    assert (
        lines[0].split()[0] == "framework"
        and lines[2].split()[0] == "tralign"
        and lines[3].split()[0] == "trl"
    )
    assert lines[-1] == "throughput ratio tralign/trl: 2.00"
    assert "ratio" not in table({"tralign": tralign})  # one framework: no ratio line


def test_presets_are_gpt_neox_configs() -> None:
    from transformers import GPTNeoXConfig

    for name in PRESETS:
        config = GPTNeoXConfig(vocab_size=64, **model_config(name))
        assert config.hidden_size % config.num_attention_heads == 0
    assert model_config("pythia-1b-arch")["hidden_size"] == 2048
    with pytest.raises(KeyError, match="unknown preset"):
        model_config("pythia-1b")


@pytest.mark.e2e
def test_a_failed_loss_check_times_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_worker(spec_path, what, work):
        calls.append(what)
        return {"tralign_loss": 0.70, "trl_loss": 0.60, "same_tokens": True, "rows": 2}

    monkeypatch.setattr(bench, "_worker", fake_worker)
    cfg = bench_cfg(["model=tiny", "data=synthetic", "steps=1", "warmup=1", "repeats=1"])
    with pytest.raises(BenchError, match="loss pre-check failed"):
        bench.run(cfg, tmp_path / "bench.json", log=lambda *_: None)
    assert calls == ["precheck"]
    assert not (tmp_path / "bench.json").exists()


@pytest.mark.slow
@pytest.mark.e2e
def test_two_step_run_of_both_frameworks(tmp_path: Path) -> None:
    pytest.importorskip("trl")
    lines: list[str] = []
    out = tmp_path / "bench.json"
    cfg = bench_cfg(
        [
            "model=tiny",
            "data=synthetic",
            "steps=2",
            "warmup=1",
            "repeats=1",
            "ref_update_calls=2",
            "batch_size=4",
            "trl_best.torch_compile=false",  # the row's plumbing, without minutes of compiling
        ]
    )
    bench.run(cfg, out, log=lambda s: lines.extend(str(s).splitlines()))

    assert RATIO_LINE.match(lines[-1]), lines[-1]
    assert lines[-2].startswith("throughput ratio tralign/trl: ")
    header = next(i for i, line in enumerate(lines) if line.startswith("framework"))
    assert [line.split()[0] for line in lines[header + 2 : header + 5]] == ["tralign", "trl", "trl-best"]
    report = json.loads(out.read_text())
    check = report["loss_check"]
    assert check["same_tokens"] and check["rows"] == 4
    # Policy and reference differ in the pre-check, so the loss is not DPO's trivial log 2.
    assert check["tralign_loss"] == pytest.approx(check["trl_loss"], rel=1e-4)
    assert abs(check["tralign_loss"] - math.log(2)) > 1e-3
    for name in ("tralign", "trl"):
        (run,) = report["runs"][name]
        assert len(run["step_s"]) == len(run["tokens"]) == 2 and len(run["ref_update_s"]) == 2
        assert all(0 < t <= p for t, p in zip(run["tokens"], run["positions"], strict=True))
        assert report["summary"][name]["peak_rss_mb"] > 0
    ratio = report["summary"]["tralign"]["tokens_per_s"] / report["summary"]["trl-best"]["tokens_per_s"]
    assert lines[-1].endswith(f"{ratio:.2f}")
    assert check["trl-best_loss"] == pytest.approx(check["trl_loss"], rel=1e-4)
    assert report["runs"]["trl-best"][0]["trl_args"]["optim"] == "adamw_torch_fused"
    peak = report["matmul_peak"]["peak_flops_per_s"]
    for name in ("tralign", "trl", "trl-best"):
        s = report["summary"][name]
        assert s["mfu_vs_matmul_peak"] == pytest.approx(s["model_flops_per_s"] / peak)
    assert report["settings"]["alpha"] == 0.6 and report["settings"]["tau"] == 1


def test_module_variants_compute_the_same_logps_and_differ_in_adamw() -> None:
    import torch

    from tralign.bench.worker import _tralign_module
    from tralign.module import AlignmentModule

    policy = tiny_neox(0, vocab_size=40, **model_config("tiny"))
    spec = {"beta": 0.1, "alpha": 0.6, "tau": 1, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}
    spec.update(weight_decay=0.0, warmup=1, steps=1, tralign={"head": "masked", "foreach_adamw": True})
    proposed = _tralign_module(spec, policy)  # the module as shipped
    plain = _tralign_module({**spec, "tralign": {"head": "model", "foreach_adamw": False}}, policy)
    assert type(proposed) is AlignmentModule and type(plain) is not AlignmentModule
    assert all(g["fused"] for g in proposed.configure_optimizers()["optimizer"].param_groups)
    assert not any(g["foreach"] or g["fused"] for g in plain.configure_optimizers()["optimizer"].param_groups)
    ids = torch.randint(0, 40, (4, 10))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "loss_mask": torch.zeros_like(ids).bool(),
    }
    batch["loss_mask"][:, 6:] = True
    for got, want in zip(proposed._logps(policy, batch), plain._logps(policy, batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_reference_update_is_timed_on_the_runs_device_not_where_teardown_left_it() -> None:
    """Lightning's teardown leaves the module on the CPU after fit; the timing moves it back first.
    The meta device stands in for CUDA here: an update timed on CPU tensors would leave them there."""
    from tralign.bench.worker import _time_reference_updates, _tralign_module

    policy = tiny_neox(0, vocab_size=40, **model_config("tiny"))
    spec = {"beta": 0.1, "alpha": 0.6, "tau": 1, "lr": 1e-3, "betas": [0.9, 0.999], "eps": 1e-8}
    spec.update(weight_decay=0.0, warmup=1, steps=1, tralign={"head": "masked", "foreach_adamw": True})
    module = _tralign_module(spec, policy)
    times = _time_reference_updates(module, "meta", 0.6, 3)
    assert len(times) == 3
    devices = {p.device.type for p in [*module.policy.parameters(), *module.reference.parameters()]}
    assert devices == {"meta"}
