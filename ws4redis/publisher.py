"""Publishing from Django code: ``RedisPublisher(facility='foo', broadcast=True).publish_message(msg)``."""

from __future__ import annotations

from typing import Any

import redis

from ws4redis import connection as redis_connections
from ws4redis.redis_store import (
    RedisMessage,
    RedisStore,
    channel_names,
    is_authenticated,
    session_groups,
    session_key,
)

AUDIENCES = ("session", "user", "group", "broadcast")


class RedisPublisher(RedisStore):
    """Publishes to the channels named by 0.6.0's keyword arguments.

    ``facility``, ``broadcast``, ``users``, ``groups``, ``sessions`` and
    ``request`` (to resolve ``SELF``) are passed on to
    ``RedisStore._get_message_channels``. Without ``connection`` the
    process-wide pool of ``ws4redis.connection`` is used.
    """

    def __init__(self, connection: redis.Redis | None = None, **kwargs: Any) -> None:
        super().__init__(connection if connection is not None else redis_connections.get_redis_connection())
        self.facility: str | None = kwargs.get("facility")  # whose WS4REDIS_HISTORY policy applies
        self._publishers.update(self._get_message_channels(**kwargs))

    @property
    def publishers(self) -> frozenset[str]:
        """The channel names this publisher writes to."""
        return frozenset(self._publishers)

    def fetch_message(self, request: Any, facility: str, audience: str = "any") -> RedisMessage | None:
        """The message persisted for ``facility`` and whoever made ``request``, or None.

        ``audience`` is ``'session'``, ``'user'``, ``'group'``, ``'broadcast'``
        or ``'any'``; with ``'any'`` they are tried in that order and the
        first persisted message wins, as in 0.6.0.
        """
        if audience != "any" and audience not in AUDIENCES:
            raise ValueError(f"audience must be one of {', '.join(AUDIENCES)} or 'any', got {audience!r}")
        wanted = AUDIENCES if audience == "any" else (audience,)
        names = []
        for kind in wanted:
            if kind == "session" and session_key(request):
                names += channel_names(facility, sessions=[session_key(request)])
            elif kind == "user" and is_authenticated(request):
                names += channel_names(facility, users=[request.user.get_username()])
            elif kind == "group" and is_authenticated(request):
                names += channel_names(facility, groups=session_groups(request))
            elif kind == "broadcast":
                names += channel_names(facility, broadcast=True)
        if not names:
            return None
        for value in redis_connections.fetch_values(self._connection, names):
            if value:
                return RedisMessage(value)
        return None
