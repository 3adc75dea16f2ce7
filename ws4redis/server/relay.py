"""The blocking relay of one websocket: a thread (or greenlet) waiting on two descriptors.

The development server (and any adapter of ``WebsocketWSGIServer``) runs one
relay per websocket: it waits on the websocket and on the subscriber's own
Redis pub/sub connection, with ``poll`` semantics (never ``select(2)``,
whose descriptor numbers stop at 1024), and follows the rules of
:mod:`ws4redis.server.rules` exactly as the evented connection does:

* the persisted messages, read before the 101 went out, are sent first, so
  a message the client publishes once connected is not also taken for a
  persisted one and delivered twice;
* every message Redis has buffered is delivered when its descriptor wakes
  up (0.6.0 delivered one per wake-up: four of a burst of five waited);
* payloads that are valid UTF-8 go out as text frames, anything else as
  binary frames (``frame_payload``, the hub's framing rule);
* the heartbeat is answered and never published, the keepalive's heartbeat,
  ping and ping timeout are those of the rules;
* a message Redis does not take closes the websocket with the rules' code
  (1013 when Redis is unreachable); when the subscriber's own pub/sub
  connection breaks, nothing is left to deliver from: 1011.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import redis

from ws4redis import constants
from ws4redis.exceptions import ConnectionClosed
from ws4redis.history import ChannelHistory, Seam, message_event, unwrap
from ws4redis.protocol import WebSocketProtocol, frame_for
from ws4redis.redis_store import RedisMessage, as_bytes, reply_kind, reply_payload
from ws4redis.server import journal
from ws4redis.server.config import ServerConfig
from ws4redis.server.rules import Due, EchoFilter, Inbound, Keepalive, forwarded, inbound, publish_failure

__all__ = ["BlockingWebSocket", "relay"]

logger = logging.getLogger(__name__)

SERVER = "runserver"  # the server path of a blocking relay, in logs and metrics

# wait(descriptors, timeout in seconds or None) -> the descriptors that are readable
Wait = Callable[[list[int], "float | None"], list[int]]


class BlockingWebSocket(Protocol):
    """What the relay needs of a websocket (``ws4redis.websocket.WebSocket`` is one)."""

    @property
    def closed(self) -> bool: ...

    def get_file_descriptor(self) -> int: ...

    def receive_available(self) -> list[str | bytes]: ...

    def send_frame(self, data: bytes) -> None: ...

    def ping(self, payload: bytes = b"") -> None: ...

    def close(self, code: int = constants.CLOSE_NORMAL, message: str | bytes = "") -> None: ...

    @property
    def protocol(self) -> WebSocketProtocol: ...


def relay(websocket: BlockingWebSocket, subscriber: Any, echo: bool, persisted: Iterable[bytes],
          config: ServerConfig, wait: Wait, peer: str = "?", path: str = "",
          history: ChannelHistory | None = None) -> None:
    """Send ``persisted``, then relay between ``websocket`` and Redis until either ends; never raises.

    ``peer`` and ``path`` name the websocket in the log lines of :mod:`ws4redis.server.journal`.
    With ``history`` (WS4REDIS_HISTORY) messages carry offsets; a client that asked for history
    envelopes first gets its replay (``ChannelHistory.replay``), then live messages from the
    seam on.
    """
    opened = time.monotonic()
    journal.opened(SERVER, peer, path, subscriber.subscribed_channels)
    loop = _Relay(websocket, subscriber, echo, config, history)
    try:
        for message in persisted:
            loop.send(loop.frame(message))
        if history is not None and history.envelope:
            loop.replay(wait)
        loop.run(wait)
    except ConnectionClosed as exc:
        logger.debug("ws4redis: websocket gone: %s", exc)
    except redis.RedisError as exc:
        logger.error("ws4redis: Redis failed, closing the websocket with 1011: %s", exc)
        websocket.close(constants.CLOSE_INTERNAL_ERROR, "message broker unavailable")
    except Exception:
        # After the upgrade no HTTP error can be sent: log it, close the websocket, keep serving.
        logger.exception("ws4redis: error in the websocket loop, closing the websocket with 1011")
        websocket.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")
    finally:
        journal.closed(SERVER, peer, path, websocket.protocol, time.monotonic() - opened, loop.messages_in,
                       loop.frames_out, loop.bytes_out)


class _Relay:
    __slots__ = ("websocket", "subscriber", "echo_filter", "heartbeat", "keepalive", "messages_in",
                 "frames_out", "bytes_out", "history", "labels", "envelope", "seam")

    def __init__(self, websocket: BlockingWebSocket, subscriber: Any, echo: bool,
                 config: ServerConfig, history: ChannelHistory | None = None) -> None:
        self.websocket = websocket
        self.history = history
        self.labels = {} if history is None else dict(history.labels)  # channels whose messages carry offsets
        self.envelope = history is not None and history.envelope
        self.seam: Seam | None = None
        self.subscriber = subscriber
        self.echo_filter = EchoFilter.unless_echo(echo, subscriber.publishers, subscriber.subscribed_channels)
        self.heartbeat = config.heartbeat
        self.keepalive = Keepalive(config, time.monotonic())
        self.messages_in = 0
        self.frames_out = 0  # data frames: the websocket writes its control frames itself
        self.bytes_out = 0

    def frame(self, payload: bytes, binary: bool | None = None) -> bytes:
        """The frame of ``payload`` for this websocket (deflated when it negotiated permessage-deflate)."""
        return frame_for(payload, self.websocket.protocol.deflation, binary)

    def replay(self, wait: Wait) -> None:
        """What a history client gets before live messages: its replay, then the recovery or position.

        The replay is read once Redis confirmed every subscription, so nothing published from then
        on is missed; messages that arrive meanwhile wait, and the :class:`Seam` drops those the
        replay had.
        """
        held = self._confirm_subscriptions(wait)
        entries, event, offsets = self.history.replay(self.subscriber.connection)
        for label, offset, binary, data in entries:
            self.send(self.frame(message_event(label, offset, binary, data)))
        self.send(self.frame(event))
        self.seam = Seam(self.labels, offsets)
        for reply in held:
            self._deliver(reply)

    def _confirm_subscriptions(self, wait: Wait) -> list[Any]:
        """Read until Redis confirmed every channel; returns the messages read meanwhile."""
        waiting = set(self.labels)
        held = []
        descriptor = self.subscriber.get_file_descriptor()
        deadline = time.monotonic() + constants.HUB_SUBSCRIBE_TIMEOUT
        while waiting:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise redis.TimeoutError("Redis did not confirm the subscriptions in time")
            if descriptor not in wait([descriptor], remaining):
                continue
            for reply in self.subscriber.parse_responses():
                if reply_kind(reply) == b"subscribe":
                    waiting.discard(as_bytes(reply[1]))
                else:
                    held.append(reply)
        return held

    def send(self, frame: bytes) -> None:
        self.websocket.send_frame(frame)
        self.frames_out += 1
        self.bytes_out += len(frame)

    def run(self, wait: Wait) -> None:
        websocket = self.websocket
        keepalive = self.keepalive
        websocket_fd = websocket.get_file_descriptor()
        redis_fd = self.subscriber.get_file_descriptor()
        descriptors = [websocket_fd] if redis_fd is None else [websocket_fd, redis_fd]
        # Frames that came with the handshake are already buffered; waiting on the socket would not see them.
        if not self._publish_received():
            return
        while not websocket.closed:
            ready = wait(descriptors, keepalive.next_due(time.monotonic()))
            now = time.monotonic()
            if websocket_fd in ready:
                keepalive.received(now)
                if not self._publish_received():
                    return
            if redis_fd in ready and not websocket.closed:
                self._deliver_buffered()
            if websocket.closed:
                return
            due = keepalive.due(now)
            if due & Due.PING_TIMEOUT:
                logger.info("ws4redis: a websocket did not answer a ping in time; closing it with 1011")
                websocket.close(constants.CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                return
            # Idle: keep the client, and any proxy on the way, from giving up on the connection.
            if due & Due.HEARTBEAT:
                self.send(self.frame(self.heartbeat))
            if due & Due.PING:
                websocket.ping()

    def _publish_received(self) -> bool:
        """Publish every complete message from the client; False once the websocket is closed for it."""
        websocket = self.websocket
        for message in websocket.receive_available():
            data = message.encode("utf-8") if isinstance(message, str) else bytes(message)
            action = inbound(data, self.heartbeat)
            if action is Inbound.ANSWER_HEARTBEAT:
                if not websocket.closed:
                    self.send(self.frame(data))
            elif action is Inbound.PUBLISH:
                self.messages_in += 1
                try:
                    self.subscriber.publish_message(RedisMessage.received(data, not isinstance(message, str)))
                except redis.RedisError as exc:
                    code, reason = publish_failure(exc)
                    logger.warning("ws4redis: cannot publish a message (%s); closing the websocket with %d",
                                   exc, code)
                    websocket.close(code, reason)
                    return False
                if self.echo_filter is not None:
                    self.echo_filter.published(data)
        return True

    def _deliver_buffered(self) -> None:
        """Deliver every message Redis has buffered, not only the first."""
        for reply in self.subscriber.parse_responses():
            self._deliver(reply)

    def _deliver(self, reply: Any) -> None:
        payload = _payload(reply)
        if payload is None:
            return  # subscribe confirmations and the like
        channel = as_bytes(reply[-2])
        offset = binary = None
        label = self.labels.get(channel)
        if label is not None:
            offset, binary, payload = unwrap(payload)
        if not forwarded(payload, self.heartbeat):
            return  # heartbeats, empty messages
        name = channel.decode("utf-8", "replace")
        if self.echo_filter is not None and self.echo_filter.is_echo(name, payload):
            return
        if self.seam is not None and self.seam.replayed(name, offset):
            return
        if self.envelope and label is not None:
            self.send(self.frame(message_event(label, offset, binary, payload)))
        else:
            self.send(self.frame(payload, binary))


def _payload(reply: Any) -> bytes | None:
    value = reply_payload(reply)
    if value is None:
        return None
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)

