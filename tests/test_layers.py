"""The package's layers, read from its imports: every module imports only from its own package
and from the layers below, so there is no cycle and the stages stay apart.

    cli -> lora, render, demo -> compare -> sql -> index -> io -> fingerprint
        -> errors, config, policy, dtypes, naming, _version

A function-level import counts like any other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import weightidx

PACKAGE = Path(weightidx.__file__).parent
LAYERS = {
    "cli": 7,
    "lora": 6,
    "render": 6,
    "demo": 6,
    "compare": 5,
    "sql": 4,
    "index": 3,
    "io": 2,
    "fingerprint": 1,
    "errors": 0,
    "config": 0,
    "policy": 0,
    "dtypes": 0,
    "naming": 0,
    "_version": 0,
    "data": 0,
}


def _part(module: str) -> str:
    """The top-level part of a ``weightidx.x.y`` module: ``x``."""
    return module.split(".")[1] if module.count(".") >= 1 else ""


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("weightidx"):
            if node.module == "weightidx":
                found |= {f"weightidx.{alias.name}" for alias in node.names}
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("weightidx.")}
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"{path}: relative import; the package uses absolute ones")
    return found


def test_every_module_imports_only_downward() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(relative.parts)
        own = _part(module) if module.count(".") else ""
        if own in ("", "__init__", "__main__"):
            continue  # the package root and ``python -m weightidx`` sit above every layer
        assert own in LAYERS, f"{module}: not in a layer; add its package to LAYERS"
        for target in _imports(path):
            other = _part(target)
            if other == own:
                continue
            if LAYERS.get(other, 99) >= LAYERS[own]:
                problems.append(
                    f"{module} imports {target} ({own} is layer {LAYERS[own]}, {other} {LAYERS.get(other)})"
                )
    assert problems == []


def test_the_public_api_shows_itself() -> None:
    assert set(weightidx.__all__) <= set(dir(weightidx))
    for name in weightidx.__all__:
        assert getattr(weightidx, name) is not None
    assert "compare_paths" in (weightidx.__doc__ or "") and weightidx.compare_paths.__doc__
