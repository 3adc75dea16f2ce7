"""The production websocket server: gevent, no greenlet per open websocket, one Redis pub/sub per process.

Every accepted connection is handled by :class:`WebSocketHandler`. The first
request head is read here, with the limits of ``ws4redis.handshake`` (431/414
for oversized heads, 408 when it takes longer than WS4REDIS_HANDSHAKE_TIMEOUT):

* under WEBSOCKET_URL it becomes a websocket if ``ws4redis.server.accept``
  says so (the decision of every server), served by the evented connection
  of ``ws4redis.server.evented``: the handler greenlet ends with the 101
  response, libev watchers take over;
* anything else goes to the Django WSGI application through gevent's
  pywsgi (keep-alive included), or gets 404 with ``websocket_only``.

This module expects gevent's monkey-patching to be done (``python -m ws4redis
serve`` and ``manage.py runwebsocket`` do it before Django and redis-py are
imported).
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.pool
from gevent.event import Event
from gevent.pywsgi import WSGIHandler, WSGIServer

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import error_response, parse_request_head, request_head_length
from ws4redis.hub import Hub, get_hub, hub_subscriber_class
from ws4redis.metrics import SnapshotWriter, shared_directory
from ws4redis.server import monitoring
from ws4redis.server.accept import Rejected, accept
from ws4redis.server.config import ServerConfig
from ws4redis.server.evented import ConnectionSet, PublishBatcher, WebSocketConnection, prepare_connection

__all__ = ["WebSocketHandler", "WebSocketServer", "run_worker"]

logger = logging.getLogger(__name__)


def request_environ(handler: WSGIHandler, method: str, target: str, headers: Any) -> dict[str, Any]:
    """The WSGI environ of a request head parsed by ``ws4redis.handshake`` (as pywsgi would build it)."""
    from urllib.parse import unquote_to_bytes

    environ = handler.server.get_environ()
    path, _, query = target.partition("?")
    environ.update({
        "REQUEST_METHOD": method,
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
        "QUERY_STRING": query,
        "SERVER_PROTOCOL": "HTTP/1.1",
    })
    address = handler.client_address
    if isinstance(address, tuple):
        environ["REMOTE_ADDR"] = str(address[0])
        environ["REMOTE_PORT"] = str(address[1])
    for name, value in headers.items():
        if "_" in name:
            continue  # "X_Forwarded" would pose as "X-Forwarded": drop it, as Django's runserver does
        key = name.upper().replace("-", "_")
        if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[key] = value
        else:
            environ[f"HTTP_{key}"] = value
    environ["wsgi.input"] = _EMPTY_INPUT
    return environ


class _EmptyInput:
    """``wsgi.input`` of a handshake: a GET without body."""

    def read(self, size: int = -1) -> bytes:
        return b""

    def readline(self, size: int = -1) -> bytes:
        return b""


_EMPTY_INPUT = _EmptyInput()


class WebSocketHandler(WSGIHandler):
    """pywsgi's handler, reading the first request head itself and serving websockets."""

    server: WebSocketServer
    _requests = 0

    def handle_one_request(self) -> Any:
        """Every request head of a connection, the first and each kept-alive one, under the same deadline."""
        config = self.server.config
        self._requests += 1
        try:
            head = self._read_head(config.handshake_timeout)
        except HandshakeError as exc:
            return str(exc.status), Rejected.from_error(exc).http_response()
        except OSError:
            return None
        if head is None:
            return None
        request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0]
        parts = request_line.split()
        target = parts[1].decode("latin-1") if len(parts) == 3 else ""
        monitored = monitoring.answer_for(config, target, self.server.hub, self.server.stopping)
        if monitored is not None:
            self._send_raw(monitored.http_response())
            return None
        if target.startswith(config.websocket_url):
            try:
                method, target, headers = parse_request_head(head)
            except HandshakeError as exc:
                return str(exc.status), Rejected.from_error(exc).http_response()
            self._serve_websocket(request_environ(self, method, target, headers))
            return None
        if config.websocket_only or self.server.application is None:
            error = HandshakeError(
                f"Not Found: this server only serves websockets under {config.websocket_url}", 404
            )
            return "404", error_response(error)
        return self._http_request(request_line, head)

    def _read_head(self, timeout: float) -> bytes | None:
        """The request head (blank line included), None on a clean EOF.

        The whole head must arrive within ``timeout`` (WS4REDIS_HANDSHAKE_TIMEOUT), however slowly
        its bytes trickle in, on a new connection as on a kept-alive one: HandshakeError 408 when it
        does not (also for an idle kept-alive connection, as RFC 9110 allows), 414/431/400 for a
        head that is too large or broken.
        """
        limit = constants.MAX_REQUEST_HEAD_SIZE
        data = bytearray()
        # The deadline is the gevent timeout below; the socket timeout left by the previous request
        # (for its body) would end the read as if the peer had closed.
        self.socket.settimeout(None)
        try:
            with gevent.Timeout(timeout):
                return self._read_head_lines(data, limit)
        except gevent.Timeout:
            raise HandshakeError(f"Request Timeout: the request head took longer than {timeout:g} s",
                                 408) from None

    def _read_head_lines(self, data: bytearray, limit: int) -> bytes | None:
        while True:
            line = self.rfile.readline(limit + 1 - len(data))
            if not line:
                if data:
                    raise HandshakeError("Bad Request: connection closed inside the request head", 400)
                return None
            if not data and line in (b"\r\n", b"\n"):
                continue  # RFC 9112, section 2.2: ignore empty lines before the request line
            data += line
            if line in (b"\r\n", b"\n"):
                return bytes(data)
            if len(data) > limit:
                request_head_length(data, limit)  # raises 414 or 431
                raise HandshakeError(f"Request Header Fields Too Large: head exceeds {limit} bytes", 431)

    def _http_request(self, request_line: bytes, head: bytes) -> Any:
        """Serve a plain HTTP request whose head was already read, through pywsgi and the application."""
        from io import BytesIO

        self.requestline = request_line.decode("latin-1")
        self.response_length = 0
        rfile, self.rfile = self.rfile, BytesIO(head[len(request_line):].lstrip(b"\r\n") or b"\r\n")
        try:
            self.read_request(self.requestline)
        except (ValueError, http.client.HTTPException) as exc:
            error = HandshakeError(f"Bad Request: {exc}", 400)
            return "400", error_response(error)
        finally:
            self.rfile = rfile
        self.environ = self.get_environ()
        self.application = self.server.application
        if self._requests >= constants.MAX_REQUESTS_PER_CONNECTION:
            self.close_connection = True  # pywsgi answers with Connection: close
        # A request body that stalls is given up after the same delay as a slow handshake.
        self.socket.settimeout(self.server.config.handshake_timeout)
        self.handle_one_response()
        if self.close_connection or self.rfile.closed:
            return None
        return True

    def handle_one_response(self) -> None:
        environ = self.environ
        if environ.get("PATH_INFO", "").startswith(self.server.config.websocket_url):
            # A websocket upgrade on a kept-alive connection (the first request was plain HTTP).
            self.close_connection = True
            self._serve_websocket(environ)
            return
        super().handle_one_response()

    def _serve_websocket(self, environ: dict[str, Any]) -> None:
        """Accept or refuse, then hand the descriptor over to an evented connection. Never raises."""
        server = self.server
        sock = self.socket
        peer = str(environ.get("REMOTE_ADDR", "?"))
        # Bytes a client pipelined after its handshake sit in pywsgi's read buffer.
        sock.settimeout(0.0)
        pending = self.rfile.peek() if self.rfile is not None else b""
        self.rfile = None  # frees the 8 KB read buffer for the life of the websocket
        sock.settimeout(server.config.handshake_timeout)
        hub = server.hub
        answer = accept(environ, server.subscriber_class, hub.client,
                        broker_unreachable=lambda: hub.unreachable, stopping=lambda: server.stopping,
                        compression=server.config.compression)
        # The request, its session and user stay behind: a websocket lives for hours.
        self.environ = environ = None
        if isinstance(answer, Rejected):
            self._send_raw(answer.http_response())
            return
        connection = prepare_connection(sock.fileno(), answer, server, server.connections, peer)
        if isinstance(connection, Rejected):
            self._send_raw(connection.http_response())
            return
        if self._send_raw(answer.upgrade_response()):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # From now on the descriptor is the connection's: pywsgi must neither read nor close it.
            self.socket = None
            sock.detach()
            connection.start(pending)
        else:
            server.release(connection)

    def _send_raw(self, data: bytes) -> bool:
        try:
            self.socket.sendall(data)
        except OSError as exc:
            logger.debug("ws4redis: handshake answer to %s failed: %s", self.client_address, exc)
            return False
        return True


class WebSocketServer(WSGIServer):
    """pywsgi's server with :class:`WebSocketHandler`, its websockets and a graceful stop.

    Open websockets have no greenlet: the :class:`ConnectionSet`'s one libev
    timer per process (every ``ServerConfig.tick``) looks after the silent ones.
    A :class:`~ws4redis.server.interfaces.ConnectionHost` to each of them.
    """

    handler_class = WebSocketHandler

    def __init__(self, listener: Any, application: Callable | None, config: ServerConfig,
                 hub: Hub | None = None) -> None:
        super().__init__(listener, application, spawn=gevent.pool.Pool(), log=None)
        self.config = config
        self.subscriber_class = hub_subscriber_class(config.subscriber_class)
        self._hub = hub
        self.connections = ConnectionSet(config.tick, "gevent", config.key_prefix)
        self.stopping = False
        self.stopped = Event()
        self._publisher: PublishBatcher | None = None

    @property
    def hub(self) -> Hub:
        if self._hub is None:
            self._hub = get_hub()
        return self._hub

    @property
    def publisher(self) -> PublishBatcher:
        """Publishes what the websockets receive, through the hub's client (its bounded pool)."""
        if self._publisher is None:
            self._publisher = PublishBatcher(self.hub.client)
        return self._publisher

    def start(self) -> None:
        super().start()
        self.connections.start_ticking()

    def release(self, connection: WebSocketConnection) -> None:
        """Forget ``connection`` and free what it holds (once; later calls do nothing)."""
        self.connections.release(connection)

    def shutdown(self) -> None:
        """Stop accepting, close every websocket with 1001, wait up to WS4REDIS_SHUTDOWN_TIMEOUT, exit."""
        if self.stopping:
            return
        self.stopping = True
        deadline = time.monotonic() + self.config.shutdown_timeout
        self.close()
        count = self.connections.close_all(constants.CLOSE_GOING_AWAY, "server shutting down")
        logger.info("ws4redis: shutting down, closing %d websockets with 1001", count)
        # Leave a little of the deadline for dropping what did not finish and closing Redis.
        grace = max(0.0, deadline - time.monotonic() - constants.SHUTDOWN_KILL_MARGIN)
        self.pool.join(timeout=grace)
        self.connections.wait_released(deadline - time.monotonic() - constants.SHUTDOWN_KILL_MARGIN)
        if len(self.pool) or len(self.connections):
            logger.info("ws4redis: %d connections did not close in time; dropping them",
                        len(self.pool) + len(self.connections))
            self.pool.kill(block=True, timeout=constants.SHUTDOWN_KILL_MARGIN / 2)
            for connection in self.connections:
                self.release(connection)
        if self._publisher is not None:
            self._publisher.close()
        self.connections.stop_ticking()
        if self._hub is not None:
            self._hub.close()
        self.stopped.set()


def run_worker(listener: socket.socket, websocket_only: bool = False) -> int:
    """Serve on ``listener`` until SIGTERM/SIGINT; returns the exit status. Django must be set up."""
    from django.core.servers.basehttp import get_internal_wsgi_application

    private_settings.validate_settings()
    config = ServerConfig(websocket_only)
    application = None if websocket_only else get_internal_wsgi_application()
    server = WebSocketServer(listener, application, config)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, gevent.spawn, server.shutdown)
    server.hub.start()
    server.start()
    directory = shared_directory()
    snapshots = SnapshotWriter(directory) if directory is not None and config.monitoring else None
    if snapshots is not None:
        snapshots.start()
    host, port = listener.getsockname()[:2]
    logger.info("ws4redis: worker %d serving websockets under %s on %s:%d%s", os.getpid(),
                config.websocket_url, host, port, " (websockets only)" if websocket_only else "")
    server.stopped.wait()
    if snapshots is not None:
        snapshots.stop()
    sys.stderr.flush()
    return 0
