"""The evented websocket connection of the hub servers (gevent server, uWSGI): no greenlet per websocket.

Once the 101 response is out, a libev read watcher parses frames
(``ws4redis.protocol`` over the compiled core), the process's
:class:`ConnectionSet` ticks the silent websockets, and received messages go
to the process's :class:`PublishBatcher`, which pipelines them to Redis.
Live messages arrive from the process's :class:`ws4redis.hub.Hub`, already
framed, and are written with non-blocking ``os.writev`` from a bounded
queue; a blocked socket is resumed by a libev write watcher. A client that
cannot keep up is closed with 1008 instead of growing the process. An idle
websocket thus costs a few small objects (about 3 KiB of RSS), no greenlet.

Which frames go where, and when the peer has waited or been silent too long,
is decided by :mod:`ws4redis.server.rules`, the same rules the blocking relay
of the development server follows.

The websocket's state is the protocol's (``protocol.State``: OPEN, CLOSING,
CLOSED). Beside it the connection keeps only the phase of its I/O, which
the protocol knows nothing of: SETUP (before the 101 went out: frames are
queued, nothing is written), LIVE (reading and writing), DRAINING (nothing
more is read; what is queued is written within WS4REDIS_PING_TIMEOUT, then
the write side is shut and input discarded until the peer closes) and DONE
(everything released, once).
"""

from __future__ import annotations

import logging
import os
import socket
import time
import weakref
from collections.abc import Iterator
from typing import Any

import gevent
import redis
from gevent.event import Event

from ws4redis import constants
from ws4redis.deflate import DeflateParams, Deflation
from ws4redis.history import ChannelHistory, Seam, message_event
from ws4redis.metrics import METRICS, audience_of
from ws4redis.protocol import Message, ProtocolViolation, State, WebSocketProtocol, frame_for
from ws4redis.redis_errors import UNAVAILABLE
from ws4redis.redis_store import PublishPlan, RedisMessage, pooled_connection
from ws4redis.server import journal
from ws4redis.server.accept import BROKER_UNREACHABLE, SERVER_STOPPING, Accepted, Rejected
from ws4redis.server.interfaces import ConnectionHost, PublishListener
from ws4redis.server.lanes import whole_frames
from ws4redis.server.rules import Due, EchoFilter, Inbound, Keepalive, inbound, publish_failure

__all__ = ["ConnectionSet", "PublishBatcher", "WebSocketConnection", "prepare_connection"]

logger = logging.getLogger(__name__)

IOV_MAX = os.sysconf("SC_IOV_MAX")

# Phases of a connection's I/O, ordered (see the module docstring).
SETUP, LIVE, DRAINING, DONE = range(4)
_OPEN = State.OPEN
_CLOSED = State.CLOSED


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
        self._waiting: list[tuple[PublishListener, PublishPlan, bytes]] = []
        self._worker: gevent.Greenlet | None = None
        # Websockets publishing to the same channels share one plan (thousands on one broadcast, say).
        self._plans: weakref.WeakValueDictionary[tuple[tuple[str, ...], int], PublishPlan] = \
            weakref.WeakValueDictionary()

    def plan_for(self, subscriber: Any) -> PublishPlan:
        """The plan of ``subscriber``'s publish channels and expiry, shared with every equal one."""
        plan = subscriber.publish_plan()
        return self._plans.setdefault((plan.channels, plan.expire), plan)

    def submit(self, listener: PublishListener, plan: PublishPlan, packed: bytes) -> None:
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

    def _send(self, batch: list[tuple[PublishListener, PublishPlan, bytes]]) -> list[Exception | None]:
        """One round trip for the whole batch, retried once if the pooled connection could not send it.

        Never retried once the batch went out: Redis may have published it before the connection
        broke, and sending it again would deliver every message twice. Its websockets are told
        it failed instead (1013), as when Redis is away: at most once, as Redis pub/sub itself.
        """
        packed = b"".join(item[2] for item in batch)
        pool = self.client.connection_pool
        failure: Exception | None = None
        for _attempt in range(2):
            connection = None
            sent = False
            try:
                connection = pooled_connection(pool)
                connection.send_packed_command((packed,))
                sent = True
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
                if sent:
                    break
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
        "_fd", "protocol", "subscriber", "channels", "patterns", "echo_filter", "config", "host",
        "peer", "_phase", "_queue", "_queued_bytes", "_offset", "_reader", "_watcher", "_blocked",
        "_persisted", "_unpublished", "_in_flight", "_plan", "keepalive", "_closing_since", "_draining_since",
        "_backlogged_since", "_lingering", "refused", "server", "path", "_opened_at", "messages_in",
        "frames_out", "bytes_out", "deflation", "history", "envelope", "_held", "_floors", "lane", "_lanes",
        "_on_lane",
    )

    def __init__(self, fd: int, subscriber: Any, host: ConnectionHost, peer: str, echo: bool,
                 server: str = "", path: str = "", deflate: DeflateParams | None = None,
                 history: ChannelHistory | None = None) -> None:
        config = host.config
        self._fd = fd
        # WS4REDIS_HISTORY: the channels' labels and what the client asked for; ``envelope`` when it
        # receives history envelopes. While such a websocket is set up, live messages wait in
        # ``_held``; after the replay, ``_floors`` drops what the replay already had (a Seam).
        self.history = history
        self.envelope = history is not None and history.envelope
        self._held: list[tuple[bytes, str, bytes | None]] | None = None
        self._floors: Seam | None = None
        # permessage-deflate, when negotiated: the hub groups this connection with the others that
        # share its compressor and hands them one compressed frame.
        self.deflation = None if deflate is None or config.compression is None else \
            Deflation(deflate, config.compression, config.max_message_size)
        self.protocol = WebSocketProtocol(max_message_size=config.max_message_size,
                                          max_fragments=config.max_fragments, deflation=self.deflation)
        self.subscriber = subscriber
        self.channels, self.patterns = subscriber.subscription_targets()
        self.echo_filter = EchoFilter.unless_echo(echo, subscriber.publishers, subscriber.subscribed_channels)
        # Channels, keys and expiry of what this websocket publishes, settled once, for the
        # server's batcher (None: the subscriber publishes its own way, message by message).
        publisher = host.publisher
        self._plan: PublishPlan | None = (
            publisher.plan_for(subscriber) if subscriber.publishes_through(publisher.client) else None
        )
        self.config = config
        self.host = host
        self.peer = peer
        self._phase = SETUP
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        self._offset = 0  # bytes of _queue[0] already written
        self._reader: Any = None  # the read watcher: set once the descriptor belongs to this connection
        self._watcher: Any = None  # the write watcher, created when the socket first fills up
        self._blocked = False  # waiting for the socket to become writable
        self._persisted: list[bytes] | None = None
        # Received (data, binary), not handed over for publishing yet.
        self._unpublished: list[tuple[bytes, bool]] | None = None
        self._in_flight = 0  # messages with the batcher, not yet confirmed by Redis
        self.keepalive = Keepalive(config, time.monotonic())
        self._closing_since = 0.0
        self._draining_since = 0.0
        self._backlogged_since = 0.0  # reading paused: our answers to the peer are over the queue limits
        self._lingering = False  # all frames out, write side shut: reading until the peer closes too
        self.refused: str | None = None  # why it was closed before the 101 went out (see close())
        self.server = server
        self.path = path
        self._opened_at = 0.0  # when the 101 went out; 0 before
        self.messages_in = 0
        self.frames_out = 0  # written here; the lane counts its own (see sent())
        self.bytes_out = 0
        # The hub's send lane for this socket: while the connection is on it (``_on_lane``) the hub
        # writes its live messages from C, and this connection's queue stays empty. Any other
        # write takes the socket back first (_leave_lane), so frames never overtake each other.
        self._lanes = host.hub.lanes
        self._on_lane = False
        self.lane: int | None = self._lanes.open(fd, self)

    # --- the hub's side ---------------------------------------------------

    def deliver(self, frame: bytes, payload: bytes, channel: str, offset: bytes | None) -> bool:
        """Queue a frame framed by the hub; True when this connection needs a flush."""
        if self._phase > LIVE or self.protocol.state is not _OPEN:
            METRICS.deliveries_dropped["closed"] += 1
            return False
        if self._on_lane and not self._leave_lane():
            return False
        echo_filter = self.echo_filter
        if echo_filter is not None and echo_filter.is_echo(channel, payload):
            METRICS.echoes_suppressed += 1
            return False
        floors = self._floors
        if floors is not None:
            if floors.replayed(channel, offset):
                return False
            if not floors.open:
                self._floors = None  # every channel is past its replay: no more looking
        held = self._held
        if held is not None:
            held.append((frame, channel, offset))
            if len(held) > self.config.queue_messages:
                self._overflow()
            return False
        queue = self._queue
        queue.append(frame)
        self._queued_bytes += len(frame)
        if self._queued_bytes > self.config.queue_bytes or len(queue) > self.config.queue_messages:
            # A burst fills the queue before the hub flushes: let the socket take what it can first.
            if self._phase == LIVE and not self._blocked:
                self._write()
            if self._queued_bytes > self.config.queue_bytes or len(self._queue) > self.config.queue_messages:
                self._overflow()
                return False
        return len(queue) == 1 and self._phase == LIVE and not self._blocked

    def flush(self) -> None:
        """Write what is queued, as far as the socket takes it without blocking."""
        if self._on_lane and not self._leave_lane():
            return
        if self._queue and not self._blocked and SETUP < self._phase < DONE:
            self._write()
        self._join_lane()

    def spilled(self) -> None:
        """The hub's lane could not write everything: what is left is queued here, the socket watched.

        Over the queue limits (a lane corks up to LANE_CORK_FRAMES/BYTES before it writes), the
        client is as far behind as a queue overflow says: closed with 1008, as deliver() would.
        """
        if self._on_lane and self._leave_lane() and self._phase == LIVE and self._over_limits():
            self._overflow()

    def sent(self) -> tuple[int, int]:
        """Frames and bytes written to the peer so far, here and by the lane."""
        if self.lane is None:
            return self.frames_out, self.bytes_out
        frames, sent = self._lanes.sent(self.lane)
        return self.frames_out + frames, self.bytes_out + sent

    # --- the lane -----------------------------------------------------------

    def _join_lane(self) -> None:
        """Hand live messages to the hub's lane again, if nothing but them is to be written.

        Called only where everything queued was just written (never while the socket is being
        taken back), so that no frame of the lane can overtake one of the queue.
        """
        echo_filter = self.echo_filter
        if (self.lane is not None and not self._on_lane and self._phase == LIVE and not self._queue
                and not self._blocked and self.protocol.state is _OPEN and self._held is None
                and self._floors is None and (echo_filter is None or not echo_filter.waiting)):
            self._lanes.resume(self.lane)
            self._on_lane = True

    def _take_lane(self) -> int:
        """Take the socket back from the lane, its unwritten frames first in the (empty) queue; the
        errno of the lane's last write, 0 when it did not fail."""
        self._on_lane = False
        frames, offset, error = self._lanes.take(self.lane)
        if frames:
            self._queue[:0] = frames
            self._offset = offset
            self._queued_bytes += sum(map(len, frames)) - offset
        return error

    def _leave_lane(self) -> bool:
        """Take the socket back and write what the lane held at once; False (and the connection
        aborted) when the lane's last write failed."""
        error = self._take_lane()
        if error:
            self._abort(f"write failed: {os.strerror(error)}")
            return False
        if self._queue and not self._blocked:
            self._write()
        return True

    def send(self, message: str | bytes) -> None:
        """Send one message (0.6.0's ``websocket.send``; custom subscribers call it for persisted ones)."""
        frame = frame_for(message.encode() if isinstance(message, str) else message, self.deflation)
        if self._persisted is not None:
            self._persisted.append(frame)
        elif self._phase <= LIVE and self.protocol.state is _OPEN:
            self._send_frames(frame)

    # --- writing ----------------------------------------------------------

    def _send_frames(self, data: bytes) -> None:
        """Queue bytes of our own (control frames, heartbeats) and write them now if possible."""
        if not data or self._phase == DONE:
            return
        if self._on_lane and not self._leave_lane():
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
        done, offset = whole_frames(queue, offset + sent)
        # Two additions per write; the process's totals add these up (finish() and a scrape's gauges).
        self.frames_out += done
        self.bytes_out += sent
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
            if self._phase == DRAINING:
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
        if self._phase != DONE:
            self._write()
            self._join_lane()

    def _overflow(self) -> None:
        logger.warning(
            "ws4redis: closing websocket of %s with 1008: it fell %d messages / %d bytes behind "
            "(WS4REDIS_SEND_QUEUE_MESSAGES=%d, WS4REDIS_SEND_QUEUE_BYTES=%d)",
            self.peer, len(self._queue), self._queued_bytes, self.config.queue_messages,
            self.config.queue_bytes,
        )
        METRICS.slow_consumer_closes += 1
        self._drop_unsent()
        self.close(constants.CLOSE_POLICY_VIOLATION, "send queue overflow: client too slow")
        self._end()

    def _drop_unsent(self) -> None:
        """Forget the queued frames, so that a close frame goes out next; whole frames only reach the wire."""
        queue = self._queue
        kept = queue[:1] if self._offset else []
        METRICS.dropped("slow_consumer", len(queue) - len(kept))
        self._queue = kept
        self._queued_bytes = len(kept[0]) - self._offset if kept else 0

    def _abort(self, reason: str) -> None:
        """The peer is gone: drop everything queued and release the connection."""
        logger.debug("ws4redis: websocket of %s aborted: %s", self.peer, reason)
        was_setup = self._phase == SETUP
        if self._on_lane:
            self._take_lane()  # what it held is dropped below with the rest: the peer is gone
        self._phase = DONE
        METRICS.dropped("closed", len(self._queue))
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
        if self._phase > LIVE or self.protocol.state is not _OPEN:
            return
        if self._phase == SETUP:
            self._phase = DONE
            self._queue = []
            self._queued_bytes = 0
            self.refused = reason
            return
        self._closing_since = time.monotonic()
        self.protocol.send_close(code, reason)
        self._send_frames(self.protocol.data_to_send())

    def _end(self) -> None:
        """Nothing more is read: give the peer WS4REDIS_PING_TIMEOUT to take the frames still queued."""
        if self._phase >= DRAINING:
            return
        self._stop_reading()
        self._phase = DRAINING
        self._draining_since = time.monotonic()
        self.flush()
        if not self._queue and self._phase == DRAINING:
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
            gevent.get_hub().loop.run_callback(self.host.release, self)

    # --- setup (in the handler greenlet) ------------------------------------

    def prepare(self) -> None:
        """Subscribe and fetch the persisted messages, before the client learns the websocket is open.

        Live messages arriving meanwhile are queued behind the persisted ones,
        so a client that publishes as soon as it is open is already heard.
        """
        history = self.history
        if self.envelope:
            self._held = []
        confirmed = self.host.hub.subscribe(self, self.channels, self.patterns,
                                            history=None if history is None else history.labels)
        if not confirmed:
            logger.warning("ws4redis: Redis did not confirm the subscriptions of %s in time", self.peer)
        if self.envelope:
            self._replay(history)
            return
        self._persisted = []
        try:
            self.subscriber.send_persisted_messages(self)
        except UNAVAILABLE as exc:
            logger.warning("ws4redis: persisted messages for %s unavailable (%s); the hub re-sends them "
                           "once Redis is back", self.peer, exc)
        persisted, self._persisted = self._persisted, None
        self._queue[:0] = persisted
        self._queued_bytes += sum(len(frame) for frame in persisted)

    def _replay(self, history: ChannelHistory) -> None:
        """Queue what a history client gets first: missed (or newest) messages, then the event.

        Live messages held meanwhile follow, less those the replay already had (offsets up to
        where each channel stands after it), so the seam has no gap and no duplicate.
        """
        try:
            entries, event, offsets = history.replay(self.host.hub.client)
        finally:
            held, self._held = self._held or [], None
        if self._phase == DONE:
            return  # closed meanwhile (its held messages overflowed the send queue)
        deflation = self.deflation
        frames = [frame_for(message_event(label, offset, binary, data), deflation)
                  for label, offset, binary, data in entries]
        frames.append(frame_for(event, deflation))
        floors = Seam(history.labels, offsets)
        frames.extend(frame for frame, channel, offset in held if not floors.replayed(channel, offset))
        self._floors = floors if floors.open else None
        self._queue[:0] = frames
        self._queued_bytes += sum(len(frame) for frame in frames)

    def start(self, data: bytes) -> None:
        """The 101 response is out and the descriptor ours: frames flow, reading moves to a watcher.

        ``data`` holds the bytes the client sent right after its handshake.
        """
        self._reader = gevent.get_hub().loop.io(self._fd, 1)
        self._opened_at = time.monotonic()
        journal.opened(self.server, self.peer, self.path, self.subscriber.subscribed_channels)
        if self._phase == SETUP:
            self._phase = LIVE
        self.flush()
        if self._phase == DONE:
            self._schedule_finish()
            return
        if data:
            self._feed(data)
        else:
            self._resume_reading()
        self._join_lane()

    # --- reading (libev callbacks) -------------------------------------------

    def _resume_reading(self) -> None:
        reader = self._reader
        if (self._phase < DRAINING and self._unpublished is None and not self._in_flight
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
            self._fail_internal()

    def _fail_internal(self) -> None:
        """A bug (in a custom subscriber, say) ends this websocket with 1011, never the server."""
        logger.exception("ws4redis: websocket of %s failed; closing it with 1011", self.peer)
        self._unpublished = None
        self.close(constants.CLOSE_INTERNAL_ERROR, "internal server error")
        self._end()

    def _receive(self, data: bytes) -> None:
        now = time.monotonic()
        self.keepalive.received(now)
        protocol = self.protocol
        # Messages count while the websocket was open when they arrived, also those ahead of a close frame.
        accepting = self._phase == LIVE and protocol.state is _OPEN
        for event in protocol.receive_data(data):
            if type(event) is Message:
                if accepting:
                    self._on_message(event.data, event.binary)
            elif type(event) is ProtocolViolation:
                logger.info("ws4redis: websocket of %s broke the protocol: %s (close code %d)",
                            self.peer, event.error, event.error.close_code)
        if accepting and protocol.state is not _OPEN:
            self._closing_since = now  # the close handshake the peer (or its violation) started
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
                submit = self.host.publisher.submit
                for data, binary in messages:
                    submit(self, plan, plan.pack(data, binary))
        elif protocol.state is _CLOSED:
            self._end()
        else:
            self._resume_reading()

    def _on_message(self, data: bytes, binary: bool) -> None:
        action = inbound(data, self.config.heartbeat)
        if action is not Inbound.PUBLISH:
            if action is Inbound.ANSWER_HEARTBEAT:
                self.protocol.send_message(data)
            return
        self.messages_in += 1
        METRICS.messages_received += 1
        if self.echo_filter is not None:
            self.echo_filter.published(data)
            if self._on_lane:
                self._leave_lane()  # its copy will come back: the filter must see every delivery
        if self._unpublished is None:
            self._unpublished = [(data, binary)]
        else:
            self._unpublished.append((data, binary))

    # --- publishing -------------------------------------------------------

    def published(self, error: Exception | None) -> None:
        """The batcher's word on one submitted message: Redis took it (``error`` None) or not."""
        self._in_flight -= 1
        if error is None:
            METRICS.messages_published += 1
        if self._phase == DONE:
            return
        if error is not None:
            self._not_published(error)
        if not self._in_flight:
            if self.protocol.state is _CLOSED:
                self._end()
            else:
                self._resume_reading()

    # A subscriber with its own publish_message: a greenlet, only while there is something to publish.

    def _publish_received(self) -> None:
        try:
            while self._unpublished:
                messages, self._unpublished = self._unpublished, []
                for data, binary in messages:
                    if not self._publish(data, binary):
                        self._unpublished = None
                        break
            self._unpublished = None
            if self._phase == DONE:
                return
            if self.protocol.state is _CLOSED:
                self._end()
            else:
                self._resume_reading()
        except Exception:
            self._fail_internal()

    def _publish(self, data: bytes, binary: bool) -> bool:
        """Publish one received message; False (and a 1013 close) when Redis cannot take it."""
        try:
            self.subscriber.publish_message(RedisMessage.received(data, binary))
        except UNAVAILABLE as exc:
            self._not_published(exc)
            return False
        METRICS.messages_published += 1
        return True

    def _not_published(self, error: Exception) -> None:
        """Redis did not take a message of this websocket: close it, with the code of the rules."""
        code, reason = publish_failure(error)
        if self._phase > LIVE or self.protocol.state is not _OPEN:
            return
        if code == constants.CLOSE_TRY_AGAIN_LATER:
            logger.warning("ws4redis: cannot publish the message of %s (%s); closing with %d",
                           self.peer, error, code)
        else:
            logger.error("ws4redis: publishing the message of %s failed (%r); closing it with %d",
                         self.peer, error, code)
        self.close(code, reason)

    # --- silence (the server's ticker) ----------------------------------------

    def tick(self, now: float) -> None:
        """Called every tick by the server: heartbeat, ping, or give up on a silent or slow peer."""
        phase = self._phase
        if self._reader is None or phase == DONE:
            return
        if phase == DRAINING:
            if self.keepalive.out_of_patience(self._draining_since, now):
                self._abort("the peer did not take the last frames in time")
        elif not self._idle(now):
            self._end()

    def _idle(self, now: float) -> bool:
        """Heartbeat, ping or give up on a silent or unreading peer (the rules' keepalive). False ends it."""
        keepalive = self.keepalive
        if self.protocol.state is not _OPEN:
            return bool(self._closing_since) and not keepalive.out_of_patience(self._closing_since, now)
        if self._phase != LIVE:
            return True
        if keepalive.out_of_patience(self._backlogged_since, now):
            logger.warning("ws4redis: closing websocket of %s with 1008: it does not read what it asks for "
                           "(%d bytes waiting for %g s)", self.peer, self._queued_bytes,
                           self.config.ping_timeout)
            METRICS.slow_consumer_closes += 1
            self._drop_unsent()  # answers to its pings: the close frame goes first
            self.close(constants.CLOSE_POLICY_VIOLATION, "client does not read")
            return False
        due = keepalive.due(now)
        if due & Due.PING_TIMEOUT:
            logger.info("ws4redis: websocket of %s did not answer a ping within %g s; closing with 1011",
                        self.peer, self.config.ping_timeout)
            self.close(constants.CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            return False
        if due & Due.HEARTBEAT:
            self.protocol.send_message(self.config.heartbeat)
        if due & Due.PING:
            self.protocol.send_ping()
        self._send_frames(self.protocol.data_to_send())
        return True

    # --- release ----------------------------------------------------------

    def finish(self) -> None:
        """Release everything at once (also at a forced shutdown): hub routes, subscriber, watchers, fd.

        Before :meth:`start` the descriptor still belongs to the handler's socket, which closes it.
        """
        self._phase = DONE
        if self._on_lane:
            self._take_lane()  # what it held is counted as dropped below
        METRICS.dropped("closed", len(self._queue))
        self._queue = []
        self._unpublished = None
        frames, sent = self.sent()
        self.frames_out = self.bytes_out = 0  # now the process's: a second finish() adds nothing
        METRICS.frames_sent += frames
        METRICS.bytes_sent += sent
        if self._opened_at:
            journal.closed(self.server, self.peer, self.path, self.protocol,
                           time.monotonic() - self._opened_at, self.messages_in, frames, sent)
            self._opened_at = 0.0
        self.host.hub.unsubscribe(self, self.channels, self.patterns)
        lane, self.lane = self.lane, None
        if lane is not None:
            self._lanes.close(lane)  # before the descriptor is closed and its number reused
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




class ConnectionSet:
    """The evented websockets of one server process; one libev timer ticks them all.

    An open websocket has no greenlet, so its keepalive (heartbeat, ping,
    the deadlines of the rules) is looked after by this set's timer, every
    ``ServerConfig.tick`` seconds.
    """

    __slots__ = ("_connections", "_tick", "_ticker", "_emptied", "server", "prefix")

    def __init__(self, tick: float, server: str, prefix: bytes = b"") -> None:
        self.server = server  # the server path, as the metrics name it: "gevent", "uwsgi"
        self.prefix = prefix  # b"<WS4REDIS_PREFIX>:" or b"", to tell the audience of a channel
        self._connections: dict[WebSocketConnection, None] = {}
        self._tick = tick
        self._ticker: Any = None
        self._emptied = Event()
        self._emptied.set()

    def __len__(self) -> int:
        return len(self._connections)

    def __iter__(self) -> Iterator[WebSocketConnection]:
        """A snapshot: the set may change while the caller walks it."""
        return iter(list(self._connections))

    def __contains__(self, connection: object) -> bool:
        return connection in self._connections

    def add(self, connection: WebSocketConnection) -> None:
        self._connections[connection] = None
        self._emptied.clear()

    def release(self, connection: WebSocketConnection) -> bool:
        """Forget ``connection`` and free what it holds; False when it was released before."""
        if self._connections.pop(connection, False) is False:
            return False
        if not self._connections:
            self._emptied.set()
        try:
            connection.finish()
        except Exception:
            # A bug while releasing one websocket must not stop the server from releasing the others.
            logger.exception("ws4redis: releasing the websocket of %s failed", connection.peer)
        return True

    def close_all(self, code: int, reason: str) -> int:
        """Start the close handshake of every websocket; returns how many there were."""
        connections = list(self._connections)
        for connection in connections:
            connection.close(code, reason)
        return len(connections)

    def wait_released(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until every websocket is released; True if they were."""
        return self._emptied.wait(max(0.0, timeout))

    def start_ticking(self) -> None:
        if self._ticker is None:
            self._ticker = gevent.get_hub().loop.timer(self._tick, self._tick)
            self._ticker.start(self._on_tick)
            METRICS.add_gauges(self.gauges)

    def gauges(self) -> dict[str, dict[str, float]]:
        """For a metrics scrape: open websockets, their subscriptions by audience, what they were sent.

        Frames and bytes are counted per connection (two additions per write) and join the
        process's counters when a connection finishes; until then a scrape adds them here.
        """
        audiences: dict[str, float] = {}
        prefix = self.prefix
        frames = sent = 0
        for connection in self._connections:
            written = connection.sent()
            frames += written[0]
            sent += written[1]
            for channel in connection.channels:
                audience = audience_of(channel, prefix)
                audiences[audience] = audiences.get(audience, 0) + 1
        return {"websockets_open": {self.server: len(self._connections)}, "subscriptions": audiences,
                "frames_sent": {"": frames}, "bytes_sent": {"": sent}}

    def stop_ticking(self) -> None:
        METRICS.remove_gauges(self.gauges)
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.stop()
            ticker.close()

    def _on_tick(self) -> None:
        now = time.monotonic()
        for connection in list(self._connections):
            try:
                connection.tick(now)
            except Exception:
                # A bug in one websocket's keepalive closes that websocket, never the server's timer loop.
                logger.exception("ws4redis: keepalive of the websocket of %s failed", connection.peer)
                connection.host.release(connection)


SETUP_FAILED = Rejected(500, "Internal Server Error: could not set up the websocket")


def prepare_connection(
    fd: int, accepted: Accepted, host: ConnectionHost, connections: ConnectionSet, peer: str
) -> WebSocketConnection | Rejected:
    """The connection of an accepted upgrade, subscribed and with its persisted messages queued.

    Added to ``connections`` first, so that a server stopping meanwhile
    refuses it; on a refusal the connection is released again and the
    answer to send instead of the 101 is returned. Never raises.
    """
    try:
        connection = WebSocketConnection(fd, accepted.subscriber, host, peer, accepted.echo,
                                         connections.server, accepted.path, accepted.handshake.deflate,
                                         accepted.history)
    except Exception:
        logger.exception("ws4redis: websocket setup of %s failed", peer)
        accepted.subscriber.release()
        return SETUP_FAILED
    connections.add(connection)
    try:
        connection.prepare()
    except redis.RedisError as exc:
        logger.error("ws4redis: cannot set up the websocket of %s, Redis failed: %s", peer, exc)
        rejection = BROKER_UNREACHABLE
    except Exception:
        # A bug (in a custom subscriber, say) ends this websocket, never the server.
        logger.exception("ws4redis: websocket setup of %s failed", peer)
        rejection = SETUP_FAILED
    else:
        if connection.refused is not None:
            rejection = Rejected(503, f"Service Unavailable: {connection.refused}")
        elif host.stopping:
            rejection = SERVER_STOPPING
        else:
            return connection
    host.release(connection)
    return rejection
