"""The completion-positions-only LM head under sharding: FSDP2 (``fully_shard``, DTensor parameters,
fp32 and bf16-gathered) and FSDP1 (``use_orig_params=True``, each block and the whole model a unit
under a root) on 2 gloo CPU ranks give one process's log-probs and gradients, and never build the
(N, T, V) logits. One launch checks everything (tests/helpers/sharded_logps_worker.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.paths import REPO

WORKER = REPO / "tests" / "helpers" / "sharded_logps_worker.py"


@pytest.mark.slow
def test_sharded_log_probs_and_gradients_equal_one_process_without_full_logits(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(tmp_path)], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-4000:]
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert len(report) == 6, sorted(report)
        for run, r in report.items():
            bf16 = run.endswith("bf16")  # parameters gathered in bf16, against fp32 truth
            assert r["plans"] and "None" not in r["plans"], (
                run,
                r["plans"],
            )  # this run's probe: the shortcut
            assert r["logps"] <= (0.05 if bf16 else 1e-4), (rank, run, r)  # the policy path
            assert r["frozen"] <= (0.05 if bf16 else 1e-4), (rank, run, r)  # the reference path (no_grad)
            # Gradients reach the head and the backbone, and equal one process's (relative to max |g|).
            assert {
                "lm_head.weight",
                "model.embed_tokens.weight",
                "model.layers.0.self_attn.q_proj.weight",
            } <= set(r["grad_names"])
            assert max(r["grads"].values()) <= (0.15 if bf16 else 1e-4), (rank, run, r["grads"])
            # The batch's forwards (2 rows) return (N, T, 1), not (N, T, V): only the once-per-model
            # probe (1 row of 8 tokens) ever sees full-width logits.
            widths = {width for rows, width in r["logits_widths"] if rows == 2}
            assert widths == {1}, (run, r["logits_widths"])
