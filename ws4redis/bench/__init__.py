"""``ws4redis-bench``: a load generator for websocket servers fed by Redis pub/sub.

It opens many websocket clients, then either publishes numbered, timestamped
messages through Redis and checks that every client receives every one
(fan-out), or has every client echo messages (round trips). It reports
connections per second, deliveries per second, exact latency percentiles,
lost messages and, given the server's pid, the server's memory per
connection and CPU time per delivered message.

The modules: ``cli`` (command line and report), ``runner`` (the phases of
a run), ``client`` (the asyncio websocket client), ``stats`` (counters and
percentiles) and ``procstat`` (/proc sampling of the server).
"""

from ws4redis.bench.cli import main

__all__ = ["main"]
