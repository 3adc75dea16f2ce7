"""Messages, channel names and publishing: what travels through Redis and where.

Key layout (identical to django-websocket-redis 0.6.0, so both can share a
Redis during a migration); ``<prefix>:`` is absent when WS4REDIS_PREFIX is unset::

    <prefix>:broadcast:<facility>
    <prefix>:group:<group name>:<facility>
    <prefix>:user:<username>:<facility>
    <prefix>:session:<session key>:<facility>

Each name is used twice: as the pub/sub channel, and as a plain string key
holding the LAST message published on it for WS4REDIS_EXPIRE seconds. Only
that one message is kept, never a history: a client connecting later
receives the most recent message of each of its channels, then live traffic.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Iterable
from typing import Any

import redis

from ws4redis import settings as private_settings
from ws4redis.history import PUBLISH_SCRIPT, HistoryPolicy, stream_key
from ws4redis.redis_cluster import is_cluster_client, key_slot, publish_on_cluster
from ws4redis.redis_errors import UNAVAILABLE, BrokerUnavailable
from ws4redis.speedups import validate_utf8

logger = logging.getLogger(__name__)

SESSION_GROUPS_KEY = "ws4redis:memberof"


class _SelfType:
    """Type of ``SELF``: stands for the requesting user, their groups or their session."""

    _instance: _SelfType | None = None

    def __new__(cls) -> _SelfType:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "SELF"

    def __reduce__(self) -> str:
        return "SELF"


SELF = _SelfType()
"""Put into ``users``, ``groups`` or ``sessions`` to address whoever made the request."""


def get_prefix() -> str:
    """``'<WS4REDIS_PREFIX>:'``, or ``''`` when no prefix is configured."""
    prefix = private_settings.WS4REDIS_PREFIX
    return f"{prefix}:" if prefix else ""


def is_authenticated(request: Any) -> bool:
    """Whether ``request`` carries a logged-in user (servers may set ``request.user = None``)."""
    user = getattr(request, "user", None)
    return bool(user is not None and user.is_authenticated)


def session_key(request: Any) -> str | None:
    """The session key of ``request``, or None when it has no session."""
    session = getattr(request, "session", None)
    return session.session_key if session is not None else None


def session_groups(request: Any) -> list[str]:
    """Group names stored in the session at login by ``ws4redis.models`` (no database query)."""
    session = getattr(request, "session", None)
    if session is None:
        return []
    return list(session.get(SESSION_GROUPS_KEY, []))


class RedisMessage(bytes):
    """A message on its way to or from Redis: bytes, or None for things that are not messages.

    ``RedisMessage(value)`` returns ``None`` (not an instance) for ``None``,
    the heartbeat string and pub/sub replies other than a published message
    (subscribe confirmations and the like), exactly like 0.6.0, so callers can
    write ``msg = RedisMessage(x); if msg: ...``.

    ``binary`` is the type the message was declared with: ``RedisMessage(data, binary=True)``
    goes to browsers in a binary frame even when its bytes are valid UTF-8. Undeclared (None),
    bytes go out as text exactly when they are UTF-8, as in 0.6.0. Redis itself carries bytes
    only: the declared type travels on channels that keep a history (WS4REDIS_HISTORY).
    """

    binary: bool | None = None

    def __new__(cls, value: Any, binary: bool | None = None) -> RedisMessage | None:  # type: ignore[misc]
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, (bytes, bytearray, memoryview)):
            data = bytes(value)
        elif isinstance(value, (list, tuple)):
            return cls._from_reply(value)
        elif value is None:  # nothing received (servers pass what a read returned)
            return None
        else:
            raise TypeError(f"RedisMessage needs str, bytes or a pub/sub reply, got {type(value).__name__}")
        if data and data == private_settings.heartbeat_bytes():
            return None
        message = super().__new__(cls, data)
        if binary is not None:
            message.binary = bool(binary)
        return message

    @classmethod
    def received(cls, data: bytes, binary: bool | None = None) -> RedisMessage:
        """A client's message that a server's rules (``ws4redis.server.rules.inbound``) already told
        from the heartbeat: made without looking the heartbeat setting up again."""
        message = bytes.__new__(cls, data)
        if binary is not None:
            message.binary = binary
        return message

    @classmethod
    def _from_reply(cls, reply: list | tuple) -> RedisMessage | None:
        """The payload of a ``message``/``pmessage`` pub/sub reply, None for any other reply."""
        value = reply_payload(reply)
        return None if value is None else cls(value)


def as_bytes(name: str | bytes) -> bytes:
    """A channel name as Redis sends it back (redis-py gives str or bytes, depending on its options)."""
    return name.encode() if isinstance(name, str) else bytes(name)


def reply_kind(reply: Any) -> bytes:
    """The kind of a pub/sub reply (``message``, ``subscribe``, ...); empty for what is not one."""
    if not isinstance(reply, (list, tuple)) or not reply:
        return b""
    return as_bytes(reply[0])


def reply_payload(reply: Any) -> Any:
    """The payload of a ``message``/``pmessage`` pub/sub reply as redis-py gave it, None for any other."""
    kind = reply_kind(reply)
    if kind == b"message" and len(reply) >= 3:
        return reply[2]
    if kind == b"pmessage" and len(reply) >= 4:
        return reply[3]
    return None


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _audience_list(name: str, value: Any, request: Any, self_attribute: str) -> list:
    """Normalise a 0.6.0 audience argument (list, tuple, set, True, a single str) into a list."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return list(value)
    if value is True:
        warnings.warn(f"{name}=True is deprecated: use {name}=[SELF]", DeprecationWarning, stacklevel=4)
        return [SELF]
    if isinstance(value, str):
        warnings.warn(f"wrap the single {self_attribute} in a list: {name}=[{value!r}]",
                      DeprecationWarning, stacklevel=4)
        return [value]
    if value is False or value is None:
        return []
    raise ValueError(f"argument {name!r} must be a list or tuple, got {value!r}")


def _resolve_users(users: list, request: Any) -> list[str]:
    result = []
    for user in users:
        if user is SELF:
            if is_authenticated(request):
                result.append(request.user.get_username())
            else:
                logger.warning("ws4redis: users=[SELF] for an anonymous request: no user channel is used")
        else:
            result.append(str(user))
    return result


def _resolve_groups(groups: list, request: Any) -> list[str]:
    result = []
    for group in groups:
        if group is SELF:
            if is_authenticated(request):
                result.extend(session_groups(request))
            else:
                logger.warning("ws4redis: groups=[SELF] for an anonymous request: no group channel is used")
        else:
            result.append(str(group))
    return result


def _resolve_sessions(sessions: list, request: Any) -> list[str]:
    result = []
    for session in sessions:
        if session is SELF:
            key = session_key(request)
            if key:
                result.append(key)
            else:
                logger.warning("ws4redis: sessions=[SELF] for a request without session: no session channel")
        else:
            result.append(str(session))
    return result


def channel_names(
    facility: str,
    broadcast: bool = False,
    groups: Iterable[str] = (),
    users: Iterable[str] = (),
    sessions: Iterable[str] = (),
) -> list[str]:
    """The Redis names for already resolved audiences, in 0.6.0's order, without duplicates."""
    prefix = get_prefix()
    names = []
    if broadcast:
        names.append(f"{prefix}broadcast:{facility}")
    names.extend(f"{prefix}group:{group}:{facility}" for group in groups)
    names.extend(f"{prefix}user:{user}:{facility}" for user in users)
    names.extend(f"{prefix}session:{key}:{facility}" for key in sessions)
    return _unique(names)


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


# redis-py before 5.3 wants a command name from ConnectionPool.get_connection, later ones warn about it.
_POOL_NEEDS_COMMAND_NAME = (
    inspect.signature(redis.ConnectionPool.get_connection).parameters["command_name"].default
    is inspect.Parameter.empty
)


class PublishPlan:
    """SET EX (when messages are kept) and PUBLISH for a fixed set of channels, in one round trip.

    Everything but the message is encoded once (channel names, the expiry),
    so a websocket publishing thousands of messages pays for it once; each
    message is framed into one pipelined write and the replies are read
    back on the same pooled connection, without MULTI/EXEC.

    With a ``history`` policy (WS4REDIS_HISTORY) each channel takes one EVAL of
    :data:`ws4redis.history.PUBLISH_SCRIPT` instead: the stream entry, the kept
    message and the publication happen together inside Redis, and the message's
    type (text or binary) travels with it.
    """

    __slots__ = ("channels", "expire", "sharded", "history", "_commands", "_publishes", "_slots",
                 "__weakref__")

    def __init__(self, channels: Iterable[str], expire: int, sharded: bool = False,
                 history: HistoryPolicy | None = None) -> None:
        self.channels: tuple[str, ...] = tuple(sorted(channels))
        self.expire = expire
        self.sharded = sharded  # Redis Cluster: SPUBLISH, each command sent to its slot's master
        self.history = history
        publish = b"SPUBLISH" if sharded else b"PUBLISH"
        # (bytes before a text message, before a binary one, after either) per command, which
        # replies count receivers, and the hash slot each command goes to on a cluster.
        commands: list[tuple[bytes, bytes, bytes]] = []
        publishes: list[bool] = []
        slots: list[int] = []
        for channel in self.channels:
            raw = channel.encode("utf-8") if isinstance(channel, str) else bytes(channel)
            name = _bulk(raw)
            slot = key_slot(raw) if sharded else 0
            if history is not None:
                head = b"".join((b"*11\r\n", _bulk(b"EVAL"), _bulk(PUBLISH_SCRIPT), _bulk(b"2"),
                                 _bulk(stream_key(raw)), name, _bulk(publish), _bulk(b"%d" % history.size),
                                 _bulk(b"%d" % history.ttl), _bulk(b"%d" % max(expire, 0))))
                commands.append((head + _bulk(b"t"), head + _bulk(b"b"), b"\r\n"))
                publishes.append(True)
                slots.append(slot)
                continue
            if expire > 0:
                keep = b"\r\n" + _bulk(b"EX") + _bulk(b"%d" % expire)
                head = b"*5\r\n" + _bulk(b"SET") + name
                commands.append((head, head, keep))
                publishes.append(False)
                slots.append(slot)
            head = b"*3\r\n" + _bulk(publish) + name
            commands.append((head, head, b"\r\n"))
            publishes.append(True)
            slots.append(slot)
        self._commands = tuple(commands)
        self._publishes = tuple(publishes)
        self._slots = tuple(slots)

    def _packed(self, message: bytes, binary: bool | None) -> list[bytes]:
        if binary is None:
            binary = self.history is not None and not validate_utf8(message)
        length = b"$%d\r\n" % len(message)
        return [b"".join((binary_head if binary else text_head, length, message, tail))
                for text_head, binary_head, tail in self._commands]

    def pack(self, message: bytes, binary: bool | None = None) -> bytes:
        """The RESP encoding of every command of the plan for ``message``.

        ``binary`` (None: bytes that are not UTF-8) matters only to channels with a history.
        """
        return b"".join(self._packed(message, binary))

    @property
    def replies(self) -> int:
        """How many replies Redis sends for one packed message."""
        return len(self._publishes)

    def execute(self, client: Any, message: bytes, binary: bool | None = None) -> int:
        """Send the commands for ``message`` through ``client``'s pool; returns the PUBLISH receivers.

        The client's retries cover sending only: once the commands went out, a connection that
        breaks before the replies came raises (BrokerUnavailable for the caller) instead of
        sending them again, because Redis may have published already and a retry would deliver
        the message twice.
        """
        if not self._commands:
            return 0
        if self.sharded:
            return publish_on_cluster(client, self._slots, self._packed(message, binary), self._publishes)
        pool = client.connection_pool
        connection = pooled_connection(pool)
        packed = self.pack(message, binary)
        try:
            connection.retry.call_with_retry(
                lambda: connection.send_packed_command((packed,)), lambda error: connection.disconnect()
            )
            return self.read_replies(connection)
        finally:
            pool.release(connection)

    def read_replies(self, connection: Any) -> int:
        """Read the replies to one packed message; returns the receivers.

        A ResponseError is raised only once every reply is read, so the
        connection stays in step for the commands pipelined after these.
        """
        receivers = 0
        failure: redis.ResponseError | None = None
        for counts in self._publishes:
            try:
                reply = connection.read_response()
            except redis.ResponseError as exc:
                failure = failure or exc
                continue
            if counts:
                receivers += reply
        if failure is not None:
            raise failure
        return receivers


def pooled_connection(pool: redis.ConnectionPool) -> Any:
    """A connection from ``pool``, asked for the way the installed redis-py wants."""
    return pool.get_connection("PUBLISH") if _POOL_NEEDS_COMMAND_NAME else pool.get_connection()


def uses_publish_plan(store: Any) -> bool:
    """Whether ``store`` publishes the standard way, so that a :class:`PublishPlan` may stand in for it."""
    method = getattr(type(store), "publish_message", None)
    return method is RedisStore.publish_message and getattr(store, "_connection", None) is not None and \
        hasattr(store._connection, "connection_pool")


class RedisStore:
    """Publishes to the channels in ``self._publishers`` and persists the last message of each."""

    # Seconds to keep the last message; None follows WS4REDIS_EXPIRE. 0.6.0 subclasses set it.
    _expire: int | None = None

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self._publishers: set[str] = set()

    @property
    def connection(self) -> Any:
        """The Redis client this store publishes with and reads kept messages and histories from."""
        return self._connection

    @staticmethod
    def get_prefix() -> str:
        """``'<WS4REDIS_PREFIX>:'`` or ``''`` (0.6.0 had it here)."""
        return get_prefix()

    @staticmethod
    def _as_message(message: Any) -> RedisMessage:
        if not isinstance(message, RedisMessage):
            if not isinstance(message, (str, bytes, bytearray, memoryview)):
                kind = type(message).__name__
                raise ValueError(f"message must be a RedisMessage, str or bytes, got {kind}")
            converted = RedisMessage(message)
            if converted is None:
                raise ValueError("refusing to publish the heartbeat string WS4REDIS_HEARTBEAT as a message")
            message = converted
        return message

    def _expire_seconds(self, expire: int | None) -> int:
        if expire is not None:
            return expire
        return private_settings.WS4REDIS_EXPIRE if self._expire is None else self._expire

    def history_policy(self) -> HistoryPolicy | None:
        """The WS4REDIS_HISTORY policy of this store's facility; None when its channels keep none."""
        settings = private_settings.history()
        facility = getattr(self, "facility", None)
        return None if settings is None or facility is None else settings.for_facility(facility)

    def publish_plan(self, expire: int | None = None) -> PublishPlan:
        """The channels and expiry of :meth:`publish_message`, settled now, to publish many messages with."""
        return PublishPlan(self._publishers, self._expire_seconds(expire),
                           sharded=is_cluster_client(self._connection), history=self.history_policy())

    def publishes_through(self, client: Any) -> bool:
        """Whether this store publishes the standard way over ``client``, so a server may batch for it.

        Not on a Redis Cluster: each command goes to its slot's master, message by message.
        """
        return uses_publish_plan(self) and self._connection is client and not is_cluster_client(client)

    def publish_message(self, message: Any, expire: int | None = None) -> int:
        """Publish ``message`` on every channel of this store; return how many subscribers got it.

        With ``expire`` > 0 (default: the class's ``_expire``, else
        WS4REDIS_EXPIRE) the message is also kept under the channel's key for
        that many seconds, replacing the previous one. The key is written
        BEFORE publishing: a client that subscribes meanwhile may see the
        message twice (persisted and live), never zero times. Every command
        goes out in one round trip (pipelined, without MULTI). Raises
        :class:`~ws4redis.redis_errors.BrokerUnavailable` when Redis cannot be reached.
        """
        message = self._as_message(message)
        try:
            return self.publish_plan(expire).execute(self._connection, message, message.binary)
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"message not published, Redis is unreachable: {exc}") from exc

    def pipeline_publish_message(
        self, message: Any, expire: int | None = None, transaction: bool = True
    ) -> int:
        """``publish_message`` in one round trip (MULTI/EXEC when ``transaction``)."""
        if is_cluster_client(self._connection) or self.history_policy() is not None:
            # A cluster has no MULTI across slots: one round trip per master, as publish_message
            # does; with a history, each channel's commands are one script, atomic as MULTI.
            return self.publish_message(message, expire)
        message = self._as_message(message)
        expire = self._expire_seconds(expire)
        if not self._publishers:
            return 0
        pipe = self._connection.pipeline(transaction=transaction)
        publishes = []
        for channel in sorted(self._publishers):
            if expire > 0:
                pipe.set(channel, message, ex=expire)
            publishes.append(len(pipe))
            pipe.publish(channel, message)
        try:
            results = pipe.execute()
        except UNAVAILABLE as exc:
            raise BrokerUnavailable(f"message not published, Redis is unreachable: {exc}") from exc
        return sum(results[index] for index in publishes)

    def _get_message_channels(
        self,
        request: Any = None,
        facility: str = "{facility}",
        broadcast: bool = False,
        groups: Any = (),
        users: Any = (),
        sessions: Any = (),
    ) -> list[str]:
        """The channel names for an audience, with ``SELF`` resolved from ``request``.

        ``SELF`` stands for the logged-in user (users), the groups stored in the
        session at login (groups) or the session key (sessions); where the
        request cannot supply it, it is dropped with a warning in the log.
        """
        groups = _resolve_groups(_audience_list("groups", groups, request, "group"), request)
        users = _resolve_users(_audience_list("users", users, request, "user"), request)
        sessions = _resolve_sessions(_audience_list("sessions", sessions, request, "session key"), request)
        return channel_names(
            facility, broadcast=broadcast is True, groups=groups, users=users, sessions=sessions
        )
