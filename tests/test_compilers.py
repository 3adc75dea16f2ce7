"""The C in ext/ builds with clang and in its standard-C form (what MSVC compiles), and each build
gives the pure twin's results byte for byte.

Wheels are built by cibuildwheel with clang on macOS and MSVC on Windows, which this machine cannot
run. Two builds stand in for them: clang itself, and GCC with ``WS4REDIS_PORTABLE_C``, which takes
the paths a compiler without GCC extensions gets (no vector types, no attributes, no x86-64 SIMD
scanners). Both must compile ext/'s headers without a warning and agree with ``ws4redis.pure`` on a
seeded batch of masking, UTF-8 and frame parsing.

They build from the sources, whatever core the suite runs on, so tests/run.py runs them once.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import pytest

from tests.builds import ROOT, build_copy, copy_sources, run_in_copy

pytestmark = [pytest.mark.slow, pytest.mark.once]

OWN_HEADERS = re.compile(r"ext/(mask_core|utf8_core)\.h:\d+:\d+: (warning|error)")



def parity(target, rounds: int = 300) -> dict:
    """tests/wheel_check.py (the check cibuildwheel runs on each wheel) against the build at ``target``."""
    result = run_in_copy(target, str(ROOT / "tests" / "wheel_check.py"), str(rounds))
    assert result.returncode == 0, f"the parity batch failed: {result.stderr[-4000:]}"
    return json.loads(result.stdout)


def test_the_headers_are_standard_c11_in_both_forms(tmp_path):
    """ext/'s C cores, as MSVC sees them and as GCC/clang do, under -std=c11 -pedantic-errors -Werror."""
    compiler = (sysconfig.get_config_var("CC") or "cc").split()[0]
    source = tmp_path / "headers.c"
    source.write_text('#include "mask_core.h"\n#include "utf8_core.h"\n')
    for defines in (["-DWS4REDIS_PORTABLE_C"], []):
        check = subprocess.run(
            [compiler, "-std=c11", "-pedantic-errors", "-Wall", "-Wextra", "-Werror", *defines,
             f"-I{ROOT / 'ext'}", "-fsyntax-only", str(source)],
            capture_output=True, text=True, timeout=120,
        )
        assert check.returncode == 0, f"{compiler} {defines}: {check.stderr[-3000:]}"


def test_the_standard_c_build_compiles_cleanly_and_matches_the_pure_twin(tmp_path):
    build = build_copy(tmp_path, CFLAGS="-DWS4REDIS_PORTABLE_C -Wall -Wextra")

    assert OWN_HEADERS.findall(build.stderr) == [], build.stderr[-3000:]
    report = parity(tmp_path)
    assert report == {"rounds": 300, "scanners": ["base"], "lanes": True}, \
        "the standard-C build must have no SIMD scanner"


def test_the_clang_build_compiles_cleanly_and_matches_the_pure_twin(tmp_path):
    clang = shutil.which("clang")
    if clang is None:
        pytest.fail("this test needs clang (apt-get install clang; tests/run.py installs it)", pytrace=False)
    build = build_copy(tmp_path, CC=clang, LDSHARED=f"{clang} -shared", CFLAGS="-Wall -Wextra")

    assert re.search(rf"^{re.escape(clang)} .*ext/utf8\.c", build.stdout, re.MULTILINE), "clang was not used"
    assert OWN_HEADERS.findall(build.stderr) == [], build.stderr[-3000:]
    report = parity(tmp_path)
    assert report["rounds"] == 300
    assert "base" in report["scanners"]


def test_a_module_cython_cannot_translate_costs_that_module_only(tmp_path):
    """A Cython that rejects one .pyx (a future release, say): the build warns and goes on."""
    copy_sources(tmp_path)
    with (tmp_path / "ext" / "fanout.pyx").open("a") as source:
        source.write("\ncdef this is not Cython\n")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--inplace", "--force"], cwd=tmp_path,
        capture_output=True, text=True, timeout=600, env={**os.environ, "WS4REDIS_NO_EXTENSIONS": ""},
    )
    assert build.returncode == 0, build.stderr[-3000:]
    assert "Cython could not translate ext/fanout.pyx" in build.stderr
    built = sorted(path.name.split(".")[0] for path in (tmp_path / "ws4redis").glob("_speedups_*.so"))
    assert built == ["_speedups_frames", "_speedups_mask", "_speedups_utf8"]
    probe = ("import ws4redis.speedups as s, ws4redis.server.fanout as f; "
             "print(s.COMPILED, f.COMPILED, f.SendLanes.__module__)")
    # -S: no site-packages, so that an editable install of the checkout cannot lend its own module.
    used = subprocess.run([sys.executable, "-S", "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert used.stdout.split() == ["True", "False", "ws4redis.server.lanes"], used.stderr
    assert "compiled send lanes are unavailable" in used.stderr


def test_without_a_working_compiler_pip_installs_the_pure_core_and_says_so(tmp_path):
    """A machine whose C compiler fails: the wheel still builds, warns, and runs on the pure core."""
    copy_sources(tmp_path / "src")
    wheel = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path / "dist"), str(tmp_path / "src")],
        capture_output=True, text=True, timeout=600,
        env={**os.environ, "CC": "/bin/false", "LDSHARED": "/bin/false", "WS4REDIS_NO_EXTENSIONS": ""},
    )
    assert wheel.returncode == 0, wheel.stderr[-3000:]
    [built] = (tmp_path / "dist").glob("ws4redis-*.whl")
    with zipfile.ZipFile(built) as archive:
        assert not [name for name in archive.namelist() if name.startswith("ws4redis/_speedups_")]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = str(venv / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", str(built)], check=True, timeout=300)
    probe = "import ws4redis.speedups as s; print(s.COMPILED, s.validate_utf8(b'ok'))"
    used = subprocess.run([python, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert used.stdout.split() == ["False", "True"], used.stderr
    assert "compiled speedups unavailable" in used.stderr and "pure-Python core" in used.stderr
