"""Websockets under uWSGI with gevent: ``uWSGIWebsocketServer``, and ``application`` for one-module setups.

The command lines of django-websocket-redis 0.6.0 work unchanged::

    uwsgi --http :80 --gevent 100 --http-websockets --module wsgi
    uwsgi --http-socket /path/to/web.socket --gevent 1000 --http-websockets --workers=2 --master \\
          --module wsgi_websocket

with or without ``--gevent-monkey-patch`` / ``--gevent-early-monkey-patch``,
where ``wsgi.py`` sends paths under WEBSOCKET_URL to ``uWSGIWebsocketServer()``
and the rest to Django (``ws4redis.uwsgi_runserver:application`` does both),
and ``wsgi_websocket.py`` is ``application = uWSGIWebsocketServer()``.

gevent must run (``--gevent N``); the standard library need not be patched.
Without a patch, or with ``--gevent-monkey-patch`` (which patches only after
the application is loaded), the hub and the publishing greenlet talk to Redis
over gevent sockets (:mod:`ws4redis.gevent_redis`), and because the greenlets
of a worker then share Django's database connections, Django requests and
websocket set-ups of a worker run one at a time
(:mod:`ws4redis.database_guard`); ``--gevent-monkey-patch`` also gets one
warning line saying so. ``--gevent-early-monkey-patch`` gives every greenlet
its own database connection and needs neither.

Each worker serves its websockets from ONE Redis pub/sub connection, the
worker's :class:`ws4redis.hub.Hub` (``CLIENT LIST`` names it
``ws4redis-hub:<pid>``), started when uWSGI has forked the worker, exactly as
the gevent server does: channels are reference-counted, each message is
framed once and queued for every local websocket, written with non-blocking
writes. The request setup (handshake, session, user,
WS4REDIS_ALLOWED_CHANNELS, the subscriber's channels, the 403/500/503 answers)
is the one of every ws4redis server (``ws4redis.server.accept``). The open
websocket is the evented connection of the gevent server
(:class:`ws4redis.server.evented.WebSocketConnection`), so both servers behave
alike: bounded send queues (1008 for a client that falls behind), pings and
WS4REDIS_PING_TIMEOUT (1011), the 0.6.0 heartbeat, messages from clients
pipelined to Redis by one batching greenlet per worker, and while Redis is
away open websockets stay connected, new ones get 503.

A worker that retires closes its websockets with 1001 first and waits up to
WS4REDIS_SHUTDOWN_TIMEOUT for them (:class:`Retirement`): on a graceful
reload (SIGHUP, ``--touch-reload``), on a stop (SIGINT, SIGTERM with
``--die-on-term``), and when uWSGI recycles it (``--max-requests``,
``--reload-on-rss``; uWSGI tells an application nothing then, so the worker
compares the same counters once a second).

uWSGI answers the handshake (``uwsgi.websocket_handshake``, so it knows the
response has started); the frames are then read and written by the ws4redis
protocol core on a duplicate of the connection's descriptor
(``uwsgi.connection_fd()``), from libev watchers. uWSGI's request greenlet
only waits (giving the websocket its keepalive ticks) until the websocket is
closed, so uWSGI keeps the connection and its async core until then: size
``--gevent`` for the websockets a worker should hold. uWSGI's own frame
functions are not used because they lose what clients and the tests rely
on: ``websocket_recv_nb`` hands over each fragment as a separate message
without telling text from binary, does not check UTF-8, and drops a close
frame without answering it, so every close ends with 1006. Bytes a client
sends before it has seen the 101 stay in uWSGI's request buffer (RFC 6455
forbids sending them). After the upgrade nothing but websocket frames is
written: errors close the websocket with 1011.
"""

from __future__ import annotations

import logging
import os
import resource
import signal
import socket
import time
from collections.abc import Iterable
from typing import Any

import gevent
import gevent.monkey
import redis
import uwsgi
from django.core.exceptions import ImproperlyConfigured
from gevent.event import Event

from ws4redis import constants
from ws4redis.database_guard import DatabaseGuard
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake
from ws4redis.hub import Hub, get_hub, hub_subscriber_class
from ws4redis.metrics import SnapshotWriter, shared_directory
from ws4redis.server import monitoring
from ws4redis.server.accept import Accepted, Rejected, StartResponse, accept
from ws4redis.server.evented import ConnectionSet, PublishBatcher, WebSocketConnection, prepare_connection
from ws4redis.wsgi_server import WebsocketWSGIServer, websocket_or_django

__all__ = ["Retirement", "application", "uWSGIWebsocketServer"]

logger = logging.getLogger(__name__)

# How often a worker compares its counters with --max-requests and --reload-on-rss.
RECYCLE_CHECK_INTERVAL = 1.0

# Whether Django's database connections are one per greenlet: only when threading was patched
# before Django made its connection handler, which happens before this module is imported.
_database_guard = DatabaseGuard()
_SHARED_DATABASE_CONNECTIONS = not gevent.monkey.is_module_patched("threading")


def _option(name: str) -> bytes | bool | None:
    value = uwsgi.opt.get(name)
    return value[-1] if isinstance(value, list) else value


def _number(name: str, default: int = 0) -> int:
    value = _option(name)
    try:
        return int(value) if isinstance(value, bytes) else default
    except ValueError:
        return default


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the 0.6.0 name
    """The websocket application for uWSGI workers running gevent, on the worker's hub."""

    def __init__(self, redis_connection: redis.Redis | None = None) -> None:
        """Refuse to start without gevent's loop; set up the worker's hub and retirement after the fork.

        ``redis_connection`` publishes and reads persisted messages (default:
        the hub's client on the shared pool). Subscriptions always go through
        the hub; a 0.6.0 subscriber subscribing on ``self._connection.pubsub()``
        needs the default.
        """
        if _option("gevent") is None:
            raise ImproperlyConfigured(
                "ws4redis.uwsgi_runserver needs uWSGI's gevent loop: start uwsgi with --gevent <N>"
            )
        super().__init__(redis_connection)  # sets Django up first
        self.subscriber_class = hub_subscriber_class(self.config.subscriber_class)
        self.connections = ConnectionSet(self.config.tick, "uwsgi", self.config.key_prefix)
        self._publisher: tuple[int, PublishBatcher] | None = None
        # The request greenlet of each open websocket waits for its event: set when it is released.
        self._released: dict[WebSocketConnection, Event] = {}
        self.retirement = Retirement(self)
        if _SHARED_DATABASE_CONNECTIONS:
            _database_guard.install()
            if _option("gevent-monkey-patch") and not gevent.monkey.is_module_patched("socket"):
                logger.warning(
                    "ws4redis: --gevent-monkey-patch patches after Django is loaded, so the greenlets of "
                    "a worker share Django's database connections; ws4redis serves the Django requests "
                    "of a worker one at a time. Start uwsgi with --gevent-early-monkey-patch instead "
                    "to serve them concurrently."
                )
        _after_fork(self.retirement.start)

    @property
    def hub(self) -> Hub:
        """This worker's hub, created after the fork (one per worker)."""
        return get_hub()

    @property
    def publisher(self) -> PublishBatcher:
        """Publishes what this worker's websockets receive, through the hub's client (its bounded pool)."""
        pid = os.getpid()
        if self._publisher is None or self._publisher[0] != pid:
            self._publisher = (pid, PublishBatcher(self.hub.client))
        return self._publisher[1]

    @property
    def stopping(self) -> bool:
        return self.retirement.started

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """A monitoring endpoint (WS4REDIS_MONITORING), or else a websocket."""
        monitored = monitoring.answer_for(self.config, environ.get("PATH_INFO", ""), self.hub, self.stopping)
        if monitored is not None:
            return monitored.send_wsgi(start_response)
        return super().__call__(environ, start_response)

    def accept(self, environ: dict[str, Any]) -> Accepted | Rejected:
        """The decision of every server, with this worker's hub, retirement and database guard."""
        hub = self.hub
        client = self._redis_connection if self._redis_connection is not None else hub.client
        return accept(environ, self.subscriber_class, client, broker_unreachable=lambda: hub.unreachable,
                      stopping=lambda: self.stopping, guard=_database_guard.held,
                      compression=self.config.compression)

    def release(self, connection: WebSocketConnection) -> None:
        """Forget ``connection`` and free what it holds; its request may end (once)."""
        self.connections.release(connection)
        released = self._released.pop(connection, None)
        if released is not None:
            released.set()

    def serve(
        self, environ: dict[str, Any], start_response: StartResponse, accepted: Accepted
    ) -> list[bytes]:
        """Subscribe, let uWSGI answer 101, then keep the request open while libev watchers serve it."""
        try:
            fd = take_connection()
        except HandshakeError as exc:
            return Rejected.from_error(exc).send_wsgi(start_response)
        peer = str(environ.get("REMOTE_ADDR", "?"))
        started = False
        try:
            connection = prepare_connection(fd, accepted, self, self.connections, peer)
            if isinstance(connection, Rejected):
                return connection.send_wsgi(start_response)
            try:
                send_upgrade(environ, accepted.handshake, accepted.subprotocol)
            except HandshakeError as exc:
                self.release(connection)
                return Rejected.from_error(exc).send_wsgi(start_response)
            released = self._released[connection] = Event()
            started = True
            try:
                connection.start(b"")  # the descriptor is the connection's from now on
                if connection in self.connections:
                    released.wait()
            finally:
                self.release(connection)
        finally:
            if not started:
                os.close(fd)
        return []


def _after_fork(callback: Any) -> None:
    """Run ``callback`` in every worker uWSGI forks (also the only one, without --master).

    Under a master, uwsgidecorators keeps a chain of post-fork hooks that
    project code may add to as well; without one (uwsgidecorators refuses to
    load then) an existing ``uwsgi.post_fork_hook`` is chained by hand.
    """
    if _option("master"):
        from uwsgidecorators import postfork

        postfork(callback)
        return
    previous = getattr(uwsgi, "post_fork_hook", None)

    def hook() -> None:
        if previous is not None:
            previous()
        callback()

    uwsgi.post_fork_hook = hook


class Retirement:
    """How a uWSGI worker leaves: every websocket gets 1001 and WS4REDIS_SHUTDOWN_TIMEOUT to close.

    Started after the fork, it starts the worker's hub (so the first websocket
    does not wait for Redis) and watches for the ways a worker retires:
    SIGHUP (graceful reload; uWSGI then waits for the running requests, which
    is what every websocket is), ``uwsgi.atexit`` (SIGINT/SIGTERM stop the
    worker's loop and call it), and ``--max-requests`` / ``--reload-on-rss``
    (uWSGI stops accepting and waits for the running requests without telling
    the application; the worker compares the same counters as uWSGI does,
    once a second).
    """

    def __init__(self, server: uWSGIWebsocketServer) -> None:
        self.server = server
        self.started = False
        self._timer: Any = None
        self._pid = 0
        self._snapshots: SnapshotWriter | None = None

    def start(self) -> None:
        """In a freshly forked worker: start its hub and the watchers."""
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self.started = False
        self.server.hub.start()
        self.server.connections.start_ticking()
        directory = shared_directory()
        if directory is not None and self.server.config.monitoring:
            self._snapshots = SnapshotWriter(directory)
            self._snapshots.start()
        # Registered once uWSGI's loop runs: uWSGI's own SIGHUP handler, installed when the loop starts,
        # would otherwise replace this one instead of running beside it.
        gevent.spawn(gevent.signal_handler, signal.SIGHUP, gevent.spawn, self.retire, "graceful reload")
        previous = getattr(uwsgi, "atexit", None)

        def at_exit() -> None:
            self.retire("stop")
            if previous is not None:
                previous()

        uwsgi.atexit = at_exit
        if _number("max-requests") or _number("reload-on-rss"):
            self._timer = gevent.get_hub().loop.timer(RECYCLE_CHECK_INTERVAL, RECYCLE_CHECK_INTERVAL)
            self._timer.start(self._check_recycling)

    def _check_recycling(self) -> None:
        reason = recycle_reason()
        if reason is not None:
            self._timer.stop()
            gevent.spawn(self.retire, reason)

    def retire(self, reason: str) -> None:
        """Close every websocket with 1001, wait for them (bounded), then let uWSGI end the worker."""
        if self.started:
            return
        self.started = True
        server = self.server
        connections = server.connections
        deadline = time.monotonic() + server.config.shutdown_timeout
        count = connections.close_all(constants.CLOSE_GOING_AWAY, "server shutting down")
        logger.info("ws4redis: uWSGI worker %d retires (%s): closing %d websockets with 1001",
                    os.getpid(), reason, count)
        connections.wait_released(deadline - time.monotonic())
        for connection in connections:
            server.release(connection)  # did not close in time: its request ends anyway
        server.publisher.close()
        if self._snapshots is not None:
            self._snapshots.stop()


def recycle_reason() -> str | None:
    """Why uWSGI recycles this worker at the end of its next request, or None (utils.c's rules)."""
    worker_id = uwsgi.worker_id()
    me = next((worker for worker in uwsgi.workers() if worker["id"] == worker_id), None)
    if me is None or time.time() - me["last_spawn"] < _number("min-worker-lifetime", 10):
        return None
    max_requests = _number("max-requests")
    if max_requests and me["delta_requests"] >= max_requests + (worker_id - 1) * _number(
            "max-requests-delta"):
        return "max requests reached"
    limit = _number("reload-on-rss") * 1024 * 1024
    if limit and resident_bytes() >= limit:
        return "reload-on-rss limit reached"
    return None


def resident_bytes() -> int:
    """This process's resident set size, as uWSGI reads it."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def take_connection() -> int:
    """A non-blocking duplicate of uWSGI's connection descriptor (uWSGI keeps and closes its own)."""
    try:
        sock = socket.socket(fileno=os.dup(uwsgi.connection_fd()))
        try:
            sock.setblocking(False)
            if sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # frames go out as written
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise HandshakeError(f"Service Unavailable: cannot take over the connection: {exc}", 503) from exc
    return sock.detach()


def send_upgrade(environ: dict[str, Any], handshake: Handshake, subprotocol: str | None) -> None:
    """Let uWSGI send the 101 response (it then knows the request has been answered).

    ``uwsgi.websocket_handshake`` has no argument for Sec-WebSocket-Extensions. It writes the
    origin it is given as a header value without looking into it (``uwsgi_response_add_header``),
    so a negotiated permessage-deflate travels as one more header line after the obsolete
    Sec-WebSocket-Origin, which browsers ignore. The value is ws4redis' own (no client bytes).
    """
    origin = environ.get("HTTP_ORIGIN", "") or "*"
    if handshake.extensions is not None:
        origin = f"{origin}\r\nSec-WebSocket-Extensions: {handshake.extensions}"
    try:
        uwsgi.websocket_handshake(handshake.key, origin, subprotocol or "")
    except OSError as exc:
        raise HandshakeError(
            f"Internal Server Error: uWSGI could not upgrade the connection: {exc}", 500
        ) from exc


application: Any  # built below when uWSGI loads this module, else by __getattr__ on first use


def _build_application() -> Any:
    """Websockets under WEBSOCKET_URL, Django for the rest; Django is set up before the hooks load."""
    from django.core.wsgi import get_wsgi_application

    django_application = get_wsgi_application()
    built = globals()["application"] = websocket_or_django(uWSGIWebsocketServer(), django_application)
    return built


def __getattr__(name: str) -> Any:
    """``application`` for code importing it: a project's wsgi.py importing ``uWSGIWebsocketServer``
    from here builds nothing."""
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _build_application()


def _loaded_by_uwsgi() -> bool:
    """Whether uWSGI's --module/--wsgi names this module (uWSGI looks the callable up directly)."""
    for key in ("module", "wsgi"):
        values = uwsgi.opt.get(key)
        for value in values if isinstance(values, list) else [values]:
            if isinstance(value, bytes) and value.decode().partition(":")[0] == __name__:
                return True
    return False


if _loaded_by_uwsgi():
    _build_application()
