"""Print a compact comparison table of the hot paths: ws4redis compiled vs pure vs peers.

Usage (from the repository root, with the extensions built)::

    python -m benchmarks.compare            # every table: 3 passes x best of 5 runs per cell
    python -m benchmarks.compare --passes 5 --only mask utf8

Throughput is GB/s (10^9 bytes per second) for masking, UTF-8 validation,
encoding and large frames, and million frames per second for small frames.
Each cell is the best of ``--repeat`` runs of about ``--budget`` seconds, and
the best over ``--passes`` whole passes, spread out in time: other processes
can only slow a run down, so the best run is the closest to the real cost. The same inputs and calls as the
pytest-benchmark modules are used (benchmarks/hotpath_peers.py).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from typing import Any

from benchmarks.hotpath_peers import (
    KEY,
    SAMPLES,
    SIZES,
    STREAMS,
    CompiledMissing,
    encode_implementations,
    frames_parsed,
    import_compiled,
    mask_implementations,
    mask_inplace_implementations,
    parse_implementations,
    payload,
    stream,
    text,
    utf8_implementations,
)

TABLES = ("mask", "mask-inplace", "utf8", "parse", "encode")


def best_time(function: Callable[..., Any], args: tuple, repeat: int, budget: float) -> float:
    """Seconds per call: best of ``repeat`` runs of a loop lasting about ``budget`` seconds."""
    number = 1
    while True:
        start = time.perf_counter()
        for _ in range(number):
            function(*args)
        elapsed = time.perf_counter() - start
        if elapsed >= budget / 4 or number >= 1 << 24:
            break
        number *= 4
    number = max(1, int(number * budget / max(elapsed, 1e-9)))
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(number):
            function(*args)
        best = min(best, (time.perf_counter() - start) / number)
    return best


def best_fresh_time(prepare: Callable[[], tuple], repeat: int) -> tuple[float, Any]:
    """Seconds per call of a one-shot call whose state must be fresh each time (parsers)."""
    best, result = float("inf"), None
    for _ in range(max(repeat, 5) * 4):
        function, args = prepare()
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def print_table(title: str, columns: list[str], rows: dict[str, list[float]], unit: str) -> None:
    width = max(len(name) for name in rows) + 2
    cell = max(9, *(len(column) for column in columns)) + 2
    print(f"\n{title} ({unit}; higher is better)")
    print("".ljust(width) + "".join(column.rjust(cell) for column in columns))
    for name, values in rows.items():
        print(name.ljust(width) + "".join(format_value(value).rjust(cell) for value in values))


def format_value(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def throughput_rows(implementations: dict, build: Callable[[Callable, int], tuple], repeat: int,
                    budget: float) -> dict[str, list[float]]:
    """GB/s of each implementation at each size; ``build(prepare, size)`` gives (function, args, bytes)."""
    rows = {}
    for name, prepare in implementations.items():
        values = []
        for size in SIZES.values():
            function, args, nbytes = build(prepare, size)
            values.append(nbytes / best_time(function, args, repeat, budget) / 1e9)
        rows[name] = values
    return rows


def with_size(prepared: tuple, nbytes: int) -> tuple:
    function, args = prepared
    return function, args, nbytes


Table = tuple[str, list[str], dict[str, list[float]], str]  # title, columns, rows, unit


def measure(compiled, only: list[str], repeat: int, budget: float) -> list[Table]:
    """One pass over every requested table."""
    sizes = list(SIZES)
    tables: list[Table] = []
    if "mask" in only:
        rows = throughput_rows(
            mask_implementations(compiled),
            lambda prepare, size: with_size(prepare(payload(size), KEY), size),
            repeat,
            budget,
        )
        tables.append(("mask: new masked bytes", sizes, rows, "GB/s"))
    if "mask-inplace" in only:
        rows = throughput_rows(
            mask_inplace_implementations(compiled),
            lambda prepare, size: with_size(prepare(bytearray(payload(size)), KEY), size),
            repeat,
            budget,
        )
        tables.append(("mask in place: bytearray", sizes, rows, "GB/s"))
    if "utf8" in only:
        for kind in SAMPLES:
            rows = throughput_rows(
                utf8_implementations(compiled),
                lambda prepare, size, kind=kind: with_size(prepare(text(kind, size)), len(text(kind, size))),
                repeat,
                budget,
            )
            tables.append((f"UTF-8 validation: {kind}", sizes, rows, "GB/s"))
    if "parse" in only:
        small, large = STREAMS[:1], STREAMS[1:]
        frame_rows, byte_rows = {}, {}
        for name, prepare in parse_implementations(compiled).items():
            frame_rows[name], byte_rows[name] = [], []
            for stream_name in STREAMS:
                data, count = stream(stream_name)
                seconds, result = best_fresh_time(lambda prepare=prepare, data=data: prepare(data), repeat)
                assert frames_parsed(result) == count, (name, stream_name)
                if stream_name in small:
                    frame_rows[name].append(count / seconds / 1e6)
                else:
                    byte_rows[name].append(len(data) / seconds / 1e9)
        tables.append(("parse: small masked text frames in one stream", small, frame_rows, "M frames/s"))
        tables.append(("parse: one large masked frame", large, byte_rows, "GB/s"))
    if "encode" in only:
        rows = throughput_rows(
            encode_implementations(compiled),
            lambda prepare, size: with_size(prepare(text("ascii", size)), len(text("ascii", size))),
            repeat,
            budget,
        )
        tables.append(("encode: one unmasked text frame", sizes, rows, "GB/s"))
    return tables


def best_of(passes: list[list[Table]]) -> list[Table]:
    """Cell by cell, the best of several whole passes (noise from other processes only slows)."""
    merged = []
    for tables in zip(*passes, strict=True):
        title, columns, _, unit = tables[0]
        rows = {
            name: [max(values) for values in zip(*(table[2][name] for table in tables), strict=True)]
            for name in tables[0][2]
        }
        merged.append((title, columns, rows, unit))
    return merged


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--passes", type=int, default=3, help="whole passes; each cell keeps its best")
    parser.add_argument("--repeat", type=int, default=5, help="runs per cell and pass; the best one counts")
    parser.add_argument("--budget", type=float, default=0.02, help="seconds per run")
    parser.add_argument("--only", nargs="+", choices=TABLES, default=list(TABLES))
    options = parser.parse_args(argv)
    try:
        compiled = import_compiled()
    except CompiledMissing as exc:
        sys.exit(str(exc))
    passes = [measure(compiled, options.only, options.repeat, options.budget) for _ in range(options.passes)]
    for title, columns, rows, unit in best_of(passes):
        print_table(title, columns, rows, unit)


if __name__ == "__main__":
    main()
