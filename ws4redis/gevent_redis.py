"""redis-py connections on gevent sockets, for processes whose standard library is not patched.

uWSGI started the way django-websocket-redis 0.6.0 documented it
(``--gevent N`` without a monkey-patch flag, or ``--gevent-monkey-patch``,
which patches only after the application is loaded) runs gevent's loop over a
standard library that still blocks. A blocking read on the hub's pub/sub
connection would then stop every websocket of the worker. The hub and the
publishing greenlet use these connection classes instead: same options, same
protocol code, only the socket comes from ``gevent.socket``, so waiting for
Redis yields to the other greenlets. Django's own Redis clients (sessions,
cache) and ``RedisPublisher`` in Django views keep redis-py's classes: they
never yield in the middle of a Django request.

TLS connections have no twin here (redis-py wraps its sockets with the
standard library's ``ssl``); :func:`cooperative_pool` leaves them as they are
and says so once. Connections to a master found through Sentinel have a twin;
the short questions to the sentinels themselves (one per new connection,
answered or given up within a second) still block.
"""

from __future__ import annotations

import logging
import socket
from typing import Any

import gevent.monkey
import gevent.socket
import redis
from redis.connection import UnixDomainSocketConnection
from redis.sentinel import SentinelConnectionPool, SentinelManagedConnection

__all__ = ["GeventConnection", "GeventSentinelConnection", "GeventUnixConnection", "cooperative_pool",
           "sockets_block"]

logger = logging.getLogger(__name__)


def sockets_block() -> bool:
    """Whether sockets made through the standard library block the whole process (no gevent patch)."""
    return not gevent.monkey.is_module_patched("socket")


class GeventConnection(redis.Connection):
    """``redis.Connection`` whose TCP socket is gevent's."""

    def _connect(self) -> Any:
        sock = gevent.socket.create_connection((self.host, self.port), timeout=self.socket_connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.socket_keepalive:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                for option, value in self.socket_keepalive_options.items():
                    sock.setsockopt(socket.IPPROTO_TCP, option, value)
            sock.settimeout(self.socket_timeout)
        except OSError:
            sock.close()
            raise
        return sock


class GeventUnixConnection(UnixDomainSocketConnection):
    """``UnixDomainSocketConnection`` whose socket is gevent's."""

    def _connect(self) -> Any:
        sock = gevent.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.socket_connect_timeout)
            sock.connect(self.path)
            sock.settimeout(self.socket_timeout)
        except OSError:
            sock.close()
            raise
        return sock


class GeventSentinelConnection(SentinelManagedConnection, GeventConnection):
    """A connection to the master the sentinels name, on a gevent socket."""


_TWINS: dict[type, type] = {
    redis.Connection: GeventConnection, UnixDomainSocketConnection: GeventUnixConnection,
    SentinelManagedConnection: GeventSentinelConnection,
}
_warned: set[type] = set()


def cooperative_pool(pool: redis.ConnectionPool) -> redis.ConnectionPool:
    """``pool`` itself when sockets cooperate already, else a pool of the same kind on gevent sockets."""
    if not sockets_block():
        return pool
    twin = _TWINS.get(pool.connection_class)
    if twin is None:
        cooperative = issubclass(pool.connection_class, tuple(_TWINS.values()))
        if not cooperative and pool.connection_class not in _warned:
            _warned.add(pool.connection_class)
            logger.warning(
                "ws4redis: %s connections block the gevent loop of this process (no gevent twin); start "
                "uWSGI with --gevent-early-monkey-patch so that waiting for Redis yields to other websockets",
                pool.connection_class.__name__,
            )
        return pool
    options: dict[str, Any] = {"connection_class": twin, "max_connections": pool.max_connections}
    if isinstance(pool, redis.BlockingConnectionPool):
        options["timeout"] = pool.timeout
    if isinstance(pool, SentinelConnectionPool):
        # The new pool gives its connections a reference to itself, not to the pool it replaces.
        kwargs = {key: value for key, value in pool.connection_kwargs.items() if key != "connection_pool"}
        return type(pool)(pool.service_name, pool.sentinel_manager, **options, **kwargs)
    return type(pool)(**options, **pool.connection_kwargs)
