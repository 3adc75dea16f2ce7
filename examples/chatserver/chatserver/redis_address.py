"""Where the example finds Redis: one parser shared by settings.py and examples/run.py.

The address comes from the environment variable ``WS4REDIS_EXAMPLE_REDIS`` as
``host:port``, ``host:port/db`` or a ``redis://host:port/db`` URL, so run.py can
point the project at the redis-server it started without editing settings.
"""

from __future__ import annotations

import os
from typing import NamedTuple
from urllib.parse import urlsplit

ENV_VAR = "WS4REDIS_EXAMPLE_REDIS"
DEFAULT = "127.0.0.1:6379"
CHAT_PREFIX = "chatdemo"  # WS4REDIS_PREFIX: every channel and kept message of the chat
SESSION_PREFIX = "chatserver"  # the cache's KEY_PREFIX: the sessions


class RedisAddress(NamedTuple):
    host: str
    port: int
    db: int = 0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{host}:{self.port}/{self.db}"

    def __str__(self) -> str:
        return f"{self.host}:{self.port}/{self.db}"


def parse_redis_address(value: str) -> RedisAddress:
    """Parse ``host:port[/db]`` or ``redis://host:port[/db]``; raise ValueError naming the variable."""
    text = value.strip()
    parts = urlsplit(text if "://" in text else f"redis://{text}")
    try:
        if parts.scheme != "redis":
            raise ValueError(f"scheme must be redis://, not {parts.scheme}://")
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 6379
        path = parts.path.strip("/")
        db = int(path) if path else 0
    except ValueError as exc:
        raise ValueError(
            f"{ENV_VAR}={value!r} is not a Redis address such as 127.0.0.1:6379 or redis://host:6379/0: {exc}"
        ) from exc
    return RedisAddress(host, port, db)


def redis_address_from_env() -> RedisAddress:
    """The configured address, or 127.0.0.1:6379 when the variable is unset or empty."""
    return parse_redis_address(os.environ.get(ENV_VAR) or DEFAULT)
