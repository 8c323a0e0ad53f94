"""The layer rule: imports go one way, downwards (see detection/__init__.py).

Read with ``ast`` rather than by importing, so that a lazy import inside a function counts too.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Lower rank = lower layer. A module may import its own group or any lower layer, not a group beside it.
LAYERS = [
    ("detection.core",),
    ("proposals", "features", "svm", "detection.data"),
    ("detection.evaluation", "detection.visualize"),
    ("detection.results",),
    ("detection.detector",),
    ("detection.training", "detection.export"),
    ("detection.runs",),
    ("tools",),
]


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, group) of the most specific group containing ``module``; None outside the project."""
    best = None
    for rank, groups in enumerate(LAYERS):
        for group in groups:
            if (module == group or module.startswith(group + ".")) and (best is None or len(group) > len(best[1])):
                best = (rank, group)
    return best


def project_modules() -> list[tuple[str, Path]]:
    modules = []
    for package in ("detection", "proposals", "features", "svm", "tools"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules.append((name, path))
    return modules


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in the file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
            # `from detection import core` names a module too
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if layer_of(f"{node.module}.{alias.name}") not in (None, layer_of(node.module))]
    return found


def violations(module: str, imports: list[tuple[int, str]]) -> list[str]:
    own = layer_of(module)
    if own is None:
        return []
    bad = []
    for line, target in imports:
        other = layer_of(target)
        if other is None:
            continue
        if other[0] > own[0]:
            bad.append(f"line {line}: {module} ({own[1]}) imports {target} from a higher layer ({other[1]})")
        elif other[0] == own[0] and other[1] != own[1]:
            # side by side in one layer: the stages and data sets know only detection.core
            bad.append(f"line {line}: {module} ({own[1]}) imports {target} from beside it ({other[1]})")
        elif target == "detection" and module != "detection":
            bad.append(f"line {line}: {module} imports the detection package itself; import a layer")
    return bad


@pytest.mark.parametrize("module,path", project_modules(), ids=[m for m, _ in project_modules()])
def test_imports_go_downwards(module, path):
    assert violations(module, imported_modules(path)) == []


def test_the_rule_catches_an_upward_import():
    assert violations("detection.core.boxes", [(3, "detection.detector")])
    assert violations("features.spp", [(3, "detection.data.voc")])
    assert violations("svm.linear_svm", [(3, "features.spp")])
    assert violations("detection.data.voc", [(3, "detection.evaluation.voc_eval")])
    assert not violations("features.spp", [(3, "detection.core.config")])
    assert not violations("tools.cli", [(3, "detection.runs.batch")])


def test_core_imports_nothing_else_of_the_project():
    for module, path in project_modules():
        if module.startswith("detection.core"):
            for _, target in imported_modules(path):
                layer = layer_of(target)
                assert layer is None or layer[1] == "detection.core", (module, target)
