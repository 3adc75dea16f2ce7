"""One Redis pub/sub connection per process, shared by every websocket the process serves.

django-websocket-redis 0.6.0 opened a Redis pub/sub connection for each
websocket. The gevent server instead routes every live message through one
:class:`Hub` per process:

* Subscriptions are reference-counted per channel: the first local listener
  of a channel makes the hub SUBSCRIBE, the last one leaving makes it
  UNSUBSCRIBE. Ten thousand websockets on one broadcast channel cost Redis
  one subscription.
* One reader greenlet per Redis connection drains every reply already
  buffered, frames each message ONCE (:func:`ws4redis.protocol.frame_payload`)
  and hands the same bytes to every listener, which queues them without
  blocking (see ``ws4redis.server.evented.WebSocketConnection``); the
  listeners that received something are flushed once per drained batch.
* When Redis goes away the websockets stay connected: the hub reconnects
  with exponential backoff and jitter, subscribes every channel again,
  re-sends the persisted message of each channel (the last one, kept with
  SET EX by ``RedisStore.publish_message``) and logs how long the gap was.

Shared per process: the pub/sub connection (the hub) and the bounded pool
for short commands (PUBLISH, SET, GET). Per websocket: everything a custom
WS4REDIS_SUBSCRIBER decides: ``set_pubsub_channels`` (which channels, from
the request and the query string), ``publish_message`` and
``get_persisted_messages``/``send_persisted_messages``. Where a subscriber
would open its PubSub (``create_subscription()``, or
``self._connection.pubsub()`` in subscribers written for 0.6.0, whose
connection is a :class:`HubRedis`) it gets a :class:`SubscriptionRecorder`:
it records the channels and patterns subscribed to, and the hub carries
them. Reading replies from the subscriber (``parse_response``) is not
possible under the hub: live messages go straight to the websocket.

The mapping from a channel to the Redis connection carrying it lives in
:class:`ChannelRouter` and nowhere else, so Redis Cluster sharded pub/sub
(SSUBSCRIBE per shard) or a Sentinel-managed master can be added there.
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterable
from typing import Protocol

import gevent
import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.retry import Retry

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.connection import build_pool, get_connection_pool
from ws4redis.gevent_redis import cooperative_pool
from ws4redis.metrics import METRICS
from ws4redis.protocol import frame_payload
from ws4redis.pubsub_parser import PubSubParser
from ws4redis.server.rules import forwarded

__all__ = [
    "ChannelRouter", "Hub", "Listener", "PubSubLink", "SubscriptionRecorder", "get_hub",
    "hub_subscriber_class",
]

logger = logging.getLogger(__name__)

# Errors meaning "this Redis connection is unusable": log, back off, reconnect.
LINK_ERRORS = (redis.RedisError, OSError)


class Listener(Protocol):
    """What the hub needs from a websocket: a non-blocking queue for frames."""

    def deliver(self, frame: bytes, payload: bytes, channel: str) -> bool:
        """Queue ``frame`` (``payload`` framed, from ``channel``); True when a :meth:`flush` is needed."""

    def flush(self) -> None:
        """Write what was queued, without blocking."""


def _as_bytes(name: str | bytes) -> bytes:
    return name.encode() if isinstance(name, str) else bytes(name)


class PubSubLink:
    """One Redis connection in pub/sub mode, with the greenlets that read and write it.

    The reader greenlet owns the connection: it connects, subscribes to every
    wanted channel, re-sends persisted messages after a reconnect and reads
    replies. The writer greenlet turns later changes of the wanted channels
    into batched SUBSCRIBE/UNSUBSCRIBE commands and PINGs the server so a
    silently dead connection is noticed. Only these two touch the socket.
    """

    def __init__(self, hub: Hub, make_connection: Callable[[], redis.Connection]) -> None:
        self.hub = hub
        self._make_connection = make_connection
        self.channels: set[bytes] = set()  # wanted: channels with local listeners
        self.patterns: set[bytes] = set()
        self._on_server: set[bytes] = set()  # SUBSCRIBE sent on the current connection
        self._patterns_on_server: set[bytes] = set()
        self._dirty: set[bytes] = set()  # channels whose wanted state changed since the last reconcile
        self._dirty_patterns: set[bytes] = set()
        self._waiters: dict[bytes, Event] = {}  # channel -> set when Redis confirms it
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

    # --- wanted channels (called by the hub) ------------------------------

    def start(self) -> None:
        if self._reader is None:
            self._reader = gevent.spawn(self._read_forever)
            self._writer = gevent.spawn(self._write_forever)

    def want(self, channel: bytes, pattern: bool = False) -> Event | None:
        """Subscribe ``channel`` soon; returns an event set on confirmation (None: already confirmed)."""
        (self.patterns if pattern else self.channels).add(channel)
        on_server = self._patterns_on_server if pattern else self._on_server
        if self._ready and channel in on_server and channel not in self._waiters:
            return None
        (self._dirty_patterns if pattern else self._dirty).add(channel)
        waiter = self._waiters.get(channel)
        if waiter is None:
            waiter = self._waiters[channel] = Event()
        self._wake.set()
        return waiter

    def unwant(self, channel: bytes, pattern: bool = False) -> None:
        (self.patterns if pattern else self.channels).discard(channel)
        (self._dirty_patterns if pattern else self._dirty).add(channel)
        self._wake.set()

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
                self.failing = True
                dropped = False
                if not isinstance(exc, LINK_ERRORS):
                    logger.exception("ws4redis hub: unexpected error while connecting")
                if lost_at is None:
                    lost_at = time.monotonic()
                    logger.error("ws4redis hub: cannot reach Redis for pub/sub (%s); retrying", exc)
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
                resent = self.hub.resend_persisted(self.channels)
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
                self.failing = True
                lost_at = time.monotonic()
                dropped = isinstance(exc, redis.ConnectionError)
                if not isinstance(exc, LINK_ERRORS):
                    # A bug must not end the delivery for the whole process: start over.
                    logger.exception("ws4redis hub: unexpected error while routing messages")
                logger.warning(
                    "ws4redis hub: lost the Redis pub/sub connection (%s); %d channels and their "
                    "websockets wait for it to come back",
                    exc, len(self.channels) + len(self.patterns),
                )
            finally:
                self._drop_connection()

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
        if channels:
            connection.send_command("SUBSCRIBE", *channels)
        if patterns:
            connection.send_command("PSUBSCRIBE", *patterns)
        self._on_server = set(channels)
        self._patterns_on_server = set(patterns)
        expected = len(channels) + len(patterns)
        while expected:
            reply = connection.read_response(timeout=2 * constants.HUB_HEALTH_CHECK_INTERVAL)
            if self._handle(reply) in (b"subscribe", b"psubscribe"):
                expected -= 1
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
            handle(connection.read_response())
            # Everything already received is handled before the listeners are flushed.
            while connection.can_read(timeout=0):
                handle(connection.read_response())
            flush()

    def _handle(self, reply: object) -> bytes | None:
        """Route one pub/sub reply; returns its kind."""
        if not isinstance(reply, list) or not reply:
            return None  # PONG outside of subscribed mode
        kind = reply[0]
        if kind == b"message":
            self.hub.dispatch(reply[1], reply[2])
        elif kind == b"pmessage":
            self.hub.dispatch(reply[1], reply[3], channel=reply[2])
        elif kind in (b"subscribe", b"psubscribe"):
            waiter = self._waiters.pop(reply[1], None)
            if waiter is not None:
                waiter.set()
        return kind

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
        """Send the SUBSCRIBE/UNSUBSCRIBE commands that make Redis match the wanted channels."""
        for dirty, wanted, on_server, subscribe, unsubscribe in (
            (self._dirty, self.channels, self._on_server, "SUBSCRIBE", "UNSUBSCRIBE"),
            (self._dirty_patterns, self.patterns, self._patterns_on_server, "PSUBSCRIBE", "PUNSUBSCRIBE"),
        ):
            if not dirty:
                continue
            changed = sorted(dirty)
            dirty.clear()
            added = [name for name in changed if name in wanted and name not in on_server]
            removed = [name for name in changed if name not in wanted and name in on_server]
            if added:
                on_server.update(added)
                connection.send_command(subscribe, *added)
            if removed:
                on_server.difference_update(removed)
                connection.send_command(unsubscribe, *removed)
            for name in removed:
                waiter = self._waiters.pop(name, None)
                if waiter is not None:
                    waiter.set()

    # --- helpers ----------------------------------------------------------

    def _drop_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._ready = False
        self._on_server = set()
        self._patterns_on_server = set()
        if connection is not None:
            connection.disconnect()

    def _release_waiters(self) -> None:
        waiters, self._waiters = self._waiters, {}
        for waiter in waiters.values():
            waiter.set()


def _limit_classes(limits: str) -> list[str]:
    """'normal 0 0 0 slave 268435456 67108864 60 pubsub 33554432 8388608 60' -> one string per class."""
    words = limits.split()
    return [" ".join(words[index:index + 4]) for index in range(0, len(words), 4)]


class ChannelRouter:
    """Which Redis pub/sub connection carries which channel: the one place to change for sharding.

    Today every channel of the process travels over one :class:`PubSubLink`
    to the server of WS4REDIS_CONNECTION. Redis Cluster sharded pub/sub would
    return one link per shard (hash slot of the channel, SSUBSCRIBE), a
    Sentinel setup a link that asks Sentinel for the current master; the hub
    only ever asks :meth:`link_for` and iterates :attr:`links`.
    """

    def __init__(self, hub: Hub, make_connection: Callable[[], redis.Connection]) -> None:
        self._link = PubSubLink(hub, make_connection)

    def link_for(self, channel: bytes) -> PubSubLink:
        return self._link

    @property
    def links(self) -> tuple[PubSubLink, ...]:
        return (self._link,)


def hub_connection_factory(name: str) -> Callable[[], redis.Connection]:
    """Connections to the server of WS4REDIS_CONNECTION, named ``name`` in CLIENT LIST, plain RESP2."""
    config = {
        **private_settings.WS4REDIS_CONNECTION,
        "client_name": name,
        "protocol": 2,  # pub/sub replies as plain arrays, no RESP3 push handling
        "decode_responses": False,  # channel names and payloads stay bytes
        "health_check_interval": 0,  # the link PINGs itself; redis-py's check would eat replies
        "retry": Retry(NoBackoff(), 0),  # the link has its own backoff
        "socket_timeout": None,  # the reader waits with can_read(timeout)
        "parser_class": PubSubParser,  # a buffer that stays bounded while a burst never pauses
    }
    pool = cooperative_pool(build_pool(config))

    def make_connection() -> redis.Connection:
        # The pool stays referenced: a Sentinel connection asks it, by a weak reference, for the master.
        return pool.connection_class(**pool.connection_kwargs)

    return make_connection


class Hub:
    """The process-wide fan-out from Redis channels to local websockets (see the module docstring)."""

    def __init__(
        self,
        make_connection: Callable[[], redis.Connection] | None = None,
        client: redis.Redis | None = None,
        name: str | None = None,
    ) -> None:
        self.name = name or f"ws4redis-hub:{os.getpid()}"
        # Without a gevent patch (uWSGI as 0.6.0 ran it) the hub's own connections use gevent sockets.
        self.client = client if client is not None else HubRedis(
            connection_pool=cooperative_pool(get_connection_pool()))
        self.router = ChannelRouter(self, make_connection or hub_connection_factory(self.name))
        self._listeners: dict[bytes, dict[Listener, None]] = {}
        self._pattern_listeners: dict[bytes, dict[Listener, None]] = {}
        # Tuples of listeners per channel, rebuilt lazily after a change, iterated per message.
        self._fanout: dict[bytes, tuple[Listener, ...]] = {}
        self._pattern_fanout: dict[bytes, tuple[Listener, ...]] = {}
        self._pending: list[Listener] = []
        # Read once: 0.6.0 never forwarded the heartbeat string (nor an empty message).
        self._heartbeat = private_settings.heartbeat_bytes()
        self.closed = False
        METRICS.add_gauges(self._gauges)

    @property
    def connected(self) -> bool:
        """Whether the hub was started and every link holds its subscribed Redis connection."""
        links = [link for link in self.router.links if link.started]
        return not self.closed and bool(links) and all(link.connected for link in links)

    def _gauges(self) -> dict[str, dict[str, float]]:
        return {
            "hub_connected": {"": float(self.connected)},
            "pubsub_connections": {"": sum(link.connected for link in self.router.links)},
        }

    @property
    def unreachable(self) -> bool:
        """Whether Redis cannot be reached at the moment (the links are retrying)."""
        return any(link.failing for link in self.router.links)

    def start(self) -> None:
        """Connect every link now instead of at the first subscription (a server does it at start-up)."""
        for link in self.router.links:
            link.start()

    # --- listeners --------------------------------------------------------

    def subscribe(
        self,
        listener: Listener,
        channels: Iterable[str | bytes],
        patterns: Iterable[str | bytes] = (),
        timeout: float | None = constants.HUB_SUBSCRIBE_TIMEOUT,
    ) -> bool:
        """Route ``channels`` (and ``patterns``) to ``listener``; wait until Redis confirmed them.

        Returns False when the confirmation did not come within ``timeout``
        (Redis is down): the listener stays registered and the channels are
        subscribed as soon as Redis is back.
        """
        if self.closed:
            raise RuntimeError("the hub is closed")
        waiters = []
        for names, table, fanout, pattern in (
            (channels, self._listeners, self._fanout, False),
            (patterns, self._pattern_listeners, self._pattern_fanout, True),
        ):
            for name in names:
                key = _as_bytes(name)
                members = table.get(key)
                if members is None:
                    members = table[key] = {}
                members[listener] = None
                fanout.pop(key, None)
                link = self.router.link_for(key)
                link.start()
                waiter = link.want(key, pattern)
                if waiter is not None and not link.failing:
                    waiters.append(waiter)
        if not waiters:
            return not self.unreachable
        deadline = None if timeout is None else time.monotonic() + timeout
        for waiter in waiters:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not waiter.wait(remaining):
                return False
        return True

    def unsubscribe(
        self, listener: Listener, channels: Iterable[str | bytes], patterns: Iterable[str | bytes] = ()
    ) -> None:
        """Stop routing to ``listener``; a channel nobody listens to any more is unsubscribed."""
        for names, table, fanout, pattern in (
            (channels, self._listeners, self._fanout, False),
            (patterns, self._pattern_listeners, self._pattern_fanout, True),
        ):
            for name in names:
                key = _as_bytes(name)
                members = table.get(key)
                if members is None or members.pop(listener, False) is False:
                    continue
                fanout.pop(key, None)
                if not members:
                    del table[key]
                    self.router.link_for(key).unwant(key, pattern)

    # --- fan-out (runs in a link's reader greenlet) -----------------------

    def dispatch(self, key: bytes, payload: bytes, channel: bytes | None = None) -> None:
        """Frame ``payload`` once and queue it for every listener of ``key``.

        ``key`` is the channel, or for a pattern subscription the pattern,
        in which case ``channel`` names the channel it was published on.
        """
        pattern = channel is not None
        fanout = self._pattern_fanout if pattern else self._fanout
        listeners = fanout.get(key)
        if listeners is None:
            members = (self._pattern_listeners if pattern else self._listeners).get(key)
            if not members:
                return  # unsubscribed meanwhile
            listeners = fanout[key] = tuple(members)
        if not forwarded(payload, self._heartbeat):
            return
        frame = frame_payload(payload)
        METRICS.deliveries += len(listeners)
        name = (channel if pattern else key).decode("utf-8", "replace")
        pending = self._pending
        for listener in listeners:
            if listener.deliver(frame, payload, name):
                pending.append(listener)

    def flush_pending(self) -> None:
        """Let every listener that received something write it out (non-blocking)."""
        pending = self._pending
        if pending:
            self._pending = []
            for listener in pending:
                listener.flush()

    def resend_persisted(self, channels: Iterable[bytes]) -> int:
        """Deliver the message kept under each channel's key to its listeners; returns how many."""
        names = sorted(channels)
        if not names:
            return 0
        try:
            values = self.client.mget(names)
        except LINK_ERRORS as exc:
            logger.warning("ws4redis hub: could not fetch persisted messages after reconnecting: %s", exc)
            return 0
        sent = 0
        for name, value in zip(names, values, strict=True):
            if value is not None:
                self.dispatch(name, value)
                sent += 1
        self.flush_pending()
        return sent

    # --- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Drop every Redis pub/sub connection of the hub; its subscriptions go with them."""
        self.closed = True
        METRICS.remove_gauges(self._gauges)
        for link in self.router.links:
            link.close()
        self._listeners.clear()
        self._pattern_listeners.clear()
        self._fanout.clear()
        self._pattern_fanout.clear()


class HubRedis(redis.Redis):
    """The client handed to subscribers: commands use the shared pool, ``pubsub()`` only records.

    A custom subscriber written for 0.6.0 calls ``self._connection.pubsub()``
    in its ``set_pubsub_channels``; with this client that returns a
    :class:`SubscriptionRecorder`, so its channels go through the hub too.
    """

    def pubsub(self, **kwargs: object) -> SubscriptionRecorder:  # type: ignore[override]
        return SubscriptionRecorder()


def hub_subscriber_class(base: type) -> type:
    """``base`` (WS4REDIS_SUBSCRIBER) with its subscriptions recorded for the hub, not opened."""

    def create_subscription(self: object) -> SubscriptionRecorder:
        return SubscriptionRecorder()

    return type(base.__name__, (base,), {"create_subscription": create_subscription, "__module__": __name__})


class SubscriptionRecorder:
    """Stands in for the redis-py ``PubSub`` of one subscriber: records channels, the hub carries them.

    ``RedisSubscriber.set_pubsub_channels`` (or a custom subscriber's)
    subscribes on it as on a PubSub; ``channels``/``patterns`` then tell the
    server what to route to this websocket, and ``get_persisted_messages``
    reads them as before. Reading replies from it is a mistake: live
    messages come from the hub.
    """

    __slots__ = ("channels", "patterns")

    def __init__(self) -> None:
        self.channels: dict[bytes, None] = {}
        self.patterns: dict[bytes, None] = {}

    connection = None  # no socket of its own: nothing to select on, nothing to unsubscribe

    @property
    def subscribed(self) -> bool:
        return bool(self.channels or self.patterns)

    def subscribe(self, *args: str | bytes, **kwargs: object) -> None:
        if kwargs:
            raise TypeError("message handlers are not supported: the hub delivers to the websocket")
        for name in args:
            self.channels[_as_bytes(name)] = None

    def psubscribe(self, *args: str | bytes, **kwargs: object) -> None:
        if kwargs:
            raise TypeError("message handlers are not supported: the hub delivers to the websocket")
        for name in args:
            self.patterns[_as_bytes(name)] = None

    def unsubscribe(self, *args: str | bytes) -> None:
        for name in args or list(self.channels):
            self.channels.pop(_as_bytes(name), None)

    def punsubscribe(self, *args: str | bytes) -> None:
        for name in args or list(self.patterns):
            self.patterns.pop(_as_bytes(name), None)

    def reset(self) -> None:
        self.channels.clear()
        self.patterns.clear()

    close = reset

    def parse_response(self, *args: object, **kwargs: object) -> None:
        raise RuntimeError("live messages are delivered by ws4redis.hub, not read from the subscriber")

    get_message = parse_response


_hub: Hub | None = None


def get_hub() -> Hub:
    """This process's hub, created on first use (after a fork the child gets its own)."""
    global _hub
    if _hub is None or _hub.closed or not _hub.name.endswith(f":{os.getpid()}"):
        _hub = Hub()
    return _hub
