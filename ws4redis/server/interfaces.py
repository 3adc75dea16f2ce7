"""The named interfaces where the server parts meet.

A server (gevent's ``WebSocketServer``, uWSGI's ``uWSGIWebsocketServer``)
is a :class:`ConnectionHost` to each evented connection it opens; the
connection is a :class:`PublishListener` to the host's publisher and a
``ws4redis.hub.Listener`` to the hub. Nothing else is reached across: no
module uses another's private attributes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import redis

    from ws4redis.hub import Hub
    from ws4redis.redis_store import PublishPlan
    from ws4redis.server.config import ServerConfig

__all__ = ["ConnectionHost", "Publisher", "PublishListener"]


class PublishListener(Protocol):
    """What a publisher tells about each message handed to it."""

    peer: str

    def published(self, error: Exception | None) -> None:
        """Redis took the message (``error`` None) or did not."""


class Publisher(Protocol):
    """Takes the messages the websockets of a process receive and publishes them without blocking."""

    client: redis.Redis

    def plan_for(self, subscriber: Any) -> PublishPlan:
        """The shared publish plan of ``subscriber``'s channels."""

    def submit(self, listener: PublishListener, plan: PublishPlan, packed: bytes) -> None:
        """Publish ``packed`` (``plan.pack(message)``); ``listener.published`` follows."""


class ConnectionHost(Protocol):
    """What a server gives each evented connection it opens."""

    config: ServerConfig

    @property
    def hub(self) -> Hub:
        """The process's hub: live messages in, subscriptions out."""

    @property
    def publisher(self) -> Publisher:
        """Where received messages go."""

    @property
    def stopping(self) -> bool:
        """Whether the server is on its way out (no new websocket opens)."""

    def release(self, connection: Any) -> None:
        """Forget ``connection`` and free what it holds; once, later calls do nothing."""
