"""The Redis side of one websocket: which channels it listens to and publishes on.

The servers create one subscriber per websocket (the class named by
WS4REDIS_SUBSCRIBER), call ``set_pubsub_channels`` once, wait on
``get_file_descriptor()`` and call ``get_messages()`` each time it is
readable, and ``release()`` when the websocket ends, whatever the reason.

Differences from django-websocket-redis 0.6.0, all on purpose:

* ``get_messages()`` / ``parse_responses()`` return EVERY reply already
  received. 0.6.0 read one reply per wake-up of ``select``; the rest sat in
  redis-py's buffer, where ``select`` cannot see them, so of a burst of five
  messages only the first arrived until more traffic came.
* A client asking for user or group channels without being logged in (or for
  a session channel without a session) gets a warning in the log instead of
  a channel named after ``SELF`` or ``None``.
* ``release()`` always unsubscribes and closes the pub/sub connection, also
  when subscribing failed half-way.
* The pub/sub connection is this subscriber's own, from an uncapped pool
  (``ws4redis.connection``), unless the server supplies the subscription
  through ``create_subscription``; publishing uses the shared, bounded pool.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import redis

from ws4redis import connection as redis_connections
from ws4redis import settings as private_settings
from ws4redis.redis_store import SELF, RedisMessage, RedisStore, as_bytes, is_authenticated, session_key

logger = logging.getLogger(__name__)


class RedisSubscriber(RedisStore):
    """Subscriptions and publish channels of one websocket."""

    subscription_channels = ["subscribe-session", "subscribe-group", "subscribe-user", "subscribe-broadcast"]
    publish_channels = ["publish-session", "publish-group", "publish-user", "publish-broadcast"]

    def __init__(self, connection: redis.Redis | None = None) -> None:
        """``connection`` publishes and reads persisted messages; defaults to the shared pool."""
        super().__init__(connection if connection is not None else redis_connections.get_redis_connection())
        self._subscription: redis.client.PubSub | None = None
        self.facility: str = ""

    @staticmethod
    def facility_from_request(request: Any) -> str:
        """The part of the request path after WEBSOCKET_URL (0.6.0: ``/ws/foo`` -> ``foo``)."""
        return request.path_info.replace(private_settings.WEBSOCKET_URL, "", 1)

    def _audience(self, request: Any, channels: Any, kind: str) -> dict[str, Any]:
        """Keyword arguments for ``_get_message_channels`` from ``<kind>-user`` style names."""
        wanted = {name for name in channels if name.startswith(f"{kind}-")}
        available = {
            "user": (is_authenticated(request), "anonymous client"),
            "group": (is_authenticated(request), "anonymous client"),
            "session": (bool(session_key(request)), "client without session"),
        }
        granted = {}
        for audience, (possible, who) in available.items():
            name = f"{kind}-{audience}"
            granted[audience] = name in wanted and possible
            if name in wanted and not possible:
                logger.warning("ws4redis: %s asked for %s on facility %r: no %s channel is used",
                               who, name, self.facility, audience)
        return {
            "users": [SELF] if granted["user"] else [],
            "groups": [SELF] if granted["group"] else [],
            "sessions": [SELF] if granted["session"] else [],
            "broadcast": f"{kind}-broadcast" in wanted,
        }

    def set_pubsub_channels(self, request: Any, channels: Any) -> None:
        """Subscribe and set the publish channels for ``request`` and the agreed ``channels``.

        ``channels`` holds names such as ``'subscribe-broadcast'`` and
        ``'publish-user'``; the facility is taken from the request path.
        """
        self.facility = self.facility_from_request(request)
        self._publishers = set(
            self._get_message_channels(request=request, facility=self.facility,
                                       **self._audience(request, channels, "publish"))
        )
        names = self._get_message_channels(request=request, facility=self.facility,
                                           **self._audience(request, channels, "subscribe"))
        self.release()
        self._subscription = self.create_subscription()
        if names:
            self._subscription.subscribe(*names)

    def create_subscription(self) -> Any:
        """The PubSub ``set_pubsub_channels`` subscribes on: by default one with its own connection.

        The gevent server overrides this to return a ``ws4redis.hub.SubscriptionRecorder``,
        so the channels travel over its one pub/sub connection per process instead.
        """
        return redis_connections.create_pubsub(self._connection)

    def subscription_targets(self) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """The channels and the patterns this subscriber subscribed to, for a server to route to it."""
        subscription = self._subscription
        if subscription is None:
            return (), ()
        return (tuple(as_bytes(name) for name in subscription.channels),
                tuple(as_bytes(name) for name in getattr(subscription, "patterns", ())))

    @property
    def subscribed_channels(self) -> list[str]:
        """Names of the channels this subscriber listens to."""
        if self._subscription is None:
            return []
        return [name.decode() if isinstance(name, bytes) else name for name in self._subscription.channels]

    @property
    def publishers(self) -> frozenset[str]:
        """Names of the channels messages from this websocket are published on."""
        return frozenset(self._publishers)

    def get_persisted_messages(self) -> list[RedisMessage]:
        """The messages kept for this websocket's channels (one per channel at most), in one round trip."""
        names = self.subscribed_channels
        if not names:
            return []
        messages = (RedisMessage(value) for value in redis_connections.fetch_values(self._connection, names)
                    if value is not None)
        return [message for message in messages if message is not None]

    def send_persisted_messages(self, websocket: Any, request: Any = None) -> None:
        """Send the persisted messages to a websocket that has just opened (``request`` is unused)."""
        for message in self.get_persisted_messages():
            websocket.send(message)

    def send_persited_messages(self, websocket: Any) -> None:
        """The misspelt name 0.6.0 had; kept so subclasses calling it keep working."""
        warnings.warn("send_persited_messages is deprecated: use send_persisted_messages",
                      DeprecationWarning, stacklevel=2)
        self.send_persisted_messages(websocket)

    def parse_response(self) -> Any:
        """Read ONE pub/sub reply, blocking until it arrives (0.6.0 API; prefer ``get_messages``)."""
        return self._require_subscription().parse_response()

    def parse_responses(self) -> list[Any]:
        """Every pub/sub reply already received, without blocking for new ones.

        Call it when the file descriptor is readable: it empties redis-py's
        buffer as well as the socket, which ``select`` alone cannot see. A
        reply that arrived only in part is completed (it is on its way).
        """
        subscription = self._require_subscription()
        conn = subscription.connection
        replies = []
        while conn is not None and conn.can_read(timeout=0):
            reply = subscription.parse_response(block=True)
            if reply is not None:
                replies.append(reply)
        return replies

    def get_messages(self) -> list[RedisMessage]:
        """Every message already received, heartbeats and subscribe confirmations left out."""
        messages = (RedisMessage(reply) for reply in self.parse_responses())
        return [message for message in messages if message is not None]

    def get_file_descriptor(self) -> int | None:
        """The pub/sub socket's descriptor to wait on, or None when not subscribed to anything."""
        subscription = self._subscription
        if subscription is None or subscription.connection is None:
            return None
        sock = subscription.connection._sock
        return sock.fileno() if sock is not None else None

    def _require_subscription(self) -> redis.client.PubSub:
        if self._subscription is None:
            raise RuntimeError("set_pubsub_channels() must be called before reading from the subscriber")
        return self._subscription

    def release(self) -> None:
        """Unsubscribe and close the pub/sub connection; safe to call more than once."""
        subscription, self._subscription = self._subscription, None
        if subscription is None:
            return
        try:
            if subscription.connection is not None and subscription.subscribed:
                subscription.unsubscribe()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            # The server already dropped the connection, and with it the subscriptions.
            logger.info("ws4redis: unsubscribe failed (%s); closing the pub/sub connection anyway", exc)
        finally:
            subscription.close()
