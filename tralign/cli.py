"""What every tralign command line shares: typos caught before Hydra runs, user errors as one line.

``run_command(hydra_main, "train")`` is each command's ``main()``:

1. :func:`check_overrides` composes the config once with Hydra's compose API (cheap: no Lightning,
   no transformers) and refuses, in one line with exit code 2, an unknown key (with or without
   ``+``: ``lr=1e-6`` names ``optim.lr``), an unknown Trainer argument (``trainer.max_step``), an
   unknown group option (``method=trdpo`` lists the options and names ``tr_dpo``), a mandatory
   value left unset, and anything Hydra cannot parse or compose.
2. Hydra's own ``main`` then runs the command, whose body runs inside :func:`user_errors`: a
   :class:`~tralign.errors.TralignError` (and a mandatory value read while unset) ends the command
   with one line and exit code 2 (or the error's own code).
"""

from __future__ import annotations

import contextlib
import difflib
import os
import sys
import time
import types
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tralign.errors import TralignError, exit_on_user_error

# The packaged configs (tralign/conf), as an absolute folder: Hydra then reads them from the disk
# wherever tralign is installed (a console script's module would otherwise need a pkg:// package).
CONF = Path(__file__).resolve().parent / "conf"

# `+key=value` adds a key the configs do not have. These subtrees take free-form keys:
# model.config is the architecture's keyword arguments, and the logger, data and method nodes
# accept the optional settings their code reads with .get() (validate() checks methods' knobs).
OPEN_SUBTREES = ("model.config.", "logger.", "data.", "method.", "judge.", "generation.")
# Flags of Hydra's that show something instead of running: no check needed.
_SHOW_ONLY = ("help", "hydra_help", "shell_completion")


def nearest(name: str, candidates: list[str]) -> str | None:
    """The candidate a user most likely meant by ``name``: the same last component (``lr`` ->
    ``optim.lr``), else the closest spelling of the whole dotted key, else of its last component."""
    leaf = name.rsplit(".", 1)[-1]
    same_leaf = [c for c in candidates if c.rsplit(".", 1)[-1] == leaf]
    if same_leaf:
        return min(same_leaf, key=len)
    close = difflib.get_close_matches(name, candidates, n=1, cutoff=0.6)
    if close:
        return close[0]
    by_leaf = {c.rsplit(".", 1)[-1]: c for c in sorted(candidates, key=len, reverse=True)}
    close = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.7)
    return by_leaf[close[0]] if close else None


def _hint(name: str, candidates: list[str]) -> str:
    match = nearest(name, candidates)
    return f"; did you mean {match}?" if match else ""


def config_keys(cfg: Any) -> list[str]:
    """Every dotted key of a composed config, inner nodes included (``optim``, ``optim.lr``)."""
    from omegaconf import DictConfig, OmegaConf

    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        for key in node.keys() if isinstance(node, DictConfig) else []:
            dotted = f"{prefix}{key}"
            keys.append(dotted)
            child = node._get_node(key)
            if OmegaConf.is_dict(child) and not child._is_missing() and not child._is_none():
                walk(child, dotted + ".")

    walk(cfg, "")
    return keys


def trainer_arguments() -> list[str]:
    """``lightning.Trainer``'s keyword arguments, read from its source (importing Lightning takes seconds)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("lightning")
    if spec is None or not spec.submodule_search_locations:
        return []
    source = Path(list(spec.submodule_search_locations)[0]) / "pytorch" / "trainer" / "trainer.py"
    for node in ast.walk(ast.parse(source.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ClassDef) and node.name == "Trainer":
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    args = item.args
                    return [a.arg for a in args.args[1:] + args.kwonlyargs]
    return []


def _values(override: Any) -> list[Any]:
    """The value of an override, or each value of a sweep (``a,b``, ``range(...)``, ``choice(...)``)."""
    if override.is_sweep_override():
        with contextlib.suppress(Exception):
            return list(override.sweep_string_iterator())
        return []
    return [override.value()]


def _composable(override: Any) -> str:
    """The override with a sweep cut to its first value, so that compose() accepts it."""
    values = _values(override)
    if not override.is_sweep_override() or not values:
        return override.input_line
    prefix = {"ADD": "+", "FORCE_ADD": "++", "DEL": "~"}.get(override.type.name, "")
    package = f"@{override.package}" if override.package else ""
    return f"{prefix}{override.key_or_group}{package}={values[0]}"


def check_overrides(
    overrides: list[str],
    config_name: str,
    config_dir: Path = CONF,
    required: dict[str, str] | None = None,
) -> Any:
    """Raise :class:`TralignError` (one line) for the first override that is not what the user
    meant; return the composed config (Hydra's own node left out) when every override is sound.
    ``required``: what to say when one of these mandatory keys is left unset (``???``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tralign.safety import SECRET_KEY

    parser = OverridesParser.create()
    for line in overrides:
        try:
            parser.parse_override(line)
        except HydraException as err:
            tip = ""
            if line.count("=") > 1:
                key, value = line.split("=", 1)
                tip = f"; a value holding '=' needs quotes: {key}=\"'{value}'\""
            raise TralignError(
                f"{line}: Hydra cannot parse this override ({_first_line(err, '')}){tip}"
            ) from None
    parsed = parser.parse_overrides(overrides)
    ours = [
        o for o in parsed if not o.key_or_group.startswith(("hydra.", "hydra/")) and o.key_or_group != "hydra"
    ]
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = [o for o in ours if loader.repository.group_exists(o.key_or_group)]
        for o in groups:
            options = sorted(loader.get_group_options(o.key_or_group))
            for value in _values(o):
                if value is None or str(value) in options or o.is_delete():
                    continue
                raise TralignError(
                    f"{o.key_or_group}={value}: no such option; valid: {', '.join(options)}"
                    + _hint(str(value), options)
                )
        try:
            base = compose(config_name, overrides=[_composable(o) for o in groups])
        except (HydraException, OmegaConfBaseException) as err:
            raise TralignError(_first_line(err, "could not compose the config")) from None
        keys = config_keys(base)
        trainer_args: list[str] | None = None
        for o in ours:
            key = o.key_or_group
            if o in groups or o.is_force_add() or SECRET_KEY.search(key.rsplit(".", 1)[-1]):
                continue  # ++key sets or adds on purpose; a credential gets its own refusal later
            known = key in keys
            if key.startswith("trainer.") and not known:
                trainer_args = trainer_args if trainer_args is not None else trainer_arguments()
                arg = key.split(".")[1]
                if arg not in trainer_args and trainer_args:
                    raise TralignError(
                        f"{o.input_line}: {arg!r} is not a lightning.Trainer argument{_hint(arg, trainer_args)}"
                    )
                continue
            if known or (o.is_add() and key.startswith(OPEN_SUBTREES) and not _close(key, keys)):
                continue
            what = "unknown key" if not o.is_delete() else "no such key to delete"
            raise TralignError(f"{o.input_line}: {what} {key!r}{_hint(key, keys)}")
        try:
            cfg = compose(config_name, overrides=[_composable(o) for o in parsed if o in ours])
        except (HydraException, OmegaConfBaseException) as err:
            raise TralignError(_first_line(err, "could not compose the config")) from None
    for key, message in (required or {}).items():
        if OmegaConf.is_missing(cfg, key):
            raise TralignError(message)
    return cfg


def _close(key: str, keys: list[str]) -> bool:
    """Whether an added key is a near-miss of a real one (``optim.weight_decy``), not a new setting."""
    match = nearest(key, keys)
    return match is not None and difflib.SequenceMatcher(None, key, match).ratio() >= 0.8


def _first_line(err: BaseException, fallback: str) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip() and "hydra.cc/docs" not in line]
    return " ".join(lines[:2]) if lines else fallback


@contextlib.contextmanager
def user_errors(on_failure: Callable[[BaseException], None] | None = None) -> Iterator[None]:
    """Inside a command: a user error becomes one line on stderr and exit code 2 (the error's own
    ``exit_code`` where it has one), a mandatory value read while unset likewise. ``on_failure``
    sees every error first (train writes a failed summary.json there, for sweep reports)."""
    from omegaconf.errors import MissingMandatoryValue

    try:
        yield
    except TralignError as err:
        if on_failure is not None:
            on_failure(err)
        if _multirun():
            # Hydra records this job as failed and goes on with the rest of the sweep.
            if getattr(err, "secrets", None):
                from tralign.safety import redact_hydra_outputs

                redact_hydra_outputs(err.secrets)
            print(f"tralign: error: {err}", file=sys.stderr)
            raise
        exit_on_user_error(err)
    except MissingMandatoryValue as err:
        key = getattr(err, "full_key", "") or "a value"
        exit_on_user_error(TralignError(f"{key}: required but not set (add {key}=...)"))
    except SystemExit:
        raise
    except Exception as err:
        if on_failure is not None:
            on_failure(err)
        raise


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:
        return False


def run_command(
    hydra_main: Callable[[], Any],
    config_name: str,
    argv: list[str] | None = None,
    required: dict[str, str] | None = None,
) -> Any:
    """A command's ``main()``: check the command line, then hand it to Hydra (``hydra_main`` is the
    ``@hydra.main``-decorated function, which reads ``sys.argv`` itself)."""
    from hydra._internal.utils import get_args_parser

    argv = sys.argv[1:] if argv is None else argv
    args, _ = get_args_parser().parse_known_args(argv)
    custom = args.config_path or args.config_name or args.config_dir or args.experimental_rerun
    if not custom and not any(getattr(args, flag, False) for flag in _SHOW_ONLY):
        try:
            check_overrides(list(args.overrides), config_name, required=required)
        except TralignError as err:
            exit_on_user_error(err)
    quiet_third_party()
    return hydra_main()


def quiet_third_party() -> None:
    """What users should not see: Lightning's tips (litlogger, the new progress bar, ...) and
    deprecation warnings from libraries below tralign. ``TRALIGN_VERBOSE=1`` shows them again."""
    if os.environ.get("TRALIGN_VERBOSE"):
        return
    import warnings

    for category in (DeprecationWarning, FutureWarning, PendingDeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for pattern in (r".*litlogger.*", r".*LitLogger.*", r".*module\(s\) in eval mode.*", r".*Tip:.*"):
        warnings.filterwarnings("ignore", message=pattern)
    warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning,ignore::FutureWarning")
    import logging

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(_drop_tips)


_TIPS = ("Tip:", "litlogger", "LitLogger", "will override existing callbacks", "was configured so 100%")


def _drop_tips(record: Any) -> bool:
    """Lightning's advertisements and notes about its own defaults: not for tralign's users."""
    return not any(tip in str(record.msg) for tip in _TIPS)


# --- the Python API's shared steps (tralign.api: tralign.train(...), tralign.evaluate(...)) ---


def api_run_dir(root: str, name: str) -> Path:
    """``<root>/<date>/<time>_<name>``, made unique: calls in the same second get ``-2``, ``-3`` ..."""
    base = Path(root) / f"{time.strftime('%Y-%m-%d/%H-%M-%S')}_{name}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def api_compose(
    config_name: str, overrides: Sequence[str] | None, required: dict[str, str] | None = None
) -> Any:
    quiet_third_party()
    if isinstance(overrides, str):
        raise TypeError("overrides: a list of strings, e.g. ['method=tr_dpo', 'alpha=0.3']")
    return check_overrides(list(overrides or []), config_name, required=required)


class CallableModule(types.ModuleType):
    """The class of ``tralign.train`` and ``tralign.evaluate``: ``from tralign import train`` gives
    the module once it is imported (a package's submodule replaces the package attribute of the same
    name), so the module itself calls its own ``call`` (also :mod:`tralign.api`)."""

    def __call__(
        self, overrides: Sequence[str] | None = None, run_dir: str | Path | None = None
    ) -> dict[str, Any]:
        return self.call(overrides, run_dir=run_dir)
