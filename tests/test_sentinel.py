"""Redis Sentinel behind WS4REDIS_CONNECTION, on real sentinels: delivery goes on after a failover.

The master, its replica and three sentinels are redis-server processes (tests/sentinels.py).
A server finds the master through the sentinels; when the master dies and the sentinels promote
the replica, the hub and the publishing pool reconnect to the new master by themselves, with no
restart, and websockets that stayed open receive what is published there.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured

from tests import servers
from tests.polling import wait_until
from tests.sentinels import SentinelSet
from tests.servers import Site, serving
from tests.servers import ws_connect as ws
from ws4redis.redis_config import check_connection_settings

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi")]


@pytest.fixture
def sentinels() -> Iterator[SentinelSet]:
    with SentinelSet() as sentinels:
        yield sentinels


def subscribers_of(port: int, channel: str) -> int:
    try:
        return redis.Redis(port=port, socket_timeout=2).pubsub_numsub(channel)[0][1]
    except redis.RedisError:
        return -1


@pytest.mark.parametrize("kind", KINDS)
def test_delivery_goes_on_after_a_failover_without_a_restart(sentinels, kind):
    site = Site(sentinels.master.url, {"WS4REDIS_CONNECTION": repr(sentinels.connection)})
    channel = "broadcast:failover"
    try:
        with serving(servers.STARTERS[kind](site)) as server, \
                ws(server, "/ws/failover?subscribe-broadcast") as listener, \
                ws(server, "/ws/failover?publish-broadcast") as talker:
            # Through the sentinels to the master: the hub subscribed there, the talker publishes there.
            wait_until(lambda: subscribers_of(sentinels.master.port, channel) == 1,
                       what="the hub subscribed on the master")
            talker.send("before")
            assert listener.recv(timeout=10) == "before"
            # Replication is asynchronous: on a busy machine the replica may not have the kept
            # message yet when the master dies. This test is about what follows, so it waits.
            wait_until(lambda: redis.Redis(port=sentinels.replica.port).get(channel) == b"before",
                       what="the replica to have the kept message")
            took = sentinels.fail_over()
            promoted = time.monotonic()
            new_master = sentinels.replica.port
            wait_until(lambda: subscribers_of(new_master, channel) == 1, limit=30,
                       what="the hub subscribed on the promoted replica")
            resubscribed = time.monotonic()
            # Back on Redis, the hub re-sends the message kept under the channel (replicated with it).
            assert listener.recv(timeout=10) == "before"
            redis.Redis(port=new_master).publish(channel, "after, from Redis")
            assert listener.recv(timeout=10) == "after, from Redis"
            # The talker's websocket may have been closed with 1013 while Redis was away; a new one
            # publishes through the pool, which finds the new master as well.
            with ws(server, "/ws/failover?publish-broadcast") as again:
                again.send("after, from a websocket")
                assert listener.recv(timeout=10) == "after, from a websocket"
            assert redis.Redis(port=new_master).get(channel) == b"after, from a websocket"
            print(f"{kind}: sentinels promoted the replica {took:.1f} s after the master died; "
                  f"the hub was subscribed there {resubscribed - promoted:.1f} s later")
            assert not server.tracebacks(), server.tracebacks()
    finally:
        site.cleanup()


@pytest.mark.parametrize(("connection", "message"), [
    ({"sentinels": [], "master_name": "m"}, "must be a list of (host, port) pairs"),
    ({"sentinels": [("127.0.0.1", "26379")], "master_name": "m"}, "must be a list of (host, port) pairs"),
    ({"sentinels": [("127.0.0.1", 26379)]}, "['master_name'] must name the master"),
    ({"sentinels": [("127.0.0.1", 26379)], "master_name": "m", "host": "10.0.0.1"}, "leave out the address"),
    ({"sentinels": [("127.0.0.1", 26379)], "master_name": "m", "sentinel_kwargs": 3}, "sentinel_kwargs"),
])
def test_a_bad_sentinel_setting_names_what_is_wrong(connection, message):
    with pytest.raises(ImproperlyConfigured) as error:
        check_connection_settings(connection)
    assert "WS4REDIS_CONNECTION" in str(error.value) and message in str(error.value)


def test_the_bench_tool_publishes_to_the_master_the_sentinels_name(sentinels):
    from tests.test_bench_tool import bench

    site = Site(sentinels.master.url, {"WS4REDIS_CONNECTION": repr(sentinels.connection)})
    hosts = [arg for host, port in sentinels.connection["sentinels"]
             for arg in ("--sentinel", f"{host}:{port}")]
    try:
        with serving(servers.gevent_server(site)) as server:
            report, _ = bench(f"ws://127.0.0.1:{server.port}/ws/bench?subscribe-broadcast", *hosts,
                              "--master-name", sentinels.connection["master_name"], "-n", "10", "-m", "100",
                              "--quiet")
            assert report["delivered"] == report["expected"] == 10 * 100, report
            assert report["lost"] == 0 and not report["errors"], report
    finally:
        site.cleanup()
