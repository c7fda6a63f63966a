"""Fixtures and session set-up only; helpers (configs, CLI runs, tiny models) live in tests/helpers/.

Layout: tests/<subpackage>/ holds the tests of tralign/<subpackage>/ (losses, data, eval, report,
bench, gpu_check); tests of top-level modules and end-to-end runs stay in tests/. Every test file
name is unique across the tree (pytest's default import mode puts each test folder on sys.path)."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import pytest

# tests/ on sys.path for every test file, wherever it sits: ``from helpers.config import SHRINK``.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.paths import SHARED  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread per process: the models are tiny, and two xdist workers (or a 2-rank run beside
# a worker) on 2 cores would oversubscribe them; spinning threads cost CPU time for nothing. Inherited
# by every run the tests start (a shrunk CLI run: 15.2 -> 11.8 CPU-s). torchrun's ranks already do so.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file (by a plugin): the variable came too late
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
# Tokenised-data caches of the tests go to a throwaway folder, not ~/.cache/tralign.
os.environ.setdefault("TRALIGN_CACHE", tempfile.mkdtemp(prefix="tralign-test-cache-"))


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (real data samples and tokenizer) not present")
    return SHARED


# The longest tests (2-core wall, seconds, full suite), started first. pytest-xdist (--dist loadgroup)
# hands a free worker the next test in collection order (xdist_group groups of several tests go
# first); a long test left for the end would run alone while the other worker idles.
LONGEST_FIRST = [
    "test_two_step_run_of_both_frameworks",  # 125: three processes, TRL's and tralign's imports
    "test_single_process_resume_after_sigkill_is_exact",  # 115 + 44 (group scale_one_process)
    "test_golden_aligned_policy_beats_its_start_and_multi_run_table",  # 82
    "test_bf16_llama_checkpoint_trains_fp32_on_two_fsdp2_ranks",  # 76
    "test_two_process_fsdp2_hard_update_resumed_after_sigkill_matches_one_process",
    "test_reference_moves_under_every_two_rank_sharding_option",
    "test_real_multirun_then_report",
    "test_two_ranks_load_policy_and_frozen_copies_exactly_from_the_checkpoint",
    "test_sharded_log_probs_and_gradients_equal_one_process_without_full_logits",
    "test_two_process_ddp_sigterm_at_any_moment_exits_143_with_a_checkpoint",
    "test_cli_two_process_ddp_on_cpu",
    "test_two_process_ddp_gets_disjoint_equal_shares",
]


def _start_order(item: pytest.Item) -> tuple[int, int]:
    name = getattr(item, "originalname", item.name)
    if name in LONGEST_FIRST:
        return 0, LONGEST_FIRST.index(name)
    return (1 if item.get_closest_marker("slow") else 2), 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The longest tests first, then the other slow ones (a stable sort: otherwise collection order).
    A file's tests stay together (its module-scoped fixtures are made once with ``-n0``), the file
    placed by its longest test. Tests marked ``gpu`` run only where CUDA is present."""
    first: dict[str, tuple[int, int]] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        first[path] = min(first.get(path, (3, 0)), _start_order(item))
    items.sort(key=lambda item: (first[item.nodeid.split("::")[0]], _start_order(item)))
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
