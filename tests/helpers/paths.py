"""Where the tests find the checkout, its configs and the shared data (real samples, tokenizer)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "tralign" / "conf"  # the packaged configs
# ../shared next to the checkout (also for worktrees under /work/wt): real data samples, tokenizer.
SHARED = REPO.parent / "shared"
PYTHIA = SHARED / "tokenizers" / "pythia"  # the real Pythia tokenizer


def pythia_tokenizer():
    """The real Pythia tokenizer from ../shared, its pad token set as tralign.models.build_tokenizer
    sets it; skips the calling test when ../shared is absent."""
    import pytest

    if not PYTHIA.is_dir():
        pytest.skip("../shared/tokenizers/pythia not present")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(PYTHIA))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok
