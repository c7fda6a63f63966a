"""``python -m tralign.gpu_check``: see the package docstring."""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

from tralign.gpu_check.checks import Check, as_dict

NAMES = (
    "tr_dpo_300m_fsdp2_resume",
    "in_loop_audit",
    "scale_bench_1b_6.9b",
    "bench_pythia_160m_cuda",
    "head_only_logprobs_bf16",
)


def _headline(check: Check) -> str:
    """The one number a reader of the table wants per check."""
    d = check.details
    if check.error:
        return check.error[:120]
    if check.name == "tr_dpo_300m_fsdp2_resume":
        return f"resume max |Δw| {d.get('resume_max_abs_diff'):.2e}; val loss {d.get('val_loss')}"
    if check.name == "in_loop_audit":
        return ", ".join(
            f"{k} {'ok' if v.get('ok') else 'FAIL'}" for k, v in d.items() if isinstance(v, dict)
        )
    if check.name == "head_only_logprobs_bf16":
        return f"per-token gap {d['per_token_gap']:.2e} (tolerance {d['tolerance']:.2e})"
    if check.name == "scale_bench_1b_6.9b":
        return "; ".join(
            f"{r['arch']}: MFU {r['mfu']:.1%}, peak {r['peak_memory_gb']} GB, update "
            f"{r['ref_update_share_of_step']:.2%} of step at {r['ref_update_gb_per_s']} GB/s"
            if "error" not in r
            else f"{r['arch']}: {r['error']}"
            for r in d.get("rows", [])
        )
    if check.name == "bench_pythia_160m_cuda":
        return f"tralign/TRL throughput {d['throughput_ratio_tralign_over_trl']}"
    return ""


def table(checks: list[Check]) -> str:
    lines = ["| check | result | seconds | details |", "|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c.name} | {'pass' if c.ok else 'FAIL'} | {c.seconds} | {_headline(c)} |")
    return "\n".join(lines)


def report(checks: list[Check], out: Path, meta: dict[str, Any]) -> int:
    """Write ``gpu_check.json`` and ``gpu_check.md`` to ``out``, print the table; the exit status."""
    out.mkdir(parents=True, exist_ok=True)
    passed = bool(checks) and all(c.ok for c in checks)
    payload = {**meta, "passed": passed, "checks": [as_dict(c) for c in checks]}
    (out / "gpu_check.json").write_text(json.dumps(payload, indent=2, default=str) + "\n")
    header = (
        f"# tralign.gpu_check · {meta.get('date')} · {meta.get('device')} · torch {meta.get('torch')}"
        f" · {meta.get('wall_s')} s"
    )
    text = f"{header}\n\n{table(checks)}\n\n{'all passed' if passed else 'FAILED'}\n"
    (out / "gpu_check.md").write_text(text)
    print(text, end="")
    return 0 if passed else 1


def run_checks(names: list[str], work: Path) -> list[Check]:
    from tralign.gpu_check import checks

    results: list[Check] = []
    if {"tr_dpo_300m_fsdp2_resume", "in_loop_audit"} & set(names):
        results += [c for c in checks.train_and_resume(work) if c.name in names]
    if "scale_bench_1b_6.9b" in names:
        results.append(checks.scale_bench(work))
    if "bench_pythia_160m_cuda" in names:
        results.append(checks.bench_160m(work))
    if "head_only_logprobs_bf16" in names:  # last: the only check that uses the GPU in this process
        results.append(checks.logprobs_bf16())
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tralign.gpu_check", description=__doc__)
    parser.add_argument(
        "--out", default=None, help="folder for gpu_check.json/.md (default outputs/gpu_check/<time>)"
    )
    parser.add_argument(
        "--only", default=",".join(NAMES), help=f"comma-separated subset of {', '.join(NAMES)}"
    )
    args = parser.parse_args(argv)
    names = args.only.split(",")
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        parser.error(f"--only: unknown {', '.join(unknown)}; known: {', '.join(NAMES)}")
    import torch

    if not torch.cuda.is_available():
        print("tralign.gpu_check: no CUDA device visible; this command checks the GPU path", file=sys.stderr)
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out or f"outputs/gpu_check/{time.strftime('%Y-%m-%d_%H-%M-%S')}").resolve()
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    checks = run_checks(names, work)
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "host": platform.node(),
        "wall_s": round(time.time() - started, 1),
    }
    return report(checks, out, meta)


if __name__ == "__main__":
    raise SystemExit(main())
