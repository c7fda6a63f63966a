"""Tokenizer fixtures shared by the data tests (module-scoped: built once per test file)."""

from __future__ import annotations

import pytest
from helpers.paths import pythia_tokenizer

from tralign.data.synthetic import SyntheticTask


@pytest.fixture(scope="module")
def synth_tok():
    """The embedded task's word tokenizer: <pad> = 0, <eos> = 1 (its documented vocabulary)."""
    tok = SyntheticTask().build_tokenizer()
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 1)
    return tok


@pytest.fixture(scope="module")
def pythia():
    """The real Pythia tokenizer from ../shared, padded as tralign pads it (skips without ../shared)."""
    return pythia_tokenizer()
