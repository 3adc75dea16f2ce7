"""The reference peer: what one would write by hand with websockets and redis.asyncio.

One Redis subscription per channel for the process, ``websockets.asyncio.server.broadcast`` to
the channel's sockets; no per-connection queue of its own (broadcast skips sockets that are not
open and does not wait for slow ones).

    python -m benchmarks.peers.websockets_server PORT REDIS_URL
"""

from __future__ import annotations

import asyncio
import sys

import redis.asyncio as aioredis
from websockets.asyncio.server import ServerConnection, broadcast, serve


async def main(port: int, redis_url: str) -> None:
    client = aioredis.from_url(redis_url)
    pubsub = client.pubsub()
    sockets: dict[bytes, set[ServerConnection]] = {}
    subscribed = asyncio.Event()  # the pub/sub connection exists once the first SUBSCRIBE went out

    async def handler(websocket: ServerConnection) -> None:
        facility = websocket.request.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        channel = f"broadcast:{facility}".encode()
        if channel not in sockets:
            sockets[channel] = set()
            await pubsub.subscribe(channel)
            subscribed.set()
        sockets[channel].add(websocket)
        try:
            await websocket.wait_closed()
        finally:
            sockets[channel].discard(websocket)

    async def fan_out() -> None:
        await subscribed.wait()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
            if message is not None:
                data = message["data"]
                text = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
                broadcast(sockets.get(message["channel"], ()), text)

    async with serve(handler, "127.0.0.1", port, compression=None, ping_interval=None, max_queue=None):
        print(f"listening on {port}", flush=True)
        await fan_out()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2]))
