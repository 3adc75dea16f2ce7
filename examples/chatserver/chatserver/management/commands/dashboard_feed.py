"""``manage.py dashboard_feed``: publish a dashboard update every ``--interval`` seconds until stopped."""

from __future__ import annotations

import time

import redis
from django.core.management.base import BaseCommand

from chatserver.dashboard import Feed


class Command(BaseCommand):
    help = "Publish the live dashboard's updates (machine, Redis, ticker) to every open /dashboard/ page."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--interval", type=float, default=0.5, help="seconds between updates (0.5)")

    def handle(self, *args, interval: float, **options) -> None:
        feed = Feed()
        failing = False
        while True:
            started = time.monotonic()
            try:
                feed.publish()
            except redis.RedisError as exc:  # BrokerUnavailable included: say so once, keep trying
                if not failing:
                    self.stderr.write(f"dashboard_feed: cannot publish ({exc}); retrying every second")
                failing = True
                time.sleep(1.0)
                continue
            if failing:
                self.stderr.write("dashboard_feed: publishing again")
                failing = False
            time.sleep(max(0.0, interval - (time.monotonic() - started)))
