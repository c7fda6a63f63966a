"""How periodic checkpoints are named, in one place (no Lightning: the preflight and the report read
folders before anything heavy is imported).

``step-000040.ckpt``: no ``=``, so a path pastes into ``ckpt_path=`` unquoted. ``step=40.ckpt``, the
name earlier versions wrote, is still recognised everywhere a folder is read."""

from __future__ import annotations

import re
from pathlib import Path

PERIODIC = re.compile(r"step[-=](\d+)\.ckpt")


def checkpoint_name(step: int) -> str:
    """The periodic checkpoint of optimizer step ``step``: ``step-000040.ckpt``."""
    return f"step-{step:06d}.ckpt"


def periodic_checkpoints(folder: Path) -> dict[int, Path]:
    """``{step: path}`` of the periodic checkpoints in ``folder``, in step order; the ``last.ckpt``
    link, ``.partial`` writes and pre-emption/non-finite saves are not periodic."""
    found = {}
    if Path(folder).is_dir():
        for entry in Path(folder).iterdir():
            if (match := PERIODIC.fullmatch(entry.name)) and not entry.is_symlink():
                found[int(match.group(1))] = entry
    return dict(sorted(found.items()))
