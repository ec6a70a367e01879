"""The architecture as a test: each layer imports only downward, and the parts that must
stay light (pure core, data, settings, registry-level system modules) never import torch
at module level."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "s3t"

ALLOWED = {
    "core": {"core", "errors"},
    "data": {"data", "errors"},
    "report": {"report", "errors"},
    "engine": {"engine", "core", "data", "errors"},
    "system": {"system", "engine", "core", "data", "errors"},
    "experiments": {"experiments", "system", "engine", "core", "data", "report", "errors"},
    "service": {"service", "system", "engine", "core", "data", "errors"},
    "cli": {
        "cli",
        "service",
        "experiments",
        "system",
        "engine",
        "core",
        "data",
        "report",
        "errors",
    },
}
NO_TORCH = [
    "core/*.py",
    "data/*.py",
    "engine/settings.py",
    "engine/artifacts.py",
    "system/config.py",
    "system/registry.py",
    "system/workspace.py",
    "system/forget.py",
    "system/verify.py",
    "system/background.py",
    "system/api.py",
    "cli/*.py",
    "errors.py",
    "__init__.py",
]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks do not import at run time
            continue
    return names


def test_each_layer_imports_only_downward() -> None:
    problems = []
    for layer, allowed in ALLOWED.items():
        for path in (SRC / layer).rglob("*.py"):
            for name in _imports(path, top_level_only=False):
                if name.startswith("s3t."):
                    target = name.split(".")[1]
                    if target not in allowed:
                        problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems


def test_light_modules_do_not_import_torch_at_module_level() -> None:
    heavy = {"torch", "transformers", "peft"}
    problems = []
    for pattern in NO_TORCH:
        for path in SRC.glob(pattern):
            for name in _imports(path, top_level_only=True):
                if name.split(".")[0] in heavy or name.startswith(
                    (
                        "s3t.engine.blocks",
                        "s3t.engine.loading",
                        "s3t.engine.train",
                        "s3t.system.serving.server",
                        "s3t.system.training.trainer",
                    )
                ):
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems
