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
# Tokenised-data caches of the tests go to a throwaway folder, not ~/.cache/tralign.
os.environ.setdefault("TRALIGN_CACHE", tempfile.mkdtemp(prefix="tralign-test-cache-"))


@pytest.fixture
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared (real data samples and tokenizer) not present")
    return SHARED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` run only where CUDA is present."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
