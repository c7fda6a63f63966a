"""Where the tests find the checkout, its configs and the shared data (real samples, tokenizer)."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "tralign" / "conf"  # the packaged configs
# ../shared next to the checkout (also for worktrees under /work/wt): real data samples, tokenizer.
SHARED = REPO.parent / "shared"
