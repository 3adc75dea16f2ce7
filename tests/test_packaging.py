"""Packaging rules: what the sdist and the wheels carry, and that both cores offer one API.

One slow test builds the real distributions with ``python -m build`` (the wheel from the sdist,
in an isolated build environment), installs the wheel into a new virtualenv and checks it there.
The others check the rules that decide their contents: MANIFEST.in through setuptools' own
template engine, the package-data globs of pyproject.toml against the files on disk, setup.py's
extension list against ext/, ws4redis/pure/ and the speedups facade, the metadata against the tox
matrix, and the wheel matrix as cibuildwheel reads it. Wrong rules ship an sdist that cannot
build, a wheel without ws4redis.js, or a compiled module the facade cannot swap in.
"""

from __future__ import annotations

import ast
import configparser
import fnmatch
import importlib
import inspect
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.builds import MODULES
from tests.compiled import require_compiled

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

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

    posix = module_constant(ROOT / "setup.py", "POSIX_EXTENSIONS")
    assert posix == ["fanout"] and (ROOT / "ws4redis" / "server" / "lanes.py").is_file()
    assert sorted(extensions + posix) == sorted(p.stem for p in (ROOT / "ext").glob("*.pyx"))
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


SUPPORTED = ["cp310", "cp311", "cp312", "cp313", "cp314", "cp314t"]
PLATFORMS = {
    "linux": ["manylinux_x86_64", "manylinux_aarch64", "musllinux_x86_64", "musllinux_aarch64"],
    "macos": ["macosx_x86_64", "macosx_arm64"],
    "windows": ["win_amd64"],
}


@pytest.mark.skipif(sys.version_info < (3, 11), reason="cibuildwheel 3 and later run on Python 3.11+")
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_cibuildwheel_builds_every_supported_python_for_every_platform(platform):
    """pyproject.toml's [tool.cibuildwheel], as cibuildwheel itself reads it."""
    listed = subprocess.run(
        [sys.executable, "-m", "cibuildwheel", "--print-build-identifiers", "--platform", platform],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("CIBW_")},
    )
    assert listed.returncode == 0, listed.stderr
    expected = {f"{python}-{tag}" for python in SUPPORTED for tag in PLATFORMS[platform]}
    assert set(listed.stdout.split()) == expected


def test_the_wheel_workflow_builds_on_every_platform_and_checks_each_wheel():
    workflow = (ROOT / ".github" / "workflows" / "wheels.yml").read_text()
    archs = set(re.findall(r"archs: (\w+)\}", workflow))

    assert archs == {"x86_64", "aarch64", "arm64", "AMD64"}
    assert "pypa/cibuildwheel@" in workflow and "python -m build --sdist" in workflow
    assert pyproject()["tool"]["cibuildwheel"]["test-command"] == "python {project}/tests/wheel_check.py 300"


@pytest.mark.slow
def test_python_m_build_makes_an_sdist_and_a_wheel_that_installs_and_works(tmp_path):
    dist = tmp_path / "dist"
    build = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True, text=True, timeout=900,
        env={k: v for k, v in os.environ.items() if k != "WS4REDIS_NO_EXTENSIONS"},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    [sdist] = dist.glob("ws4redis-*.tar.gz")
    [wheel] = dist.glob("ws4redis-*.whl")
    assert re.search(r"-cp3\d+-cp3\d+t?-linux_x86_64\.whl$", wheel.name), f"not compiled: {wheel.name}"

    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    shipped = {"ext/utf8.pyx", "ext/utf8_core.h", "docs/conf.py", "docs/index.md", "tests/wheel_check.py"}
    assert shipped <= names
    assert not [name for name in names if name.endswith((".so", ".c"))]
    with zipfile.ZipFile(wheel) as archive:
        inside = set(archive.namelist())
    assert "ws4redis/static/js/ws4redis.js" in inside and "ws4redis/pure/utf8.py" in inside
    assert len([name for name in inside if name.startswith("ws4redis/_speedups_")]) == MODULES

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)],
                             capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr[-3000:]
    check = subprocess.run([str(python), str(ROOT / "tests" / "wheel_check.py"), "100"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr[-3000:]
    assert '"rounds": 100' in check.stdout
