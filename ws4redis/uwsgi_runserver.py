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

uWSGI answers the handshake (``uwsgi.websocket_handshake``, so it knows the
response has started); the frames are then read and written by the ws4redis
protocol core on the connection's descriptor (``uwsgi.connection_fd()``).
uWSGI's own frame functions are not used because they lose what clients and
the tests rely on: ``websocket_recv_nb`` hands over each fragment as a
separate message without telling text from binary, does not check UTF-8,
and drops a close frame without answering it, so every close ends with
1006. Waiting uses ``gevent.select.poll`` (libev watchers), which has no
limit on descriptor numbers, unlike ``select(2)`` and ``gevent.select.select``
(which calls ``select(2)`` first). After the upgrade nothing but websocket
frames is written: errors close the websocket with 1011.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import gevent.monkey
import gevent.select
import gevent.socket
import redis
import uwsgi
from django.core.exceptions import ImproperlyConfigured
from django.core.wsgi import get_wsgi_application

from ws4redis import settings as private_settings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake
from ws4redis.websocket import WebSocket
from ws4redis.wsgi_server import StartResponse, WebsocketWSGIServer

__all__ = ["application", "uWSGIWebsocket", "uWSGIWebsocketServer"]


class uWSGIWebsocket(WebSocket):  # noqa: N801 - the 0.6.0 name
    """A websocket on a duplicate of uWSGI's connection descriptor; ``release()`` closes the duplicate.

    uWSGI owns the connection and closes it when the request ends; the
    duplicate lets Python hold a (gevent) socket without taking that away.
    """

    def __init__(self, sock: gevent.socket.socket, **options: Any) -> None:
        super().__init__(sock, **options)
        self._duplicate = sock

    def release(self) -> None:
        self._duplicate.close()


class uWSGIWebsocketServer(WebsocketWSGIServer):  # noqa: N801 - the 0.6.0 name
    """The websocket application for uWSGI workers running gevent."""

    poll_factory = staticmethod(gevent.select.poll)

    def __init__(self, redis_connection: redis.Redis | None = None) -> None:
        """Refuse to start without gevent, or with the standard library patched too late."""
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

    def upgrade_websocket(
        self, environ: dict[str, Any], start_response: StartResponse, handshake: Handshake,
        subprotocol: str | None,
    ) -> uWSGIWebsocket:
        # Everything that can fail is done before the handshake: after it, no HTTP error can be sent.
        try:
            sock = gevent.socket.socket(fileno=os.dup(uwsgi.connection_fd()))
        except OSError as exc:
            raise HandshakeError(f"Service Unavailable: cannot take over the connection: {exc}", 503) from exc
        try:
            uwsgi.websocket_handshake(handshake.key, environ.get("HTTP_ORIGIN", ""), subprotocol or "")
        except OSError as exc:
            sock.close()
            raise HandshakeError(f"Internal Server Error: uWSGI could not upgrade the connection: {exc}",
                                 500) from exc
        return uWSGIWebsocket(
            sock,
            max_message_size=private_settings.WS4REDIS_MAX_MESSAGE_SIZE,
            max_fragments=private_settings.max_fragments(),
        )

    def serve_websocket(
        self, websocket: Any, subscriber: Any, echo: bool, persisted: Iterable[bytes] = ()
    ) -> None:
        try:
            super().serve_websocket(websocket, subscriber, echo, persisted)
        finally:
            websocket.release()


_django_app = get_wsgi_application()
_websocket_app = uWSGIWebsocketServer()


def application(environ: dict[str, Any], start_response: StartResponse) -> Any:
    """Websockets under WEBSOCKET_URL, Django for everything else."""
    if environ.get("PATH_INFO", "").startswith(private_settings.WEBSOCKET_URL):
        return _websocket_app(environ, start_response)
    return _django_app(environ, start_response)
