"""The one snapshot of settings a websocket server takes at start-up.

Every server builds a :class:`ServerConfig` once, after ``validate_settings``;
the per-connection and per-message code reads this object, never Django's
settings, so a message costs no settings lookup and every server of a process
applies the same numbers.
"""

from __future__ import annotations

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.deflate import CompressionSettings
from ws4redis.redis_store import get_prefix

__all__ = ["ServerConfig"]


class ServerConfig:
    """Settings for serving websockets, read once (validated by ``validate_settings``)."""

    __slots__ = (
        "websocket_url", "websocket_only", "heartbeat", "ping_interval", "ping_timeout", "queue_bytes",
        "queue_messages", "max_message_size", "max_fragments", "handshake_timeout", "shutdown_timeout",
        "tick", "subscriber_class", "key_prefix", "monitoring", "compression",
    )

    def __init__(self, websocket_only: bool = False) -> None:
        self.websocket_url: str = private_settings.WEBSOCKET_URL
        self.websocket_only = websocket_only
        self.heartbeat: bytes | None = private_settings.heartbeat_bytes()
        self.ping_interval: float | None = private_settings.WS4REDIS_PING_INTERVAL
        self.ping_timeout: float = private_settings.WS4REDIS_PING_TIMEOUT
        self.queue_bytes: int = private_settings.WS4REDIS_SEND_QUEUE_BYTES
        self.queue_messages: int = private_settings.WS4REDIS_SEND_QUEUE_MESSAGES
        self.max_message_size: int = private_settings.WS4REDIS_MAX_MESSAGE_SIZE
        self.max_fragments: int = private_settings.max_fragments()
        self.handshake_timeout: float = private_settings.WS4REDIS_HANDSHAKE_TIMEOUT
        self.shutdown_timeout: float = private_settings.WS4REDIS_SHUTDOWN_TIMEOUT
        # How often a silent websocket is looked at (heartbeat, ping, ping timeout): each of
        # them is at most half a tick late.
        ticks = [self.ping_timeout]
        if self.ping_interval is not None:
            ticks.append(self.ping_interval)
        if self.heartbeat is not None:
            ticks.append(constants.LEGACY_HEARTBEAT_INTERVAL)
        self.tick: float = min(ticks) / 2
        self.subscriber_class: type = private_settings.subscriber_class()  # WS4REDIS_SUBSCRIBER
        self.key_prefix: bytes = get_prefix().encode()
        # path -> what it answers ("metrics", "healthz", "readyz"), from WS4REDIS_MONITORING
        self.monitoring: dict[str, str] = private_settings.monitoring_paths()
        self.compression: CompressionSettings | None = private_settings.compression()  # WS4REDIS_COMPRESSION
