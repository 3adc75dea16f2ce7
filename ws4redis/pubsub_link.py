"""One Redis connection in pub/sub mode, carrying the channels of every websocket of a process.

A :class:`PubSubLink` is the only code that touches a hub's pub/sub socket: a
reader greenlet that connects, subscribes, routes replies to its owner (the
:class:`ws4redis.hub.Hub`) and reconnects with backoff, and a writer greenlet
that turns changes of the wanted channels into batched commands and PINGs.

On one Redis (or the master Sentinel names) it uses SUBSCRIBE/PSUBSCRIBE. On a
Redis Cluster it is one link per master node, ``sharded``: SSUBSCRIBE, one
channel per command (the channels of one command must share a hash slot), no
patterns. A cluster node refuses a channel whose slot it does not serve
(MOVED, CLUSTERDOWN) and drops the subscriptions of a slot that migrates away
(an unsolicited ``sunsubscribe``); the link keeps its connection and tells its
:class:`LinkEvents` (``ws4redis.shard_router``) which channels need a new home.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import gevent
import redis
from gevent.event import Event
from redis.crc import key_slot
from redis.exceptions import MovedError

from ws4redis import constants
from ws4redis.metrics import METRICS

__all__ = ["LINK_ERRORS", "LinkEvents", "LinkOwner", "PubSubLink"]

logger = logging.getLogger(__name__)

# Errors meaning "this Redis connection is unusable": log, back off, reconnect.
LINK_ERRORS = (redis.RedisError, OSError)


class LinkOwner(Protocol):
    """What a link hands its messages to (the hub)."""

    client: Any  # the process's client for short commands (GET, CONFIG GET)

    def dispatch(self, key: bytes, payload: bytes, channel: bytes | None = None) -> None: ...

    def flush_pending(self) -> None: ...

    def resend_persisted(self, channels: Iterable[bytes]) -> int: ...


class LinkEvents(Protocol):
    """What a sharded link reports to whoever decides where channels live."""

    def moved(self, link: PubSubLink, channels: set[bytes]) -> None:
        """The link's server does not carry ``channels`` (any more): find their slot's master."""

    def lost(self, link: PubSubLink) -> None:
        """The link cannot reach its server: its node may have failed over."""


class _Commands:
    """The reply kinds of one link's subscriptions, plain or sharded."""

    def __init__(self, sharded: bool) -> None:
        self.sharded = sharded
        if sharded:
            self.subscribe, self.unsubscribe, self.message = b"ssubscribe", b"sunsubscribe", b"smessage"
        else:
            self.subscribe, self.unsubscribe, self.message = b"subscribe", b"unsubscribe", b"message"


def _pack(connection: redis.Connection, kind: bytes, names: list[bytes]) -> list[bytes]:
    """The commands of ``kind`` (b"subscribe"...) for ``names``: one, or one per channel when sharded.

    A cluster node refuses an SSUBSCRIBE whose channels hash to different slots (CROSSSLOT).
    """
    verb = kind.decode().upper()
    if kind in (b"ssubscribe", b"sunsubscribe"):
        return connection.pack_commands([(verb, name) for name in names])
    return connection.pack_command(verb, *names)


class PubSubLink:
    """One Redis connection in pub/sub mode, with the greenlets that read and write it.

    The reader greenlet owns the connection: it connects, subscribes to every
    wanted channel, re-sends persisted messages after a reconnect and reads
    replies. The writer greenlet turns later changes of the wanted channels
    into batched (S)SUBSCRIBE/(S)UNSUBSCRIBE commands and PINGs the server so a
    silently dead connection is noticed. Only these two touch the socket.
    """

    def __init__(self, owner: LinkOwner, make_connection: Callable[[], redis.Connection], *,
                 sharded: bool = False, events: LinkEvents | None = None, name: str = "") -> None:
        self.hub = owner
        self.name = name  # the node it talks to, "host:port" (sharded links)
        self._make_connection = make_connection
        self._commands = _Commands(sharded)
        self._events = events
        self.channels: set[bytes] = set()  # wanted: channels with local listeners
        self.patterns: set[bytes] = set()
        self._on_server: set[bytes] = set()  # subscribe sent on the current connection
        self._patterns_on_server: set[bytes] = set()
        self._dirty: set[bytes] = set()  # channels whose wanted state changed since the last reconcile
        self._dirty_patterns: set[bytes] = set()
        self._waiters: dict[bytes, Event] = {}  # channel -> set when Redis confirms it
        # (kind, name) of every (un)subscribe sent and not answered yet, in order: an error
        # reply names no channel, its place in this queue does.
        self._unanswered: deque[tuple[bytes, bytes]] = deque()
        self._refused: set[bytes] = set()  # wanted channels the server would not (or no longer) carry
        self._connection: redis.Connection | None = None
        self._ready = False  # the reader finished the initial subscribe of the connection
        self._wake = Event()
        self._closed = False
        self.failing = False  # Redis is unreachable: nobody should wait for confirmations
        self.reconnects = 0
        self.server_drops = 0  # connections Redis closed while staying reachable (see _explain_drop)
        self._reader: gevent.Greenlet | None = None
        self._writer: gevent.Greenlet | None = None

    @property
    def started(self) -> bool:
        return self._reader is not None

    @property
    def connected(self) -> bool:
        """Whether the link holds a subscribed Redis connection right now."""
        return self._ready and self._connection is not None

    # --- wanted channels (called by the hub or its router) ----------------

    def start(self) -> None:
        if self._reader is None and not self._closed:
            self._reader = gevent.spawn(self._read_forever)
            self._writer = gevent.spawn(self._write_forever)

    def want(self, channel: bytes, pattern: bool = False, waiter: Event | None = None) -> Event | None:
        """Subscribe ``channel`` soon; returns an event set on confirmation (None: already confirmed).

        ``waiter``, an event handed over from another link (see :meth:`release`), is set when
        this link's server confirms the channel.
        """
        if pattern and self._commands.sharded:
            raise ValueError("sharded pub/sub has no patterns")
        (self.patterns if pattern else self.channels).add(channel)
        on_server = self._patterns_on_server if pattern else self._on_server
        existing = self._waiters.get(channel)
        if self._ready and channel in on_server and existing is None:
            if waiter is not None:
                waiter.set()
            return None
        (self._dirty_patterns if pattern else self._dirty).add(channel)
        if existing is None:
            existing = self._waiters[channel] = waiter or Event()
        elif waiter is not None and waiter is not existing:
            existing.rawlink(lambda _: waiter.set())
        self._wake.set()
        return existing

    def unwant(self, channel: bytes, pattern: bool = False) -> None:
        (self.patterns if pattern else self.channels).discard(channel)
        (self._dirty_patterns if pattern else self._dirty).add(channel)
        self._refused.discard(channel)
        self._wake.set()

    def release(self, channel: bytes) -> Event | None:
        """Stop carrying ``channel`` because another link will; returns its unconfirmed waiter."""
        self.channels.discard(channel)
        self._dirty.add(channel)
        self._refused.discard(channel)
        self._wake.set()
        return self._waiters.pop(channel, None)

    def close(self) -> None:
        """Stop both greenlets and drop the connection (Redis forgets its subscriptions)."""
        self._closed = True
        # Killed before the connection is dropped: redis-py must not see its socket vanish mid-read.
        gevent.killall([greenlet for greenlet in (self._writer, self._reader) if greenlet is not None],
                       block=True, timeout=1.0)
        self._drop_connection()
        self._release_waiters()

    # --- reader -----------------------------------------------------------

    def _read_forever(self) -> None:
        delay = constants.HUB_RECONNECT_MIN_DELAY
        lost_at: float | None = None
        dropped = False  # Redis closed a connection that was working: reachable again at once?
        while not self._closed:
            try:
                connection = self._connect()
            except Exception as exc:
                self._drop_connection()
                self._set_failing()
                dropped = False
                if not isinstance(exc, LINK_ERRORS):
                    logger.exception("ws4redis hub: unexpected error while connecting")
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.error("ws4redis hub: cannot reach Redis%s for pub/sub (%s); retrying",
                                 f" {self.name}" if self.name else "", exc)
                else:
                    logger.debug("ws4redis hub: reconnect failed (%s), next attempt in %.2f s", exc, delay)
                gevent.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, constants.HUB_RECONNECT_MAX_DELAY)
                continue
            delay = constants.HUB_RECONNECT_MIN_DELAY
            self.failing = False
            if lost_at is not None:
                self.reconnects += 1
                METRICS.hub_reconnects += 1
                METRICS.hub_outage_seconds += time.monotonic() - lost_at
                if dropped:
                    self.server_drops += 1
                    METRICS.hub_drops_by_redis += 1
                    self._explain_drop()
                dropped = False
                resent = self.hub.resend_persisted(self.channels - self._refused)
                logger.warning(
                    "ws4redis hub: Redis pub/sub connection restored after a %.1f s gap; messages "
                    "published during the gap were not delivered, %d persisted messages re-sent to "
                    "%d channels",
                    time.monotonic() - lost_at, resent, len(self.channels),
                )
                lost_at = None
            try:
                self._read(connection)
            except Exception as exc:
                if self._closed:
                    return
                self._set_failing()
                lost_at = time.monotonic()
                dropped = isinstance(exc, redis.ConnectionError)
                if not isinstance(exc, LINK_ERRORS):
                    # A bug must not end the delivery for the whole process: start over.
                    logger.exception("ws4redis hub: unexpected error while routing messages")
                logger.warning(
                    "ws4redis hub: lost the Redis pub/sub connection%s (%s); %d channels and their "
                    "websockets wait for it to come back",
                    f" to {self.name}" if self.name else "", exc, len(self.channels) + len(self.patterns),
                )
            finally:
                self._drop_connection()

    def _set_failing(self) -> None:
        self.failing = True
        if self._events is not None:
            self._events.lost(self)

    def _explain_drop(self) -> None:
        """Redis closed the pub/sub connection but answered the very next attempt: say what does that.

        A server that is going away refuses the next connection too; one that closes a single
        client and stays up is, almost always, enforcing ``client-output-buffer-limit`` for pub/sub
        clients: a burst outgrew what it lets wait for the hub (32 MB by default).
        """
        try:
            reply = self.hub.client.config_get("client-output-buffer-limit")
            limits = next(iter(reply.values()), "?")
        except LINK_ERRORS as exc:  # CONFIG may be renamed or forbidden on managed Redis
            limits = f"unknown ({exc})"
        if isinstance(limits, bytes):
            limits = limits.decode()
        pubsub = next((part for part in _limit_classes(limits) if part.startswith("pubsub")), limits)
        logger.warning(
            "ws4redis hub: Redis closed the pub/sub connection although it is reachable; the usual "
            "cause is its client-output-buffer-limit for pub/sub clients (now %s: hard bytes, soft "
            "bytes, soft seconds), exceeded by a burst the hub could not take in time. Messages of "
            "that burst were lost. Raise it, e.g. CONFIG SET client-output-buffer-limit "
            "'pubsub 256mb 64mb 60' (and in redis.conf).", pubsub,
        )

    def _connect(self) -> redis.Connection:
        """A fresh connection subscribed to every wanted channel, confirmations read."""
        connection = self._make_connection()
        connection.connect()
        self._connection = connection
        channels, patterns = sorted(self.channels), sorted(self.patterns)
        self._refused.clear()
        commands = self._commands
        packed: list[bytes] = []
        if channels:
            packed += _pack(connection, commands.subscribe, channels)
            self._unanswered.extend((commands.subscribe, name) for name in channels)
        if patterns:
            packed += _pack(connection, b"psubscribe", patterns)
            self._unanswered.extend((b"psubscribe", name) for name in patterns)
        if packed:
            connection.send_packed_command(packed)
        self._on_server = set(channels)
        self._patterns_on_server = set(patterns)
        while self._unanswered:
            self._handle(_reply(connection, timeout=2 * constants.HUB_HEALTH_CHECK_INTERVAL))
        self._report_refused()
        self.hub.flush_pending()
        self._ready = True
        self._wake.set()
        return connection

    def _read(self, connection: redis.Connection) -> None:
        handle = self._handle
        flush = self.hub.flush_pending
        silence = 2 * constants.HUB_HEALTH_CHECK_INTERVAL
        while not self._closed:
            if not connection.is_connected:
                raise redis.ConnectionError("the pub/sub connection was closed while writing to it")
            if not connection.can_read(timeout=silence):
                raise redis.TimeoutError(f"Redis did not answer PING within {silence:.0f} s")
            handle(_reply(connection))
            # Everything already received is handled before the listeners are flushed.
            while connection.can_read(timeout=0):
                handle(_reply(connection))
            flush()
            self._report_refused()

    def _handle(self, reply: object) -> None:
        """Route one pub/sub reply."""
        if isinstance(reply, redis.ResponseError):
            self._refuse(reply)
            return
        if not isinstance(reply, list) or not reply:
            return  # PONG outside of subscribed mode
        kind = reply[0]
        commands = self._commands
        if kind == commands.message:
            self.hub.dispatch(reply[1], reply[2])
        elif kind == b"pmessage":
            self.hub.dispatch(reply[1], reply[3], channel=reply[2])
        elif kind in (commands.subscribe, b"psubscribe"):
            self._answered(kind, reply[1])
            waiter = self._waiters.pop(reply[1], None)
            if waiter is not None:
                waiter.set()
        elif kind == commands.unsubscribe and not self._answered(kind, reply[1]):
            # Not an answer: a cluster node dropped the channel because its slot moved away.
            name = reply[1]
            self._on_server.discard(name)
            if name in self.channels:
                self._refused.add(name)

    def _answered(self, kind: bytes, name: bytes) -> bool:
        """Take the command ``kind name`` off the unanswered queue; False if it is not next."""
        if self._unanswered and self._unanswered[0] == (kind, name):
            self._unanswered.popleft()
            return True
        return False

    def _refuse(self, error: redis.ResponseError) -> None:
        """An error reply to a queued command: the server does not carry that channel."""
        unanswered = self._unanswered
        if not unanswered:
            logger.warning("ws4redis hub: unexpected error from the pub/sub connection: %s", error)
            return
        index = 0
        if isinstance(error, MovedError):
            # MOVED names the slot; if an unsolicited sunsubscribe was taken for an answer, this
            # finds the command it belongs to and keeps the queue aligned.
            index = next((i for i, (_, name) in enumerate(unanswered) if key_slot(name) == error.slot_id), 0)
        kind, name = unanswered[index]
        del unanswered[index]
        if kind == self._commands.subscribe:
            self._on_server.discard(name)
            if name in self.channels:
                self._refused.add(name)
        elif kind == b"psubscribe":
            logger.error("ws4redis hub: Redis refused PSUBSCRIBE %r: %s", name, error)

    def _report_refused(self) -> None:
        if self._refused:
            refused, self._refused = self._refused, set()
            if self._events is not None:
                self._events.moved(self, refused)
            else:
                logger.error("ws4redis hub: Redis refused to subscribe %d channels", len(refused))

    # --- writer -----------------------------------------------------------

    def _write_forever(self) -> None:
        last_ping = time.monotonic()
        while not self._closed:
            self._wake.wait(constants.HUB_HEALTH_CHECK_INTERVAL)
            self._wake.clear()
            connection = self._connection
            if connection is None or not self._ready or not connection.is_connected:
                continue
            try:
                self._reconcile(connection)
                if time.monotonic() - last_ping >= constants.HUB_HEALTH_CHECK_INTERVAL:
                    connection.send_command("PING")
                    last_ping = time.monotonic()
            except LINK_ERRORS as exc:
                # The reader notices the dead socket and reconnects.
                logger.info("ws4redis hub: writing to the pub/sub connection failed (%s)", exc)
                connection.disconnect()
            except Exception:
                # A bug here must not kill the hub's writer: dropping the link makes the reader reconnect.
                logger.exception("ws4redis hub: unexpected error while subscribing; reconnecting")
                connection.disconnect()

    def _reconcile(self, connection: redis.Connection) -> None:
        """Send the commands that make Redis match the wanted channels and patterns."""
        commands = self._commands
        packed: list[bytes] = []
        for dirty, wanted, on_server, subscribe, unsubscribe in (
            (self._dirty, self.channels, self._on_server, commands.subscribe, commands.unsubscribe),
            (self._dirty_patterns, self.patterns, self._patterns_on_server, b"psubscribe", b"punsubscribe"),
        ):
            if not dirty:
                continue
            changed = sorted(dirty)
            dirty.clear()
            added = [name for name in changed if name in wanted and name not in on_server]
            removed = [name for name in changed if name not in wanted and name in on_server]
            if added:
                on_server.update(added)
                packed += _pack(connection, subscribe, added)
                self._unanswered.extend((subscribe, name) for name in added)
            if removed:
                on_server.difference_update(removed)
                packed += _pack(connection, unsubscribe, removed)
                self._unanswered.extend((unsubscribe, name) for name in removed)
            for name in removed:
                waiter = self._waiters.pop(name, None)
                if waiter is not None:
                    waiter.set()
        if packed:
            connection.send_packed_command(packed)

    # --- helpers ----------------------------------------------------------

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._ready = False
        self._on_server = set()
        self._patterns_on_server = set()
        self._unanswered.clear()
        if connection is not None:
            connection.disconnect()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.set()


def _reply(connection: redis.Connection, timeout: float | None = None) -> object:
    """The next reply, an error reply as a value (a refused channel must not end the connection)."""
    try:
        if timeout is None:
            return connection.read_response()
        return connection.read_response(timeout=timeout)
    except redis.ResponseError as exc:
        return exc


def _limit_classes(limits: str) -> list[str]:
    """'normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60' -> one string per class."""
    words = limits.split()
    return [" ".join(words[index:index + 4]) for index in range(0, len(words), 4)]
