"""Listening on Redis channels the way a subscriber would, to see what the publishing code sent."""

from __future__ import annotations

import time

import redis.client


def subscribe_confirmed(pubsub: redis.client.PubSub, *channels: str) -> None:
    """Subscribe and wait for Redis to confirm, so nothing published afterwards is missed."""
    pubsub.subscribe(*channels)
    for _ in channels:
        assert pubsub.get_message(timeout=5)["type"] == "subscribe"


def received(pubsub: redis.client.PubSub, count: int, limit: float = 5.0) -> list[tuple[str, bytes]]:
    """Up to ``count`` ``(channel, payload)`` pairs in arrival order, waiting at most ``limit`` seconds.

    Fewer pairs than expected make the caller's comparison fail, naming what did arrive.
    """
    got: list[tuple[str, bytes]] = []
    deadline = time.monotonic() + limit
    while len(got) < count and time.monotonic() < deadline:
        reply = pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if reply is not None:
            got.append((reply["channel"].decode(), reply["data"]))
    return got
