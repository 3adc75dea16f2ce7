"""The sans-I/O core imports nothing but itself and the standard library, and no I/O module.

Adapters (servers, the WebSocket adapter, Django glue) import the core, never
the reverse. These tests read the core's import statements, the Cython
sources included, and import the core in a fresh interpreter to see what it
pulls in.
"""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

CORE_MODULES = {
    "ws4redis.constants",
    "ws4redis.deflate",
    "ws4redis.exceptions",
    "ws4redis.handshake",
    "ws4redis.history",
    "ws4redis.protocol",
    "ws4redis.speedups",
    "ws4redis.pure",
    "ws4redis.pure.frames",
    "ws4redis.pure.mask",
    "ws4redis.pure.utf8",
    "ws4redis._speedups_frames",
    "ws4redis._speedups_mask",
    "ws4redis._speedups_utf8",
}
CORE_NAMES = ("constants", "deflate", "exceptions", "handshake", "history", "protocol", "speedups")
CORE_FILES = [
    *(ROOT / "ws4redis" / f"{name}.py" for name in CORE_NAMES),
    *sorted((ROOT / "ws4redis" / "pure").glob("*.py")),
]
CYTHON_FILES = sorted((ROOT / "ext").glob("*.pyx")) + sorted((ROOT / "ext").glob("*.pxd"))
# Compile-time names of the Cython sources: C declarations, not Python imports.
CYTHON_CIMPORTS = {"cython", "cpython", "libc", "wscore"}
# Standard-library modules that do I/O or schedule it: adapter territory.
IO_MODULES = {"socket", "select", "selectors", "asyncio", "ssl", "socketserver", "threading", "subprocess"}
THIRD_PARTY_ADAPTER_PACKAGES = {"django", "redis", "gevent", "uwsgi"}


def python_imports(path: Path) -> set[str]:
    imported = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module)
            if node.module == "ws4redis":
                imported.update(f"ws4redis.{alias.name}" for alias in node.names)
    return imported


def cython_imports(path: Path) -> set[str]:
    """Module names after ``import``, ``from ... import`` and ``cimport`` at the start of a line."""
    # Docstrings go first: their prose may start a line with "import".
    code = re.sub(r'""".*?"""', "", path.read_text(), flags=re.DOTALL)
    pattern = re.compile(
        r"^\s*(?:from\s+([\w.]+)\s+c?import\s+\(?([\w, ]*)|c?import\s+([\w.]+))", re.MULTILINE
    )
    imported = set()
    for source, names, module in pattern.findall(code):
        if module:
            imported.add(module)
            continue
        imported.add(source)
        if source == "ws4redis":
            imported.update(f"ws4redis.{name.strip()}" for name in names.split(",") if name.strip())
    return imported


def violations(imported: set[str]) -> list[str]:
    bad = []
    for name in sorted(imported):
        top = name.split(".")[0]
        if top == "__future__" or top in CYTHON_CIMPORTS:
            continue
        if top == "ws4redis":
            if name != "ws4redis" and name not in CORE_MODULES:
                bad.append(f"{name} (not part of the core)")
        elif top in IO_MODULES or top in THIRD_PARTY_ADAPTER_PACKAGES:
            bad.append(f"{name} (I/O or adapter)")
        elif top not in sys.stdlib_module_names:
            bad.append(f"{name} (neither the core nor the standard library)")
    return bad


@pytest.mark.parametrize("path", CORE_FILES + CYTHON_FILES, ids=lambda path: str(path.relative_to(ROOT)))
def test_core_sources_import_only_the_core_and_the_standard_library(path):
    imported = cython_imports(path) if path.suffix in (".pyx", ".pxd") else python_imports(path)
    assert violations(imported) == []


def test_the_import_readers_find_the_imports():
    protocol = python_imports(ROOT / "ws4redis/protocol.py")
    assert {"struct", "ws4redis.constants", "ws4redis.speedups"} <= protocol
    frames = cython_imports(ROOT / "ext/frames.pyx")
    assert {"cython", "wscore", "ws4redis.constants", "ws4redis.exceptions"} <= frames
    assert "time" not in frames  # "import time" in the module docstring is prose


def test_an_adapter_import_is_a_violation():
    assert violations({"ws4redis.hub", "django.conf", "socket", "ws4redis.constants", "struct"}) == [
        "django.conf (I/O or adapter)",
        "socket (I/O or adapter)",
        "ws4redis.hub (not part of the core)",
    ]


def test_importing_the_core_loads_no_adapter():
    code = (
        "import json, sys\n"
        "import ws4redis.handshake, ws4redis.protocol, ws4redis.speedups\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    command = [sys.executable, "-c", code]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    adapters = [name for name in loaded if name.startswith("ws4redis.") and name not in CORE_MODULES]
    foreign = [name for name in loaded if name.split(".")[0] in THIRD_PARTY_ADAPTER_PACKAGES]
    assert adapters == [] and foreign == []


# --- the whole package: one-way imports ---------------------------------------------------------------

FRONT_DOORS = {"ws4redis.gevent_server", "ws4redis.uwsgi_runserver", "ws4redis.django_runserver"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def module_level_imports(path: Path, known: set[str]) -> set[str]:
    """The ws4redis modules ``path`` imports when it is imported: module level, not under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return {name for name in found if name in known}


def package_graph() -> dict[str, set[str]]:
    paths = [path for path in (ROOT / "ws4redis").rglob("*.py") if "management" not in path.parts]
    known = {module_name(path) for path in paths}
    return {module_name(path): module_level_imports(path, known) - {module_name(path)} for path in paths}


def test_the_package_has_no_import_cycle():
    graph = package_graph()
    assert graph["ws4redis.uwsgi_runserver"] >= {"ws4redis.server.evented", "ws4redis.server.accept"}
    cycles = []
    state: dict[str, int] = {}

    def walk(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            walk(name, [name])
    assert cycles == []


def test_the_front_doors_import_the_shared_server_parts_never_each_other():
    graph = package_graph()
    for door in FRONT_DOORS:
        assert graph[door] & FRONT_DOORS == set(), door
    shared = [name for name in graph if name.startswith("ws4redis.server")]
    assert len(shared) >= 6
    for name in shared:
        assert graph[name] & (FRONT_DOORS | {"ws4redis.wsgi_server"}) == set(), name
