"""Redis Cluster for the tests: three masters with a replica each, all real redis-server processes.

Started from the same Debian binary as every other Redis of the suite, on free loopback ports
below 55536 (the cluster bus listens on port + 10000), joined with ``redis-cli --cluster create``
and with the failure detection shortened (cluster-node-timeout 1 s) so a failover takes seconds.
One cluster serves a whole test session; tests that move slots or kill a master put it back.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time

import pytest
import redis

from ws4redis.embedded_redis import EmbeddedRedis, RedisUnavailable

NODE_TIMEOUT_MS = 1000
SLOTS = 16384


def cluster_port() -> int:
    """A free port whose cluster-bus twin (port + 10000) is free too."""
    for _ in range(200):
        port = random.randrange(20000, 45000)
        try:
            with socket.socket() as first, socket.socket() as second:
                first.bind(("127.0.0.1", port))
                second.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free pair of ports (port, port + 10000) found below 55536")


def _cli() -> str:
    found = shutil.which("redis-cli")
    if found is None:
        pytest.fail("the Redis Cluster tests need redis-cli (Debian's redis-tools, installed with "
                    "redis-server)", pytrace=False)
    return found


class RedisClusterSet:
    """``masters`` and ``replicas`` (EmbeddedRedis); slot moves and failovers for the tests."""

    def __init__(self, masters: int = 3) -> None:
        self.nodes = [
            EmbeddedRedis(port=cluster_port(), extra_args=[
                "--cluster-enabled", "yes", "--cluster-node-timeout", str(NODE_TIMEOUT_MS),
                "--cluster-config-file", f"nodes-{index}.conf", "--cluster-replica-validity-factor", "0",
            ])
            for index in range(2 * masters)
        ]
        self.masters_wanted = masters

    @property
    def urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{node.port}" for node in self.nodes[:self.masters_wanted]]

    @property
    def connection(self) -> dict:
        """WS4REDIS_CONNECTION for this cluster."""
        return {"cluster": self.urls}

    def start(self) -> RedisClusterSet:
        try:
            for node in self.nodes:
                node.start()
        except RedisUnavailable as exc:
            self.stop()
            pytest.fail(f"the Redis Cluster tests need redis-server: {exc}", pytrace=False)
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [_cli(), "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        )
        if created.returncode != 0:
            self.stop()
            pytest.fail(f"redis-cli --cluster create failed: {created.stdout[-2000:]}{created.stderr}",
                        pytrace=False)
        self.wait_until(self.healthy, "the cluster to be ok on every node")
        return self

    def client(self, port: int) -> redis.Redis:
        return redis.Redis(port=port, socket_timeout=5)

    def healthy(self) -> bool:
        try:
            return all(
                self.client(node.port).cluster("info")["cluster_state"] == "ok"
                for node in self.nodes if node.process is not None
            ) and len(self.master_ports()) == self.masters_wanted
        except redis.RedisError:
            return False

    def shards(self) -> dict[int, list[tuple[int, int]]]:
        """Master port -> the slot ranges it owns, as a live node sees it."""
        for node in self.nodes:
            if node.process is None:
                continue
            try:
                reply = self.client(node.port).execute_command("CLUSTER SLOTS")
            except redis.RedisError:
                continue
            owned: dict[int, list[tuple[int, int]]] = {}
            for first, last, master, *_ in reply:
                owned.setdefault(int(master[1]), []).append((int(first), int(last)))
            return owned
        return {}

    def master_ports(self) -> list[int]:
        return sorted(self.shards())

    def master_of(self, key: str) -> int:
        slot = self.client(self.nodes[0].port if self.nodes[0].process else self.nodes[1].port) \
            .cluster("keyslot", key)
        for port, ranges in self.shards().items():
            if any(first <= slot <= last for first, last in ranges):
                return port
        raise AssertionError(f"no master owns slot {slot}")

    def node_id(self, port: int) -> str:
        return self.client(port).cluster("myid").decode()

    def reshard(self, source: int, target: int, slots: int) -> float:
        """Move ``slots`` slots from the master on ``source`` to the one on ``target``; seconds it took."""
        started = time.monotonic()
        moved = subprocess.run(
            [_cli(), "--cluster", "reshard", f"127.0.0.1:{source}", "--cluster-from", self.node_id(source),
             "--cluster-to", self.node_id(target), "--cluster-slots", str(slots), "--cluster-yes",
             "--cluster-pipeline", "100"],
            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL,
        )
        if moved.returncode != 0:
            pytest.fail(f"redis-cli --cluster reshard failed: {moved.stdout[-2000:]}{moved.stderr}",
                        pytrace=False)
        self.wait_until(self.healthy, "the cluster to be ok after resharding")
        return time.monotonic() - started

    def move_slot(self, slot: int, target: int) -> None:
        """Move one slot, keys included, to the master on ``target``, the way redis-cli does it."""
        source = next(port for port, ranges in self.shards().items()
                      if any(first <= slot <= last for first, last in ranges))
        if source == target:
            return
        source_id, target_id = self.node_id(source), self.node_id(target)
        self.client(target).cluster("setslot", slot, "importing", source_id)
        self.client(source).cluster("setslot", slot, "migrating", target_id)
        while True:
            keys = self.client(source).cluster("getkeysinslot", slot, 100)
            if not keys:
                break
            self.client(source).execute_command("MIGRATE", "127.0.0.1", target, "", 0, 5000, "KEYS", *keys)
        for port in self.master_ports():
            self.client(port).cluster("setslot", slot, "node", target_id)
        self.wait_until(lambda: self.owner_of_slot(slot) == target, "the slot to be owned by its target")

    def owner_of_slot(self, slot: int) -> int | None:
        return next((port for port, ranges in self.shards().items()
                     if any(first <= slot <= last for first, last in ranges)), None)

    def node(self, port: int) -> EmbeddedRedis:
        return next(node for node in self.nodes if node.port == port)

    def kill_master(self, port: int) -> float:
        """Stop the master on ``port``; return the seconds until its replica has taken its slots."""
        started = time.monotonic()
        self.node(port).stop()
        self.wait_until(lambda: port not in self.master_ports() and self.healthy(),
                        "a replica to take over the killed master's slots", limit=60)
        return time.monotonic() - started

    def restore(self, port: int) -> None:
        """Bring a killed node back; it rejoins as a replica of the master that replaced it."""
        self.node(port).start()
        # A node back from the dead first claims its old slots until gossip corrects it: seconds
        # when idle, far longer on two busy cores, so the margin is wide (as for the failover).
        self.wait_until(self.healthy, "the cluster to be ok with the node back", limit=90)

    @staticmethod
    def wait_until(predicate, what: str, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while not predicate():
            if time.monotonic() > deadline:
                pytest.fail(f"waited {limit} s for {what}", pytrace=False)
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.__exit__(None, None, None)

    def __enter__(self) -> RedisClusterSet:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
