"""Waiting for something that happens asynchronously (a server, Redis), without fixed sleeps."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(predicate: Callable[[], object], limit: float = 20.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail the test naming ``what`` after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not reached within {limit} s", pytrace=False)
        time.sleep(0.05)
