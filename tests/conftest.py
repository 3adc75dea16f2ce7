"""Shared fixtures: a real redis-server started by the suite on a free port."""

from __future__ import annotations

import os

import pytest

from ws4redis.embedded_redis import EmbeddedRedis, RedisUnavailable


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the whole session; fails loudly when none can be started."""
    try:
        server = EmbeddedRedis().start()
    except RedisUnavailable as exc:
        pytest.fail(f"the test suite needs a redis-server: {exc}", pytrace=False)
    os.environ["WS4REDIS_TEST_REDIS_URL"] = server.url
    yield server
    server.stop()


@pytest.fixture
def redis_client(redis_server):
    """A client of the suite's own redis-server, emptied before each test."""
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.flushall()
    yield client
    client.close()
