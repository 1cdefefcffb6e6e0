"""The import graph goes one way (``docs/internals.md``): a module imports only from its own package
or from lower layers, never sideways into another package of its layer or upwards."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "h2aseg"

LAYERS: dict[str, int] = {
    "io": 0,
    "cpu_allocator": 0,
    "errors": 0,
    "models": 1,
    "data": 1,
    "viz": 1,
    "report": 1,
    "phantom": 2,
    "evaluation": 2,
    "config": 2,
    "inference": 3,
    "training": 4,
    "pipeline": 5,
    "bench": 6,
    "cli": 7,
}
MAX_LINES = 400


def _unit(module: str) -> str:
    """``h2aseg.data.dicom.suv`` → ``data``; ``h2aseg.io`` → ``io``."""
    return module.split(".")[1]


def _imports(path: Path) -> set[str]:
    """Every ``h2aseg.*`` module imported by ``path``, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            found.update(name for name in names if name.startswith("h2aseg."))
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("h2aseg."))
    return {name for name in found if _unit(name) in LAYERS}


def _modules() -> list[tuple[str, Path]]:
    return [
        (".".join(("h2aseg", *path.relative_to(PACKAGE).with_suffix("").parts)), path)
        for path in sorted(PACKAGE.rglob("*.py"))
        if path.name != "__init__.py" or path.parent != PACKAGE
    ]


def test_every_package_has_a_layer() -> None:
    units = {_unit(name) for name, _ in _modules()}
    assert units <= set(LAYERS), units - set(LAYERS)


def test_imports_go_down_only() -> None:
    wrong = []
    for name, path in _modules():
        unit = _unit(name)
        for imported in _imports(path):
            target = _unit(imported)
            if target != unit and LAYERS[target] >= LAYERS[unit]:
                wrong.append(
                    f"{name} imports {imported} ({unit}: layer {LAYERS[unit]}, {target}: {LAYERS[target]})"
                )
    assert not wrong, "\n".join(wrong)


def test_modules_stay_short() -> None:
    long = {name: n for name, path in _modules() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, long
