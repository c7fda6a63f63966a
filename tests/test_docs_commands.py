"""Every command line quoted in README.md, docs/*.md and sweeps/README.md composes: each
``python -m tralign.train`` / ``tralign.evaluate`` (or ``tralign-train`` / ``tralign-eval``) line is
checked with Hydra's compose API and tralign's typo checks (no training)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from helpers.paths import REPO

from tralign.cli import check_overrides
from tralign.errors import TralignError

DOCS = [REPO / "README.md", REPO / "sweeps" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
COMMANDS = {"tralign.train": "train", "tralign-train": "train", "tralign.evaluate": "evaluate", "tralign-eval": "evaluate"}  # fmt: skip
# Hydra flags that take a value, and flags that show something instead of running.
VALUE_FLAGS = {"--cfg", "-c", "--package", "-p", "--info", "-i"}


def _lines(path: Path) -> list[str]:
    """Command lines in fenced code blocks (backslash continuations joined) and in `inline code`."""
    text = path.read_text(encoding="utf-8")
    found, in_block = [], False
    for raw in re.sub(r"\\\n\s*", " ", text).splitlines():
        if raw.lstrip().startswith("```"):
            in_block = not in_block
            continue
        if in_block:
            found.append(raw)
        else:
            found += re.findall(r"`([^`]*(?:tralign[.-](?:train|evaluate|eval))\b[^`]*)`", raw)
    return [line for line in found if re.search(r"tralign[.-](train|evaluate|eval)\b", line)]


def _overrides(line: str) -> tuple[str, list[str]] | None:
    line = re.sub(r"<[^>]*>", "x", line.replace("$ ", "", 1))
    line = re.split(r"\s#\s|\s#$|\s{3,}#", line)[0]
    try:
        words = shlex.split(line)
    except ValueError:
        return None
    for i, word in enumerate(words):
        if word in COMMANDS and (word.startswith("tralign-") or words[i - 1] == "-m"):
            args, out, skip = words[i + 1 :], [], False
            for arg in args:
                if skip:
                    skip = False
                elif arg in VALUE_FLAGS:
                    skip = True
                elif arg.startswith("-") or arg in ("...", "[...]") or arg.startswith(("|", ">", "&", ";")):
                    if arg.startswith(("|", ">", "&", ";")):
                        break
                elif arg.startswith("[") or (arg.endswith("]") and "=[" not in arg):
                    continue  # [judge.hc=true], [overrides ...]: optional, shown as a placeholder
                elif "=" in arg:
                    out.append(arg)
                else:
                    return None  # prose, not a command line
            return COMMANDS[word], out
    return None


CASES = [
    pytest.param(config, overrides, id=f"{path.relative_to(REPO)}:{' '.join(overrides)[:60]}")
    for path in DOCS
    for line in _lines(path)
    if (parsed := _overrides(line)) is not None
    for config, overrides in [parsed]
]


def test_docs_quote_commands():
    assert len(CASES) >= 40


# What a quoted command may still be refused for here: placeholder paths (data.path=..., a run
# folder of the reader's), and GPU-only strategies on this CPU machine.
PLACE_BOUND = re.compile(r"no such file or folder|needs GPUs")
# Quoted on purpose as refused commands (the README's example of a one-line error).
REFUSED = [["method=tr_dpo", "ref_update=none", "tau=0"], ["lr=1e-6"]]


@pytest.mark.parametrize(("config", "overrides"), CASES)
def test_every_quoted_command_composes_and_validates(config: str, overrides: list[str]):
    """Composes (no typo, no unknown key or option) and, for training, passes validate() but for
    what depends on the reader's files and GPUs."""
    from tralign.config import validate
    from tralign.errors import ConfigError

    if overrides in REFUSED:
        return  # test_the_quoted_refusals_are_refused
    try:
        cfg = check_overrides(overrides, config)
        if config == "train":
            validate(cfg)
    except ConfigError as err:
        left = [p for p in err.problems if not PLACE_BOUND.search(p)]
        assert not left, f"{config} {' '.join(overrides)}: {left}"
    except TralignError as err:
        pytest.fail(f"{config} {' '.join(overrides)}: {err}")


def test_the_quoted_refusals_are_refused():
    from tralign.config import validate

    for overrides in REFUSED:
        assert any(config == "train" and o == overrides for config, o in (c.values for c in CASES))
        with pytest.raises(TralignError):
            validate(check_overrides(overrides, "train"))
