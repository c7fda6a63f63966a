"""tralign from Python (notebooks, scripts): the command lines as functions returning their results.

    from tralign import train, evaluate
    dpo = train(["method=dpo", "trainer.max_steps=200"])
    tr = train(["method=tr_dpo", "alpha=0.3", "trainer.max_steps=200"])
    table = evaluate([f"policy={tr['policy_dir']}", f"baseline={dpo['policy_dir']}"])

Each call composes the packaged configs with Hydra's compose API, exactly as the command line
would (the same overrides, the same typo checks), runs in this process, and returns what the
command writes: ``summary.json``'s content for ``train``, ``eval.json``'s for ``evaluate``. A user
error raises :class:`tralign.errors.TralignError` (one line, as the command line prints it)
instead of exiting.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def train(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one configuration, as ``tralign-train *overrides``; returns the summary (``summary.json``).

    ``run_dir``: where the run writes; default ``outputs/<date>/<time>_<method>_<ref_update>`` under
    the working directory. Sweeps (``-m``, ``a,b`` values) are the command line's: call this once per
    configuration instead."""
    from tralign.train import call

    return call(overrides, run_dir=run_dir)


def evaluate(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare policies, as ``tralign-eval *overrides``; returns ``eval.json``'s content.

    ``run_dir``: default ``outputs/eval/<date>/<time>_<judge>``."""
    from tralign.evaluate import call

    return call(overrides, run_dir=run_dir)
