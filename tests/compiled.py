"""Direct access to the compiled modules, for the tests that compare or stress them.

The parity and memory-safety tests import ``ws4redis._speedups_*`` directly
(not through the facade), so they run in both suite runs whenever the
extensions are built. When they are not: a run that expects them
(``WS4REDIS_EXPECT_COMPILED=1``) fails with the import error, any other run
skips these tests with the reason and the build command.
"""

from __future__ import annotations

import importlib
import os
from types import SimpleNamespace

import pytest

NAMES = ("mask", "utf8", "frames", "fanout")


def import_compiled() -> tuple[SimpleNamespace | None, ImportError | None]:
    """The compiled modules as ``.mask``, ``.utf8``, ``.frames`` and ``.fanout``, or the ImportError."""
    try:
        modules = {name: importlib.import_module(f"ws4redis._speedups_{name}") for name in NAMES}
    except ImportError as exc:
        return None, exc
    return SimpleNamespace(**modules), None


def require_compiled() -> SimpleNamespace:
    """The compiled modules; fails or skips the calling test when they are missing."""
    modules, error = import_compiled()
    if modules is None:
        if os.environ.get("WS4REDIS_EXPECT_COMPILED") == "1":
            pytest.fail(f"compiled speedups were expected but cannot be imported: {error}", pytrace=False)
        pytest.skip(
            f"compiled speedups not built ({error}); build them with "
            f"`python setup.py build_ext --inplace` to run this test"
        )
    return modules
