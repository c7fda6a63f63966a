"""The plumbing of ``python -m tralign.gpu_check`` on CPU: the no-CUDA exit, the JSON and table, how
check results are aggregated, the audit's update rule, and the audit callback on a CPU fsdp2 run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers.config import SHRINK

from tralign.gpu_check import checks
from tralign.gpu_check.__main__ import main, report, run_checks
from tralign.gpu_check.audit import update_error
from tralign.gpu_check.checks import Check


def test_without_cuda_it_says_so_in_one_line_and_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and len(captured.err.strip().splitlines()) == 1 and "CUDA" in captured.err
    assert not (tmp_path / "out").exists()  # nothing started


def test_report_writes_json_and_table_and_fails_on_any_failed_check(tmp_path: Path, capsys) -> None:
    good = Check("head_only_logprobs_bf16", True, 2.5, {"per_token_gap": 1e-3, "tolerance": 2e-2})
    bad = Check("scale_bench_1b_6.9b", False, 9.0, {}, "RuntimeError('out of memory')")
    meta = {"date": "2026-12-03", "device": "NVIDIA H100 80GB HBM3", "torch": "2.13"}
    assert report([good, bad], tmp_path, meta) == 1
    payload = json.loads((tmp_path / "gpu_check.json").read_text())
    assert payload["passed"] is False and [c["name"] for c in payload["checks"]] == [good.name, bad.name]
    assert payload["checks"][1]["error"] == bad.error and payload["device"] == meta["device"]
    table = (tmp_path / "gpu_check.md").read_text()
    assert "| head_only_logprobs_bf16 | pass | 2.5 | per-token gap 1.00e-03" in table
    assert "| scale_bench_1b_6.9b | FAIL | 9.0 | RuntimeError('out of memory') |" in table
    assert table.rstrip().endswith("FAILED") and capsys.readouterr().out == table
    assert (
        report([good], tmp_path, meta) == 0
        and json.loads((tmp_path / "gpu_check.json").read_text())["passed"]
    )
    assert report([], tmp_path, meta) == 1  # nothing checked is not a pass


def test_a_check_that_raises_fails_alone_with_its_error() -> None:
    def broken():
        raise ValueError("no such file")

    result = checks.timed("x", broken)
    assert (result.ok, result.error) == (False, "ValueError('no such file')")
    assert "ValueError" in result.details["traceback"]
    passed = checks.timed("y", lambda: (True, {"n": 1}))
    assert (passed.ok, passed.details, passed.error) == (True, {"n": 1}, None)


def _fake_run(status="completed", step=20, val_loss=0.69, audit_ok=True) -> dict:
    facts = {name: {"ok": True} for name in ("copies", "rotary", "head_input", "update", "clipping")}
    facts["update"]["ok"] = audit_ok
    summary = {"status": status, "global_step": step, "ref_updates": step, "train": {"train/loss": 0.7}}
    summary["val"] = {"val/loss": val_loss, "val/rewards/margins": 0.01}
    return {"summary": summary, "audit": facts}


@pytest.mark.parametrize(
    ("whole", "resumed", "diff", "train_ok", "audit_ok"),
    [
        (_fake_run(), _fake_run(val_loss=0.6905), 2e-4, True, True),
        (_fake_run(), _fake_run(), 5e-3, False, True),  # weights drifted on resume
        (_fake_run(), _fake_run(val_loss=0.70), 0.0, False, True),  # final val loss drifted
        (_fake_run(), _fake_run(status="failed", step=12), 0.0, False, True),
        (_fake_run(val_loss=None), _fake_run(val_loss=None), 0.0, False, False),  # non-finite validation
        (_fake_run(audit_ok=False), _fake_run(), 0.0, True, False),
    ],
)
def test_training_and_audit_checks_aggregate_their_parts(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, whole, resumed, diff, train_ok, audit_ok
) -> None:
    runs = iter([whole, resumed])
    monkeypatch.setattr(checks, "audited_run", lambda *a, **k: next(runs))
    monkeypatch.setattr(checks, "_max_export_diff", lambda a, b: diff)
    loaded = {"params_m": 302.4, "plain_tensors": True, "finite": True}
    monkeypatch.setattr(checks, "_exports_load", lambda d: {"policy": loaded, "reference": loaded})
    train, audit = checks.train_and_resume(tmp_path)
    assert (train.name, train.ok, audit.name, audit.ok) == (
        "tr_dpo_300m_fsdp2_resume",
        train_ok,
        "in_loop_audit",
        audit_ok,
    )
    assert set(audit.details) >= {"copies", "update", "final_validation"}


def test_run_checks_runs_the_selected_checks_in_order(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    calls: list[str] = []

    def fake(name):
        return lambda *a: calls.append(name) or Check(name, True)

    monkeypatch.setattr(
        checks,
        "train_and_resume",
        lambda w: (Check("tr_dpo_300m_fsdp2_resume", True), Check("in_loop_audit", False)),
    )
    monkeypatch.setattr(checks, "logprobs_bf16", fake("head_only_logprobs_bf16"))
    monkeypatch.setattr(checks, "scale_bench", fake("scale_bench_1b_6.9b"))
    monkeypatch.setattr(checks, "bench_160m", fake("bench_pythia_160m_cuda"))
    got = run_checks(["head_only_logprobs_bf16", "in_loop_audit", "scale_bench_1b_6.9b"], tmp_path)
    order = ["in_loop_audit", "scale_bench_1b_6.9b", "head_only_logprobs_bf16"]
    assert [c.name for c in got] == order and calls == order[1:]
    with pytest.raises(SystemExit):
        main(["--only", "nonsense"])


def test_update_error_is_rounding_for_the_rule_and_the_whole_change_otherwise() -> None:
    torch.manual_seed(0)
    ref, pol = [torch.randn(5, 3), torch.randn(4)], [torch.randn(5, 3), torch.randn(4)]
    pol = [r + 1e-4 * p for r, p in zip(ref, pol, strict=True)]  # a policy a few steps from its reference
    right = [r.lerp(p, 0.3) for r, p in zip(ref, pol, strict=True)]
    error, change = update_error(ref, pol, right, 0.3)
    assert error <= 4 and change >= 100
    frozen, _ = update_error(ref, pol, [r.clone() for r in ref], 0.3)  # the reference did not move
    other, _ = update_error(ref, pol, [r.lerp(p, 0.7) for r, p in zip(ref, pol, strict=True)], 0.3)
    assert frozen > 0.9 * change and other > change


@pytest.mark.slow
@pytest.mark.e2e
def test_audit_callback_passes_on_a_cpu_fsdp2_run(tmp_path: Path) -> None:
    """The audit as the GPU command runs it, on CPU (fp32 compute, so the head sees fp32)."""
    keep = [
        a for a in SHRINK if not a.startswith(("trainer.max_steps", "trainer.val_check", "data.batch_size"))
    ]
    overrides = [
        *keep,
        "trainer=fsdp2",
        "trainer.accelerator=cpu",
        "trainer.devices=1",
        "trainer.strategy.mixed_precision=null",
        "trainer.strategy.activation_checkpointing=true",
        "trainer.max_steps=3",
        "trainer.val_check_interval=100",
        "data.batch_size=4",
        "data.golden_eval=null",
        "export.reference=true",
        "trainer.gradient_clip_val=0.05",  # small enough that clipping acts
    ]
    result = checks.audited_run(tmp_path, "run", "cpu", "float32", overrides)
    facts = result["audit"]
    assert {name for name, fact in facts.items() if not fact["ok"]} == set(), facts
    assert facts["copies"]["initial"]["dtensor"] and facts["update"]["checked"] == 3
    assert facts["update"]["max_error_units"] <= 4 and facts["update"]["min_change_units"] >= 100
    assert facts["clipping"]["clipped_steps"] >= 1 and facts["clipping"]["max_norm_after"] <= 0.05 * 1.001
    assert checks.finite_metrics(result["summary"]) and result["summary"]["status"] == "completed"


@pytest.mark.slow
@pytest.mark.e2e
def test_train_and_resume_check_passes_on_a_tiny_cpu_run(tmp_path: Path) -> None:
    """The command's main check end to end, on CPU: the GPU settings with the tiny model and fp32."""
    overrides = [
        a for a in checks.TRAIN if a not in checks.MODEL_300M and not a.startswith("trainer.accelerator")
    ]
    overrides += ["trainer.accelerator=cpu", "trainer.strategy.mixed_precision=null", "data.batch_size=4"]
    overrides += ["data.n_train=96", "data.n_val=8", "data.eval_batch_size=8", "optim.lr=1.0e-3"]
    train, audit = checks.train_and_resume(tmp_path, "cpu", "float32", overrides)
    assert train.ok and audit.ok, (train, audit)
    assert train.details["global_step"] == {"whole": 20, "resumed": 20}
    assert train.details["resume_max_abs_diff"] <= 1e-6  # CPU fp32: the resume is exact
    assert train.details["exports"]["reference"]["plain_tensors"]


@pytest.mark.slow
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.e2e
def test_gpu_check_passes_on_this_gpu(tmp_path: Path) -> None:
    assert main(["--out", str(tmp_path)]) == 0, (tmp_path / "gpu_check.md").read_text()
