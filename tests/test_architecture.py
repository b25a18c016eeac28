"""The layering of docs/architecture.md, read from the source: backbones and models never import
methods, front ends, evaluation or training; no module imports another module's private names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "ovss"
LOW = ("backbones", "models")
ABOVE = ("ovss.methods", "ovss.cli", "ovss.demo", "ovss.evaluation", "ovss.training", "ovss.registry")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(absolute module, imported names) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.append((module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out.extend((a.name, []) for a in node.names)
    return out


def _files(*sub: str) -> list[Path]:
    return sorted(p for s in sub for p in (PKG / s).rglob("*.py"))


@pytest.mark.parametrize("path", _files(*LOW), ids=lambda p: str(p.relative_to(PKG)))
def test_low_layers_do_not_import_upward(path: Path) -> None:
    bad = [m for m, _ in _imports(path) if m.startswith(ABOVE)]
    assert not bad, f"{path.relative_to(PKG)} imports {bad}"


def test_no_private_names_across_modules() -> None:
    found = []
    for path in sorted(PKG.rglob("*.py")):
        for module, names in _imports(path):
            if module.startswith("ovss"):
                found += [f"{path.relative_to(PKG)}: {module}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
    assert not found, found


def test_front_ends_do_not_inspect_signatures() -> None:
    """Capabilities and options are declared (``Segmenter.capabilities``, ``ovss.options``): the CLI,
    the evaluation and the web page read those, not ``inspect.signature``."""
    for path in [PKG / "cli.py", PKG / "demo" / "app.py", *_files("evaluation")]:
        assert "inspect.signature" not in path.read_text(encoding="utf-8"), path
