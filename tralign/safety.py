"""Checks before a run spends compute: the output folder, and secrets that must not be written.

Output folder (``conf/train.yaml``'s ``output`` block): it must be writable and have at least
``output.min_free_gb`` free, and it must not hold another run's results (``summary.json`` of a run
that got past validation, checkpoints, an exported policy) unless ``output.overwrite=true`` or the
run resumes from a checkpoint inside it (``ckpt_path=<dir>/checkpoints/...``, or ``ckpt_path=auto``,
the default under SLURM, which finds the folder's newest one). Hydra gives every run
a fresh timestamped folder, so this only matters for a pinned ``hydra.run.dir=...``. Nothing is
ever deleted.

Secrets: API keys come from the environment only. Config keys named like a secret (``api_key``,
``token``, ``secret``, ``password`` ...) or values that look like one (``sk-...``, ``hf_...``) are
refused; Hydra has already written the command line to ``.hydra/`` by then, so the value is
redacted there (:func:`redact_files`).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tralign.ckpt_names import periodic_checkpoints
from tralign.errors import ConfigError, TralignError

# Key names that hold a credential. "token" alone is too broad (max_new_tokens, pad_token ...),
# so only the credential spellings of it.
SECRET_KEY = re.compile(
    r"(^|[_.-])(api_?key|secret(_?key)?|passw(or)?d|(access|auth|api|hf|bearer|wandb|github|openai)_?token)$|^token$",
    re.IGNORECASE,
)
# Values that are credentials whatever the key: OpenAI/Anthropic-style and Hugging Face tokens.
SECRET_VALUE = re.compile(r"^(sk-[A-Za-z0-9_\-]{16,}|hf_[A-Za-z0-9]{30,})$")
REDACTED = "***REDACTED***"


class SecretInConfigError(ConfigError):
    """A credential in the config; ``secrets`` are the values, for redacting files already written."""

    def __init__(self, keys: list[str], secrets: list[str], other_problems: list[str] = ()):
        self.secrets = [s for s in secrets if s]
        super().__init__(
            [
                f"{key}: looks like a credential; configs are saved to disk and W&B, so pass keys only "
                "through environment variables (e.g. OPENAI_API_KEY, WANDB_API_KEY; judge.api_key_env "
                "names the variable)"
                for key in keys
            ]
            + list(other_problems)
        )

    def before_exit(self) -> None:
        redact_hydra_outputs(self.secrets)


def _leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a plain container."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _leaves(value, f"{prefix}{key}.")
    elif isinstance(node, list):
        for i, item in enumerate(node):
            yield from _leaves(item, f"{prefix[:-1]}[{i}].")
    else:
        yield prefix[:-1], node


def find_secrets(cfg: DictConfig | dict) -> tuple[list[str], list[str]]:
    """(keys, values) of config entries that hold credentials (interpolations resolved where possible)."""
    if isinstance(cfg, DictConfig):
        try:
            plain = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
        except Exception:  # an unresolvable interpolation: check what is written literally
            plain = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    else:
        plain = cfg
    keys, values = [], []
    for key, value in _leaves(plain):
        name = key.rsplit(".", 1)[-1]
        by_name = bool(SECRET_KEY.search(name)) and value not in (None, "", "???")
        by_value = isinstance(value, str) and bool(SECRET_VALUE.match(value.strip()))
        if by_name or by_value:
            keys.append(key)
            values.append(str(value))
    return keys, values


def check_no_secrets(cfg: DictConfig | dict, other_problems: list[str] = ()) -> None:
    """Raise :class:`SecretInConfigError` (listing ``other_problems`` too) if the config holds a credential."""
    keys, values = find_secrets(cfg)
    if keys:
        raise SecretInConfigError(keys, values, list(other_problems))


def redact_files(folder: Path, secrets: list[str]) -> list[Path]:
    """Replace every secret in the text files directly under ``folder`` and its ``.hydra/`` (what
    Hydra wrote before our code ran); returns the files changed."""
    secrets = [s for s in secrets if s]
    changed: list[Path] = []
    if not secrets or not folder.is_dir():
        return changed
    candidates = [*folder.glob("*"), *(folder / ".hydra").glob("*")]
    for path in candidates:
        if not path.is_file() or path.stat().st_size > 50_000_000:
            continue
        try:
            content = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        redacted = content
        for secret in secrets:
            redacted = redacted.replace(secret, REDACTED)
        if redacted != content:
            path.write_text(redacted, encoding="utf-8")
            changed.append(path)
    return changed


def redact_hydra_outputs(secrets: list[str]) -> None:
    """Redact ``secrets`` from the current Hydra job's folder (and a sweep's ``multirun.yaml``)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return
    redact_files(Path(hc.runtime.output_dir), secrets)
    if hc.mode.name == "MULTIRUN":
        redact_files(Path(hc.sweep.dir), secrets)


# --------------------------------------------------------------------------- output folder


def _is_inside(path: str | Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def previous_run(run_dir: Path) -> str | None:
    """What in ``run_dir`` belongs to a run that got past validation, or None."""
    checkpoints = (
        sorted((run_dir / "checkpoints").glob("*.ckpt")) if (run_dir / "checkpoints").is_dir() else []
    )
    if checkpoints:
        return f"checkpoints ({checkpoints[0].name}{' ...' if len(checkpoints) > 1 else ''})"
    if (run_dir / "policy").is_dir():
        return "an exported policy (policy/)"
    summary = run_dir / "summary.json"
    if summary.is_file():
        try:
            status = json.loads(summary.read_text()).get("status")
        except (ValueError, OSError, AttributeError):
            status = "unreadable"
        # A run refused at validation, or pre-empted before its first checkpoint, left nothing
        # worth keeping (a pre-empted run's checkpoints are found above: ckpt_path=auto resumes them).
        if status not in ("failed", "preempted"):
            return f"summary.json (status {status})"
    return None


def check_output_dir(run_dir: Path, output_cfg: Any = None, ckpt_path: str | None = None) -> None:
    """Raise :class:`TralignError` (one line naming the folder) unless ``run_dir`` is fit for a run."""
    output_cfg = output_cfg or {}
    run_dir = Path(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".tralign-write-probe-{uuid.uuid4().hex}"
        probe.write_bytes(b"x" * 4096)
        probe.unlink()
    except OSError as err:
        raise TralignError(
            f"output folder {run_dir}: not writable ({err.strerror or type(err).__name__}); "
            "choose another with hydra.run.dir=..."
        ) from None
    min_free = float(output_cfg.get("min_free_gb", 0) or 0)
    free = shutil.disk_usage(run_dir).free / 2**30
    if free < min_free:
        raise TralignError(
            f"output folder {run_dir}: {free:.2f} GB free, output.min_free_gb={min_free:g} needed "
            "(checkpoints and exports); free space, choose another hydra.run.dir, or lower output.min_free_gb"
        )
    if output_cfg.get("overwrite"):
        return
    if ckpt_path and _is_inside(ckpt_path, run_dir):
        return  # resuming into the run's own folder: its checkpoints stay, new ones are added
    found = previous_run(run_dir)
    if found:
        raise TralignError(
            f"output folder {run_dir} already holds another run's {found}; refusing to overwrite it "
            "(output.overwrite=true to write there anyway, ckpt_path=auto or <a checkpoint in it> to "
            "resume that run, or a fresh hydra.run.dir)"
        )


# --------------------------------------------------------------------------- checkpoint space


def checkpoint_bytes(module: Any) -> int:
    """Bytes of one checkpoint of ``module`` (summed over ranks when sharded): every parameter it
    holds (policy, reference, starting copy) at its stored dtype, plus AdamW's two moments (the
    parameter's dtype) per trained parameter. fp32 with a kept starting copy: 4 + 4 + 4 + 8 = 20
    bytes per policy parameter; without it 16 (~110 GB at 6.9B)."""
    params = list(module.parameters())
    held = sum(p.numel() * p.element_size() for p in params)
    moments = 2 * sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    return held + moments


def checkpoint_slots(max_steps: int, every_n_steps: int, keep: int | None) -> int:
    """Checkpoints on disk at the worst moment: the periodic ones kept (the final save is one of
    them), the ``.partial`` being written before the oldest is pruned, and a pre-emption save.
    With ``keep=None`` nothing is ever pruned and the user manages the folder: only the next
    checkpoint and a pre-emption save are counted."""
    periodic = max(1, math.ceil(max_steps / max(1, every_n_steps)))
    if keep is None:
        return 2
    return min(keep + 1, periodic) + 1


def _size_on_disk(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def check_checkpoint_space(run_dir: Path, per_checkpoint: int, checkpoint_cfg: Any, max_steps: int) -> None:
    """Raise :class:`TralignError` (one line, with the numbers) unless the run folder's disk can hold
    the checkpoints this run will write. Periodic checkpoints already in the folder (a resumed run)
    count as space the run will reuse once ``checkpoint.keep`` prunes them."""
    keep = checkpoint_cfg.get("keep")
    every = int(checkpoint_cfg.get("every_n_steps") or max_steps)
    slots = checkpoint_slots(max_steps, every, None if keep is None else int(keep))
    need = per_checkpoint * slots
    folder = Path(run_dir) / "checkpoints"
    reusable = 0
    if keep is not None and folder.is_dir():
        periodic = periodic_checkpoints(folder).values()
        reusable = sum(_size_on_disk(p) for p in periodic)
    free = shutil.disk_usage(run_dir).free
    if free + reusable < need:
        gb = 2**30
        raise TralignError(
            f"output folder {run_dir}: {free / gb:.1f} GB free, checkpoints need ~{need / gb:.1f} GB "
            f"({slots} x {per_checkpoint / gb:.2f} GB: checkpoint.keep={keep}, the .partial being written "
            "and a pre-emption save); set checkpoint.keep lower, free space, or choose another hydra.run.dir"
        )
