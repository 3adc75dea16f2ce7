"""Build the extensions from ext/ into a scratch copy of the package, with chosen compiler flags.

The AddressSanitizer test and the compiler tests each need their own build of the same sources;
this copies ``ext/``, ``ws4redis/`` and ``setup.py`` to a directory and runs ``build_ext --inplace``
there, so the checkout's own build is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = 4  # _speedups_mask, _speedups_utf8, _speedups_frames, _speedups_fanout


def copy_sources(target: Path) -> None:
    """What a build needs, without build products: ``ext/``, ``ws4redis/`` and the project files."""
    shutil.copytree(ROOT / "ext", target / "ext", ignore=shutil.ignore_patterns("*.c", "*.so"))
    shutil.copytree(
        ROOT / "ws4redis", target / "ws4redis", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    for name in ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in"):
        shutil.copy(ROOT / name, target / name)


def build_copy(target: Path, **env: str) -> subprocess.CompletedProcess:
    """Copy the sources to ``target`` and build the extensions there; the result carries the compiler output.

    Fails the calling test, with the compiler's last words, when not every module was built.
    """
    import pytest

    copy_sources(target)
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--force"],
        cwd=target,
        env={**os.environ, "WS4REDIS_NO_EXTENSIONS": "", **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    built = sorted(path.name for path in (target / "ws4redis").glob("_speedups_*.so"))
    if len(built) != MODULES:
        pytest.fail(f"the build with {env} made {built}: {build.stderr[-3000:]}", pytrace=False)
    return build


def run_in_copy(target: Path, script: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    """Run ``script`` (Python source, or the path of a .py file) with the copy at ``target`` first on
    the import path."""
    command = [script] if script.endswith(".py") else ["-c", script]
    return subprocess.run(
        [sys.executable, *command, *args],
        cwd=target,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(target), **env},
    )
