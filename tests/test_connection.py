"""ws4redis.connection: one factory for every WS4REDIS_CONNECTION form, real connections where possible."""

from __future__ import annotations

import threading

import pytest
import redis
from django.test import override_settings
from redis.connection import SSLConnection, UnixDomainSocketConnection

from ws4redis import connection as connections
from ws4redis import constants
from ws4redis.embedded_redis import EmbeddedRedis


@pytest.mark.parametrize(
    "config, connection_class, expected",
    [
        ({"host": "redis.local", "port": 6390, "db": 2, "password": None}, redis.Connection,
         {"host": "redis.local", "port": 6390, "db": 2}),
        ({"url": "redis://:pw@redis.local:6391/3"}, redis.Connection,
         {"host": "redis.local", "port": 6391, "db": 3, "password": "pw"}),
        ({"url": "rediss://redis.local:6392/0", "ssl_cert_reqs": "none"}, SSLConnection,
         {"host": "redis.local", "port": 6392, "ssl_cert_reqs": "none"}),
        ({"url": "unix:///run/redis.sock?db=4"}, UnixDomainSocketConnection,
         {"path": "/run/redis.sock", "db": 4}),
        ({"unix_socket_path": "/run/redis.sock", "host": "ignored", "port": 1, "db": 5},
         UnixDomainSocketConnection, {"path": "/run/redis.sock", "db": 5}),
        ({"host": "redis.local", "ssl": True, "ssl_ca_certs": "/etc/ca.pem"}, SSLConnection,
         {"host": "redis.local", "ssl_ca_certs": "/etc/ca.pem"}),
    ],
)
def test_every_connection_form_builds_the_right_pool(config, connection_class, expected):
    pool = connections.build_pool(config)
    assert isinstance(pool, redis.BlockingConnectionPool)
    assert pool.connection_class is connection_class
    assert {key: pool.connection_kwargs.get(key) for key in expected} == expected
    if connection_class is UnixDomainSocketConnection:
        assert "host" not in pool.connection_kwargs and "port" not in pool.connection_kwargs
    assert pool.max_connections == constants.DEFAULT_REDIS_POOL_SIZE


def test_pool_size_and_wait_are_configurable():
    pool = connections.build_pool({"host": "localhost", "max_connections": 3, "pool_timeout": 1.5})
    assert pool.max_connections == 3
    assert pool.timeout == 1.5
    assert "max_connections" not in pool.connection_kwargs


def test_the_shared_pool_is_reused_and_follows_setting_changes(redis_server):
    first = connections.get_connection_pool()
    assert connections.get_connection_pool() is first
    assert connections.get_redis_connection().connection_pool is first
    with override_settings(WS4REDIS_CONNECTION={"url": redis_server.url, "socket_timeout": 2}):
        other = connections.get_connection_pool()
        assert other is not first
        assert other.connection_kwargs["socket_timeout"] == 2
    assert connections.get_connection_pool() is first


def test_the_shared_client_talks_to_the_configured_redis(redis_client):
    client = connections.get_redis_connection()
    client.set("ws4redis-connection-test", b"ok")
    assert redis_client.get("ws4redis-connection-test") == b"ok"


def test_pubsub_pool_mirrors_the_target_without_the_cap(redis_server):
    with override_settings(WS4REDIS_CONNECTION={"url": redis_server.url, "max_connections": 1}):
        shared = connections.get_connection_pool()
        pubsub_pool = connections.get_pubsub_pool()
        assert pubsub_pool is not shared
        assert pubsub_pool is connections.get_pubsub_pool(shared)
        assert pubsub_pool.connection_kwargs["port"] == redis_server.port
        assert pubsub_pool.max_connections > 10_000
        pubsubs = [connections.create_pubsub() for _ in range(5)]
        try:
            for index, pubsub in enumerate(pubsubs):
                pubsub.subscribe(f"chan{index}")
                assert pubsub.get_message(timeout=5)["type"] == "subscribe"
            assert shared.max_connections == 1
        finally:
            for pubsub in pubsubs:
                pubsub.close()


def test_a_busy_shared_pool_makes_callers_wait_instead_of_failing(redis_server):
    with override_settings(WS4REDIS_CONNECTION={"url": redis_server.url, "max_connections": 1}):
        pool = connections.get_connection_pool()
        held = pool.get_connection()
        started, result = threading.Event(), []

        def publish():
            started.set()
            result.append(connections.get_redis_connection().publish("nobody", "x"))

        worker = threading.Thread(target=publish)
        worker.start()
        started.wait(5)
        assert not result  # still waiting for the only connection
        pool.release(held)
        worker.join(10)
        assert result == [0]


def test_a_full_pool_reports_a_clear_error_after_its_timeout(redis_server):
    with override_settings(WS4REDIS_CONNECTION={"url": redis_server.url, "max_connections": 1,
                                                "pool_timeout": 0.05}):
        pool = connections.get_connection_pool()
        held = pool.get_connection()
        try:
            with pytest.raises(redis.ConnectionError, match="No connection available"):
                connections.get_redis_connection().ping()
        finally:
            pool.release(held)


def test_unix_sockets_work_for_publishing_and_subscribing(tmp_path):
    socket_path = str(tmp_path / "redis.sock")
    with EmbeddedRedis(extra_args=["--unixsocket", socket_path, "--unixsocketperm", "700"]) as server:
        for config in ({"unix_socket_path": socket_path}, {"url": f"unix://{socket_path}?db=0"}):
            with override_settings(WS4REDIS_CONNECTION=config):
                pubsub = connections.create_pubsub()
                try:
                    pubsub.subscribe("over-unix")
                    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
                    assert connections.get_redis_connection().publish("over-unix", "hi") == 1
                    assert pubsub.get_message(timeout=5)["data"] == b"hi"
                finally:
                    pubsub.close()
        assert redis.Redis(host=server.host, port=server.port).ping()
    connections.close_connection_pools()


def test_close_connection_pools_forgets_every_pool():
    before = connections.get_connection_pool()
    connections.get_redis_connection().ping()
    connections.close_connection_pools()
    assert connections.get_connection_pool() is not before
