"""The house keeps its floors: every import points down a layer (ARCHITECTURE.md, "Layers").

A lower layer that imports a higher one ties the ground floor to the roof; a sibling that
imports its sibling blurs which of the two owns what. Both fail here, with the offending line.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# folder -> (import name, floor). Floors count up from the ground; an import may only go to a
# lower floor, or stay inside its own package.
LAYERS = {
    "stream": ("streamrec.stream", 1),
    "models": ("streamrec.models", 2),
    "producers": ("streamrec.producers", 2),
    "versions": ("streamrec.versions", 2),
    "consumers": ("streamrec.consumers", 3),
    "serving": ("streamrec.serving", 3),
    "streamrec": ("streamrec", 4),
}
OLD_TOP_LEVEL = {"stream", "models", "producers", "consumers"}


def _package_of(module: str) -> str | None:
    """The folder whose import name is the longest prefix of ``module``."""
    best = None
    for folder, (name, _floor) in LAYERS.items():
        if (module == name or module.startswith(name + ".")) and (best is None or len(name) > len(LAYERS[best][0])):
            best = folder
    return best


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth (imports inside functions count too)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            # `from streamrec import models` names a package, not an attribute
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if _package_of(f"{node.module}.{alias.name}") not in (None, _package_of(node.module))]
    return found


def _violations() -> list[str]:
    problems = []
    for folder, (_name, floor) in LAYERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for line, module in _imports(path):
                where = f"{path.relative_to(ROOT)}:{line}"
                if module.split(".")[0] in OLD_TOP_LEVEL:
                    problems.append(f"{where} imports {module!r}: use its streamrec.* name")
                    continue
                target = _package_of(module)
                if target is None or target == folder:
                    continue
                if LAYERS[target][1] >= floor:
                    kind = "up" if LAYERS[target][1] > floor else "sideways"
                    problems.append(f"{where} imports {module} ({kind}: {folder} is floor {floor}, "
                                    f"{target} is floor {LAYERS[target][1]})")
    return problems


def test_every_import_points_down_a_layer() -> None:
    assert _violations() == []


def test_base_modules_of_the_model_family_do_not_import_a_model() -> None:
    """A model file is a leaf: only the registry (models/__init__.py) imports it."""
    from streamrec.models import REGISTRY

    leaves = {cls.__module__ for cls in REGISTRY.values()}
    problems = []
    for path in sorted((ROOT / "models").glob("*.py")):
        if path.name == "__init__.py":
            continue
        for line, module in _imports(path):
            if module in leaves and module != f"streamrec.models.{path.stem}":
                problems.append(f"models/{path.name}:{line} imports the model {module}")
    assert problems == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The walker finds imports inside functions and `from package import module` forms."""
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from streamrec import serving\n    import streamrec.consumers.trainer\n")
    assert [m for _line, m in _imports(sample)] == ["streamrec", "streamrec.serving", "streamrec.consumers.trainer"]
