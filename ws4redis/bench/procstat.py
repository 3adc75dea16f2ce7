"""Resource usage of a server process tree, read from /proc (Linux).

The benchmark reports a server's memory per connection and CPU time per
delivered message. A server started with ``--workers N`` is a parent plus N
forked children, so every figure sums the process and all its live
descendants: ``cutime``/``cstime`` would only count children that have
already exited and been waited for.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

Number = TypeVar("Number", int, float)
_PROC = Path("/proc")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ProcessGone(RuntimeError):
    """The observed server process does not exist (any more)."""


def _stat_fields(pid: int) -> list[str]:
    """Fields of /proc/PID/stat after the command name (which may contain spaces)."""
    text = (_PROC / str(pid) / "stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it, parents first."""
    children: dict[int, list[int]] = {}
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int(_stat_fields(int(entry.name))[1])
        except (OSError, ValueError, IndexError):
            continue  # exited while we looked
        children.setdefault(parent, []).append(int(entry.name))
    tree = [pid]
    for current in tree:
        tree.extend(children.get(current, ()))
    return tree


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (VmRSS of /proc/PID/status)."""
    for line in (_PROC / str(pid) / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # kernel threads and zombies have no VmRSS line


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of one process (utime + stime of /proc/PID/stat)."""
    fields = _stat_fields(pid)
    # After the command name: state is field 0, utime field 11, stime field 12.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


class ProcessTree:
    """A server process and its workers, sampled as one."""

    def __init__(self, pid: int) -> None:
        if not (_PROC / str(pid)).exists():
            raise ProcessGone(f"--server-pid {pid}: no such process")
        self.pid = pid

    def _members(self) -> list[int]:
        if not (_PROC / str(self.pid)).exists():
            raise ProcessGone(f"server process {self.pid} exited during the benchmark")
        return descendants(self.pid)

    def rss_bytes(self) -> int:
        """Total resident memory of the tree."""
        return sum(_safe(rss_bytes, member) for member in self._members())

    def cpu_seconds(self) -> float:
        """Total CPU time consumed so far by the live members of the tree."""
        return sum(_safe(cpu_seconds, member) for member in self._members())

    def process_count(self) -> int:
        return len(self._members())


def _safe(read: Callable[[int], Number], pid: int) -> Number:
    """Read one member, counting a member that exited meanwhile as zero."""
    try:
        return read(pid)
    except (OSError, ValueError, IndexError):
        return 0
