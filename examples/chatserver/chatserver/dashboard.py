"""The live dashboard's feed: a snapshot of the machine, Redis and a made-up ticker, published
to every open dashboard page as one broadcast message.

The feed runs as its own process (``manage.py dashboard_feed``, started by examples/run.py), the
way a Celery worker or a cron job publishes: nothing but ``RedisPublisher`` ties it to the pages.
"""

from __future__ import annotations

import json
import os
import random
import time
from dataclasses import dataclass, field

from ws4redis.connection import get_redis_connection
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage

FACILITY = "dashboard"
SYMBOLS = {"WSR": 120.0, "DJG": 48.0, "RDS": 310.0, "GEV": 22.5}


@dataclass
class Ticker:
    """Prices that walk at random: something that changes on every update, for the page to draw."""

    prices: dict[str, float] = field(default_factory=lambda: dict(SYMBOLS))
    opening: dict[str, float] = field(default_factory=lambda: dict(SYMBOLS))
    rng: random.Random = field(default_factory=random.Random)

    def step(self) -> dict[str, dict[str, float]]:
        quotes = {}
        for symbol, price in self.prices.items():
            price = max(0.01, price * (1 + self.rng.gauss(0, 0.004)))
            self.prices[symbol] = price
            change = (price / self.opening[symbol] - 1) * 100
            quotes[symbol] = {"price": round(price, 2), "change": round(change, 2)}
        return quotes


class Feed:
    """Builds one dashboard update after another and publishes it to the ``dashboard`` facility."""

    def __init__(self) -> None:
        self.redis = get_redis_connection()
        self.publisher = RedisPublisher(facility=FACILITY, broadcast=True)
        (self.channel,) = self.publisher.publishers  # <prefix>:broadcast:dashboard
        self.ticker = Ticker()
        self.seq = 0

    def snapshot(self) -> dict:
        """The update as the page draws it; ``watching``: the websockets Redis counts on the channel."""
        self.seq += 1
        stats = self.redis.info("stats")
        clients = self.redis.info("clients")
        [(_, watching)] = self.redis.pubsub_numsub(self.channel)
        return {
            "seq": self.seq,
            "sent_at": time.time() * 1000,
            "watching": watching,
            "redis": {
                "ops_per_sec": stats.get("instantaneous_ops_per_sec", 0),
                "clients": clients.get("connected_clients", 0),
                "commands": stats.get("total_commands_processed", 0),
            },
            "load": [round(value, 2) for value in os.getloadavg()],
            "quotes": self.ticker.step(),
        }

    def publish(self) -> dict:
        update = self.snapshot()
        self.publisher.publish_message(RedisMessage(json.dumps(update)), expire=60)
        return update
