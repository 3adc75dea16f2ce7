"""The websocket side of a WSGI server: 0.6.0's ``WebsocketWSGIServer``, corrected.

``WebsocketWSGIServer`` is a WSGI application for requests under
WEBSOCKET_URL. It asks :func:`ws4redis.server.accept.accept` whether the
request becomes a websocket (the answer every server gives), upgrades the
connection and runs the blocking relay of :mod:`ws4redis.server.relay`, one
per websocket, which waits on two descriptors: the websocket and the
subscriber's Redis connection.

The development server (``ws4redis.django_runserver``) adapts this class;
the uWSGI adapter (``ws4redis.uwsgi_runserver``) replaces the relay with the
evented connection of the hub servers. What an adapter provides:

* ``upgrade_websocket(environ, start_response, handshake, subprotocol)``
  sends the 101 answer and returns a websocket object with
  ``receive_available()``, ``send_frame(frame)``, ``ping()``,
  ``close(code, reason)``, ``closed`` and ``get_file_descriptor()``
  (:class:`ws4redis.server.relay.BlockingWebSocket`);
* ``poll_factory`` (or ``select``, the hook 0.6.0 had): how to wait on
  descriptors without blocking other connections. Both use ``poll``
  semantics, never ``select(2)``, whose descriptor numbers stop at 1024.

After the upgrade nothing is written to the connection but websocket
frames, and the subscription is released on every way out.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable, Iterable
from typing import Any

import redis

from ws4redis import settings as private_settings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake
from ws4redis.history import ChannelHistory
from ws4redis.server.accept import Accepted, Rejected, StartResponse, accept
from ws4redis.server.config import ServerConfig
from ws4redis.server.relay import relay

__all__ = ["WebsocketWSGIServer", "ensure_django_setup", "websocket_or_django"]

logger = logging.getLogger(__name__)

WSGIApplication = Callable[[dict[str, Any], StartResponse], Any]

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


def websocket_or_django(websocket_app: WSGIApplication, django_app: WSGIApplication) -> WSGIApplication:
    """One WSGI application: ``websocket_app`` under WEBSOCKET_URL, ``django_app`` for the rest.

    The runserver and uWSGI adapters share this rule; the paths of WS4REDIS_MONITORING go to
    ``websocket_app`` too (uWSGI's answers them). Both settings are read per request, so
    overridden settings (tests) apply.
    """

    def application(environ: dict[str, Any], start_response: StartResponse) -> Any:
        path = environ.get("PATH_INFO", "")
        if path.startswith(private_settings.WEBSOCKET_URL) or path in private_settings.monitoring_paths():
            return websocket_app(environ, start_response)
        return django_app(environ, start_response)

    return application


def ensure_django_setup() -> None:
    """``django.setup()`` unless the app registry is ready (as ``get_wsgi_application`` would)."""
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup(set_prefix=False)


class WebsocketWSGIServer:
    """The WSGI application answering websocket requests; subclasses adapt it to a server."""

    poll_factory: Callable[[], Any] = staticmethod(lambda: select.poll())

    def __init__(self, redis_connection: redis.Redis | None = None) -> None:
        """Set Django up if nobody has yet, then check the settings, so a misconfiguration stops the server.

        Django comes first: the hooks named by WS4REDIS_ALLOWED_CHANNELS,
        WS4REDIS_PROCESS_REQUEST and WS4REDIS_SUBSCRIBER are imported here,
        and a hook module that imports models needs the app registry (0.6.0's
        ``wsgi_websocket.py`` builds this server without calling ``django.setup()``).
        ``redis_connection`` is handed to every subscriber (for publishing and
        persisted messages); None uses the shared pool of ws4redis.connection.
        """
        ensure_django_setup()
        private_settings.validate_settings()
        self.config = ServerConfig()
        self.Subscriber = self.config.subscriber_class
        self.possible_channels = list(self.Subscriber.subscription_channels) + list(
            self.Subscriber.publish_channels
        )
        self._redis_connection = redis_connection

    # --- hooks of the server adapters ------------------------------------------------------------

    def upgrade_websocket(
        self, environ: dict[str, Any], start_response: StartResponse, handshake: Handshake,
        subprotocol: str | None,
    ) -> Any:
        """Send 101 Switching Protocols and return the websocket; each server adapter implements it."""
        raise NotImplementedError(
            f"{type(self).__name__} cannot upgrade connections: use ws4redis.django_runserver "
            "or ws4redis.uwsgi_runserver"
        )

    def select(
        self, rlist: list[int], wlist: list[int], xlist: list[int], timeout: float | None = None
    ) -> tuple[list[int], list[int], list[int]]:
        """Wait until a descriptor is ready, like 0.6.0's hook, but with ``poll`` (no fd limit)."""
        poller = self.poll_factory()
        masks: dict[int, int] = {}
        for fds, mask in ((rlist, select.POLLIN), (wlist, select.POLLOUT), (xlist, select.POLLPRI)):
            for fd in fds:
                masks[fd] = masks.get(fd, 0) | mask
        for fd, mask in masks.items():
            poller.register(fd, mask)
        events = poller.poll(None if timeout is None else timeout * 1000.0)
        readable = [fd for fd, event in events if event & _READABLE and fd in rlist]
        writable = [fd for fd, event in events if event & (select.POLLOUT | select.POLLERR) and fd in wlist]
        exceptional = [fd for fd, event in events if event & select.POLLPRI and fd in xlist]
        return readable, writable, exceptional

    def accept(self, environ: dict[str, Any]) -> Accepted | Rejected:
        """The decision on one upgrade request; the persisted messages come with an acceptance."""
        return accept(environ, self.Subscriber, self._redis_connection, read_persisted=True,
                      compression=self.config.compression)

    # --- the WSGI application --------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        answer = self.accept(environ)
        if isinstance(answer, Rejected):
            return answer.send_wsgi(start_response)
        try:
            return self.serve(environ, start_response, answer)
        finally:
            answer.subscriber.release()

    def serve(
        self, environ: dict[str, Any], start_response: StartResponse, accepted: Accepted
    ) -> Iterable[bytes]:
        """Upgrade the accepted request and relay until the websocket ends."""
        try:
            websocket = self.upgrade_websocket(
                environ, start_response, accepted.handshake, accepted.subprotocol
            )
        except HandshakeError as exc:
            logger.error("ws4redis: cannot upgrade %s: %s", environ.get("PATH_INFO"), exc)
            return Rejected.from_error(exc).send_wsgi(start_response)
        self.serve_websocket(websocket, accepted.subscriber, accepted.echo, accepted.persisted,
                             peer=str(environ.get("REMOTE_ADDR", "?")), path=accepted.path,
                             history=accepted.history)
        return []

    def serve_websocket(
        self, websocket: Any, subscriber: Any, echo: bool, persisted: Iterable[bytes] = (),
        peer: str = "?", path: str = "", history: ChannelHistory | None = None,
    ) -> None:
        """Send the ``persisted`` messages (or the replay of ``history``), then relay between
        ``websocket`` and Redis; never raises."""
        relay(websocket, subscriber, echo, persisted, self.config, self._readable, peer, path, history)

    def _readable(self, descriptors: list[int], timeout: float | None) -> list[int]:
        return self.select(descriptors, [], [], timeout)[0]
