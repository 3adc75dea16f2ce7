"""Fixtures of the micro-benchmarks (test_bench_*.py).

The compiled speedups are what these benchmarks are about, so a missing
build fails them with the command that builds it instead of quietly timing
only the pure-Python path.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from benchmarks.hotpath_peers import CompiledMissing, import_compiled


@pytest.fixture(scope="session")
def compiled() -> SimpleNamespace:
    try:
        return import_compiled()
    except CompiledMissing as exc:
        pytest.fail(str(exc), pytrace=False)


def record_throughput(benchmark, units: int, unit: str) -> None:
    """Put ``unit`` per second (from the fastest round) into the saved benchmark data."""
    stats = getattr(benchmark, "stats", None)
    if stats is not None and stats.stats.min > 0:
        benchmark.extra_info[f"{unit}_per_second"] = units / stats.stats.min
