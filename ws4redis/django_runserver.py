"""Websockets in ``manage.py runserver``: set WSGI_APPLICATION = 'ws4redis.django_runserver.application'.

Requests under WEBSOCKET_URL become websockets, everything else goes to
Django's own WSGI application. Development only, as runserver itself: each
websocket holds one of runserver's threads for as long as it is open.

How the connection is taken over. Django's development server is the
standard library's ``wsgiref`` on top of ``socketserver``, and this module
only uses those standard objects, never a Django internal (Django 4.2, 5.2
and 6.0 pass the same ones):

* ``start_response`` is the bound method of the ``wsgiref.handlers.BaseHandler``
  serving the request (PEP 3333 leaves its type open; wsgiref's is fixed).
* That handler's ``request_handler`` is the back-pointer both
  ``wsgiref.simple_server`` and Django set to the
  ``socketserver.StreamRequestHandler``, whose ``connection`` is the client
  socket and ``rfile`` the buffered reader of the request head.
* The 101 answer is written straight to the socket: wsgiref refuses the
  hop-by-hop headers a 101 needs (Upgrade, Connection) and Django's handler
  would add ``Connection: close``. The handler is then told its headers
  went out (``headers_sent``) and the request handler that the connection
  ends with this request (``close_connection``, documented in http.server),
  so after the websocket ends wsgiref writes nothing, only logs the request.

Any other server calling this application gets a 500 saying so, before
anything is written.
"""

from __future__ import annotations

import atexit
import logging
import socket
import socketserver
import time
import weakref
from typing import Any
from wsgiref.handlers import BaseHandler

from django.core.wsgi import get_wsgi_application

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.deflate import Deflation
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake, upgrade_response
from ws4redis.redis_cluster import CLUSTER_NEEDS_HUB, is_cluster
from ws4redis.server.accept import Accepted, Rejected, StartResponse
from ws4redis.websocket import WebSocket
from ws4redis.wsgi_server import WebsocketWSGIServer, websocket_or_django

__all__ = ["WebsocketRunServer", "application"]

logger = logging.getLogger(__name__)

# The websockets this process serves, each in one of runserver's (daemon) threads.
_open_websockets: weakref.WeakSet[WebSocket] = weakref.WeakSet()


@atexit.register
def _say_goodbye() -> None:
    """Ctrl-C on runserver: every open websocket gets 1001 before the process (and its threads) ends.

    Django's runserver exits through ``sys.exit`` on KeyboardInterrupt, which runs this; the
    websocket threads are daemon threads and die with the process, so the close frame is all the
    peer gets, and all it needs to reconnect at once.
    """
    for websocket in list(_open_websockets):
        try:
            websocket.close(constants.CLOSE_GOING_AWAY, "server shutting down")
        except OSError as exc:
            logger.debug("ws4redis: could not say goodbye to a websocket: %s", exc)

def _wsgiref_request_handler(start_response: StartResponse) -> tuple[BaseHandler, Any]:
    """The wsgiref handler behind ``start_response`` and its socketserver request handler."""
    handler = getattr(start_response, "__self__", None)
    request_handler = getattr(handler, "request_handler", None)
    if not isinstance(handler, BaseHandler) or not hasattr(request_handler, "connection"):
        raise HandshakeError(
            "Internal Server Error: ws4redis.django_runserver only works under Django's development "
            "server (manage.py runserver); under uWSGI use ws4redis.uwsgi_runserver",
            500,
        )
    if not isinstance(request_handler.server, socketserver.ThreadingMixIn):
        raise HandshakeError(
            "Internal Server Error: websockets need the threaded development server; "
            "run manage.py runserver without --nothreading",
            500,
        )
    return handler, request_handler


def _buffered_bytes(request_handler: Any) -> bytes:
    """Bytes the request handler's reader took from the socket beyond the request head.

    A client may send its first frames right behind the handshake; they sit
    in ``rfile``'s buffer, where reading the socket would never find them.
    With the socket non-blocking, ``read1`` returns just what is buffered
    (or, with an empty buffer, what one read of the socket finds).
    """
    sock = request_handler.connection
    timeout = sock.gettimeout()
    sock.settimeout(0.0)
    try:
        return request_handler.rfile.read1() or b""
    except BlockingIOError:
        return b""
    finally:
        sock.settimeout(timeout)


def _linger(fd: int, limit: float) -> None:
    """Shut our side, then read until the peer closes (``limit`` seconds at most).

    wsgiref closes the socket after the request; unread input would make that close a reset,
    which throws away the close frame the peer has not read yet.
    """
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + limit
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(65536):
                return
    except OSError as exc:  # the peer is gone, or took longer than ``limit``: nothing left to wait for
        logger.debug("ws4redis: websocket closed without the peer's end of stream: %s", exc)
    finally:
        sock.detach()


class WebsocketRunServer(WebsocketWSGIServer):
    """The websocket application for Django's threaded development server."""

    def __init__(self, redis_connection: Any = None) -> None:
        super().__init__(redis_connection)
        # Said at start and to every websocket; the rest of the site (often this very
        # WSGI_APPLICATION under the gevent server) keeps working.
        self._refusal: Rejected | None = None
        if is_cluster(private_settings.WS4REDIS_CONNECTION):
            logger.error("ws4redis: %s", CLUSTER_NEEDS_HUB)
            self._refusal = Rejected(500, f"Internal Server Error: {CLUSTER_NEEDS_HUB}")

    def accept(self, environ: dict[str, Any]) -> Accepted | Rejected:
        if self._refusal is not None:
            return self._refusal
        return super().accept(environ)

    def serve_websocket(self, websocket: Any, *args: Any, **kwargs: Any) -> None:
        """The relay of every server, then a close that lets the peer read the close frame."""
        super().serve_websocket(websocket, *args, **kwargs)
        _linger(websocket.get_file_descriptor(), self.config.ping_timeout)

    def upgrade_websocket(
        self, environ: dict[str, Any], start_response: StartResponse, handshake: Handshake,
        subprotocol: str | None,
    ) -> WebSocket:
        handler, request_handler = _wsgiref_request_handler(start_response)
        sock = request_handler.connection
        initial = _buffered_bytes(request_handler)
        # Recorded for wsgiref's access log line; the response itself goes out below.
        start_response("101 Switching Protocols", [])
        sock.sendall(upgrade_response(handshake, subprotocol))
        handler.headers_sent = True
        request_handler.close_connection = True
        deflation = None if handshake.deflate is None or self.config.compression is None else \
            Deflation(handshake.deflate, self.config.compression, self.config.max_message_size, shared=False)
        websocket = WebSocket(
            sock,
            initial=initial,
            max_message_size=self.config.max_message_size,
            max_fragments=self.config.max_fragments,
            deflation=deflation,
        )
        _open_websockets.add(websocket)
        return websocket


application: Any  # built by the module __getattr__ below on first use


def __getattr__(name: str) -> Any:
    """``application``, the WSGI entry point: websockets under WEBSOCKET_URL, Django for the rest.

    Built on first use, Django first, so the websocket server imports the project's hooks (which may
    import models) with the app registry ready.
    """
    if name != "application":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    django_application = get_wsgi_application()
    built = globals()["application"] = websocket_or_django(WebsocketRunServer(), django_application)
    return built
