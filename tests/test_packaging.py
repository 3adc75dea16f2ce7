"""Packaging rules: what the sdist and the wheels carry, and that both cores offer one API.

Building real distributions takes a minute (Cython, a compiler, an isolated
build environment), so the suite checks the rules that decide their contents
instead: MANIFEST.in through setuptools' own template engine, the package-data
globs of pyproject.toml against the files on disk, setup.py's extension list
against ext/, ws4redis/pure/ and the speedups facade, and the metadata
against the tox matrix. Wrong rules ship an sdist that cannot build, a wheel
without ws4redis.js, or a compiled module the facade cannot swap in.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib
import inspect
import os
import re
import sys
from pathlib import Path

import pytest

from tests.compiled import require_compiled

if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PRUNED_DIRS = {".git", ".venv", ".tox", ".hypothesis", ".benchmarks", "build", "dist", "__pycache__"}
# Build products that sit in a developer's tree. setuptools adds some of them to the sdist
# on its own (the cythonized .c files are the extensions' sources once setup.py ran
# cythonize), so only MANIFEST.in's exclusions keep them out.
BUILD_PRODUCTS = ["ext/mask.c", "ext/frames.c", "ws4redis/_speedups_mask.cpython-311-x86_64-linux-gnu.so"]


def tree_files() -> list[str]:
    """Every file of the working tree, relative and with forward slashes, minus caches and venvs."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in PRUNED_DIRS and not d.endswith(".egg-info")]
        rel = Path(folder).relative_to(ROOT)
        found.extend((rel / name).as_posix() for name in files)
    return found


def manifest(files: list[str], defaults: list[str]) -> set[str]:
    """The sdist's files out of ``files``, decided by setuptools' own MANIFEST.in engine.

    As in setuptools, the ``defaults`` it adds by itself come first and the
    template's lines, exclusions included, then apply to them too.
    """
    from setuptools.command.egg_info import FileList

    file_list = FileList()
    file_list.allfiles = list(files)
    file_list.extend(defaults)
    for line in (ROOT / "MANIFEST.in").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            file_list.process_template_line(line)
    return set(file_list.files)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def module_constant(path: Path, name: str):
    """The literal value assigned to ``name`` at the top of a module, read without running it."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{path.name} assigns no {name}")


def facade_imports() -> dict[str, dict[str, set[str]]]:
    """What ws4redis/speedups.py imports, as {"compiled"|"pure": {core module: names}}."""
    imports: dict[str, dict[str, set[str]]] = {"compiled": {}, "pure": {}}
    for node in ast.walk(ast.parse((ROOT / "ws4redis" / "speedups.py").read_text())):
        if not isinstance(node, ast.ImportFrom) or node.module is None:
            continue
        names = {alias.name for alias in node.names}
        if node.module.startswith("ws4redis._speedups_"):
            imports["compiled"][node.module.removeprefix("ws4redis._speedups_")] = names
        elif node.module.startswith("ws4redis.pure."):
            imports["pure"][node.module.removeprefix("ws4redis.pure.")] = names
    return imports


def expand(pattern: str) -> list[str]:
    """Expand tox's generative braces: "py{310,311}-django42{,-pure}" -> 4 names."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if match is None:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [name for option in match.group(1).split(",") for name in expand(head + option + tail)]


def tox_envs() -> set[str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(ROOT / "tox.ini")
    return {
        name
        for section in parser.sections()
        if section.startswith("testenv:")
        for name in expand(section.removeprefix("testenv:"))
    }


def test_the_sdist_ships_the_extension_sources_and_no_build_products():
    files = tree_files()
    sources = [f for f in files if f.startswith("ext/") and f.endswith((".pyx", ".pxd", ".h"))]
    for suffix in (".pyx", ".pxd", ".h"):
        assert any(f.endswith(suffix) for f in sources), f"no ext/*{suffix} in the tree to check"

    shipped = manifest(files + BUILD_PRODUCTS, defaults=BUILD_PRODUCTS)

    assert sorted(set(sources) - shipped) == []
    assert sorted(shipped & set(BUILD_PRODUCTS)) == []
    assert "ws4redis/static/js/ws4redis.js" in shipped
    assert {"setup.py", "pyproject.toml", "README.md"} <= shipped


def test_every_package_data_glob_matches_a_file_and_the_js_client_is_one_of_them():
    patterns = pyproject()["tool"]["setuptools"]["package-data"]["ws4redis"]
    package_files = [p.relative_to(ROOT / "ws4redis").as_posix() for p in (ROOT / "ws4redis").rglob("*")]

    assert [p for p in patterns if not fnmatch.filter(package_files, p)] == []
    assert any(fnmatch.fnmatch("static/js/ws4redis.js", p) for p in patterns)


def test_every_package_is_found_by_the_package_discovery_globs():
    include = pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [
        init.parent.relative_to(ROOT).as_posix().replace("/", ".")
        for init in (ROOT / "ws4redis").rglob("__init__.py")
    ]

    assert "ws4redis.pure" in packages
    assert [p for p in packages if not any(fnmatch.fnmatch(p, glob) for glob in include)] == []


def test_each_extension_has_its_source_its_pure_twin_and_its_facade_imports():
    extensions = module_constant(ROOT / "setup.py", "EXTENSIONS")
    imports = facade_imports()
    facade = importlib.import_module("ws4redis.speedups")

    assert sorted(extensions) == sorted(p.stem for p in (ROOT / "ext").glob("*.pyx"))
    for name in extensions:
        assert (ROOT / "ws4redis" / "pure" / f"{name}.py").is_file(), name
    assert imports["compiled"] == imports["pure"]
    assert sorted(imports["compiled"]) == sorted(extensions)
    imported = set().union(*imports["compiled"].values())
    assert imported == set(facade.__all__) - {"COMPILED"}


def public_attributes(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")}


def parameters(function) -> list[tuple[str, str, object]]:
    return [(p.name, p.kind.name, p.default) for p in inspect.signature(function).parameters.values()]


@pytest.mark.parametrize("module", ["mask", "utf8", "frames"])
def test_compiled_modules_carry_the_public_api_of_their_pure_twins(module):
    compiled = getattr(require_compiled(), module)
    pure = importlib.import_module(f"ws4redis.pure.{module}")

    for name in sorted(facade_imports()["pure"][module]):
        pure_obj, compiled_obj = getattr(pure, name), getattr(compiled, name, None)
        assert compiled_obj is not None, f"ws4redis._speedups_{module} has no {name}"
        if not isinstance(pure_obj, type):
            assert parameters(compiled_obj) == parameters(pure_obj), name
            continue
        assert isinstance(compiled_obj, type), name
        assert public_attributes(compiled_obj) == public_attributes(pure_obj), name
        for attribute in sorted(public_attributes(pure_obj)):
            method = getattr(pure_obj, attribute)
            if inspect.isfunction(method):
                compiled_method = getattr(compiled_obj, attribute)
                assert parameters(compiled_method) == parameters(method), f"{name}.{attribute}"
        # A compiled class's __init__ has no introspectable signature: it must accept every
        # keyword of the pure one instead (required ones given a representative value).
        samples = {"opcode": 1, "payload": b"ws4redis"}
        keywords = {
            p.name: samples[p.name] if p.default is inspect.Parameter.empty else p.default
            for p in inspect.signature(pure_obj).parameters.values()
        }
        compiled_obj(**keywords)


def test_python_and_django_versions_agree_across_metadata_and_tox():
    project = pyproject()
    classifiers = project["project"]["classifiers"]
    django = {c.rsplit(" ", 1)[1] for c in classifiers if c.startswith("Framework :: Django :: ")}
    python = {
        c.rsplit(" ", 1)[1]
        for c in classifiers
        if re.fullmatch(r"Programming Language :: Python :: 3\.\d+", c)
    }
    envs = tox_envs()
    tox_django = {m.group(1) for env in envs if (m := re.search(r"django(\d+)", env))}
    tox_python = {m.group(1) for env in envs if (m := re.match(r"py3(\d+)-", env))}
    oldest = min(python, key=lambda v: tuple(map(int, v.split("."))))

    assert {v.replace(".", "") for v in django} == tox_django
    assert {v.removeprefix("3.") for v in python} == tox_python
    assert project["project"]["requires-python"] == f">={oldest}"
    assert project["tool"]["ruff"]["target-version"] == "py" + oldest.replace(".", "")


@pytest.mark.parametrize("value", ["", "0", "false", "No", " 1 ", "yes", "true", "TRUE", "anything"])
def test_setup_and_the_facade_read_ws4redis_no_extensions_alike(value, monkeypatch):
    """setup.py (which cannot import ws4redis) restates the facade's rule; the two must not drift."""
    from ws4redis.speedups import extensions_disabled

    definition = next(
        node for node in ast.parse((ROOT / "setup.py").read_text()).body
        if isinstance(node, ast.FunctionDef) and node.name == "truthy"
    )
    namespace: dict = {}
    exec(compile(ast.Module([definition], type_ignores=[]), "setup.py", "exec"), namespace)
    monkeypatch.setenv("WS4REDIS_NO_EXTENSIONS", value)
    assert namespace["truthy"](value) is extensions_disabled()
