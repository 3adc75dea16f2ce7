"""Real servers for the end-to-end benchmarks: a private redis-server and ws4redis servers.

``benchmarks/conftest.py`` belongs to the micro-benchmarks, so the fixtures
of ``test_end_to_end.py`` live here. Redis is an
:class:`~ws4redis.embedded_redis.EmbeddedRedis` of its own; the servers are
started through ``tests/servers.py`` (the same helpers the integration tests
use) with the test project's settings pointed at that Redis.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from tests.servers import ServerProcess, Site, free_port, serving, uwsgi
from ws4redis.bench.cli import event_loop_factory
from ws4redis.bench.runner import Options, Run
from ws4redis.embedded_redis import EmbeddedRedis, RedisUnavailable


@contextmanager
def private_redis() -> Iterator[EmbeddedRedis]:
    """A redis-server of the benchmark's own; fails loudly when none can be started."""
    try:
        server = EmbeddedRedis().start()
    except RedisUnavailable as exc:
        pytest.fail(f"the end-to-end benchmarks need a redis-server: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


def gevent_server(site: Site) -> ServerProcess:
    """ws4redis's production server, one process: ``python -m ws4redis serve``."""
    port = free_port()
    args = [sys.executable, "-m", "ws4redis", "serve", "--bind", f"127.0.0.1:{port}"]
    return ServerProcess("gevent", args, site, port)


def uwsgi_server(site: Site) -> ServerProcess:
    """ws4redis under uWSGI with gevent, one worker (the helper of tests/servers.py)."""
    return uwsgi(site, gevent=2000)


SERVERS = {"gevent": gevent_server, "uwsgi": uwsgi_server}


@contextmanager
def running(kind: str, redis_url: str, overrides: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """Start a ``kind`` server of the test project on ``redis_url``; always stop it and clean up.

    ``overrides`` are settings of the site, as ``tests.servers.Site`` takes them.
    """
    site = Site(redis_url, overrides)
    try:
        with serving(SERVERS[kind](site)) as server:
            yield server
    finally:
        site.cleanup()


def run_bench(options: Options) -> dict:
    """One ws4redis-bench run in this process, on the event loop the command line would pick."""
    factory, _ = event_loop_factory(disable_uvloop=False)
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(Run(options).execute())
