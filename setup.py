"""Build the Cython extensions from ext/ unless WS4REDIS_NO_EXTENSIONS is set.

Without a working compiler the build falls back to a pure-Python install and
says so, so ``pip install`` never fails just because gcc is missing.
"""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.errors import BaseError, CCompilerError

EXTENSIONS = ["mask", "utf8", "frames"]  # the sans-I/O core; pure twins in ws4redis/pure
# The fan-out's send lanes write to sockets (sendmsg): pure twin ws4redis/server/lanes.py, POSIX only.
POSIX_EXTENSIONS = ["fanout"]

# What a missing or failing C toolchain raises: a compile or link error
# (CCompilerError); no compiler for the platform, a compiler that exits with an
# error, or --inplace finding no module to copy after that (setuptools' BaseError,
# distutils' DistutilsError); a compiler that cannot be run at all (OSError).
TOOLCHAIN_ERRORS = (CCompilerError, BaseError, OSError)


def truthy(value: str | None) -> bool:
    """ws4redis.speedups.extensions_disabled's reading of WS4REDIS_NO_EXTENSIONS (restated: setup.py
    cannot import the package it builds; tests/test_packaging.py checks that both agree)."""
    return (value or "").strip().lower() not in ("", "0", "false", "no")


# Optimisation flags by compiler family: MSVC spells them its own way and warns on GCC's.
OPTIMIZE = {"msvc": ["/O2"], "unix": ["-O3"], "mingw32": ["-O3"], "cygwin": ["-O3"]}


class OptionalBuildExt(build_ext):
    """Compile what can be compiled; warn loudly and carry on without the rest."""

    def build_extensions(self) -> None:
        flags = OPTIMIZE.get(self.compiler.compiler_type, [])
        for ext in self.extensions:
            ext.extra_compile_args = [*flags, *ext.extra_compile_args]
        super().build_extensions()

    def run(self) -> None:
        try:
            super().run()
        except TOOLCHAIN_ERRORS as exc:
            self._warn(exc)

    def build_extension(self, ext: Extension) -> None:
        try:
            super().build_extension(ext)
        except TOOLCHAIN_ERRORS as exc:
            self._warn(exc)

    @staticmethod
    def _warn(exc: Exception) -> None:
        sys.stderr.write(
            f"\n*** WARNING: could not compile the ws4redis speedups ({exc}).\n"
            "*** ws4redis will use its pure-Python implementation, which is slower.\n\n"
        )


def extensions() -> list[Extension]:
    if truthy(os.environ.get("WS4REDIS_NO_EXTENSIONS")):
        return []
    try:
        from Cython.Build import cythonize
        from Cython.Compiler.Errors import CompileError
    except ImportError:
        sys.stderr.write("*** WARNING: Cython is not installed; building ws4redis without speedups.\n")
        return []
    # The C cores (ext/*.h) and the shared declarations (ext/wscore.pxd) are
    # compiled into each module that uses them; "depends" rebuilds on change.
    shared = ["ext/mask_core.h", "ext/utf8_core.h", "ext/wscore.pxd"]
    modules = [
        Extension(
            f"ws4redis._speedups_{name}",
            [f"ext/{name}.pyx"],
            include_dirs=["ext"],
            depends=shared,
        )
        for name in EXTENSIONS + (POSIX_EXTENSIONS if os.name == "posix" else [])
    ]
    directives = {"boundscheck": False, "wraparound": False, "cdivision": True, "initializedcheck": False}
    # One module at a time: a Cython that cannot translate one of them (a future release, say)
    # costs that module, with a warning, and never the install.
    translated = []
    for module in modules:
        try:
            translated += cythonize([module], include_path=["ext"], language_level=3,
                                    compiler_directives=directives)
        except CompileError as exc:
            sys.stderr.write(f"\n*** WARNING: Cython could not translate {module.sources[0]} ({exc}); "
                             "ws4redis is built without it and uses the pure-Python twin.\n\n")
    return translated


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
