"""``ws4redis-bench --compare``: several servers measured the same way, interleaved, in one table.

Runs on one machine drift (other work, frequency scaling), so a comparison only means something
when its targets are measured side by side: round 1 runs every target once, then round 2, and so
on, and the table shows each target's median over its rounds.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence

from ws4redis.bench.runner import Options

__all__ = ["CompareTarget", "format_table", "median_run", "parse_target", "run_interleaved", "summarize"]


@dataclasses.dataclass(frozen=True)
class CompareTarget:
    """One server of a comparison: a name for the table, its URL, its pid for the CPU figures."""

    name: str
    url: str
    pid: int | None = None


def parse_target(text: str) -> CompareTarget:
    """``NAME=URL`` or ``NAME=URL@PID``; ValueError saying what is expected."""
    name, equals, rest = text.partition("=")
    if not equals or not name or not rest:
        raise ValueError(f"--compare takes NAME=URL or NAME=URL@PID, got {text!r}")
    url, at, pid = rest.rpartition("@")
    if not at or not pid.isdigit():
        return CompareTarget(name, rest)
    return CompareTarget(name, url, int(pid))


def run_interleaved(targets: Sequence[CompareTarget], options: Options, rounds: int,
                    run: Callable[[Options], dict]) -> dict[str, list[dict]]:
    """Every target once per round, in order, with ``options`` pointed at it; the reports by name."""
    reports: dict[str, list[dict]] = {target.name: [] for target in targets}
    for _ in range(rounds):
        for target in targets:
            pointed = dataclasses.replace(options, url=target.url, server_pid=target.pid)
            reports[target.name].append(run(pointed))
    return reports


def _median(values: list[float | None]) -> float | None:
    present = [value for value in values if value is not None]
    return statistics.median(present) if present else None


def summarize(reports: dict[str, list[dict]]) -> dict[str, dict]:
    """Per target: medians of the figures over its rounds, loss and errors summed."""
    summary = {}
    for name, runs in reports.items():
        servers = [run.get("server") or {} for run in runs]
        cpu = [server.get("cpu_per_delivered_message_us") for server in servers]
        rss = [server["rss_per_connection_bytes"] / 1024 if "rss_per_connection_bytes" in server else None
               for server in servers]
        summary[name] = {
            "rounds": len(runs),
            "delivered_per_second": _median([run["delivered_per_second"] for run in runs]),
            "server_cpu_us_per_delivery": _median(cpu),
            "p50_ms": _median([run["latency_ms"].get("p50") for run in runs]),
            "p99_ms": _median([run["latency_ms"].get("p99") for run in runs]),
            "rss_per_connection_kib": _median(rss),
            "lost": sum(run["lost"] for run in runs),
            "expected": sum(run["expected"] for run in runs),
            "errors": sum(run["errors"] for run in runs),
        }
    return summary


def median_run(runs: list[dict]) -> dict:
    """The run whose delivery rate is the median of the target's (the one to draw)."""
    ordered = sorted(runs, key=lambda run: run["delivered_per_second"])
    return ordered[(len(ordered) - 1) // 2]


def format_table(summary: dict[str, dict], options: Options) -> str:
    """The comparison as a text table, one row per target."""
    def cell(value: float | None, digits: int) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    lines = [
        f"ws4redis-bench --compare: {options.mode}, {options.clients:,} clients, {options.messages:,} "
        f"messages of {options.size} bytes, rate {options.rate or 'flat out'}; medians of interleaved rounds",
        f"{'target':<20} {'msgs/s':>12} {'CPU us/deliv':>13} {'p50 ms':>9} {'p99 ms':>9} {'KiB/conn':>9} "
        f"{'lost':>14} {'errors':>7}",
    ]
    for name, row in summary.items():
        lines.append(
            f"{name:<20} {cell(row['delivered_per_second'], 0):>12} "
            f"{cell(row['server_cpu_us_per_delivery'], 2):>13} {cell(row['p50_ms'], 2):>9} "
            f"{cell(row['p99_ms'], 2):>9} {cell(row['rss_per_connection_kib'], 1):>9} "
            f"{row['lost']:>6,} of {row['expected']:<6,} {row['errors']:>7}"
        )
    return "\n".join(lines)
