"""Websockets under uWSGI with gevent: ``uWSGIWebsocketServer``, and ``application`` for one-module setups.

Run it as::

    uwsgi --http :8000 --http-websockets --gevent 1000 --gevent-early-monkey-patch \\
          --module ws4redis.uwsgi_runserver:application

``application`` sends requests under WEBSOCKET_URL to the websocket server
and everything else to Django; a project with its own WSGI module (0.6.0's
``wsgi_websocket.py``) uses ``application = uWSGIWebsocketServer()`` for a
websocket-only uWSGI instance instead. gevent must be active (``--gevent``)
and the standard library monkey-patched BEFORE Django is imported
(``--gevent-early-monkey-patch``, or ``gevent.monkey.patch_all()`` at the top
of the WSGI module): Redis sockets must yield to other connections instead of
blocking the worker, and Django's per-thread state (database connections)
must be per greenlet. ``--gevent-monkey-patch`` patches after the
application is loaded, which is too late; the server refuses to start then.

Each worker process serves its websockets from ONE Redis pub/sub connection,
the worker's :class:`ws4redis.hub.Hub` (``CLIENT LIST`` names it
``ws4redis-hub:<pid>``), exactly as the gevent server does: channels are
reference-counted (SUBSCRIBE for the first local listener, UNSUBSCRIBE after
the last), each message is framed once and the same bytes are queued for
every local websocket, written with non-blocking writes. The hub is created
by the first websocket a worker serves, after uWSGI has forked it, so every
worker gets its own. The request setup (handshake, session, user,
WS4REDIS_ALLOWED_CHANNELS, the subscriber's channels, the 403/500/503
answers) is the one of every ws4redis server (``ws4redis.session`` through
``ws4redis.wsgi_server``). The open websocket is the gevent server's
:class:`ws4redis.gevent_server.WebSocketConnection`, so both servers behave
alike: bounded send queues (1008 for a client that falls behind), pings and
WS4REDIS_PING_TIMEOUT (1011), the 0.6.0 heartbeat, messages from clients
pipelined to Redis by one batching greenlet per worker, and while Redis is
away open websockets stay connected, new ones get 503 and a client trying
to publish is closed with 1013 (the hub reconnects, subscribes again and
re-sends the persisted messages).

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
import socket
import time
from typing import Any

import gevent.monkey
import redis
import uwsgi
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application
from gevent.event import Event

from ws4redis.exceptions import HandshakeError
from ws4redis.gevent_server import PublishBatcher, ServerConfig, WebSocketConnection
from ws4redis.handshake import Handshake
from ws4redis.hub import Hub, get_hub
from ws4redis.wsgi_server import StartResponse, WebsocketWSGIServer, setup_failures, websocket_or_django

__all__ = ["application", "uWSGIWebsocketServer"]

logger = logging.getLogger("ws4redis")

UNREACHABLE = "Service Unavailable: the message broker is unreachable"


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the 0.6.0 name
    """The websocket application for uWSGI workers running gevent, on the worker's hub."""

    def __init__(self, redis_connection: redis.Redis | None = None) -> None:
        """Refuse to start without gevent, or with the standard library patched too late.

        ``redis_connection`` publishes and reads persisted messages (default:
        the hub's client on the shared pool). Subscriptions always go through
        the hub; a 0.6.0 subscriber subscribing on ``self._connection.pubsub()``
        needs the default.
        """
        if uwsgi.opt.get("gevent") is None:
            raise ImproperlyConfigured(
                "ws4redis.uwsgi_runserver needs uWSGI's gevent loop: start uwsgi with --gevent <N>"
            )
        if not gevent.monkey.is_module_patched("socket"):
            raise ImproperlyConfigured(
                "ws4redis.uwsgi_runserver needs the standard library patched by gevent before Django is "
                "imported: start uwsgi with --gevent-early-monkey-patch (--gevent-monkey-patch is too late)"
            )
        super().__init__(redis_connection)
        self.config = ServerConfig()
        self._publisher: tuple[int, PublishBatcher] | None = None
        # The open websockets of this worker, each with the event that ends its request.
        self._released: dict[WebSocketConnection, Event] = {}

    @property
    def hub(self) -> Hub:
        """This worker's hub, created by its first websocket (after the fork: one per worker)."""
        return get_hub()

    @property
    def publisher(self) -> PublishBatcher:
        """Publishes what this worker's websockets receive, through the hub's client (its bounded pool)."""
        pid = os.getpid()
        if self._publisher is None or self._publisher[0] != pid:
            self._publisher = (pid, PublishBatcher(self.hub.client))
        return self._publisher[1]

    def create_subscriber(self) -> Any:
        """WS4REDIS_SUBSCRIBER with its subscriptions recorded for the hub instead of opened."""
        client = self._redis_connection if self._redis_connection is not None else self.hub.client
        return self.config.subscriber_class(client)

    def release(self, connection: WebSocketConnection) -> None:
        """Called by ``connection`` (from the event loop) once it is closed: its request may end."""
        released = self._released.get(connection)
        if released is not None:
            released.set()

    def _serve(
        self, environ: dict[str, Any], start_response: StartResponse, handshake: Handshake, subscriber: Any
    ) -> list[bytes]:
        hub = self.hub
        try:
            if hub.unreachable:
                # Open websockets wait for Redis to come back; new ones are told to retry later.
                raise HandshakeError(UNREACHABLE, 503)
            with setup_failures(environ):
                negotiation = self.settle(environ, handshake, subscriber)
            fd = take_connection()
        except HandshakeError as exc:
            return self.refuse(start_response, exc.status, str(exc), exc.headers)
        peer = str(environ.get("REMOTE_ADDR", "?"))
        connection: WebSocketConnection | None = None
        started = False
        try:
            try:
                with setup_failures(environ):
                    connection = WebSocketConnection(fd, subscriber, self, peer, negotiation.echo)
                    # Subscribed, and the persisted messages queued, before the client learns it is open.
                    connection.prepare(hub)
                if connection.refused is not None:
                    raise HandshakeError(f"Service Unavailable: {connection.refused}", 503)
                send_upgrade(environ, handshake, negotiation.subprotocol)
            except HandshakeError as exc:
                return self.refuse(start_response, exc.status, str(exc), exc.headers)
            released = self._released[connection] = Event()
            started = True
            connection.start(b"")  # the descriptor is the connection's from now on
            self._tick_until_released(connection, released)
        finally:
            if connection is not None:
                self._released.pop(connection, None)
                connection.finish(hub)  # closes the descriptor once it is the connection's
            if not started:
                os.close(fd)
        return []

    def _tick_until_released(self, connection: WebSocketConnection, released: Event) -> None:
        """Keep uWSGI's request open while libev watchers serve the websocket; tick it meanwhile.

        The ticks are the gevent server's (heartbeat, pings, WS4REDIS_PING_TIMEOUT, the time a
        closing peer gets); uWSGI's request greenlet exists anyway, so it gives them.
        """
        tick = self.config.tick
        while not released.wait(tick):
            try:
                connection.tick(time.monotonic())
            except Exception:
                # A bug in one websocket's keepalive ends that websocket, never the uWSGI worker.
                logger.exception("ws4redis: keepalive of the websocket of %s failed", connection.peer)
                return


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
    """Let uWSGI send the 101 response (it then knows the request has been answered)."""
    try:
        uwsgi.websocket_handshake(handshake.key, environ.get("HTTP_ORIGIN", ""), subprotocol or "")
    except OSError as exc:
        raise HandshakeError(
            f"Internal Server Error: uWSGI could not upgrade the connection: {exc}", 500
        ) from exc


# The WSGI entry point: websockets under WEBSOCKET_URL, Django for everything else.
application = websocket_or_django(uWSGIWebsocketServer(), get_wsgi_application())
