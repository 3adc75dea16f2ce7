"""The production websocket server: gevent, no greenlet per open websocket, one Redis pub/sub per process.

Every accepted connection is handled by :class:`WebSocketHandler`. The first
request head is read here, with the limits of ``ws4redis.handshake`` (431/414
for oversized heads, 408 when it takes longer than WS4REDIS_HANDSHAKE_TIMEOUT):

* under WEBSOCKET_URL it becomes a websocket (handshake and channel
  negotiation from ``ws4redis.session``, exactly as the other servers do);
* anything else goes to the Django WSGI application through gevent's
  pywsgi (keep-alive included), or gets 404 with ``websocket_only``.

An open websocket is a :class:`WebSocketConnection`. Its handler greenlet
ends with the 101 response (and with it the request, the session and the
greenlet's stack): from then on a libev read watcher parses frames
(``ws4redis.protocol`` over the compiled core), one timer per process looks
after silent websockets, and received messages go to the process's
:class:`PublishBatcher`, which pipelines them to Redis. Live messages arrive
from the process's :class:`ws4redis.hub.Hub`, already framed, and are
written with non-blocking ``os.writev`` from a bounded queue; a blocked
socket is resumed by a libev write watcher. A client that cannot keep up is
closed with 1008 instead of growing the process. An idle websocket thus
costs a few small objects (about 3 KiB of RSS), no greenlet.

This module expects gevent's monkey-patching to be done (``python -m ws4redis
serve`` and ``manage.py runwebsocket`` do it before Django and redis-py are
imported).
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
import redis
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import error_response, parse_request_head, request_head_length, upgrade_response
from ws4redis.hub import Hub, SubscriptionRecorder, get_hub
from ws4redis.protocol import Message, ProtocolViolation, State, WebSocketProtocol, frame_payload
from ws4redis.redis_errors import UNAVAILABLE
from ws4redis.redis_store import PublishPlan, RedisMessage, pooled_connection, uses_publish_plan
from ws4redis.session import check_handshake, negotiate
from ws4redis.wsgi_server import EchoFilter, setup_failures

__all__ = ["ServerConfig", "WebSocketConnection", "WebSocketHandler", "WebSocketServer", "run_worker"]

logger = logging.getLogger("ws4redis")

IOV_MAX = os.sysconf("SC_IOV_MAX")

# Connection states, ordered: deliveries are accepted while state <= OPEN; DRAINING reads no more.
SETUP, OPEN, CLOSING, DRAINING, CLOSED = range(5)


class ServerConfig:
    """The settings a worker reads once at start-up (validated by ``validate_settings``)."""

    __slots__ = (
        "websocket_url", "websocket_only", "heartbeat", "ping_interval", "ping_timeout", "queue_bytes",
        "queue_messages", "max_message_size", "max_fragments", "handshake_timeout", "shutdown_timeout",
        "tick", "subscriber_class",
    )

    def __init__(self, websocket_only: bool = False) -> None:
        self.websocket_url: str = private_settings.WEBSOCKET_URL
        self.websocket_only = websocket_only
        heartbeat = private_settings.WS4REDIS_HEARTBEAT
        self.heartbeat: bytes | None = heartbeat.encode() if heartbeat else None
        self.ping_interval: float | None = private_settings.WS4REDIS_PING_INTERVAL
        self.ping_timeout: float = private_settings.WS4REDIS_PING_TIMEOUT
        self.queue_bytes: int = private_settings.WS4REDIS_SEND_QUEUE_BYTES
        self.queue_messages: int = private_settings.WS4REDIS_SEND_QUEUE_MESSAGES
        self.max_message_size: int = private_settings.WS4REDIS_MAX_MESSAGE_SIZE
        self.max_fragments: int = private_settings.max_fragments()
        self.handshake_timeout: float = private_settings.WS4REDIS_HANDSHAKE_TIMEOUT
        self.shutdown_timeout: float = private_settings.WS4REDIS_SHUTDOWN_TIMEOUT
        # How often a silent websocket is looked at (heartbeat, ping, ping timeout): each of
        # them is at most half a tick late.
        ticks = [self.ping_timeout]
        if self.ping_interval is not None:
            ticks.append(self.ping_interval)
        if self.heartbeat is not None:
            ticks.append(constants.LEGACY_HEARTBEAT_INTERVAL)
        self.tick: float = min(ticks) / 2
        self.subscriber_class: type = hub_subscriber_class(private_settings.subscriber_class())


def hub_subscriber_class(base: type) -> type:
    """``base`` (WS4REDIS_SUBSCRIBER) with its subscriptions recorded for the hub, not opened."""

    def create_subscription(self: Any) -> SubscriptionRecorder:
        return SubscriptionRecorder()

    return type(base.__name__, (base,), {"create_subscription": create_subscription, "__module__": __name__})


class PublishBatcher:
    """Publishes what the websockets of the process received, pipelined over one pooled connection.

    A websocket hands over each message packed by its
    :class:`~ws4redis.redis_store.PublishPlan` without blocking. One greenlet,
    alive only while messages wait, writes everything waiting in one send,
    reads the replies in order and tells each websocket how its message
    fared, so under load many messages share one round trip and no websocket
    needs a greenlet of its own to publish.
    """

    __slots__ = ("client", "_waiting", "_worker", "_plans")

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._waiting: list[tuple[Any, PublishPlan, bytes]] = []
        self._worker: gevent.Greenlet | None = None
        # Websockets publishing to the same channels share one plan (thousands on one broadcast, say).
        self._plans: weakref.WeakValueDictionary[tuple[tuple[str, ...], int], PublishPlan] = \
            weakref.WeakValueDictionary()

    def plan_for(self, subscriber: Any) -> PublishPlan:
        """The plan of ``subscriber``'s publish channels and expiry, shared with every equal one."""
        plan = subscriber.publish_plan()
        return self._plans.setdefault((plan.channels, plan.expire), plan)

    def submit(self, listener: Any, plan: PublishPlan, packed: bytes) -> None:
        """Queue ``packed`` (``plan.pack(message)``); ``listener.published(error)`` follows."""
        self._waiting.append((listener, plan, packed))
        if self._worker is None:
            self._worker = gevent.spawn(self._run)

    def close(self) -> None:
        worker = self._worker
        if worker is not None:
            worker.kill(block=True, timeout=constants.SHUTDOWN_KILL_MARGIN / 2)

    def _run(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    outcomes = self._send(batch)
                except Exception as exc:  # a bug: every websocket of the batch closes with 1011
                    logger.exception("ws4redis: publishing %d messages failed", len(batch))
                    outcomes = [exc] * len(batch)
                for (listener, _, _), error in zip(batch, outcomes, strict=True):
                    try:
                        listener.published(error)
                    except Exception:
                        # A bug in one listener must not keep the rest of the batch from hearing back.
                        logger.exception("ws4redis: the websocket of %s failed after publishing",
                                         getattr(listener, "peer", "?"))
        finally:
            self._worker = None

    def _send(self, batch: list[tuple[Any, PublishPlan, bytes]]) -> list[Exception | None]:
        """One round trip for the whole batch, retried once should the pooled connection be dead."""
        packed = b"".join(item[2] for item in batch)
        pool = self.client.connection_pool
        failure: Exception | None = None
        for _attempt in range(2):
            connection = None
            try:
                connection = pooled_connection(pool)
                connection.send_packed_command((packed,))
                outcomes: list[Exception | None] = []
                for _, plan, _ in batch:
                    try:
                        plan.read_replies(connection)
                    except redis.ResponseError as exc:
                        outcomes.append(exc)
                    else:
                        outcomes.append(None)
                return outcomes
            except (*UNAVAILABLE, OSError) as exc:
                failure = exc
                if connection is not None:
                    connection.disconnect()
            finally:
                if connection is not None:
                    pool.release(connection)
        return [failure] * len(batch)


class WebSocketConnection:
    """One open websocket: the hub's listener, driven by libev watchers rather than a greenlet.

    Outgoing frames (live messages framed once by the hub, and this
    connection's own control frames) share one queue, bounded by
    WS4REDIS_SEND_QUEUE_BYTES/MESSAGES, written with non-blocking
    ``os.writev``; when the socket is full a libev write watcher resumes the
    writing, so one slow client never blocks the hub or other clients.

    Once the 101 response is out, the handler greenlet ends: a libev read
    watcher parses whatever arrives, the server's ticker looks after silent
    websockets, and received messages go to the server's
    :class:`PublishBatcher`; reading pauses until Redis has taken them, as a
    blocked reader would. (A subscriber with its own ``publish_message`` gets
    a greenlet while it publishes.) An idle websocket thus costs a few small
    objects, no greenlet stack.
    """

    __slots__ = (
        "_fd", "protocol", "subscriber", "channels", "patterns", "echo_filter", "config", "server",
        "peer", "_state", "_queue", "_queued_bytes", "_offset", "_reader", "_watcher", "_blocked",
        "_persisted", "_unpublished", "_in_flight", "_plan", "_last_recv", "_last_heartbeat", "_last_ping",
        "_unanswered_since", "_closing_since", "_draining_since", "_backlogged_since", "_lingering",
        "refused",
    )

    def __init__(self, fd: int, subscriber: Any, server: WebSocketServer, peer: str, echo: bool) -> None:
        config = server.config
        self._fd = fd
        self.protocol = WebSocketProtocol(max_message_size=config.max_message_size,
                                          max_fragments=config.max_fragments)
        self.subscriber = subscriber
        recorder = getattr(subscriber, "_subscription", None)
        self.channels: tuple[bytes, ...] = tuple(getattr(recorder, "channels", ()))
        self.patterns: tuple[bytes, ...] = tuple(getattr(recorder, "patterns", ()))
        # Without ?echo the copies of its own messages coming back are dropped (the rule of wsgi_server).
        echo_filter = None if echo else EchoFilter(subscriber.publishers, subscriber.subscribed_channels)
        self.echo_filter = echo_filter if echo_filter is not None and echo_filter.channels else None
        # Channels, keys and expiry of what this websocket publishes, settled once, for the
        # server's batcher (None: the subscriber publishes its own way, message by message).
        publisher = server.publisher
        self._plan: PublishPlan | None = (
            publisher.plan_for(subscriber)
            if uses_publish_plan(subscriber) and subscriber._connection is publisher.client else None
        )
        self.config = config
        self.server = server
        self.peer = peer
        self._state = SETUP
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._offset = 0  # bytes of _queue[0] already written
        self._reader: Any = None  # the read watcher: set once the descriptor belongs to this connection
        self._watcher: Any = None  # the write watcher, created when the socket first fills up
        self._blocked = False  # waiting for the socket to become writable
        self._persisted: list[bytes] | None = None
        self._unpublished: list[bytes] | None = None  # received, not handed over for publishing yet
        self._in_flight = 0  # messages with the batcher, not yet confirmed by Redis
        self._last_recv = self._last_heartbeat = self._last_ping = time.monotonic()
        self._unanswered_since = 0.0  # when the oldest ping still without an answer went out
        self._closing_since = 0.0
        self._draining_since = 0.0
        self._backlogged_since = 0.0  # reading paused: our answers to the peer are over the queue limits
        self._lingering = False  # all frames out, write side shut: reading until the peer closes too
        self.refused: str | None = None  # why it was closed before the 101 went out (see close())

    # --- the hub's side ---------------------------------------------------

    def deliver(self, frame: bytes, payload: bytes, channel: str) -> bool:
        """Queue a frame framed by the hub; True when this connection needs a flush."""
        if self._state > OPEN:
            return False
        echo_filter = self.echo_filter
        if echo_filter is not None and echo_filter.is_echo(channel, payload):
            return False
        queue = self._queue
        queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > self.config.queue_bytes or len(queue) > self.config.queue_messages:
            # A burst fills the queue before the hub flushes: let the socket take what it can first.
            if self._state == OPEN and not self._blocked:
                self._write()
            if self._queued_bytes > self.config.queue_bytes or len(self._queue) > self.config.queue_messages:
                self._overflow()
                return False
        return len(queue) == 1 and self._state == OPEN and not self._blocked

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it without blocking."""
        if self._queue and not self._blocked and self._state != SETUP and self._state != CLOSED:
            self._write()

    def send(self, message: str | bytes) -> None:
        """Send one message (0.6.0's ``websocket.send``; custom subscribers call it for persisted ones)."""
        frame = frame_payload(message.encode() if isinstance(message, str) else message)
        if self._persisted is not None:
            self._persisted.append(frame)
        elif self._state <= OPEN:
            self._send_frames(frame)

    # --- writing ----------------------------------------------------------

    def _send_frames(self, data: bytes) -> None:
        """Queue bytes of our own (control frames, heartbeats) and write them now if possible."""
        if not data or self._state == CLOSED:
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        self.flush()

    def _write(self) -> None:
        queue = self._queue
        offset = self._offset
        try:
            if len(queue) == 1:
                sent = os.write(self._fd, memoryview(queue[0])[offset:] if offset else queue[0])
            else:
                buffers: list[Any] = queue[:IOV_MAX]
                if offset:
                    buffers[0] = memoryview(buffers[0])[offset:]
                sent = os.writev(self._fd, buffers)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._abort(f"write failed: {exc}")
            return
        self._queued_bytes -= sent
        offset += sent
        done = 0
        for frame in queue:
            if offset < len(frame):
                break
            offset -= len(frame)
            done += 1
        if done == len(queue):
            queue.clear()
        elif done:
            del queue[:done]
        self._offset = offset
        if queue:
            if not self._blocked:
                if self._watcher is None:
                    self._watcher = gevent.get_hub().loop.io(self._fd, 2)
                self._watcher.start(self._on_writable)
                self._blocked = True
        else:
            if self._blocked:
                self._watcher.stop()
                self._blocked = False
            if self._state == DRAINING:
                self._linger()
        if self._backlogged_since and not self._over_limits():
            self._backlogged_since = 0.0
            self._resume_reading()

    def _over_limits(self) -> bool:
        config = self.config
        return self._queued_bytes > config.queue_bytes or len(self._queue) > config.queue_messages

    def _on_writable(self) -> None:
        self._watcher.stop()
        self._blocked = False
        if self._state != CLOSED:
            self._write()

    def _overflow(self) -> None:
        logger.warning(
            "ws4redis: closing websocket of %s with 1008: it fell %d messages / %d bytes behind "
            "(WS4REDIS_SEND_QUEUE_MESSAGES=%d, WS4REDIS_SEND_QUEUE_BYTES=%d)",
            self.peer, len(self._queue), self._queued_bytes, self.config.queue_messages,
            self.config.queue_bytes,
        )
        self._drop_unsent()
        self.close(constants.CLOSE_POLICY_VIOLATION, "send queue overflow: client too slow")
        self._end()

    def _drop_unsent(self) -> None:
        """Forget the queued frames, so that a close frame goes out next; whole frames only reach the wire."""
        queue = self._queue
        kept = queue[:1] if self._offset else []
        self._queue = kept
        self._queued_bytes = len(kept[0]) - self._offset if kept else 0

    def _abort(self, reason: str) -> None:
        """The peer is gone: drop everything queued and release the connection."""
        logger.debug("ws4redis: websocket of %s aborted: %s", self.peer, reason)
        was_setup = self._state == SETUP
        self._state = CLOSED
        self._queue = []
        self._queued_bytes = 0
        self._offset = 0
        if self._blocked:
            self._watcher.stop()
            self._blocked = False
        if not was_setup:
            self._stop_reading()
            self._schedule_finish()

    # --- closing ----------------------------------------------------------

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake (from any greenlet); no data frame follows the close frame.

        Before the 101 response went out there is no websocket to close yet:
        the connection is only marked, and the client gets a 503 instead.
        """
        if self._state >= CLOSING:
            return
        if self._state == SETUP:
            self._state = CLOSED
            self._queue = []
            self._queued_bytes = 0
            self.refused = reason
            return
        self._state = CLOSING
        self._closing_since = time.monotonic()
        self.protocol.send_close(code, reason)
        self._send_frames(self.protocol.data_to_send())

    def _end(self) -> None:
        """Nothing more is read: give the peer WS4REDIS_PING_TIMEOUT to take the frames still queued."""
        if self._state >= DRAINING:
            return
        self._stop_reading()
        self._state = DRAINING
        self._draining_since = time.monotonic()
        self.flush()
        if not self._queue and self._state == DRAINING:
            self._linger()

    def _linger(self) -> None:
        """Our last frame is out: shut our side and read until the peer closes, within the drain deadline.

        Closing a socket that still holds unread input makes the kernel send a reset, and a peer
        that is still sending would lose our close frame to it. With the write side shut first the
        peer reads the frame and then the end of the stream; what it sends meanwhile is discarded.
        """
        if self._lingering:
            return
        self._lingering = True
        reader = self._reader
        if reader is None:
            return
        try:
            sock = socket.socket(fileno=self._fd)
            try:
                sock.shutdown(socket.SHUT_WR)
            finally:
                sock.detach()
        except OSError as exc:
            logger.debug("ws4redis: websocket of %s: shutdown failed: %s", self.peer, exc)
            self._schedule_finish()
            return
        reader.stop()
        reader.start(self._discard)

    def _discard(self) -> None:
        try:
            data = os.read(self._fd, constants.SERVER_READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._reader.stop()
            self._schedule_finish()

    def _schedule_finish(self) -> None:
        """Release the connection from the event loop, outside of whatever is delivering to it."""
        if self._reader is not None:
            gevent.get_hub().loop.run_callback(self.server.release, self)

    # --- setup (in the handler greenlet) ------------------------------------

    def prepare(self, hub: Hub) -> None:
        """Subscribe and fetch the persisted messages, before the client learns the websocket is open.

        Live messages arriving meanwhile are queued behind the persisted ones,
        so a client that publishes as soon as it is open is already heard.
        """
        confirmed = hub.subscribe(self, self.channels, self.patterns)
        if not confirmed:
            logger.warning("ws4redis: Redis did not confirm the subscriptions of %s in time", self.peer)
        self._persisted = []
        try:
            self.subscriber.send_persisted_messages(self)
        except UNAVAILABLE as exc:
            logger.warning("ws4redis: persisted messages for %s unavailable (%s); the hub re-sends them "
                           "once Redis is back", self.peer, exc)
        persisted, self._persisted = self._persisted, None
        self._queue[:0] = persisted
        self._queued_bytes += sum(len(frame) for frame in persisted)

    def start(self, data: bytes) -> None:
        """The 101 response is out and the descriptor ours: frames flow, reading moves to a watcher.

        ``data`` holds the bytes the client sent right after its handshake.
        """
        self._reader = gevent.get_hub().loop.io(self._fd, 1)
        if self._state == SETUP:
            self._state = OPEN
        self.flush()
        if self._state == CLOSED:
            self._schedule_finish()
            return
        if data:
            self._feed(data)
        else:
            self._resume_reading()

    # --- reading (libev callbacks) -------------------------------------------

    def _resume_reading(self) -> None:
        reader = self._reader
        if (self._state < DRAINING and self._unpublished is None and not self._in_flight
                and not self._backlogged_since and not reader.active):
            reader.start(self._on_readable)

    def _stop_reading(self) -> None:
        if self._reader is not None:
            self._reader.stop()

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, constants.SERVER_READ_SIZE)
        except BlockingIOError:
            return
        except OSError as exc:
            logger.debug("ws4redis: websocket of %s: read failed: %s", self.peer, exc)
            self._end()
            return
        if not data:
            self.protocol.receive_eof()
            self._end()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Handle received bytes; never raises for what a peer (or a custom subscriber) does."""
        try:
            self._receive(data)
        except Exception:
            # A bug (in a custom subscriber, say) ends this websocket with 1011, never the server.
            logger.exception("ws4redis: websocket of %s failed; closing it with 1011", self.peer)
            self._unpublished = None
            self.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")
            self._end()

    def _receive(self, data: bytes) -> None:
        self._last_recv = time.monotonic()
        self._unanswered_since = 0.0  # any data proves the peer alive, not only a pong
        protocol = self.protocol
        for event in protocol.receive_data(data):
            if type(event) is Message:
                self._on_message(event.data)
            elif type(event) is ProtocolViolation:
                logger.info("ws4redis: websocket of %s broke the protocol: %s (close code %d)",
                            self.peer, event.error, event.error.close_code)
        if protocol.state is not State.OPEN and self._state < CLOSING:
            self._state = CLOSING  # no data frame may follow the close frame queued by the protocol
        self._send_frames(protocol.data_to_send())
        if self._over_limits() and not self._backlogged_since:
            # Pongs and heartbeats for a peer that does not read: read no more until it takes them,
            # so whatever it sends, what waits for it stays within the queue limits.
            self._backlogged_since = time.monotonic()
            self._stop_reading()
        if self._unpublished is not None:
            self._stop_reading()  # as a blocked reader would: the socket buffers what comes next
            plan = self._plan
            if plan is None:
                gevent.spawn(self._publish_received)
            elif not plan.replies:  # no publish channel: the messages go nowhere, as in 0.6.0
                self._unpublished = None
                self._resume_reading()
            else:
                messages, self._unpublished = self._unpublished, None
                self._in_flight += len(messages)
                submit = self.server.publisher.submit
                for data in messages:
                    submit(self, plan, plan.pack(data))
        elif protocol.state is State.CLOSED:
            self._end()
        else:
            self._resume_reading()

    def _on_message(self, data: bytes) -> None:
        if self._state != OPEN:
            return
        heartbeat = self.config.heartbeat
        if heartbeat is not None and data == heartbeat:
            # The client's heartbeat: answer it (0.6.0 sent one after every loop turn).
            self.protocol.send_message(heartbeat)
            return
        if not data:
            return
        if self.echo_filter is not None:
            self.echo_filter.published(data)
        if self._unpublished is None:
            self._unpublished = [data]
        else:
            self._unpublished.append(data)

    # --- publishing -------------------------------------------------------

    def published(self, error: Exception | None) -> None:
        """The batcher's word on one submitted message: Redis took it (``error`` None) or not."""
        self._in_flight -= 1
        if self._state == CLOSED:
            return
        if error is not None and self._state <= OPEN:
            if isinstance(error, UNAVAILABLE):
                logger.warning("ws4redis: cannot publish the message of %s (%s); closing with 1013",
                               self.peer, error)
                self.close(constants.CLOSE_TRY_AGAIN_LATER, "message not published: Redis unavailable")
            else:
                logger.error("ws4redis: publishing the message of %s failed (%r); closing it with 1011",
                             self.peer, error)
                self.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")
        if not self._in_flight:
            if self.protocol.state is State.CLOSED:
                self._end()
            else:
                self._resume_reading()

    # A subscriber with its own publish_message: a greenlet, only while there is something to publish.

    def _publish_received(self) -> None:
        try:
            while self._unpublished:
                messages, self._unpublished = self._unpublished, []
                for data in messages:
                    if not self._publish(data):
                        self._unpublished = None
                        break
            self._unpublished = None
            if self._state == CLOSED:
                return
            if self.protocol.state is State.CLOSED:
                self._end()
            else:
                self._resume_reading()
        except Exception:
            # A bug in one websocket closes that websocket with 1011, never the server.
            logger.exception("ws4redis: websocket of %s failed; closing it with 1011", self.peer)
            self._unpublished = None
            self.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")
            self._end()

    def _publish(self, data: bytes) -> bool:
        """Publish one received message; False (and a 1013 close) when Redis cannot take it."""
        try:
            self.subscriber.publish_message(RedisMessage(data))
        except UNAVAILABLE as exc:
            logger.warning("ws4redis: cannot publish the message of %s (%s); closing with 1013",
                           self.peer, exc)
            self.close(constants.CLOSE_TRY_AGAIN_LATER, "message not published: Redis unavailable")
            return False
        return True

    # --- silence (the server's ticker) ----------------------------------------

    def tick(self, now: float) -> None:
        """Called every tick by the server: heartbeat, ping, or give up on a silent or slow peer."""
        state = self._state
        if self._reader is None or state == CLOSED:
            return
        if state == DRAINING:
            if now - self._draining_since >= self.config.ping_timeout:
                self._abort("the peer did not take the last frames in time")
        elif not self._idle(now):
            self._end()

    def _idle(self, now: float) -> bool:
        """Heartbeat, ping or give up on a silent peer. False ends the connection."""
        config = self.config
        if self._state == CLOSING:
            return now - self._closing_since < config.ping_timeout
        if self._state != OPEN:
            return True
        if self._backlogged_since and now - self._backlogged_since >= config.ping_timeout:
            logger.warning("ws4redis: closing websocket of %s with 1008: it does not read what it asks for "
                           "(%d bytes waiting for %g s)", self.peer, self._queued_bytes, config.ping_timeout)
            self._drop_unsent()  # answers to its pings: the close frame goes first
            self.close(constants.CLOSE_POLICY_VIOLATION, "client does not read")
            return False
        if self._unanswered_since and now - self._unanswered_since >= config.ping_timeout:
            logger.info("ws4redis: websocket of %s did not answer a ping within %g s; closing with 1011",
                        self.peer, config.ping_timeout)
            self.close(constants.CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            return False
        heartbeat = config.heartbeat
        if heartbeat is not None and now - max(self._last_recv, self._last_heartbeat) >= \
                constants.LEGACY_HEARTBEAT_INTERVAL:
            self.protocol.send_message(heartbeat)
            self._last_heartbeat = now
        interval = config.ping_interval
        if interval is not None and now - max(self._last_recv, self._last_ping) >= interval:
            self.protocol.send_ping()
            self._last_ping = now
            self._unanswered_since = self._unanswered_since or now
        self._send_frames(self.protocol.data_to_send())
        return True

    # --- release ----------------------------------------------------------

    def finish(self, hub: Hub) -> None:
        """Release everything at once (also at a forced shutdown): hub routes, subscriber, watchers, fd.

        Before :meth:`start` the descriptor still belongs to the handler's socket, which closes it.
        """
        self._state = CLOSED
        self._queue = []
        self._unpublished = None
        hub.unsubscribe(self, self.channels, self.patterns)
        try:
            self.subscriber.release()
        finally:
            reader, self._reader = self._reader, None
            watcher, self._watcher = self._watcher, None
            self._blocked = False
            for io in (reader, watcher):
                if io is not None:
                    io.stop()
                    io.close()
            if reader is not None:
                fd, self._fd = self._fd, -1
                # socket.close, not os.close: gevent's os.close defers the close to the next turn of
                # the loop, which may be seconds away when the process is idle. Our watchers are stopped.
                socket.close(fd)


def request_environ(handler: WSGIHandler, method: str, target: str, headers: Any) -> dict[str, Any]:
    """The WSGI environ of a request head parsed by ``ws4redis.handshake`` (as pywsgi would build it)."""
    from urllib.parse import unquote_to_bytes

    environ = handler.server.get_environ()
    path, _, query = target.partition("?")
    environ.update({
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
    })
    address = handler.client_address
    if isinstance(address, tuple):
        environ["REMOTE_ADDR"] = str(address[0])
        environ["REMOTE_PORT"] = str(address[1])
    for name, value in headers.items():
        if "_" in name:
            continue  # "X_Forwarded" would pose as "X-Forwarded": drop it, as Django's runserver does
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    environ["wsgi.input"] = _EMPTY_INPUT
    return environ


class _EmptyInput:
    """``wsgi.input`` of a handshake: a GET without body."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


_EMPTY_INPUT = _EmptyInput()


class WebSocketHandler(WSGIHandler):
    """pywsgi's handler, reading the first request head itself and serving websockets."""

    server: WebSocketServer
    _requests = 0

    def handle_one_request(self) -> Any:
        """Every request head of a connection, the first and each kept-alive one, under the same deadline."""
        config = self.server.config
        self._requests += 1
        try:
            head = self._read_head(config.handshake_timeout)
        except HandshakeError as exc:
            return str(exc.status), error_response(exc)
        except OSError:
            return None
        if head is None:
            return None
        request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = request_line.split()
        target = parts[1].decode("latin-1") if len(parts) == 3 else ""
        if target.startswith(config.websocket_url):
            try:
                method, target, headers = parse_request_head(head)
            except HandshakeError as exc:
                return str(exc.status), error_response(exc)
            self._serve_websocket(request_environ(self, method, target, headers))
            return None
        if config.websocket_only or self.server.application is None:
            error = HandshakeError(
                f"Not Found: this server only serves websockets under {config.websocket_url}", 404
            )
            return "404", error_response(error)
        return self._http_request(request_line, head)

    def _read_head(self, timeout: float) -> bytes | None:
        """The request head (blank line included), None on a clean EOF.

        The whole head must arrive within ``timeout`` (WS4REDIS_HANDSHAKE_TIMEOUT), however slowly
        its bytes trickle in, on a new connection as on a kept-alive one: HandshakeError 408 when it
        does not (also for an idle kept-alive connection, as RFC 9110 allows), 414/431/400 for a
        head that is too large or broken.
        """
        limit = constants.MAX_REQUEST_HEAD_SIZE
        data = bytearray()
        # The deadline is the gevent timeout below; the socket timeout left by the previous request
        # (for its body) would end the read as if the peer had closed.
        self.socket.settimeout(None)
        try:
            with gevent.Timeout(timeout):
                return self._read_head_lines(data, limit)
        except gevent.Timeout:
            raise HandshakeError(f"Request Timeout: the request head took longer than {timeout:g} s",
                                 408) from None

    def _read_head_lines(self, data: bytearray, limit: int) -> bytes | None:
        while True:
            line = self.rfile.readline(limit + 1 - len(data))
            if not line:
                if data:
                    raise HandshakeError("Bad Request: connection closed inside the request head", 400)
                return None
            if not data and line in (b"\r\n", b"\n"):
                continue  # RFC 9112, section 2.2: ignore empty lines before the request line
            data += line
            if line in (b"\r\n", b"\n"):
                return bytes(data)
            if len(data) > limit:
                request_head_length(data, limit)  # raises 414 or 431
                raise HandshakeError(f"Request Header Fields Too Large: head exceeds {limit} bytes", 431)

    def _http_request(self, request_line: bytes, head: bytes) -> Any:
        """Serve a plain HTTP request whose head was already read, through pywsgi and the application."""
        from io import BytesIO

        self.requestline = request_line.decode("latin-1")
        self.response_length = 0
        rfile, self.rfile = self.rfile, BytesIO(head[len(request_line):].lstrip(b"\r\n") or b"\r\n")
        try:
            self.read_request(self.requestline)
        except (ValueError, http.client.HTTPException) as exc:
            error = HandshakeError(f"Bad Request: {exc}", 400)
            return "400", error_response(error)
        finally:
            self.rfile = rfile
        self.environ = self.get_environ()
        self.application = self.server.application
        if self._requests >= constants.MAX_REQUESTS_PER_CONNECTION:
            self.close_connection = True  # pywsgi answers with Connection: close
        # A request body that stalls is given up after the same delay as a slow handshake.
        self.socket.settimeout(self.server.config.handshake_timeout)
        self.handle_one_response()
        if self.close_connection or self.rfile.closed:
            return None
        return True

    def handle_one_response(self) -> None:
        environ = self.environ
        if environ.get("PATH_INFO", "").startswith(self.server.config.websocket_url):
            # A websocket upgrade on a kept-alive connection (the first request was plain HTTP).
            self.close_connection = True
            self._serve_websocket(environ)
            return
        super().handle_one_response()

    def _serve_websocket(self, environ: dict[str, Any]) -> None:
        """Handshake, negotiate, then run the websocket until it closes. Never raises."""
        sock = self.socket
        peer = str(environ.get("REMOTE_ADDR", "?"))
        # Bytes a client pipelined after its handshake sit in pywsgi's read buffer.
        sock.settimeout(0.0)
        pending = self.rfile.peek() if self.rfile is not None else b""
        self.rfile = None  # frees the 8 KB read buffer for the life of the websocket
        sock.settimeout(self.server.config.handshake_timeout)
        accepted = self._accept(environ, peer)
        # The request, its session and user stay behind: a websocket lives for hours.
        self.environ = environ = None
        if accepted is not None:
            self._run_websocket(peer, pending, *accepted)

    def _accept(self, environ: dict[str, Any], peer: str) -> tuple[Any, bool, bytes] | None:
        """(subscriber, echo, 101 response) for an acceptable upgrade; None once the refusal is sent."""
        server = self.server
        if server.hub.unreachable:
            # Open websockets wait for Redis to come back; new ones are told to retry later.
            self._send_raw(error_response(HandshakeError(constants.BROKER_UNREACHABLE_TEXT, 503)))
            return None
        try:
            handshake = check_handshake(environ)
            # The answers of every server: 403 from WS4REDIS_ALLOWED_CHANNELS, 503 when Redis (or the
            # session store) fails, 500 for a bug in a hook; database connections released.
            with setup_failures(environ):
                negotiation = negotiate(environ, handshake, server.config.subscriber_class)
                subscriber = server.config.subscriber_class(server.hub.client)
                subscriber.set_pubsub_channels(negotiation.request, negotiation.channels)
        except HandshakeError as exc:
            logger.info("ws4redis: refused websocket of %s: %s", peer, exc)
            self._send_raw(error_response(exc))
            return None
        if server.shutting_down:
            self._send_raw(error_response(HandshakeError(constants.SERVER_STOPPING_TEXT, 503)))
            subscriber.release()
            return None
        return subscriber, negotiation.echo, upgrade_response(handshake, negotiation.subprotocol)

    def _run_websocket(self, peer: str, pending: bytes, subscriber: Any, echo: bool, upgrade: bytes) -> None:
        """Subscribe, answer 101 and hand the descriptor over to the connection; this greenlet then ends."""
        server = self.server
        sock = self.socket
        connection = WebSocketConnection(sock.fileno(), subscriber, server, peer, echo)
        server.connections.add(connection)
        try:
            connection.prepare(server.hub)
            if connection.refused is not None:
                refusal = HandshakeError(f"Service Unavailable: {connection.refused}", 503)
                self._send_raw(error_response(refusal))
            elif self._send_raw(upgrade):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                # From now on the descriptor is the connection's: pywsgi must neither read nor close it.
                self.socket = None
                sock.detach()
                connection.start(pending)
                return
        except Exception:
            # A bug (in a custom subscriber, say) ends this websocket, never the server.
            logger.exception("ws4redis: websocket setup of %s failed", peer)
        if self.socket is not None:
            server.release(connection)

    def _send_raw(self, data: bytes) -> bool:
        try:
            self.socket.sendall(data)
        except OSError as exc:
            logger.debug("ws4redis: handshake answer to %s failed: %s", self.client_address, exc)
            return False
        return True


class WebSocketServer(WSGIServer):
    """pywsgi's server with :class:`WebSocketHandler`, its websockets and a graceful stop.

    Open websockets have no greenlet: one libev timer per process (every
    ``ServerConfig.tick``) looks after the silent ones.
    """

    handler_class = WebSocketHandler

    def __init__(self, listener: Any, application: Callable | None, config: ServerConfig,
                 hub: Hub | None = None) -> None:
        super().__init__(listener, application, spawn=gevent.pool.Pool(), log=None)
        self.config = config
        self._hub = hub
        self.connections: set[WebSocketConnection] = set()
        self.shutting_down = False
        self.stopped = Event()
        self._all_released = Event()
        self._ticker: Any = None
        self._publisher: PublishBatcher | None = None

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = get_hub()
        return self._hub

    @property
    def publisher(self) -> PublishBatcher:
        """Publishes what the websockets receive, through the hub's client (its bounded pool)."""
        if self._publisher is None:
            self._publisher = PublishBatcher(self.hub.client)
        return self._publisher

    def start(self) -> None:
        super().start()
        if self._ticker is None:
            tick = self.config.tick
            self._ticker = gevent.get_hub().loop.timer(tick, tick)
            self._ticker.start(self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        for connection in list(self.connections):
            try:
                connection.tick(now)
            except Exception:
                # A bug in one websocket's keepalive closes that websocket, never the server's timer loop.
                logger.exception("ws4redis: keepalive of the websocket of %s failed", connection.peer)
                self.release(connection)

    def release(self, connection: WebSocketConnection) -> None:
        """Forget ``connection`` and free what it holds (once; later calls do nothing)."""
        if connection not in self.connections:
            return
        self.connections.discard(connection)
        try:
            connection.finish(self.hub)
        except Exception:
            # A bug while releasing one websocket must not stop the server from releasing the others.
            logger.exception("ws4redis: releasing the websocket of %s failed", connection.peer)
        if self.shutting_down and not self.connections:
            self._all_released.set()

    def shutdown(self) -> None:
        """Stop accepting, close every websocket with 1001, wait up to WS4REDIS_SHUTDOWN_TIMEOUT, exit."""
        if self.shutting_down:
            return
        self.shutting_down = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        self.close()
        logger.info("ws4redis: shutting down, closing %d websockets with 1001", len(self.connections))
        for connection in list(self.connections):
            connection.close(constants.CLOSE_GOING_AWAY, "server shutting down")
        # Leave a little of the deadline for dropping what did not finish and closing Redis.
        grace = max(0.0, deadline - time.monotonic() - constants.SHUTDOWN_KILL_MARGIN)
        self.pool.join(timeout=grace)
        if self.connections:
            self._all_released.wait(max(0.0, deadline - time.monotonic() - constants.SHUTDOWN_KILL_MARGIN))
        if len(self.pool) or self.connections:
            logger.info("ws4redis: %d connections did not close in time; dropping them",
                        len(self.pool) + len(self.connections))
            self.pool.kill(block=True, timeout=constants.SHUTDOWN_KILL_MARGIN / 2)
            for connection in list(self.connections):
                self.release(connection)
        if self._publisher is not None:
            self._publisher.close()
        if self._ticker is not None:
            self._ticker.stop()
            self._ticker.close()
            self._ticker = None
        if self._hub is not None:
            self._hub.close()
        self.stopped.set()


def run_worker(listener: socket.socket, websocket_only: bool = False) -> int:
    """Serve on ``listener`` until SIGTERM/SIGINT; returns the exit status. Django must be set up."""
    from django.core.servers.basehttp import get_internal_wsgi_application

    private_settings.validate_settings()
    config = ServerConfig(websocket_only)
    application = None if websocket_only else get_internal_wsgi_application()
    server = WebSocketServer(listener, application, config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    server.hub.start()
    server.start()
    host, port = listener.getsockname()[:2]
    logger.info("ws4redis: worker %d serving websockets under %s on %s:%d%s", os.getpid(),
                config.websocket_url, host, port, " (websockets only)" if websocket_only else "")
    server.stopped.wait()
    sys.stderr.flush()
    return 0
