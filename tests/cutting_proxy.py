"""A TCP proxy in front of a real Redis that breaks one connection right after Redis answered a publish.

For the one fault that retries turn into duplicates: Redis has published the batch, the reply is
lost with the connection. Real sockets on both sides; the proxy only decides when to cut.
"""

from __future__ import annotations

import socket
import threading

from ws4redis.embedded_redis import free_port

# What Redis answers to a websocket's publish: SET ... EX (+OK), then PUBLISH (an integer).
PUBLISH_REPLY = b"+OK\r\n:"


class CuttingProxy:
    """``port`` forwards to ``target``; once :meth:`arm`-ed, the first publish reply is never forwarded."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.cuts = 0
        self._armed = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._closing = False

    def __enter__(self) -> CuttingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._closing = True
        self._listener.close()

    def arm(self) -> None:
        self._armed.set()

    def _accept(self) -> None:
        while not self._closing:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, target: socket.socket, from_redis: bool) -> None:
        try:
            while chunk := source.recv(65536):
                if from_redis and PUBLISH_REPLY in chunk and self._armed.is_set():
                    self._armed.clear()
                    self.cuts += 1
                    break  # Redis has published; the reply goes nowhere
                target.sendall(chunk)
        except OSError:
            pass  # the other direction cut it
        finally:
            for sock in (source, target):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone
                sock.close()
