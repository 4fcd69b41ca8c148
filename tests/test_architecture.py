"""The house rules that `lint-imports` cannot see (the import contracts are in pyproject.toml).

- the top of ``livedenoise/`` holds only ``__init__.py``, ``__main__.py`` and subpackages;
- no module of the package is longer than ~600 lines;
- livedenoise's own modules are imported at the top of a file; a function may import one
  only if that module itself imports a heavy third-party package (torch, ...) at its top,
  which keeps ``import livedenoise`` and the CLI's start light;
- the hot path never imports the simulator (installed as ``livedenoise.drivers`` from the
  repository's ``drivers/``, so it is outside import-linter's view of the package).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "livedenoise"
MAX_LINES = 600
HEAVY_THIRD_PARTY = {
    *("torch", "zmq", "matplotlib", "skimage", "onnx", "onnxruntime", "tensorrt"),
    *("qtpy", "PyQt6", "ndv", "napari", "vispy", "superqt"),  # the optional viewer extras
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PKG.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()
TREES = {name: ast.parse(path.read_text()) for name, path in MODULES.items()}


def _top_imports(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def _heavy(name: str) -> bool:
    """A module of ours that imports a heavy third-party package at its top."""
    tree = TREES.get(name)
    return tree is not None and any(m.split(".")[0] in HEAVY_THIRD_PARTY for m in _top_imports(tree))


def _function_imports(tree: ast.Module) -> list[tuple[int, str]]:
    found = []
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom) and node.module:
                    found.append((node.lineno, node.module))
                elif isinstance(node, ast.Import):
                    found += [(node.lineno, a.name) for a in node.names]
    return found


def test_top_of_the_package_holds_only_subpackages() -> None:
    files = {p.name for p in PKG.iterdir() if p.is_file() and p.suffix == ".py"}
    assert files == {"__init__.py", "__main__.py"}, "put new modules in the subpackage of their stage"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_module_size(name: str) -> None:
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_LINES, f"{MODULES[name]} has {n} lines (> {MAX_LINES}): split it by concept"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_own_modules_are_imported_at_the_top(name: str) -> None:
    bad = [
        f"line {line}: {mod}"
        for line, mod in _function_imports(TREES[name])
        if mod.startswith("livedenoise") and not _heavy(mod)
    ]
    assert not bad, f"{name} imports light livedenoise modules inside functions: {bad}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("livedenoise.live")))
def test_hot_path_never_imports_the_simulator(name: str) -> None:
    tree = TREES[name]
    every = _top_imports(tree) | {m for _, m in _function_imports(tree)}
    assert not [m for m in every if m.startswith("livedenoise.drivers")]
