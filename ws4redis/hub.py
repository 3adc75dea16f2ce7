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

The mapping from a channel to the Redis connection carrying it lives in a
:class:`Router` and nowhere else: :class:`ChannelRouter` sends everything over
one link (one Redis, or the master Sentinel names), and
:class:`ws4redis.shard_router.ShardRouter` keeps a link per master node of a
Redis Cluster, homing each channel on its slot's master (SSUBSCRIBE).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import redis
from gevent.event import Event
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.connection import build_pool, get_connection_pool
from ws4redis.deflate import Deflation
from ws4redis.gevent_redis import GeventConnection, cooperative_pool, sockets_block
from ws4redis.history import (
    message_event,
    offset_order,
    read_missed,
    recovery_event,
    stream_key,
    unwrap,
    wrap,
)
from ws4redis.metrics import METRICS
from ws4redis.protocol import frame_compressed, frame_for, frame_payload
from ws4redis.pubsub_link import LINK_ERRORS, PubSubLink
from ws4redis.pubsub_parser import PubSubParser
from ws4redis.redis_cluster import build_cluster_client, fetch_values, is_cluster, node_options
from ws4redis.redis_errors import UNAVAILABLE, BrokerUnavailable
from ws4redis.redis_store import as_bytes
from ws4redis.server.fanout import Audience, SendLanes
from ws4redis.server.rules import forwarded
from ws4redis.shard_router import NO_PATTERNS, ShardRouter

__all__ = [
    "ChannelRouter", "Hub", "HubRedis", "HubRedisCluster", "Listener", "PubSubLink", "Router",
    "SubscriptionRecorder", "get_hub", "hub_subscriber_class",
]

logger = logging.getLogger(__name__)


class Listener(Protocol):
    """What the hub needs from a websocket: a non-blocking queue for frames.

    ``deflation`` is the socket's permessage-deflate (None when it negotiated none): the hub
    compresses a published message once for all the sockets that share a compressor.
    ``envelope``: the client asked for history envelopes (``ws4redis.history.message_event``)
    instead of bare messages; the hub frames each kind once.
    ``lane``: the listener's lane in :attr:`Hub.lanes` (None: it has none). While the listener
    keeps its lane resumed, the hub writes to its socket from C and calls :meth:`deliver` only
    when the lane is not; a lane that spills is handed back with :meth:`spilled`.
    """

    deflation: Deflation | None
    envelope: bool
    lane: int | None

    def deliver(self, frame: bytes, payload: bytes, channel: str, offset: bytes | None) -> bool:
        """Queue ``frame`` (``payload`` framed, from ``channel``, at ``offset`` in its history if it
        has one); True when a :meth:`flush` is needed."""

    def flush(self) -> None:
        """Write what was queued, without blocking."""

    def spilled(self) -> None:
        """Its lane's socket did not take everything: take the rest (``Hub.lanes.take``) and write it."""


class Router(Protocol):
    """Which Redis pub/sub connection carries which channel (one Redis, or a cluster's shards)."""

    patterns: bool  # whether pattern subscriptions can be carried

    @property
    def links(self) -> tuple[PubSubLink, ...]: ...

    @property
    def failing(self) -> bool:
        """Whether a link cannot reach its Redis right now."""

    def start(self) -> None: ...

    def want(self, channel: bytes, pattern: bool = False) -> Event | None:
        """Subscribe ``channel``; an event set on confirmation (None: confirmed already)."""

    def unwant(self, channel: bytes, pattern: bool = False) -> None: ...

    def close(self) -> None: ...


class ChannelRouter:
    """Every channel over one :class:`PubSubLink` to the server of WS4REDIS_CONNECTION.

    That server is one Redis, or the master the sentinels name (each new connection asks
    them). A Redis Cluster is routed by :class:`ws4redis.shard_router.ShardRouter` instead.
    """

    patterns = True

    def __init__(self, hub: Hub, make_connection: Callable[[], redis.Connection]) -> None:
        self._link = PubSubLink(hub, make_connection)

    @property
    def links(self) -> tuple[PubSubLink, ...]:
        return (self._link,)

    @property
    def failing(self) -> bool:
        return self._link.failing

    def start(self) -> None:
        self._link.start()

    def want(self, channel: bytes, pattern: bool = False) -> Event | None:
        self._link.start()
        return self._link.want(channel, pattern)

    def unwant(self, channel: bytes, pattern: bool = False) -> None:
        self._link.unwant(channel, pattern)

    def close(self) -> None:
        self._link.close()


def hub_connection_factory(
    name: str, server: Mapping[str, Any] | None = None
) -> Callable[[], redis.Connection]:
    """Connections to ``server`` (WS4REDIS_CONNECTION by default), named ``name`` in CLIENT LIST, RESP2."""
    config = {
        **(private_settings.WS4REDIS_CONNECTION if server is None else server),
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
        config = private_settings.WS4REDIS_CONNECTION
        self.router: Router
        if make_connection is None and is_cluster(config):
            self.client = client if client is not None else _cluster_client(config)
            self.router = ShardRouter(self, self.client, self._shard_link_factory(config))
        else:
            # Without a gevent patch (uWSGI as 0.6.0 ran it) the hub's own connections use gevent sockets.
            self.client = client if client is not None else HubRedis(
                connection_pool=cooperative_pool(get_connection_pool()))
            self.router = ChannelRouter(self, make_connection or hub_connection_factory(self.name))
        # The sockets written by the fan-out loop itself (ws4redis.server.fanout): a lane per websocket.
        self.lanes = SendLanes()
        self._listeners: dict[bytes, dict[Listener, None]] = {}
        self._pattern_listeners: dict[bytes, dict[Listener, None]] = {}
        # Listeners per channel grouped by the frame they need, rebuilt lazily after a change.
        self._fanout: dict[bytes, tuple[Group, ...]] = {}
        self._pattern_fanout: dict[bytes, tuple[Group, ...]] = {}
        self._pending: list[Listener] = []
        # Channels that keep a history (WS4REDIS_HISTORY): their label in envelopes, and the offset
        # of the last message the hub saw on each, to replay what a reconnect to Redis missed.
        self._history: dict[bytes, str] = {}
        self._last_offsets: dict[bytes, tuple[bytes, tuple[int, int]]] = {}
        # Read once: 0.6.0 never forwarded the heartbeat string (nor an empty message).
        self._heartbeat = private_settings.heartbeat_bytes()
        self.closed = False
        METRICS.add_gauges(self._gauges)

    def _shard_link_factory(
        self, config: Mapping[str, Any]
    ) -> Callable[[ClusterNode, ShardRouter], PubSubLink]:
        options = node_options(config)

        def make_link(node: ClusterNode, router: ShardRouter) -> PubSubLink:
            server = {**options, "host": node.host, "port": node.port}
            return PubSubLink(self, hub_connection_factory(self.name, server), sharded=True, events=router,
                              name=node.name)

        return make_link

    @property
    def connected(self) -> bool:
        """Whether the hub was started and every link holds its subscribed Redis connection."""
        links = [link for link in self.router.links if link.started]
        return not self.closed and bool(links) and all(link.connected for link in links)

    def _gauges(self) -> dict[str, dict[str, float]]:
        return {
            "hub_connected": {"": float(self.connected)},
            "pubsub_connections": {"": sum(link.connected for link in self.router.links)},
            "lane_deliveries": {"": self.lanes.delivered},
            "lane_sends": {"": self.lanes.sends},
        }

    @property
    def unreachable(self) -> bool:
        """Whether Redis cannot be reached at the moment (the links are retrying)."""
        return self.router.failing

    def start(self) -> None:
        """Connect every link now instead of at the first subscription (a server does it at start-up)."""
        self.router.start()

    # --- listeners --------------------------------------------------------

    def subscribe(
        self,
        listener: Listener,
        channels: Iterable[str | bytes],
        patterns: Iterable[str | bytes] = (),
        timeout: float | None = constants.HUB_SUBSCRIBE_TIMEOUT,
        history: Mapping[bytes, str] | None = None,
    ) -> bool:
        """Route ``channels`` (and ``patterns``) to ``listener``; wait until Redis confirmed them.

        Returns False when the confirmation did not come within ``timeout``
        (Redis is down): the listener stays registered and the channels are
        subscribed as soon as Redis is back. ``history`` names the channels
        that keep a history (their messages carry offsets) with their labels.
        """
        if self.closed:
            raise RuntimeError("the hub is closed")
        if history:
            self._history.update(history)
        patterns = list(patterns)
        if patterns and not self.router.patterns:
            raise ValueError(NO_PATTERNS)
        waiters = []
        for names, table, fanout, pattern in (
            (channels, self._listeners, self._fanout, False),
            (patterns, self._pattern_listeners, self._pattern_fanout, True),
        ):
            for name in names:
                key = as_bytes(name)
                members = table.get(key)
                if members is None:
                    members = table[key] = {}
                members[listener] = None
                fanout.pop(key, None)
                waiter = self.router.want(key, pattern)
                if waiter is not None and not self.router.failing:
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
                key = as_bytes(name)
                members = table.get(key)
                if members is None or members.pop(listener, False) is False:
                    continue
                fanout.pop(key, None)
                if not members:
                    del table[key]
                    self.router.unwant(key, pattern)
                    if not pattern:
                        self._history.pop(key, None)
                        self._last_offsets.pop(key, None)

    # --- fan-out (runs in a link's reader greenlet) -----------------------

    def dispatch(self, key: bytes, payload: bytes, channel: bytes | None = None) -> None:
        """Frame ``payload`` once per kind of listener and queue it for every listener of ``key``.

        ``key`` is the channel, or for a pattern subscription the pattern,
        in which case ``channel`` names the channel it was published on. On a
        channel with a history the message carries its offset and type
        (``ws4redis.history.unwrap``).
        """
        pattern = channel is not None
        fanout = self._pattern_fanout if pattern else self._fanout
        groups = fanout.get(key)
        if groups is None:
            members = (self._pattern_listeners if pattern else self._listeners).get(key)
            if not members:
                return  # unsubscribed meanwhile
            groups = fanout[key] = _by_kind(members, self.lanes)
        label = None if pattern else self._history.get(key)
        offset = binary = None
        if label is not None:
            offset, binary, payload = unwrap(payload)
            if offset is not None:
                order = offset_order(offset)
                last = self._last_offsets.get(key)
                if last is not None and order <= last[1]:
                    return  # replayed already, after a reconnect to Redis (resend_persisted)
                self._last_offsets[key] = (offset, order)
        if not forwarded(payload, self._heartbeat):
            return
        name = (channel if pattern else key).decode("utf-8", "replace")
        pending = self._pending
        lanes = self.lanes
        envelope = None
        plain: dict[bool, bytes] = {}  # the uncompressed frame of each kind, made once
        for deflation, enveloped, audience in groups:
            METRICS.deliveries += len(audience)
            if enveloped and envelope is None:
                envelope = message_event(label or name, offset, binary, payload)
            body, kind = (envelope, False) if enveloped else (payload, binary)
            if deflation is not None and len(body) >= deflation.threshold:
                sent = frame_compressed(body, deflation.compressor, kind)  # once for the whole group
            else:
                sent = plain.get(enveloped) or plain.setdefault(enveloped, frame_payload(body, kind))
            slow = lanes.deliver(sent, audience)  # the lanes written from C; the others come back
            if lanes.spilled:
                self._hand_back_spilled()
            for listeners in (slow, audience.others):
                for listener in listeners:
                    if listener.deliver(sent, payload, name, offset):
                        pending.append(listener)

    def flush_pending(self) -> None:
        """Write every lane that received something, and let every other such listener write."""
        lanes = self.lanes
        lanes.flush()
        if lanes.spilled:
            self._hand_back_spilled()
        pending = self._pending
        if pending:
            self._pending = []
            for listener in pending:
                listener.flush()

    def _hand_back_spilled(self) -> None:
        """The listeners whose socket did not take all its lane held: each queues the rest itself."""
        for listener in self.lanes.pop_spilled():
            listener.spilled()

    def resend_persisted(self, channels: Iterable[bytes]) -> int:
        """After a reconnect to Redis: deliver what each channel's listeners may have missed; how many.

        A channel with a history gets every message published after the last one the hub saw,
        in order (none twice: :meth:`dispatch` skips offsets already seen). Any other channel
        gets the message kept under its key, as 0.6.0 had it.
        """
        names = sorted(channels)
        if not names:
            return 0
        sent = 0
        kept = []
        for name in names:
            last = self._last_offsets.get(name)
            if name in self._history and last is not None:
                sent += self._replay(name, last[0])
            else:
                kept.append(name)
        if kept:
            try:
                values = fetch_values(self.client, kept)
            except LINK_ERRORS as exc:
                logger.warning("ws4redis hub: could not fetch persisted messages after reconnecting: %s", exc)
                values = []
            for name, value in zip(kept, values, strict=False):
                if value is not None:
                    self.dispatch(name, value)
                    sent += 1
        self.flush_pending()
        return sent

    def _replay(self, channel: bytes, last: bytes) -> int:
        label = self._history[channel]
        try:
            missed = read_missed(self.client, {label: stream_key(channel)}, {label: last.decode("ascii")},
                                 constants.HUB_REPLAY_LIMIT)
        except LINK_ERRORS as exc:
            logger.warning("ws4redis hub: could not read the history of %r after reconnecting: %s",
                           channel, exc)
            return 0
        if not missed.recovered:
            logger.warning("ws4redis hub: the history of %r no longer holds the last message seen (%s): "
                           "messages published during the gap may be lost", channel, last.decode("ascii"))
            self._tell_gap(channel, recovery_event(False, len(missed.entries), missed.offsets))
        for _, offset, binary, data in missed.entries:
            self.dispatch(channel, wrap(offset, binary, data))
        return len(missed.entries)

    def _tell_gap(self, channel: bytes, event: bytes) -> None:
        """Tell the history clients of ``channel`` that messages may be lost (their page refetches)."""
        name = channel.decode("utf-8", "replace")
        for listener in self._listeners.get(channel, ()):
            if not listener.envelope:
                continue
            if listener.deliver(frame_for(event, listener.deflation), event, name, None):
                self._pending.append(listener)

    # --- lifecycle --------------------------------------------------------

    def close(self) -> None:
        """Drop every Redis pub/sub connection of the hub; its subscriptions go with them."""
        self.closed = True
        METRICS.remove_gauges(self._gauges)
        self.router.close()
        self._listeners.clear()
        self._pattern_listeners.clear()
        self._fanout.clear()
        self._pattern_fanout.clear()


def _cluster_client(config: Mapping[str, Any]) -> RedisCluster:
    """The hub's client of a cluster (gevent sockets when the process is not patched)."""
    try:
        return build_cluster_client(config, connection_class=GeventConnection if sockets_block() else None,
                                    client_class=HubRedisCluster)
    except UNAVAILABLE as exc:
        raise BrokerUnavailable(f"no node of the Redis Cluster of WS4REDIS_CONNECTION answers: {exc}") \
            from exc


# One group of a channel's listeners: those needing the same frame (deflation or None, envelope),
# as an Audience of their lanes and of the listeners with none.
Group = tuple["Deflation | None", bool, Audience]


def _by_kind(members: Iterable[Listener], lanes: SendLanes) -> tuple[Group, ...]:
    """The listeners of a channel grouped by the frame they need."""
    groups: dict[Any, list[Listener]] = {}
    deflations: dict[Any, Deflation | None] = {}
    for listener in members:
        deflation = listener.deflation
        key = (None if deflation is None else (deflation.compressor, deflation.threshold), listener.envelope)
        deflations.setdefault(key, deflation)
        groups.setdefault(key, []).append(listener)
    return tuple((deflations[key], key[1], _audience(listeners, lanes)) for key, listeners in groups.items())


def _audience(listeners: list[Listener], lanes: SendLanes) -> Audience:
    """The lanes of ``listeners`` that have one; the rest get their deliveries from the hub."""
    with_lane = [listener.lane for listener in listeners if listener.lane is not None]
    return lanes.audience(with_lane, [listener for listener in listeners if listener.lane is None])


class HubRedis(redis.Redis):
    """The client handed to subscribers: commands use the shared pool, ``pubsub()`` only records.

    A custom subscriber written for 0.6.0 calls ``self._connection.pubsub()``
    in its ``set_pubsub_channels``; with this client that returns a
    :class:`SubscriptionRecorder`, so its channels go through the hub too.
    """

    def pubsub(self, **kwargs: object) -> SubscriptionRecorder:  # type: ignore[override]
        return SubscriptionRecorder()


class HubRedisCluster(RedisCluster):
    """:class:`HubRedis` for a Redis Cluster: ``pubsub()`` records, the hub subscribes with SSUBSCRIBE."""

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
            self.channels[as_bytes(name)] = None

    def psubscribe(self, *args: str | bytes, **kwargs: object) -> None:
        if kwargs:
            raise TypeError("message handlers are not supported: the hub delivers to the websocket")
        for name in args:
            self.patterns[as_bytes(name)] = None

    def unsubscribe(self, *args: str | bytes) -> None:
        for name in args or list(self.channels):
            self.channels.pop(as_bytes(name), None)

    def punsubscribe(self, *args: str | bytes) -> None:
        for name in args or list(self.patterns):
            self.patterns.pop(as_bytes(name), None)

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
