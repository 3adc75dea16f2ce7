"""WS4REDIS_CONNECTION as redis-py understands it: checked at start-up, turned into a pool.

Apart from ``ws4redis.connection`` (which keeps the pools of a process) so
that ``ws4redis.settings`` can check the setting without importing the
module that reads the settings.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis
from django.core.exceptions import ImproperlyConfigured
from redis.connection import SSLConnection, UnixDomainSocketConnection
from redis.sentinel import Sentinel, SentinelConnectionPool

from ws4redis import constants
from ws4redis.redis_cluster import check_cluster_settings, is_cluster, node_options

__all__ = ["SentinelBlockingConnectionPool", "build_pool", "check_connection_settings"]

# WS4REDIS_CONNECTION keys that configure the pool rather than each connection.
POOL_KEYS = {"max_connections": "max_connections", "pool_timeout": "timeout"}
# Keys that only make sense for TCP connections, dropped for unix sockets.
TCP_ONLY_KEYS = ("host", "port", "ssl", "socket_keepalive", "socket_keepalive_options")
# Keys of the Sentinel form of WS4REDIS_CONNECTION that are not options of each connection.
SENTINEL_KEYS = ("sentinels", "master_name", "sentinel_kwargs")
# Keys that name one server, which the Sentinel form leaves to the sentinels.
ONE_SERVER_KEYS = ("host", "port", "url", "unix_socket_path")


class SentinelBlockingConnectionPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """The master the sentinels name, through a pool that waits for a free connection as ws4redis' others do.

    Every new connection asks the sentinels for the master's address, so after a failover the
    connections made to replace the broken ones reach the new master, with no restart.
    """


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
    if "sentinels" in options:
        sentinels = [(str(host), int(port)) for host, port in options.pop("sentinels")]
        master_name = options.pop("master_name")
        sentinel_kwargs = {"socket_timeout": constants.SENTINEL_SOCKET_TIMEOUT,
                           **(options.pop("sentinel_kwargs", None) or {})}
        manager = Sentinel(sentinels, sentinel_kwargs=sentinel_kwargs)
        return SentinelBlockingConnectionPool(master_name, manager, **options, **pool_options)
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
    if "sentinels" in config:
        _check_sentinels(config)
    if is_cluster(config):
        check_cluster_settings(config)
    for key, (valid, expected) in expectations.items():
        if key in config and not valid(config[key]):
            shown = f"a {type(config[key]).__name__}" if key == "password" else repr(config[key])
            raise ImproperlyConfigured(f"{name}[{key!r}] must be {expected}, got {shown}")
    rediss_nodes = is_cluster(config) and node_options(config).get("ssl")
    if not config.get("ssl") and "url" not in config and not rediss_nodes:
        ssl_keys = sorted(key for key in config if str(key).startswith("ssl_"))
        if ssl_keys:
            raise ImproperlyConfigured(
                f"{name} has {', '.join(ssl_keys)} but not ssl=True: {_redacted(config)!r}"
            )
    try:
        if is_cluster(config):
            connection_class = SSLConnection if node_options(config).get("ssl") else redis.Connection
            connection_class(**{key: value for key, value in node_options(config).items() if key != "ssl"})
        else:
            pool = build_pool(config)
            pool.connection_class(**pool.connection_kwargs)
    except (TypeError, ValueError, redis.RedisError) as exc:
        raise ImproperlyConfigured(
            f"{name} is not usable by redis-py ({exc}): {_redacted(config)!r}"
        ) from exc


def _check_sentinels(config: Mapping[str, Any]) -> None:
    """The Sentinel form: ``sentinels`` as (host, port) pairs, a ``master_name``, no server of its own."""
    name = "WS4REDIS_CONNECTION"
    sentinels = config["sentinels"]
    pairs = isinstance(sentinels, (list, tuple)) and sentinels and all(
        isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str) and pair[0]
        and isinstance(pair[1], int) and not isinstance(pair[1], bool) and 0 < pair[1] < 65536
        for pair in sentinels
    )
    if not pairs:
        raise ImproperlyConfigured(
            f"{name}['sentinels'] must be a list of (host, port) pairs, such as [('10.0.0.1', 26379)], "
            f"got {sentinels!r}"
        )
    master_name = config.get("master_name")
    if not isinstance(master_name, str) or not master_name:
        raise ImproperlyConfigured(
            f"{name}['master_name'] must name the master the sentinels watch (their 'sentinel monitor "
            f"<name>'), got {master_name!r}"
        )
    clashing = sorted(key for key in ONE_SERVER_KEYS if key in config)
    if clashing:
        raise ImproperlyConfigured(
            f"{name} has 'sentinels' and {', '.join(map(repr, clashing))}: with sentinels the master is "
            "found through them, so leave out the address of a server"
        )
    extra = config.get("sentinel_kwargs")
    if extra is not None and not isinstance(extra, Mapping):
        raise ImproperlyConfigured(f"{name}['sentinel_kwargs'] must be a dict of options, got {extra!r}")


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
