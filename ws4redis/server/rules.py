"""What every websocket server does with one connection, whatever its I/O: the policy, sans I/O.

The evented connection (gevent server, uWSGI) and the blocking relay
(development server) both drive these objects, so they cannot diverge.
Nothing here reads a socket, a clock or Django's settings: the callers pass
``now`` and a :class:`~ws4redis.server.config.ServerConfig`.

Invariants:

* A client's message equal to WS4REDIS_HEARTBEAT is answered with the
  heartbeat and never published; an empty message is never published
  (:func:`inbound`). Messages from Redis that are the heartbeat or empty are
  never forwarded (the hub's and the relay's rule alike).
* Without ``?echo`` exactly the copies of the client's own messages coming
  back on channels it also listens to are dropped (:class:`EchoFilter`);
  identical messages of other clients still arrive.
* Keepalive (:class:`Keepalive`): after LEGACY_HEARTBEAT_INTERVAL seconds in
  which the peer sent nothing and we sent no heartbeat, a heartbeat is due;
  after WS4REDIS_PING_INTERVAL seconds of the same silence, a ping; a ping
  unanswered for WS4REDIS_PING_TIMEOUT seconds (no byte at all from the peer)
  ends the connection with 1011. Anything the peer sends counts as an answer.
* The peer gets WS4REDIS_PING_TIMEOUT seconds, too, for each other thing we
  wait for: completing a close handshake, taking the frames queued for it
  (:meth:`Keepalive.out_of_patience`).
* A message Redis did not take closes the websocket (:func:`publish_failure`):
  1013 (try again later) when Redis is unreachable, 1011 for anything else.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ws4redis import constants
from ws4redis.redis_errors import UNAVAILABLE

if TYPE_CHECKING:
    from ws4redis.server.config import ServerConfig

__all__ = ["Due", "EchoFilter", "Inbound", "Keepalive", "forwarded", "inbound", "publish_failure"]


class Inbound(enum.Enum):
    """What to do with one message received from a client."""

    PUBLISH = "publish"
    ANSWER_HEARTBEAT = "answer the heartbeat"
    IGNORE = "ignore"


def inbound(data: bytes, heartbeat: bytes | None) -> Inbound:
    """The rule for a client's message: publish it, answer it as the heartbeat, or drop it (empty)."""
    if not data:
        return Inbound.IGNORE
    if heartbeat is not None and data == heartbeat:
        return Inbound.ANSWER_HEARTBEAT
    return Inbound.PUBLISH


def forwarded(payload: bytes, heartbeat: bytes | None) -> bool:
    """Whether a message from Redis goes to the websockets (not empty, not the heartbeat; 0.6.0's rule)."""
    return bool(payload) and payload != heartbeat


class EchoFilter:
    """Recognises the copies of a client's own messages coming back from Redis.

    A message published on a channel the same websocket listens to comes
    back once per such channel; each copy is counted when published and
    dropped when it arrives, so identical messages of other clients still
    get through.
    """

    __slots__ = ("channels", "_pending")

    def __init__(self, publishers: Iterable[str], subscribed: Iterable[str]) -> None:
        self.channels = frozenset(publishers) & frozenset(subscribed)
        self._pending: Counter[tuple[str, bytes]] = Counter()

    @classmethod
    def unless_echo(
        cls, echo: bool, publishers: Iterable[str], subscribed: Iterable[str]
    ) -> EchoFilter | None:
        """The filter a websocket needs: none with ``?echo`` or when no channel it publishes on comes back."""
        if echo:
            return None
        echo_filter = cls(publishers, subscribed)
        return echo_filter if echo_filter.channels else None

    def published(self, payload: bytes) -> None:
        for channel in self.channels:
            self._pending[(channel, payload)] += 1

    @property
    def waiting(self) -> bool:
        """Whether a copy of an own message is still to come back (until then, every delivery counts)."""
        return bool(self._pending)

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


class Due(enum.IntFlag):
    """What :meth:`Keepalive.due` asks the caller to do now."""

    NOTHING = 0
    HEARTBEAT = 1
    PING = 2
    PING_TIMEOUT = 4


class Keepalive:
    """The due times of one connection's heartbeat, ping and ping timeout (see the module's invariants)."""

    __slots__ = ("_heartbeat", "_ping_interval", "_ping_timeout", "_last_recv", "_last_heartbeat",
                 "_last_ping", "_unanswered_since")

    def __init__(self, config: ServerConfig, now: float) -> None:
        self._heartbeat = config.heartbeat is not None
        self._ping_interval = config.ping_interval
        self._ping_timeout = config.ping_timeout
        self._last_recv = self._last_heartbeat = self._last_ping = now
        self._unanswered_since = 0.0  # when the oldest ping still without an answer went out

    def received(self, now: float) -> None:
        """The peer sent something: it is alive, whatever it was (not only a pong)."""
        self._last_recv = now
        self._unanswered_since = 0.0

    def due(self, now: float) -> Due:
        """What is due at ``now``; the caller sends the heartbeat and ping it is told to."""
        if self._unanswered_since and now - self._unanswered_since >= self._ping_timeout:
            return Due.PING_TIMEOUT
        due = Due.NOTHING
        if self._heartbeat and now - max(self._last_recv, self._last_heartbeat) >= \
                constants.LEGACY_HEARTBEAT_INTERVAL:
            self._last_heartbeat = now
            due |= Due.HEARTBEAT
        interval = self._ping_interval
        if interval is not None and now - max(self._last_recv, self._last_ping) >= interval:
            self._last_ping = now
            self._unanswered_since = self._unanswered_since or now
            due |= Due.PING
        return due

    def next_due(self, now: float) -> float | None:
        """Seconds from ``now`` until :meth:`due` may have something to say (None: never)."""
        times = []
        if self._unanswered_since:
            times.append(self._unanswered_since + self._ping_timeout)
        if self._heartbeat:
            times.append(max(self._last_recv, self._last_heartbeat) + constants.LEGACY_HEARTBEAT_INTERVAL)
        if self._ping_interval is not None:
            times.append(max(self._last_recv, self._last_ping) + self._ping_interval)
        return max(0.0, min(times) - now) if times else None

    def out_of_patience(self, since: float, now: float) -> bool:
        """Whether what we have waited for since ``since`` (0: nothing) took WS4REDIS_PING_TIMEOUT or more."""
        return bool(since) and now - since >= self._ping_timeout


def publish_failure(error: BaseException) -> tuple[int, str]:
    """The close code and reason for a websocket whose message Redis did not take."""
    if isinstance(error, UNAVAILABLE):
        return constants.CLOSE_TRY_AGAIN_LATER, "message not published: Redis unavailable"
    return constants.CLOSE_INTERNAL_ERROR, "internal server error"
