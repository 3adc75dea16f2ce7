"""Servers that ws4redis' fan-out is compared with, end to end (``python -m benchmarks.peers``).

Each is a program of its own that serves ``/ws/<facility>?subscribe-broadcast`` on a port and
fans out what is published on the Redis channel ``broadcast:<facility>``, so ws4redis-bench
measures them exactly as it measures ws4redis: ``websockets_server`` (hand-written websockets +
redis.asyncio, one subscription, ``broadcast()``), and ``send_floor`` (no websocket library at
all: one blocking ``os.write`` per socket per message, the kernel's cost of a delivery).
"""
