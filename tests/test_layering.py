"""The architecture as a test: each layer imports only downward, the rooms of the system
layer keep to their concerns, only the store speaks SQL, and the parts that must stay
light never import torch at module level."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "s3t"

ALLOWED = {
    "core": {"core", "errors", "extras"},
    "data": {"data", "core", "errors", "extras"},
    "report": {"report", "errors", "extras"},
    "engine": {"engine", "core", "data", "errors", "extras"},
    "system": {"system", "engine", "core", "data", "errors", "extras"},
    "experiments": {
        "experiments",
        "system",
        "engine",
        "core",
        "data",
        "report",
        "errors",
        "extras",
    },
    "service": {"service", "system", "engine", "core", "data", "errors", "extras"},
    "client": {"client", "system", "core", "errors", "extras"},
    "cli": {
        "cli",
        "client",
        "service",
        "experiments",
        "system",
        "engine",
        "core",
        "data",
        "report",
        "errors",
        "extras",
    },
}
#: rooms of the system layer: which other rooms (or system-level modules) each may import
ROOMS = {
    "store": {"store", "config"},
    "training": {"training", "store", "config"},
    "serving": {"serving", "store", "config"},
    # a scaled-out system: the authority is a system in one process (the facade) that
    # publishes; a replica serves what it publishes with the serving room's server
    "scaleout": {
        "scaleout",
        "api",
        "serving",
        "training",
        "store",
        "config",
        "access",
        "forget",
        "reports",
        "verify",
    },
}
#: the faces reach the system only through the facade and its typed results
FACADE = {
    "s3t.system.api",
    "s3t.system.access",
    "s3t.system.serving.requests",
    "s3t.system.config",
    "s3t.system.forget",
    "s3t.system.reports",
    "s3t.system.verify",
    "s3t.system.training.background",
    "s3t.system.training.distributed",
    "s3t.system.serving.scoring",
    "s3t.system.serving.membership",
    "s3t.system.serving.server",
    # the scaled-out system's two faces of the facade: its deletion authority, a replica
    "s3t.system.scaleout.authority",
    "s3t.system.scaleout.replica",
}
NO_TORCH = [
    "core/*.py",
    "data/*.py",
    "engine/settings.py",
    "engine/artifacts.py",
    "system/config.py",
    "system/store/*.py",
    "system/forget.py",
    "system/verify.py",
    "system/reports.py",
    "system/maintenance.py",
    "system/training/background.py",
    "system/api.py",
    "cli/*.py",
    "client.py",
    "system/access.py",
    "system/serving/requests.py",
    "errors.py",
    "__init__.py",
]


def _imports(path: Path, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue  # annotations only: nothing is imported at run time
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_each_layer_imports_only_downward() -> None:
    problems = []
    for layer, allowed in ALLOWED.items():
        paths = (
            [SRC / f"{layer}.py"] if (SRC / f"{layer}.py").exists() else (SRC / layer).rglob("*.py")
        )
        for path in paths:
            for name in _imports(path, top_level_only=False):
                if name.startswith("s3t.") and name.split(".")[1] not in allowed:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems


def test_each_room_of_the_system_keeps_to_its_concern() -> None:
    problems = []
    for room, allowed in ROOMS.items():
        for path in (SRC / "system" / room).rglob("*.py"):
            for name in _imports(path, top_level_only=False):
                if name.startswith("s3t.system."):
                    target = name.split(".")[2]
                    if target not in allowed:
                        problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems


def test_only_the_store_executes_sql() -> None:
    problems = []
    for path in SRC.rglob("*.py"):
        if path.is_relative_to(SRC / "system" / "store"):
            continue
        text = path.read_text()
        if re.search(r"\.execute(many)?\(|\bimport sqlite3\b", text):
            problems.append(str(path.relative_to(SRC)))
    assert not problems, problems


def test_the_faces_use_only_the_facade() -> None:
    problems = []
    for face in ("cli", "service", "experiments", "client.py"):
        for path in [SRC / face] if face.endswith(".py") else (SRC / face).rglob("*.py"):
            text = path.read_text()
            if re.search(r"\.workspace\.|\.server\.|\.registry\(\)|\._ws\b|\._serving\b", text):
                problems.append(f"{path.relative_to(SRC)} reaches past the facade")
            for name in _imports(path, top_level_only=False):
                if name.startswith("s3t.system.") and name not in FACADE:
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems


def test_light_modules_do_not_import_torch_at_module_level() -> None:
    heavy = {"torch", "transformers", "peft"}
    heavy_modules = (
        "s3t.engine.blocks",
        "s3t.engine.loading",
        "s3t.engine.train",
        "s3t.system.serving.server",
        "s3t.system.serving.scoring",
        "s3t.system.serving.batcher",
        "s3t.system.serving.membership",
        "s3t.system.training.trainer",
        "s3t.system.training.stage_worker",
        "s3t.system.training.reference",
    )
    problems = []
    for pattern in NO_TORCH:
        for path in SRC.glob(pattern):
            for name in _imports(path, top_level_only=True):
                if name.split(".")[0] in heavy or name.startswith(heavy_modules):
                    problems.append(f"{path.relative_to(SRC)} imports {name}")
    assert not problems, problems


def test_no_import_cycles_between_modules() -> None:
    graph: dict[str, set[str]] = {}
    for path in SRC.rglob("*.py"):
        module = "s3t." + ".".join(path.relative_to(SRC).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        graph[module] = {n for n in _imports(path, top_level_only=False) if n.startswith("s3t.")}
    cycles = []
    for start in graph:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start and len(trail) > 1:
                    cycles.append(" -> ".join([*trail, nxt]))
                elif nxt not in seen and nxt in graph:
                    seen.add(nxt)
                    stack.append((nxt, [*trail, nxt]))
    packages = {m for m in graph if any(k.startswith(m + ".") for k in graph)}
    real = [c for c in cycles if not any(p in c.split(" -> ") for p in packages)]
    assert not real, real[:5]
