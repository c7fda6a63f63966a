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

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _run_dir(root: str, name: str) -> Path:
    """``<root>/<date>/<time>_<name>``, made unique: calls in the same second get ``-2``, ``-3`` ..."""
    base = Path(root) / f"{time.strftime('%Y-%m-%d/%H-%M-%S')}_{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def _compose(
    config_name: str, overrides: Sequence[str] | None, required: dict[str, str] | None = None
) -> Any:
    from tralign.cli import check_overrides, quiet_third_party

    quiet_third_party()
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of strings, e.g. ['method=tr_dpo', 'alpha=0.3']")
    return check_overrides(list(overrides or []), config_name, required=required)


def train(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one configuration, as ``tralign-train *overrides``; returns the summary (``summary.json``).

    ``run_dir``: where the run writes; default ``outputs/<date>/<time>_<method>_<ref_update>`` under
    the working directory. Sweeps (``-m``, ``a,b`` values) are the command line's: call this once per
    configuration instead."""
    from tralign import model_card
    from tralign.train import run

    cfg = _compose("train", overrides)
    model_card.API_COMMAND = f"tralign.train(overrides={list(overrides or [])!r})"
    folder = (
        Path(run_dir) if run_dir is not None else _run_dir("outputs", f"{cfg.method.name}_{cfg.ref_update}")
    )
    return run(cfg, folder)


def evaluate(overrides: Sequence[str] | None = None, run_dir: str | Path | None = None) -> dict[str, Any]:
    """Compare policies, as ``tralign-eval *overrides``; returns ``eval.json``'s content.

    ``run_dir``: default ``outputs/eval/<date>/<time>_<judge>``."""
    from tralign.evaluate import REQUIRED, run

    cfg = _compose("evaluate", overrides, REQUIRED)
    folder = Path(run_dir) if run_dir is not None else _run_dir("outputs/eval", str(cfg.judge.name))
    return run(cfg, folder)
