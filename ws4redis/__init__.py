"""ws4redis: websockets for Django with Redis pub/sub as the message bus.

A drop-in successor of django-websocket-redis 0.6.0 whose RFC 6455 hot path
(masking, UTF-8 validation, frame parsing) is compiled with Cython.

The public API is importable from here as well as from 0.6.0's modules
(``ws4redis.publisher.RedisPublisher`` and so on, which stay). Names load
on first use: importing ``ws4redis`` (as Django does for INSTALLED_APPS)
touches neither Django's settings nor redis-py.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "1.0.0.dev0"

# Public name -> the module that defines it.
_EXPORTS = {
    "RedisPublisher": "ws4redis.publisher",
    "RedisMessage": "ws4redis.redis_store",
    "RedisStore": "ws4redis.redis_store",
    "SELF": "ws4redis.redis_store",
    "RedisSubscriber": "ws4redis.subscriber",
    "WebsocketWSGIServer": "ws4redis.wsgi_server",
    "BrokerUnavailable": "ws4redis.redis_errors",
    "HandshakeError": "ws4redis.exceptions",
    "AuthenticationFailed": "ws4redis.exceptions",
    "ProtocolError": "ws4redis.exceptions",
    "WebSocketError": "ws4redis.exceptions",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'ws4redis' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
