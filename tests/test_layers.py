"""Imports flow one way: a module never imports from a layer above its own.

The layers, lowest first, are the package's sub-packages in data-flow order; ``cli`` and
the package root with its Python API (``api``) sit on top. The check reads every module with ``ast`` (call-time imports
inside functions included), so a cycle dodged by a late import still fails.
"""

from __future__ import annotations

import ast
from pathlib import Path

import qonnx_bert

LAYERS = (
    "core",
    "graph",
    "inputs",
    "calibration",
    "passes",
    "quantize",
    "training",
    "targets",
    "analysis",
    "benchmarks",
    "commands",
)
PACKAGE = Path(qonnx_bert.__file__).parent


def _layer(module: str) -> int:
    """Rank of a ``qonnx_bert.<sub>...`` module; the root, ``api``, ``cli`` and ``__main__`` rank above every layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else len(LAYERS)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
    return [(line, m) for line, m in found if m.startswith("qonnx_bert.")]


def _module(path: Path) -> str:
    return ".".join(("qonnx_bert", *path.relative_to(PACKAGE).with_suffix("").parts))


def test_every_module_belongs_to_a_layer():
    top = {p.name for p in PACKAGE.iterdir() if not p.name.startswith(("_", "."))}
    top -= {"cli.py", "api.py", "data", "py.typed"}
    assert top == set(LAYERS)


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _layer(_module(path))
        for line, target in _imports(path):
            if _layer(target) > own and _layer(target) < len(LAYERS):
                upward.append(f"{path.relative_to(PACKAGE)}:{line} imports {target}")
    assert not upward, "\n".join(upward)


def test_the_check_itself_sees_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from qonnx_bert.commands.quantize import run\n")
    assert _imports(bad) == [(2, "qonnx_bert.commands.quantize"), (2, "qonnx_bert.commands.quantize.run")]
    assert _layer("qonnx_bert.commands.quantize") > _layer("qonnx_bert.core.files")
