"""A standalone websocket echo server on the stdlib: ``python -m ws4redis.echo --bind HOST:PORT``.

It runs the very core the Django servers use (handshake, frame parser,
protocol, socket adapter) without Django or Redis, which makes it the
reference target for conformance tests, fuzzers and benchmarks. Every
message comes back as it came (text as text, binary as binary); a peer
breaking RFC 6455 is closed with the matching code. One thread per client.

It prints ``listening on HOST:PORT`` on stdout once it accepts connections
(``--bind 127.0.0.1:0`` picks a free port) and logs to stderr. SIGTERM and
SIGINT close every client with 1001 (going away) and exit.
``WS4REDIS_NO_EXTENSIONS=1`` runs it on the pure-Python core.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import selectors
import signal
import socket
import sys
import threading
import time

from ws4redis import constants, speedups
from ws4redis.bind import address_family, parse_bind
from ws4redis.exceptions import ConnectionClosed, HandshakeError
from ws4redis.handshake import (
    error_response,
    parse_request_head,
    request_head_length,
    upgrade_response,
    validate_upgrade,
)
from ws4redis.websocket import WebSocket

__all__ = ["EchoServer", "main", "parse_size"]

logger = logging.getLogger("ws4redis.echo")

_SIZE = re.compile(r"\s*(\d+)\s*([kmg]i?b?|b)?\s*", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """``"1048576"``, ``"20MiB"``, ``"512k"``, ``"2MB"``: a byte count (KiB/MiB units are binary).

    "kB", "MB" and "GB" are decimal, as in SI; bare "k", "m", "g" and the
    "iB" forms are powers of 1024.
    """
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"not a size: {text!r} (examples: 1048576, 512KiB, 20MiB)")
    number, unit = int(match.group(1)), (match.group(2) or "").lower()
    if unit in ("kb", "mb", "gb"):
        size = number * 1000 ** ("kmg".index(unit[0]) + 1)
    else:
        size = number * _UNITS[unit[:1]]
    if size <= 0:
        raise ValueError(f"a size must be positive, got {text!r}")
    return size


class _Client:
    """One accepted connection and, once upgraded, its websocket."""

    __slots__ = ("sock", "address", "websocket")

    def __init__(self, sock: socket.socket, address: object) -> None:
        self.sock = sock
        self.address = address
        self.websocket: WebSocket | None = None


class EchoServer:
    """Accept loop plus one thread per client; ``serve_forever`` returns after a signal or ``stop``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int | None = None,
        handshake_timeout: float = constants.DEFAULT_HANDSHAKE_TIMEOUT,
        shutdown_timeout: float = constants.DEFAULT_SHUTDOWN_TIMEOUT,
    ) -> None:
        self.max_message_size = max_message_size
        self.max_fragments = max_fragments
        self.handshake_timeout = handshake_timeout
        self.shutdown_timeout = shutdown_timeout
        self.listener = socket.create_server(
            (host, port), family=address_family(host), backlog=constants.SERVER_LISTEN_BACKLOG
        )
        self.address = self.listener.getsockname()[:2]
        self._clients: dict[threading.Thread, _Client] = {}
        self._lock = threading.Lock()
        self._stopping = False
        self._wake_read, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    # --- lifecycle ----------------------------------------------------------

    def stop(self) -> None:
        """Ask the accept loop to shut down (safe from signal handlers and other threads)."""
        self._stopping = True
        try:
            os.write(self._wake_write, b"x")
        except BlockingIOError:
            logger.debug("wake-up pipe full: the accept loop is already being woken")

    def serve_forever(self) -> None:
        """Accept until ``stop``; then close every client with 1001 and return."""
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ)
        selector.register(self._wake_read, selectors.EVENT_READ)
        try:
            while not self._stopping:
                for key, _ in selector.select():
                    if key.fileobj is self.listener:
                        self._accept()
                    else:
                        os.read(self._wake_read, 512)
        finally:
            selector.close()
            self.listener.close()
            self._close_clients()
            os.close(self._wake_read)
            os.close(self._wake_write)

    def _accept(self) -> None:
        try:
            sock, address = self.listener.accept()
        except OSError as exc:  # e.g. the client reset before accept, or out of descriptors
            logger.warning("accept failed: %s", exc)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client = _Client(sock, address)
        thread = threading.Thread(target=self._serve_client, args=(client,), daemon=True)
        with self._lock:
            self._clients[thread] = client
        thread.start()

    def _close_clients(self) -> None:
        """Going away: close every websocket with 1001, give them time, then cut the rest."""
        with self._lock:
            clients = dict(self._clients)
        logger.info("shutting down: closing %d connection(s) with 1001", len(clients))
        for client in clients.values():
            if client.websocket is not None:
                client.websocket.close(constants.CLOSE_GOING_AWAY, "server shutting down")
            else:
                _shutdown(client.sock)  # still in the HTTP handshake
        deadline = time.monotonic() + self.shutdown_timeout
        for thread, client in clients.items():
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                _shutdown(client.sock)
                thread.join(1.0)

    # --- one client ---------------------------------------------------------

    def _serve_client(self, client: _Client) -> None:
        sock = client.sock
        try:
            websocket = self._upgrade(client)
            if websocket is not None:
                self._echo(websocket)
                logger.info("%s closed with %s", client.address, websocket.close_code)
        finally:
            _linger_and_close(sock, self.shutdown_timeout)
            with self._lock:
                self._clients.pop(threading.current_thread(), None)

    def _upgrade(self, client: _Client) -> WebSocket | None:
        """Read and answer the HTTP upgrade; the websocket, or None when refused or gone."""
        sock = client.sock
        sock.settimeout(self.handshake_timeout)
        data = bytearray()
        try:
            while (length := request_head_length(data)) is None:
                chunk = sock.recv(constants.RECV_SIZE)
                if not chunk:
                    logger.info("%s left before completing the handshake", client.address)
                    return None
                data += chunk
            method, path, headers = parse_request_head(data)
            handshake = validate_upgrade(method, headers)
            sock.sendall(upgrade_response(handshake))
        except HandshakeError as exc:
            logger.info("%s handshake refused with %d: %s", client.address, exc.status, exc)
            _send_quietly(sock, error_response(exc))
            return None
        except OSError as exc:  # includes the handshake timeout
            logger.info("%s handshake failed: %s", client.address, exc)
            return None
        sock.settimeout(None)
        websocket = WebSocket(
            sock,
            initial=bytes(data[length:]),
            max_message_size=self.max_message_size,
            max_fragments=self.max_fragments,
        )
        logger.info("%s connected to %s", client.address, path)
        with self._lock:
            client.websocket = websocket
            stopping = self._stopping
        if stopping:
            websocket.close(constants.CLOSE_GOING_AWAY, "server shutting down")
        return websocket

    @staticmethod
    def _echo(websocket: WebSocket) -> None:
        while (message := websocket.receive()) is not None:
            try:
                websocket.send(message, binary=isinstance(message, bytes))
            except ConnectionClosed:
                return


def _send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError as exc:
        logger.debug("could not send the error response: %s", exc)


def _shutdown(sock: socket.socket) -> None:
    """Wake a thread blocked on ``sock`` by shutting the socket down."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        logger.debug("shutdown of a finished socket: %s", exc)


def _linger_and_close(sock: socket.socket, timeout: float) -> None:
    """Close without losing the last frames we sent.

    Closing a socket with unread input makes the kernel send RST, and a
    peer receiving RST may drop the close frame we just wrote (typically
    when it is still sending a message we refused with 1009). So: send FIN,
    read and discard until the peer closes too or ``timeout`` passes.
    """
    try:
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            sock.settimeout(remaining)
            if not sock.recv(constants.RECV_SIZE):
                break
    except OSError as exc:
        logger.debug("closing a connection: %s", exc)
    finally:
        sock.close()


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ws4redis.echo", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", required=True, help="HOST:PORT to listen on (port 0: any free port)")
    parser.add_argument(
        "--max-message-size",
        default=str(constants.DEFAULT_MAX_MESSAGE_SIZE),
        help="largest message accepted, e.g. 1048576 or 20MiB (default: %(default)s bytes)",
    )
    parser.add_argument("--max-fragments", type=int, default=None, help="most fragments per message")
    parser.add_argument("--verbose", "-v", action="store_true", help="log every connection at debug level")
    args = parser.parse_args(argv)
    try:
        # Only the loopback interface unless asked: this is a test and benchmark target.
        args.bind = parse_bind(args.bind, empty_host="127.0.0.1", any_port=True)
    except ValueError as exc:
        parser.error(str(exc))
    try:
        args.max_message_size = parse_size(args.max_message_size)
    except ValueError as exc:
        parser.error(f"--max-message-size: {exc}")
    if args.max_fragments is not None and args.max_fragments <= 0:
        parser.error("--max-fragments must be positive")
    return args


def main(argv: list[str] | None = None) -> None:
    """``python -m ws4redis.echo``: serve until SIGTERM or SIGINT."""
    args = _arguments(argv)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    host, port = args.bind
    try:
        server = EchoServer(
            host, port, max_message_size=args.max_message_size, max_fragments=args.max_fragments
        )
    except OSError as exc:
        sys.exit(f"ws4redis.echo: cannot listen on {host}:{port}: {exc}")
    signal.signal(signal.SIGTERM, lambda signum, frame: server.stop())
    signal.signal(signal.SIGINT, lambda signum, frame: server.stop())
    bound_host, bound_port = server.address
    logger.info(
        "%s core, max message size %d bytes",
        "compiled" if speedups.COMPILED else "pure-Python",
        args.max_message_size,
    )
    print(f"listening on {bound_host}:{bound_port}", flush=True)
    server.serve_forever()
    logger.info("stopped")


if __name__ == "__main__":
    main()
