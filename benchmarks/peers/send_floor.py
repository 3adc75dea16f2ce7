"""The floor: a delivery's cost with no websocket library, no queue, no event loop.

Handshakes are answered by the accepting thread; one thread reads Redis (redis-py, blocking)
and, for every message, frames it once and writes it to each socket with one blocking
``os.write``; a third thread only notices clients that leave. What the server spends per
delivery is then the ``write`` system call and the kernel's loopback work behind it, which no
server on this machine can go below.

    python -m benchmarks.peers.send_floor PORT REDIS_URL
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading

import redis

from ws4redis.handshake import accept_key
from ws4redis.protocol import frame_payload


def main(port: int, redis_url: str) -> None:
    sockets: dict[bytes, list[socket.socket]] = {}
    lock = threading.Lock()
    pubsub = redis.Redis.from_url(redis_url).pubsub()
    subscribed = threading.Event()

    def fan_out() -> None:
        subscribed.wait()
        for message in pubsub.listen():
            if message["type"] != "message":
                continue
            frame = frame_payload(message["data"])
            with lock:
                targets = list(sockets.get(message["channel"], ()))
            for sock in targets:
                try:
                    os.write(sock.fileno(), frame)
                except OSError:
                    with lock:
                        sockets[message["channel"]].remove(sock)

    watched = selectors.DefaultSelector()

    def hang_up() -> None:
        """Close the sockets whose clients sent a close frame or went away (nothing else is read)."""
        while True:
            for key, _ in watched.select(timeout=0.5):
                sock = key.fileobj
                try:
                    data = sock.recv(4096)
                except OSError:
                    data = b""
                if data and data[0] & 0x0F != 0x8:
                    continue
                watched.unregister(sock)
                with lock:
                    for members in sockets.values():
                        if sock in members:
                            members.remove(sock)
                sock.close()

    threading.Thread(target=fan_out, daemon=True).start()
    threading.Thread(target=hang_up, daemon=True).start()
    listener = socket.create_server(("127.0.0.1", port), backlog=4096)
    print(f"listening on {port}", flush=True)
    while True:
        sock, _ = listener.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        lines = head.decode("latin-1").split("\r\n")
        path = lines[0].split(" ")[1] if lines and " " in lines[0] else "/"
        key = next((line.split(":", 1)[1].strip() for line in lines
                    if line.lower().startswith("sec-websocket-key:")), "")
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      f"Sec-WebSocket-Accept: {accept_key(key)}\r\n\r\n").encode())
        channel = ("broadcast:" + path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]).encode()
        with lock:
            if channel not in sockets:
                sockets[channel] = []
                pubsub.subscribe(channel)
                subscribed.set()
            sockets[channel].append(sock)
        watched.register(sock, selectors.EVENT_READ)


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2])
