"""Run the whole test suite the way CI does: lint, docs, compiled core, pure core, benchmark smoke.

Usage: python tests/run.py [extra pytest args]

System packages the suite needs (redis-server, chromium, chromium-driver) are
installed with apt-get when missing and this runs as root; otherwise the tests
that need them fail with the reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A fresh build (-E) in which every warning (-W, -n: a broken link or reference) fails it.
SPHINX = ["-E", "-W", "--keep-going", "-n", "-q", "-b", "html"]
LINTED = ["ws4redis", "tests", "benchmarks", "examples", "docs", "setup.py"]
# binary -> the Debian package that has it
SYSTEM_PACKAGES = {
    "redis-server": "redis-server",
    "chromium": "chromium",
    "chromedriver": "chromium-driver",
    "clang": "clang",
    "nginx": "nginx",
}


def ensure_system_packages() -> None:
    missing = [pkg for binary, pkg in SYSTEM_PACKAGES.items() if not shutil.which(binary)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print(f"run.py: missing system packages {missing}; tests needing them will fail", flush=True)
        return
    print(f"run.py: installing {' '.join(missing)} with apt-get", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True, env=env)


def run(title: str, args: list[str], **env: str) -> None:
    print(f"\n=== {title}: {' '.join(args)}", flush=True)
    result = subprocess.run(args, cwd=ROOT, env={**os.environ, **env})
    if result.returncode != 0:
        sys.exit(f"run.py: {title} failed with exit code {result.returncode}")


def main() -> None:
    ensure_system_packages()
    extra = sys.argv[1:]
    py = sys.executable
    run("lint", [py, "-m", "ruff", "check", *LINTED])
    run("docs", [py, "-m", "sphinx", *SPHINX, "docs", "build/docs"])
    run("tests, compiled core", [py, "-m", "pytest", *extra], WS4REDIS_EXPECT_COMPILED="1")
    # Tests marked "once" give the same result on either core (they test the compiled modules
    # directly, or no core at all): the pure run leaves them out.
    run("tests, pure-Python core", [py, "-m", "pytest", "-m", "not once", *extra], WS4REDIS_NO_EXTENSIONS="1")
    run("benchmarks, one round each", [py, "-m", "pytest", "benchmarks", "--benchmark-disable", "-q"])


if __name__ == "__main__":
    main()
