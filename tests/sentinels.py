"""Redis Sentinel for the tests: a master, a replica and three sentinels, all real redis-server processes.

Started from the same Debian binary as every other Redis of the suite, on free loopback ports,
with the failure detection shortened (down-after 1 s) so a failover takes seconds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import redis

from ws4redis.embedded_redis import (
    EmbeddedRedis,
    RedisUnavailable,
    find_redis_server,
    free_port,
    stop_process,
)

MASTER_NAME = "ws4redis-test"
DOWN_AFTER_MS = 1000


class SentinelSet:
    """``master``, ``replica`` and ``sentinels`` (their ports); :meth:`fail_over` kills the master."""

    def __init__(self, count: int = 3) -> None:
        self.count = count
        self.directory = Path(tempfile.mkdtemp(prefix="ws4redis-sentinel-"))
        self.master = EmbeddedRedis()
        self.replica: EmbeddedRedis | None = None
        self.sentinel_ports = [free_port() for _ in range(count)]
        self._processes: list[subprocess.Popen] = []

    @property
    def connection(self) -> dict:
        """WS4REDIS_CONNECTION for these sentinels."""
        return {"sentinels": [("127.0.0.1", port) for port in self.sentinel_ports],
                "master_name": MASTER_NAME, "db": 0}

    def start(self) -> SentinelSet:
        try:
            self.master.start()
            replica_of = ["--replicaof", "127.0.0.1", str(self.master.port)]
            self.replica = EmbeddedRedis(extra_args=replica_of).start()
            for port in self.sentinel_ports:
                config = self.directory / f"sentinel-{port}.conf"
                config.write_text("\n".join([
                    f"port {port}", "bind 127.0.0.1", f"dir {self.directory}",
                    f"logfile {self.directory / f'sentinel-{port}.log'}",
                    f"sentinel monitor {MASTER_NAME} 127.0.0.1 {self.master.port} 2",
                    f"sentinel down-after-milliseconds {MASTER_NAME} {DOWN_AFTER_MS}",
                    f"sentinel failover-timeout {MASTER_NAME} 5000",
                    f"sentinel parallel-syncs {MASTER_NAME} 1", "",
                ]))
                self._processes.append(subprocess.Popen([find_redis_server(), str(config), "--sentinel"],
                                                        stdin=subprocess.DEVNULL))
        except RedisUnavailable as exc:
            self.stop()
            pytest.fail(f"the Sentinel tests need redis-server: {exc}", pytrace=False)
        self.wait_until(lambda: all(self._knows_everyone(port) for port in self.sentinel_ports),
                        "the sentinels to find the replica and each other")
        return self

    def _knows_everyone(self, port: int) -> bool:
        try:
            client = redis.Redis(port=port, socket_timeout=1)
            return (len(client.sentinel_slaves(MASTER_NAME)) == 1
                    and len(client.sentinel_sentinels(MASTER_NAME)) == self.count - 1)
        except redis.RedisError:
            return False

    def master_port(self) -> int | None:
        """The master's port as the first sentinel that answers names it."""
        for port in self.sentinel_ports:
            try:
                sentinel = redis.Redis(port=port, socket_timeout=1)
                address = sentinel.sentinel_get_master_addr_by_name(MASTER_NAME)
            except redis.RedisError:
                continue
            if address:
                return int(address[1])
        return None

    def fail_over(self) -> float:
        """Kill the master; return the seconds until the sentinels name the replica instead."""
        started = time.monotonic()
        self.master.stop()
        self.wait_until(lambda: self.master_port() == self.replica.port,
                        "the sentinels to promote the replica", limit=30)
        return time.monotonic() - started

    @staticmethod
    def wait_until(predicate, what: str, limit: float = 20.0) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"waited {limit} s for {what}", pytrace=False)
            time.sleep(0.1)

    def stop(self) -> None:
        for process in self._processes:
            stop_process(process)
        self._processes.clear()
        for server in (self.replica, self.master):
            if server is not None:
                server.__exit__(None, None, None)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SentinelSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
