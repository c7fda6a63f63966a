"""The package's layers, read from the source with ``ast`` (imports inside functions count too).

- the maths (``losses/``, ``reference.py``, ``logprobs.py`` with ``chunked_logps.py`` and ``heads.py``) knows no Lightning and no data,
  models or module code;
- ``data/`` knows no losses, module, evaluation or training (the caller passes the data mode);
- ``eval/`` knows nothing of training;
- no import cycles among tralign's modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tralign"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str) -> set[str]:
    """Every module ``name`` imports, at any depth of its code: ``import a.b`` gives a.b,
    ``from a import b`` gives a and, when b is a module, a.b; relative imports are resolved."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{a.name}" for a in node.names if f"{module}.{a.name}" in MODULES)
    return found


IMPORTS = {name: _imports(name) for name in MODULES}


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(
        f"{name} imports {imported}"
        for name in MODULES
        if _under(name, sources)
        for imported in IMPORTS[name]
        if _under(imported, forbidden)
    )


def test_the_scan_sees_known_imports() -> None:
    # A scan that found nothing would pass every rule below.
    assert "tralign.losses.types" in IMPORTS["tralign.losses.dpo"]
    assert "lightning" in IMPORTS["tralign.module"]
    assert "tralign.eval.golden" in IMPORTS["tralign.finish"]  # imported inside a function


def test_losses_import_only_losses() -> None:
    tralign = sorted(
        f"{name} imports {imported}"
        for name in MODULES
        if _under(name, ("tralign.losses",))
        for imported in IMPORTS[name]
        if _under(imported, ("tralign",)) and not _under(imported, ("tralign.losses",))
    )
    assert tralign == []
    assert _violations(("tralign.losses",), ("lightning",)) == []


# The log-prob maths: logprobs (the public names) gathers chunked_logps (kernels) and heads (the head
# swapped into the model's forward); they import only each other, in that order.
MATHS_ALLOWED = {
    "tralign.reference": set(),
    "tralign.chunked_logps": set(),
    "tralign.heads": {"tralign.chunked_logps"},
    "tralign.logprobs": {"tralign.chunked_logps", "tralign.heads"},
}


@pytest.mark.parametrize("name", sorted(MATHS_ALLOWED))
def test_reference_and_logprobs_import_no_other_tralign_module(name: str) -> None:
    others = {m for m in IMPORTS[name] if _under(m, ("tralign",))} - {"tralign.errors"}
    assert others <= MATHS_ALLOWED[name]
    assert not any(_under(m, ("lightning",)) for m in IMPORTS[name])


def test_data_imports_no_losses_module_eval_or_training() -> None:
    forbidden = (
        "tralign.losses",
        "tralign.module",
        "tralign.eval",
        "tralign.train",
        "tralign.build",
        "tralign.finish",
    )
    assert _violations(("tralign.data",), forbidden) == []


def test_eval_imports_nothing_of_training() -> None:
    forbidden = (
        "tralign.train",
        "tralign.build",
        "tralign.finish",
        "tralign.module",
        "tralign.strategies",
        "tralign.guards",
        "tralign.checkpoint",
        "tralign.loading",
    )
    assert _violations(("tralign.eval",), forbidden) == []


def _cycles() -> list[list[str]]:
    """The strongly connected components (more than one module) of the import graph (Tarjan)."""
    graph = {name: sorted(m for m in IMPORTS[name] if m in MODULES and m != name) for name in MODULES}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for name in graph:
        if name not in index:
            visit(name)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []
