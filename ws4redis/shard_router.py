"""Which master node of a Redis Cluster carries which channel, for the hub's sharded pub/sub.

A cluster delivers SPUBLISH only to subscribers on the shard that owns the
channel's hash slot, so the hub keeps one :class:`~ws4redis.pubsub_link.PubSubLink`
per master node (SSUBSCRIBE, never one connection per channel) and homes each
channel on the link of its slot's master, as the cluster client's slot map says.

The map changes under it in three ways, and each ends in the same place, the
refresher greenlet, which re-reads the map (``CLUSTER SLOTS`` through redis-py's
``NodesManager``) and moves every channel whose master changed:

* a slot migrates (``redis-cli --cluster reshard``): the old master pushes an
  unsolicited ``sunsubscribe`` for each of its channels;
* a link's SSUBSCRIBE is refused with MOVED (the map was stale) or CLUSTERDOWN;
* a master dies: its link cannot reconnect until a replica is promoted and the
  map names it. Channels moved off a failed link get their persisted message
  re-sent once the new master confirms them, as after any reconnect; channels
  moved by a slot migration do not (nothing was missed: the old master kept
  delivering until it gave the slot away).

Messages published while a channel is between two masters (milliseconds for a
migration, the failover time for a dead master) are not delivered, as with any
Redis pub/sub outage.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
from gevent.event import Event
from redis.cluster import PRIMARY, ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import SlotNotCoveredError

from ws4redis import constants
from ws4redis.pubsub_link import LINK_ERRORS, LinkOwner, PubSubLink
from ws4redis.redis_errors import UNAVAILABLE

__all__ = ["NO_PATTERNS", "ShardRouter"]

logger = logging.getLogger(__name__)

NO_PATTERNS = (
    "Redis Cluster's sharded pub/sub (SSUBSCRIBE) has no pattern subscriptions: a subscriber that "
    "calls psubscribe() needs one Redis (or Sentinel) in WS4REDIS_CONNECTION"
)


class ShardRouter:
    """One sharded link per master node, a home link per channel, moved when the slot map changes."""

    patterns = False

    def __init__(self, owner: LinkOwner, client: RedisCluster,
                 link_factory: Callable[[ClusterNode, ShardRouter], PubSubLink]) -> None:
        self._owner = owner
        self._client = client
        self._link_factory = link_factory
        self._links: dict[str, PubSubLink] = {}  # node name -> its link
        self._home: dict[bytes, PubSubLink] = {}  # channel -> the link carrying it
        self._homeless: dict[bytes, Event] = {}  # channels waiting for a slot map that covers them
        self._moved: set[bytes] = set()  # channels a link gave back since the last refresh
        self._wake = Event()
        self._refresher: gevent.Greenlet | None = None
        self._map_known = True
        self._closed = False
        self.refreshes = 0  # slot map reads after a change (a gauge of how often the map moves)

    # --- what the hub asks --------------------------------------------------

    @property
    def links(self) -> tuple[PubSubLink, ...]:
        return tuple(self._links.values())

    @property
    def failing(self) -> bool:
        """Whether part of the cluster cannot be reached (a link retries, or no node gives the map)."""
        return not self._map_known or any(link.failing for link in self._links.values())

    def start(self) -> None:
        """A link to every master now (readiness tells whether each answers) and the refresher."""
        if self._refresher is None and not self._closed:
            self._refresher = gevent.spawn(self._refresh_forever)
            for node in self._masters():
                self._link(node).start()

    def want(self, channel: bytes, pattern: bool = False) -> Event | None:
        if pattern:
            raise ValueError(NO_PATTERNS)
        self.start()
        link = self._home.get(channel)
        if link is None:
            waiter = self._homeless.get(channel)
            if waiter is not None:
                return waiter
            node = self._master_of(channel)
            if node is None:
                waiter = self._homeless[channel] = Event()
                self._wake.set()
                return waiter
            link = self._home[channel] = self._link(node)
            link.start()
        return link.want(channel)

    def unwant(self, channel: bytes, pattern: bool = False) -> None:
        link = self._home.pop(channel, None)
        if link is not None:
            link.unwant(channel)
        waiter = self._homeless.pop(channel, None)
        if waiter is not None:
            waiter.set()

    def close(self) -> None:
        self._closed = True
        if self._refresher is not None:
            self._refresher.kill(block=True, timeout=1.0)
        for link in self._links.values():
            link.close()
        for waiter in self._homeless.values():
            waiter.set()
        self._links.clear()
        self._home.clear()
        self._homeless.clear()

    # --- what the links report (LinkEvents) -----------------------------------

    def moved(self, link: PubSubLink, channels: set[bytes]) -> None:
        self._moved.update(channel for channel in channels if self._home.get(channel) is link)
        self._wake.set()

    def lost(self, link: PubSubLink) -> None:
        self._wake.set()

    # --- the refresher --------------------------------------------------------

    def _refresh_forever(self) -> None:
        delay = constants.CLUSTER_REFRESH_MIN_DELAY
        while not self._closed:
            self._wake.wait()
            self._wake.clear()
            # A migration of many slots pushes many sunsubscribes: read the map once for a burst.
            gevent.sleep(constants.CLUSTER_REFRESH_DEBOUNCE)
            try:
                settled = self._refresh()
            except Exception:
                logger.exception("ws4redis hub: unexpected error while following the cluster's slot map")
                settled = False
            if settled:
                delay = constants.CLUSTER_REFRESH_MIN_DELAY
                continue
            gevent.sleep(delay)
            delay = min(delay * 2, constants.CLUSTER_REFRESH_MAX_DELAY)
            self._wake.set()

    def _refresh(self) -> bool:
        """Re-read the slot map and move channels to their masters' links; True when nothing is left to do."""
        try:
            self._client.nodes_manager.initialize()
        except (*UNAVAILABLE, *LINK_ERRORS) as exc:
            if self._map_known:
                logger.error("ws4redis hub: no node of the Redis Cluster gives its slot map (%s); "
                             "retrying", exc)
            self._map_known = False
            return False
        self._map_known = True
        self.refreshes += 1
        moved, self._moved = self._moved, set()
        resend: dict[bytes, Event | None] = {}
        for channel, link in list(self._home.items()):
            node = self._master_of(channel)
            if node is None:
                self._homeless[channel] = link.release(channel) or Event()
                del self._home[channel]
            elif node.name != link.name:
                failed = link.failing
                waiter = link.release(channel)
                target = self._home[channel] = self._link(node)
                target.start()
                confirmed = target.want(channel, waiter=waiter)
                if failed:
                    resend[channel] = confirmed
            elif channel in moved:
                link.want(channel)  # refused or dropped where the map still puts it: ask again
        for channel, waiter in list(self._homeless.items()):
            node = self._master_of(channel)
            if node is not None:
                del self._homeless[channel]
                target = self._home[channel] = self._link(node)
                target.start()
                target.want(channel, waiter=waiter)
        self._retire_links()
        if resend:
            gevent.spawn(self._resend_when_confirmed, resend)
        return not (self._homeless or self._moved or any(link.failing for link in self._links.values()))

    def _retire_links(self) -> None:
        """Close the links of nodes that are no longer masters and carry nothing."""
        masters = {node.name for node in self._masters()}
        carrying = {link.name for link in self._home.values()}
        for name, link in list(self._links.items()):
            if name not in masters and name not in carrying:
                del self._links[name]
                link.close()
        for node in self._masters():
            self._link(node).start()

    def _resend_when_confirmed(self, channels: dict[bytes, Event | None]) -> None:
        """After a failover: the persisted message of each channel, once its new master carries it."""
        deadline = time.monotonic() + constants.HUB_SUBSCRIBE_TIMEOUT
        for waiter in channels.values():
            if waiter is not None:
                waiter.wait(max(0.0, deadline - time.monotonic()))
        carried = [channel for channel, link in self._home.items() if channel in channels and link.connected]
        resent = self._owner.resend_persisted(carried)
        logger.warning("ws4redis hub: %d channels moved to a promoted master; %d persisted messages re-sent",
                       len(carried), resent)

    # --- the map --------------------------------------------------------------

    def _masters(self) -> list[ClusterNode]:
        return list(self._client.nodes_manager.get_nodes_by_server_type(PRIMARY))

    def _master_of(self, channel: bytes) -> ClusterNode | None:
        try:
            return self._client.nodes_manager.get_node_from_slot(key_slot(channel))
        except SlotNotCoveredError:
            return None

    def _link(self, node: ClusterNode) -> PubSubLink:
        link = self._links.get(node.name)
        if link is None:
            link = self._links[node.name] = self._link_factory(node, self)
        return link
