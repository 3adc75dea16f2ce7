"""The whole decision on one upgrade request, as a value: :class:`Accepted` or :class:`Rejected`.

Every server asks :func:`accept` and writes the answer out its own way (raw
bytes on the gevent server's socket, ``start_response`` under WSGI); none of
them maps an exception to a status itself, so a refusal reads the same on
every server. The steps, in order:

1. The server is stopping, or its hub cannot reach Redis: 503, before any work.
2. The upgrade request and its origin (``ws4redis.session.check_handshake``):
   400/403/405/426.
3. The request, session and user as a view sees them, the channels asked
   for and granted, the subscriber subscribed (``negotiate``,
   ``set_pubsub_channels``), optionally the persisted messages read
   (:func:`setup_failures` turns what goes wrong there into 403/503/500).
4. The server started stopping meanwhile: 503, the subscriber released.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import redis
from django.core.exceptions import PermissionDenied

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.deflate import CompressionSettings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake, error_response, status_line, upgrade_response
from ws4redis.history import ChannelHistory, for_subscriber
from ws4redis.metrics import METRICS
from ws4redis.redis_store import get_prefix
from ws4redis.session import Negotiation, check_handshake, negotiate, release_database_connections

__all__ = ["Accepted", "Rejected", "accept", "setup_failures"]

logger = logging.getLogger(__name__)

StartResponse = Callable[..., Any]


@dataclass(slots=True)
class Accepted:
    """An upgrade to answer with 101: its subscriber is subscribed and belongs to the caller now."""

    handshake: Handshake
    subscriber: Any
    echo: bool
    subprotocol: str | None
    persisted: list[bytes] = field(default_factory=list)
    path: str = ""
    history: ChannelHistory | None = None  # when the facility keeps a history (WS4REDIS_HISTORY)

    def upgrade_response(self) -> bytes:
        """The 101 Switching Protocols response head."""
        return upgrade_response(self.handshake, self.subprotocol)


@dataclass(slots=True, frozen=True)
class Rejected:
    """An upgrade refused with ``status`` and a readable ``text`` body."""

    status: int
    text: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_error(cls, error: HandshakeError) -> Rejected:
        return cls(error.status, str(error), tuple(error.headers))

    def http_response(self) -> bytes:
        """The complete response, for a server that writes to the socket itself (counted as a rejection)."""
        METRICS.rejected(self.status)
        return error_response(HandshakeError(self.text, self.status, list(self.headers)))

    def send_wsgi(self, start_response: StartResponse) -> list[bytes]:
        """The response through WSGI's ``start_response``; returns the body to hand back (counted)."""
        METRICS.rejected(self.status)
        body = (self.text + "\n").encode("utf-8")
        start_response(
            status_line(self.status),
            [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body))),
             *self.headers],
        )
        return [body]


SERVER_STOPPING = Rejected(503, constants.SERVER_STOPPING_TEXT)
BROKER_UNREACHABLE = Rejected(503, constants.BROKER_UNREACHABLE_TEXT)


@contextmanager
def setup_failures(environ: Mapping[str, Any]) -> Iterator[None]:
    """Turn what goes wrong while a websocket is set up into the HandshakeError its client gets.

    WS4REDIS_ALLOWED_CHANNELS or WS4REDIS_AUTHENTICATE refusing (PermissionDenied) becomes 403
    (AuthenticationFailed from WS4REDIS_AUTHENTICATE carries its own 401), Redis
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
        logger.info("ws4redis: a hook refused %s (PermissionDenied): %s", path, exc)
        raise HandshakeError(f"Forbidden: {exc or 'these channels are not allowed'}", 403) from exc
    except redis.RedisError as exc:
        logger.error("ws4redis: cannot subscribe, Redis failed: %s", exc)
        raise HandshakeError(constants.BROKER_UNREACHABLE_TEXT, 503) from exc
    except Exception as exc:
        logger.exception("ws4redis: setting up the websocket %s failed", path)
        raise HandshakeError("Internal Server Error: could not set up the websocket", 500) from exc
    finally:
        release_database_connections()


def _never() -> bool:
    return False


def accept(
    environ: dict[str, Any],
    subscriber_class: type,
    client: Any,
    *,
    broker_unreachable: Callable[[], bool] = _never,
    stopping: Callable[[], bool] = _never,
    guard: Callable[[], AbstractContextManager[Any]] = nullcontext,
    read_persisted: bool = False,
    compression: CompressionSettings | None = None,
) -> Accepted | Rejected:
    """Decide on the upgrade request ``environ`` (the steps of the module docstring).

    ``subscriber_class(client)`` makes the websocket's subscriber;
    ``broker_unreachable`` and ``stopping`` are asked before any work (and
    ``stopping`` again at the end); ``guard`` is held around the steps that
    may touch the database (``ws4redis.database_guard``); with
    ``read_persisted`` the persisted messages come with the answer; with
    ``compression`` (WS4REDIS_COMPRESSION) permessage-deflate is negotiated. Never
    raises for what a client, Redis or a project hook does.
    """
    if stopping():
        return SERVER_STOPPING
    if broker_unreachable():
        # Open websockets wait for Redis to come back; new ones are told to retry later.
        return BROKER_UNREACHABLE
    peer = environ.get("REMOTE_ADDR", "?")
    subscriber = None
    try:
        handshake = check_handshake(environ).with_compression(
            environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"), compression)
        with guard(), setup_failures(environ):
            negotiation = negotiate(environ, handshake, subscriber_class)
            subscriber = subscriber_class(client)
            subscriber.set_pubsub_channels(negotiation.request, negotiation.channels)
            history = channel_history(subscriber, negotiation)
            # Read before the 101 goes out: a client cannot publish anything yet, so a message
            # it sends right after connecting is not also found here and sent twice.
            persisted = [bytes(message) for message in subscriber.get_persisted_messages()] \
                if read_persisted and (history is None or not history.envelope) else []
    except HandshakeError as exc:
        logger.info("ws4redis: refused websocket of %s (%s %s): %s", peer, environ.get("REQUEST_METHOD"),
                    environ.get("PATH_INFO"), exc)
        if subscriber is not None:
            subscriber.release()
        return Rejected.from_error(exc)
    if stopping():
        subscriber.release()
        return SERVER_STOPPING
    logger.debug("ws4redis: %s subscribed to %s, publishing on %s", environ.get("PATH_INFO"),
                 subscriber.subscribed_channels, sorted(subscriber.publishers))
    return Accepted(handshake, subscriber, negotiation.echo, negotiation.subprotocol, persisted,
                    str(environ.get("PATH_INFO", "")), history)


def channel_history(subscriber: Any, negotiation: Negotiation) -> ChannelHistory | None:
    """The history side of a subscribed websocket; HandshakeError 400 when it asks for one in vain."""
    try:
        return for_subscriber(subscriber.history_policy(), subscriber.subscribed_channels, get_prefix(),
                              subscriber.facility, negotiation.history, negotiation.since,
                              newest=private_settings.WS4REDIS_EXPIRE > 0)
    except ValueError as exc:
        raise HandshakeError(f"Bad Request: {exc}", 400) from None
