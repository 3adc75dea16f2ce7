"""Redis connections, built in one place from WS4REDIS_CONNECTION.

Two kinds of connection with different lifetimes:

* Short commands (PUBLISH, SET, GET) borrow a connection from one shared,
  per-process ``BlockingConnectionPool``: a burst of publishers waits for a
  free connection instead of failing with "Too many connections".
* Every websocket holds a pub/sub connection for its whole life. Those come
  from a separate pool with the same target and no practical cap, so the
  number of open websockets is limited by file descriptors, not by a pool
  size meant for short commands.

redis-py pools notice a fork and start afresh in the child, so pre-forking
servers (uWSGI) get per-process connections without extra work.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections.abc import Mapping
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
from redis.connection import SSLConnection, UnixDomainSocketConnection

from ws4redis import constants
from ws4redis import settings as private_settings

# WS4REDIS_CONNECTION keys that configure the pool rather than each connection.
POOL_KEYS = {"max_connections": "max_connections", "pool_timeout": "timeout"}
# Keys that only make sense for TCP connections, dropped for unix sockets.
TCP_ONLY_KEYS = ("host", "port", "ssl", "socket_keepalive", "socket_keepalive_options")

_lock = threading.Lock()
_shared_pools: dict[str, redis.ConnectionPool] = {}
_pubsub_pools: weakref.WeakKeyDictionary[redis.ConnectionPool, redis.ConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def build_pool(config: Mapping[str, Any]) -> redis.ConnectionPool:
    """A new bounded pool for the connection described by ``config`` (a WS4REDIS_CONNECTION dict)."""
    options = dict(config)
    pool_options = {
        "max_connections": constants.DEFAULT_REDIS_POOL_SIZE,
        "timeout": constants.DEFAULT_REDIS_POOL_TIMEOUT,
    }
    for key, pool_key in POOL_KEYS.items():
        if key in options:
            pool_options[pool_key] = options.pop(key)
    url = options.pop("url", None)
    if url is not None:
        return redis.BlockingConnectionPool.from_url(url, **options, **pool_options)
    socket_path = options.pop("unix_socket_path", None)
    if socket_path is not None:
        for key in TCP_ONLY_KEYS:
            options.pop(key, None)
        return redis.BlockingConnectionPool(
            connection_class=UnixDomainSocketConnection, path=socket_path, **options, **pool_options
        )
    connection_class = SSLConnection if options.pop("ssl", False) else redis.Connection
    return redis.BlockingConnectionPool(connection_class=connection_class, **options, **pool_options)


def _config_key(config: Mapping[str, Any]) -> str:
    return repr(sorted(config.items(), key=lambda item: item[0]))


def get_connection_pool() -> redis.ConnectionPool:
    """The process-wide pool for short commands, for the current WS4REDIS_CONNECTION."""
    config = private_settings.WS4REDIS_CONNECTION
    key = _config_key(config)
    pool = _shared_pools.get(key)
    if pool is None:
        with _lock:
            pool = _shared_pools.get(key)
            if pool is None:
                pool = _shared_pools[key] = build_pool(config)
    return pool


def get_redis_connection() -> redis.Redis:
    """A client on the shared pool: use it for PUBLISH, SET and GET, never for SUBSCRIBE."""
    return redis.Redis(connection_pool=get_connection_pool())


def get_pubsub_pool(pool: redis.ConnectionPool | None = None) -> redis.ConnectionPool:
    """The uncapped pool for pub/sub connections reaching the same server as ``pool``.

    ``pool`` defaults to the shared pool; passing another one (from a client
    handed to a subscriber) keeps subscriptions on that client's server.
    """
    pool = pool if pool is not None else get_connection_pool()
    with _lock:
        pubsub_pool = _pubsub_pools.get(pool)
        if pubsub_pool is None:
            pubsub_pool = _pubsub_pools[pool] = redis.ConnectionPool(
                connection_class=pool.connection_class, max_connections=sys.maxsize, **pool.connection_kwargs
            )
    return pubsub_pool


def create_pubsub(client: redis.Redis | None = None) -> redis.client.PubSub:
    """A PubSub holding its own connection, not counted against the shared pool's cap."""
    pool = client.connection_pool if client is not None else None
    return redis.Redis(connection_pool=get_pubsub_pool(pool)).pubsub()


def close_connection_pools() -> None:
    """Disconnect and forget every pool this module made.

    The pools are keyed by WS4REDIS_CONNECTION and live as long as the
    process; this lets code that points the setting at a short-lived server
    (tests) drop the pools of a server that is gone.
    """
    with _lock:
        pools = [*_shared_pools.values(), *_pubsub_pools.values()]
        _shared_pools.clear()
        _pubsub_pools.clear()
    for pool in pools:
        pool.disconnect()


def _redacted(config: Any) -> Any:
    """``config`` with passwords masked, fit for an error message."""
    if not isinstance(config, Mapping):
        return config
    shown = dict(config)
    if shown.get("password"):
        shown["password"] = "***"
    url = shown.get("url")
    if isinstance(url, str) and "@" in url:
        scheme, _, rest = url.partition("://")
        shown["url"] = f"{scheme}://***@{rest.rpartition('@')[2]}"
    return shown


def check_connection_settings(config: Any) -> None:
    """Raise ImproperlyConfigured when ``config`` cannot describe a Redis connection.

    Nothing is sent over the network: the options are handed to redis-py's
    connection class as a dry run, so an unknown or mistyped key is caught at
    start-up rather than at the first websocket.
    """
    name = "WS4REDIS_CONNECTION"
    if not isinstance(config, Mapping):
        raise ImproperlyConfigured(f"{name} must be a dict of redis-py connection options, got {config!r}")
    expectations = {
        "host": (lambda v: isinstance(v, str) and v, "a non-empty string"),
        "port": (lambda v: isinstance(v, int) and not isinstance(v, bool) and 0 < v < 65536,
                 "an integer between 1 and 65535"),
        "db": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0"),
        "password": (lambda v: v is None or isinstance(v, str), "a string or None"),
        "username": (lambda v: v is None or isinstance(v, str), "a string or None"),
        "url": (lambda v: isinstance(v, str) and v.partition("://")[0] in ("redis", "rediss", "unix"),
                "a redis://, rediss:// or unix:// URL"),
        "unix_socket_path": (lambda v: isinstance(v, str) and v, "a non-empty path"),
        "ssl": (lambda v: isinstance(v, bool), "True or False"),
        "max_connections": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
                            "an integer > 0"),
    }
    for key, (valid, expected) in expectations.items():
        if key in config and not valid(config[key]):
            shown = f"a {type(config[key]).__name__}" if key == "password" else repr(config[key])
            raise ImproperlyConfigured(f"{name}[{key!r}] must be {expected}, got {shown}")
    if not config.get("ssl") and "url" not in config:
        ssl_keys = sorted(key for key in config if str(key).startswith("ssl_"))
        if ssl_keys:
            raise ImproperlyConfigured(
                f"{name} has {', '.join(ssl_keys)} but not ssl=True: {_redacted(config)!r}"
            )
    try:
        pool = build_pool(config)
        pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise ImproperlyConfigured(
            f"{name} is not usable by redis-py ({exc}): {_redacted(config)!r}"
        ) from exc
