"""User-facing errors: printed as one line naming the place (config key, file and line), no traceback."""

from __future__ import annotations

import sys
from typing import NoReturn


class TralignError(Exception):
    """An error in what the user gave us (config, data, paths), as opposed to a bug."""

    def before_exit(self) -> None:
        """Undo what must not outlive the error, before the command exits (nothing by default)."""


class ConfigError(TralignError):
    """One or more invalid config values; the message lists every problem found."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("invalid config: " + "; ".join(self.problems))


class DataError(TralignError):
    """Unreadable or malformed input data; the message names the file and line (or row)."""


def exit_on_user_error(err: TralignError) -> NoReturn:
    """What every command line does with a user error: one line on stderr, exit code 2 (or the
    error's own ``exit_code``, e.g. 3 for a run stopped on non-finite values).

    The error's ``before_exit`` runs first: a credential given in the config has already been
    written by Hydra to the run's ``.hydra/`` folder, and ``SecretInConfigError`` redacts it there."""
    err.before_exit()
    print(f"tralign: error: {err}", file=sys.stderr)
    raise SystemExit(int(getattr(err, "exit_code", 2))) from None
