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
from redis.cluster import RedisCluster

from ws4redis import settings as private_settings
from ws4redis.redis_cluster import (
    CLUSTER_NEEDS_HUB,
    build_cluster_client,
    fetch_values,
    is_cluster,
    is_cluster_client,
)
from ws4redis.redis_config import build_pool
from ws4redis.redis_errors import UNAVAILABLE, BrokerUnavailable

__all__ = [
    "build_pool", "close_connection_pools", "create_pubsub", "fetch_values", "get_connection_pool",
    "get_pubsub_pool", "get_redis_connection",
]

_lock = threading.Lock()
_shared_pools: dict[str, redis.ConnectionPool] = {}
_clusters: dict[str, RedisCluster] = {}
_pubsub_pools: weakref.WeakKeyDictionary[redis.ConnectionPool, redis.ConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def _config_key(config: Mapping[str, Any]) -> str:
    return repr(sorted(config.items(), key=lambda item: item[0]))


def get_connection_pool() -> redis.ConnectionPool:
    """The process-wide pool for short commands, for the current WS4REDIS_CONNECTION."""
    config = private_settings.WS4REDIS_CONNECTION
    if is_cluster(config):
        raise ImproperlyConfigured("WS4REDIS_CONNECTION names a Redis Cluster, which has no single "
                                   "connection pool: use get_redis_connection()")
    key = _config_key(config)
    pool = _shared_pools.get(key)
    if pool is None:
        with _lock:
            pool = _shared_pools.get(key)
            if pool is None:
                pool = _shared_pools[key] = build_pool(config)
    return pool


def get_redis_connection() -> redis.Redis | RedisCluster:
    """A client on the shared pool: use it for PUBLISH, SET and GET, never for SUBSCRIBE.

    For a Redis Cluster it is the process's one ``RedisCluster`` client (a pool per node),
    made at the first call; BrokerUnavailable when no node of the cluster answers.
    """
    config = private_settings.WS4REDIS_CONNECTION
    if not is_cluster(config):
        return redis.Redis(connection_pool=get_connection_pool())
    key = _config_key(config)
    client = _clusters.get(key)
    if client is None:
        with _lock:
            client = _clusters.get(key)
            if client is None:
                try:
                    client = _clusters[key] = build_cluster_client(config)
                except UNAVAILABLE as exc:
                    raise BrokerUnavailable(f"no node of the Redis Cluster answers: {exc}") from exc
    return client


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
    """A PubSub holding its own connection, not counted against the shared pool's cap.

    Not for a Redis Cluster: there only the hub (gevent server, uWSGI) subscribes, with SSUBSCRIBE.
    """
    if is_cluster_client(client) or (client is None and is_cluster(private_settings.WS4REDIS_CONNECTION)):
        raise ImproperlyConfigured(CLUSTER_NEEDS_HUB)
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
        clusters = list(_clusters.values())
        _shared_pools.clear()
        _pubsub_pools.clear()
        _clusters.clear()
    for pool in pools:
        pool.disconnect()
    for client in clusters:
        client.close()
