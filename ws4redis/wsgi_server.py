"""The websocket side of a WSGI server: 0.6.0's ``WebsocketWSGIServer``, corrected.

``WebsocketWSGIServer`` is a WSGI application for requests under
WEBSOCKET_URL. It checks the handshake, settles the channels (see
:mod:`ws4redis.session`), subscribes, upgrades the connection and then runs
one loop per websocket that waits on two descriptors: the websocket and the
subscriber's Redis connection.

The development server (``ws4redis.django_runserver``) runs this loop; the
uWSGI adapter (``ws4redis.uwsgi_runserver``) shares the setup
(:meth:`WebsocketWSGIServer.create_subscriber`, :meth:`~WebsocketWSGIServer.settle`,
:func:`setup_failures`, ``refuse``) and replaces the loop with the
per-process hub of the gevent server. What an adapter of this loop provides:

* ``upgrade_websocket(environ, start_response, handshake, subprotocol)``
  sends the 101 answer and returns a websocket object with
  ``receive_available()``, ``send(message, binary)``, ``ping()``,
  ``close(code, reason)``, ``closed`` and ``get_file_descriptor()``;
* ``poll_factory`` (or ``select``, the hook 0.6.0 had): how to wait on
  descriptors without blocking other connections. Both use ``poll``
  semantics, never ``select(2)``, whose descriptor numbers stop at 1024.

The rules of the loop, compared with 0.6.0:

* The persisted messages are read before the 101 goes out and sent right
  after it, so a message the client publishes once connected is not also
  taken for a persisted one and delivered twice.
* Every message Redis has buffered is delivered when its descriptor wakes up
  (0.6.0 delivered one per wake-up: four of a burst of five waited).
* Payloads that are valid UTF-8 go out as text frames, anything else as
  binary frames, so a browser never receives invalid UTF-8 in a text frame.
* Text received is published as text, binary as bytes; the heartbeat
  (WS4REDIS_HEARTBEAT) is never published, the server answers it with the
  heartbeat, and also sends it after LEGACY_HEARTBEAT_INTERVAL idle seconds
  (0.6.0's loop sent it after every 4-second ``select``, also after each
  message). After WS4REDIS_PING_INTERVAL idle seconds it sends a ping; a
  peer that vanished is noticed when a write or read fails (this loop does
  not time pongs: WS4REDIS_PING_TIMEOUT is for the hub servers, gevent and uWSGI).
* Without ``echo`` a client does not get its own messages back: copies of
  what it published that return on a channel it also listens to are
  dropped, exactly those (0.6.0 compared with the last message received,
  which also hid other clients' identical messages).
* The subscription is released on every way out, and nothing is written to
  the connection after the upgrade except websocket frames.
"""

from __future__ import annotations

import logging
import select
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from http import HTTPStatus
from typing import Any

import redis
from django.core.exceptions import PermissionDenied

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.exceptions import ConnectionClosed, HandshakeError
from ws4redis.handshake import Handshake
from ws4redis.protocol import frame_payload
from ws4redis.redis_store import RedisMessage
from ws4redis.session import Negotiation, check_handshake, negotiate, release_database_connections

__all__ = [
    "EchoFilter", "WebsocketWSGIServer", "deliver", "ensure_django_setup", "idle_timeout", "setup_failures",
    "websocket_or_django",
]

logger = logging.getLogger("ws4redis")

StartResponse = Callable[..., Any]
WSGIApplication = Callable[[dict[str, Any], StartResponse], Any]

_READABLE = select.POLLIN | select.POLLPRI | select.POLLHUP | select.POLLERR | select.POLLNVAL


def deliver(websocket: Any, payload: bytes) -> None:
    """Send a message from Redis, framed by the rule for bytes of unknown kind (``frame_payload``)."""
    websocket.send_frame(frame_payload(payload))


class EchoFilter:
    """Recognises the copies of a client's own messages coming back from Redis.

    A message published on a channel the same websocket listens to comes
    back once per such channel; each copy is counted when published and
    dropped when it arrives, so identical messages of other clients still
    get through.
    """

    def __init__(self, publishers: Iterable[str], subscribed: Iterable[str]) -> None:
        self.channels = frozenset(publishers) & frozenset(subscribed)
        self._pending: Counter[tuple[str, bytes]] = Counter()

    def published(self, payload: bytes) -> None:
        for channel in self.channels:
            self._pending[(channel, payload)] += 1

    def is_echo(self, channel: str, payload: bytes) -> bool:
        key = (channel, payload)
        count = self._pending.get(key, 0)
        if not count:
            return False
        if count == 1:
            del self._pending[key]
        else:
            self._pending[key] = count - 1
        return True


def websocket_or_django(websocket_app: WSGIApplication, django_app: WSGIApplication) -> WSGIApplication:
    """One WSGI application: ``websocket_app`` under WEBSOCKET_URL, ``django_app`` for the rest.

    The runserver and uWSGI adapters share this rule. WEBSOCKET_URL is read per request, so
    overridden settings (tests) apply.
    """

    def application(environ: dict[str, Any], start_response: StartResponse) -> Any:
        if environ.get("PATH_INFO", "").startswith(private_settings.WEBSOCKET_URL):
            return websocket_app(environ, start_response)
        return django_app(environ, start_response)

    return application


def ensure_django_setup() -> None:
    """``django.setup()`` unless the app registry is ready (as ``get_wsgi_application`` would)."""
    from django.apps import apps

    if not apps.ready:
        import django

        django.setup(set_prefix=False)


def idle_timeout(heartbeat: str | None, ping_interval: float | None) -> float | None:
    """Seconds the loop may wait for traffic before it must send a heartbeat or a ping (None: forever)."""
    intervals = [ping_interval] if ping_interval else []
    if heartbeat:
        intervals.append(constants.LEGACY_HEARTBEAT_INTERVAL)
    return min(intervals, default=None)


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


@contextmanager
def setup_failures(environ: Mapping[str, Any]) -> Iterator[None]:
    """Turn what goes wrong while a websocket is set up into the HandshakeError its client gets.

    WS4REDIS_ALLOWED_CHANNELS refusing (PermissionDenied) becomes 403, Redis
    failing 503, and a failing project hook (WS4REDIS_PROCESS_REQUEST,
    WS4REDIS_ALLOWED_CHANNELS, a subscriber subclass) 500 with its traceback
    logged, as Django does for a failing view. The database connections the
    setup opened are closed on the way out: a websocket lives for hours.
    """
    path = environ.get("PATH_INFO")
    try:
        yield
    except HandshakeError:
        raise
    except PermissionDenied as exc:
        logger.info("ws4redis: WS4REDIS_ALLOWED_CHANNELS refused %s: %s", path, exc)
        raise HandshakeError(f"Forbidden: {exc or 'these channels are not allowed'}", 403) from exc
    except redis.RedisError as exc:
        logger.error("ws4redis: cannot subscribe, Redis failed: %s", exc)
        raise HandshakeError(constants.BROKER_UNREACHABLE_TEXT, 503) from exc
    except Exception as exc:
        logger.exception("ws4redis: setting up the websocket %s failed", path)
        raise HandshakeError("Internal Server Error: could not set up the websocket", 500) from exc
    finally:
        release_database_connections()


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
        self.Subscriber = private_settings.subscriber_class()
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

    # --- the WSGI application --------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        try:
            handshake = check_handshake(environ)
        except HandshakeError as exc:
            logger.info("ws4redis: refused %s %s: %s", environ.get("REQUEST_METHOD"),
                        environ.get("PATH_INFO"), exc)
            return self.refuse(start_response, exc.status, str(exc), exc.headers)
        subscriber = self.create_subscriber()
        try:
            return self._serve(environ, start_response, handshake, subscriber)
        finally:
            subscriber.release()

    def create_subscriber(self) -> Any:
        """The WS4REDIS_SUBSCRIBER of one websocket, publishing through the client given at start-up."""
        return self.Subscriber(self._redis_connection)

    def settle(self, environ: dict[str, Any], handshake: Handshake, subscriber: Any) -> Negotiation:
        """Negotiate the channels and let ``subscriber`` subscribe (see ``ws4redis.session``)."""
        negotiation = negotiate(environ, handshake, self.Subscriber)
        subscriber.set_pubsub_channels(negotiation.request, negotiation.channels)
        return negotiation

    def _serve(
        self, environ: dict[str, Any], start_response: StartResponse, handshake: Handshake, subscriber: Any
    ) -> Iterable[bytes]:
        try:
            with setup_failures(environ):
                negotiation = self.settle(environ, handshake, subscriber)
                # Read before the 101 goes out: a client cannot publish anything yet, so a
                # message it sends right after connecting is not also found here and sent twice.
                persisted = subscriber.get_persisted_messages()
        except HandshakeError as exc:
            return self.refuse(start_response, exc.status, str(exc), exc.headers)
        logger.debug("ws4redis: %s subscribed to %s, publishing on %s", environ.get("PATH_INFO"),
                     subscriber.subscribed_channels, sorted(subscriber.publishers))
        try:
            websocket = self.upgrade_websocket(environ, start_response, handshake, negotiation.subprotocol)
        except HandshakeError as exc:
            logger.error("ws4redis: cannot upgrade %s: %s", environ.get("PATH_INFO"), exc)
            return self.refuse(start_response, exc.status, str(exc), exc.headers)
        self.serve_websocket(websocket, subscriber, negotiation.echo, persisted)
        return []

    @staticmethod
    def refuse(
        start_response: StartResponse, status: int, message: str, headers: Iterable[tuple[str, str]] = ()
    ) -> list[bytes]:
        """Answer a request that does not become a websocket, with ``message`` as a readable body."""
        body = (message + "\n").encode("utf-8")
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        start_response(
            f"{status} {phrase}",
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))), *headers],
        )
        return [body]

    # --- the loop of one websocket ----------------------------------------------------------------

    def serve_websocket(
        self, websocket: Any, subscriber: Any, echo: bool, persisted: Iterable[bytes] = ()
    ) -> None:
        """Send the ``persisted`` messages, then relay between ``websocket`` and Redis; never raises."""
        try:
            for message in persisted:
                deliver(websocket, message)
            self._relay(websocket, subscriber, echo)
        except ConnectionClosed as exc:
            logger.debug("ws4redis: websocket gone: %s", exc)
        except redis.RedisError as exc:
            logger.error("ws4redis: Redis failed, closing the websocket with 1011: %s", exc)
            websocket.close(constants.CLOSE_INTERNAL_ERROR, "message broker unavailable")
        except Exception:
            # After the upgrade no HTTP error can be sent: log it, close the websocket, keep serving.
            logger.exception("ws4redis: error in the websocket loop, closing the websocket with 1011")
            websocket.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")

    def _relay(self, websocket: Any, subscriber: Any, echo: bool) -> None:
        echo_filter = None if echo else EchoFilter(subscriber.publishers, subscriber.subscribed_channels)
        websocket_fd = websocket.get_file_descriptor()
        redis_fd = subscriber.get_file_descriptor()
        rlist = [websocket_fd] if redis_fd is None else [websocket_fd, redis_fd]
        heartbeat = private_settings.WS4REDIS_HEARTBEAT
        ping_interval = private_settings.WS4REDIS_PING_INTERVAL
        timeout = idle_timeout(heartbeat, ping_interval)
        last_heartbeat = last_ping = time.monotonic()
        # Frames that came with the handshake are already buffered; waiting on the socket would not see them.
        self._publish_received(websocket, subscriber, echo_filter, heartbeat)
        while not websocket.closed:
            ready = self.select(rlist, [], [], timeout)[0]
            if not ready:
                # Idle: keep the client, and any proxy on the way, from giving up on the connection.
                now = time.monotonic()
                if heartbeat and now - last_heartbeat >= constants.LEGACY_HEARTBEAT_INTERVAL:
                    websocket.send(heartbeat)
                    last_heartbeat = now
                if ping_interval and now - last_ping >= ping_interval:
                    websocket.ping()
                    last_ping = now
                continue
            if websocket_fd in ready:
                self._publish_received(websocket, subscriber, echo_filter, heartbeat)
            if redis_fd in ready and not websocket.closed:
                self._deliver_buffered(websocket, subscriber, echo_filter)

    @staticmethod
    def _publish_received(websocket: Any, subscriber: Any, echo_filter: EchoFilter | None,
                          heartbeat: str | None) -> None:
        """Publish every complete message from the client; answer heartbeats instead of publishing them."""
        for message in websocket.receive_available():
            payload = RedisMessage(message)
            if payload is None:
                # RedisMessage turns exactly the heartbeat into None.
                if not websocket.closed:
                    websocket.send(heartbeat)
            elif payload:
                subscriber.publish_message(payload)
                if echo_filter is not None:
                    echo_filter.published(bytes(payload))

    @staticmethod
    def _deliver_buffered(websocket: Any, subscriber: Any, echo_filter: EchoFilter | None) -> None:
        """Deliver every message Redis has buffered, not only the first."""
        for reply in subscriber.parse_responses():
            payload = RedisMessage(reply)
            if payload is None:
                continue  # subscribe confirmations, heartbeats
            if echo_filter is not None and echo_filter.is_echo(_text(reply[-2]), bytes(payload)):
                continue
            deliver(websocket, payload)
