"""``python -m ws4redis.echo`` as a subprocess on a free port, for the tests that talk to it."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from ws4redis.embedded_redis import stop_process

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0


@dataclass
class EchoProcess:
    """A running echo server: its process, where it listens, and the file its log goes to."""

    proc: subprocess.Popen
    host: str
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}/ws/echo"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


def start_echo(tmp_path: Path, *args: str) -> EchoProcess:
    """Start the server on a free port and wait for its "listening on" line (fail loudly otherwise)."""
    log = tmp_path / f"echo-{time.monotonic_ns()}.log"
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ws4redis.echo", "--bind", "127.0.0.1:0", *args],
            cwd=ROOT,
            env=dict(os.environ),
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening on "):
        stop_echo(proc)
        pytest.fail(f"ws4redis.echo did not start: {line!r}\n{log.read_text()}", pytrace=False)
    host, _, port = line.split()[-1].rpartition(":")
    return EchoProcess(proc, host, int(port), log)


def stop_echo(proc: subprocess.Popen) -> None:
    stop_process(proc, STOP_TIMEOUT)
    proc.stdout.close()
