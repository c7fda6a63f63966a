"""Start-up cost of every run (each rank of every launch pays it): nothing heavy is imported that the
run does not use."""

from __future__ import annotations

import subprocess
import sys

from helpers.paths import REPO
from helpers.processes import cli_env

CLOSING = """
import sys
from tralign.loggers import finish_wandb
finish_wandb(failed=False)  # what every run does last, W&B or not
print("wandb" in sys.modules)
"""


def test_closing_a_run_without_wandb_does_not_import_wandb() -> None:
    # Importing wandb to see that no W&B run is open costs ~1 CPU-s per process.
    out = subprocess.run(
        [sys.executable, "-c", CLOSING], cwd=REPO, env=cli_env(), capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False"]
