"""A thin adapter between a connected socket and the sans-I/O protocol.

:class:`WebSocket` keeps the public API of django-websocket-redis 0.6.0
(``receive``, ``send``, ``close``, ``closed``, ``flush``,
``get_file_descriptor``) on top of :class:`ws4redis.protocol.WebSocketProtocol`.
All protocol rules live in the protocol; this module only moves bytes.
It works with plain blocking sockets and with gevent's monkey-patched ones.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import deque

from ws4redis import constants
from ws4redis.deflate import Deflation
from ws4redis.exceptions import ConnectionClosed
from ws4redis.protocol import Message, ProtocolViolation, State, WebSocketProtocol

__all__ = ["WebSocket"]

logger = logging.getLogger(__name__)


def _write_lock_for(sock: socket.socket) -> threading.Lock:
    """A lock that blocks the way the socket does.

    A greenlet blocked in ``sendall`` on a gevent socket yields to the hub;
    another greenlet waiting on a plain thread lock would then freeze the
    whole thread, so gevent sockets (monkey-patched or not) get gevent's lock.
    """
    if type(sock).__module__.startswith("gevent."):
        from gevent.lock import Semaphore

        return Semaphore()  # type: ignore[return-value]
    return threading.Lock()


class WebSocket:
    """The server side of one upgraded connection.

    ``sock`` is connected and already upgraded; ``initial`` holds bytes the
    server read past the HTTP request head (the start of the websocket
    stream). The adapter never closes ``sock``: that stays with its owner,
    as in 0.6.0. Writes are serialised by a lock, so one thread (or
    greenlet) may read while others send.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        initial: bytes = b"",
        max_message_size: int = constants.DEFAULT_MAX_MESSAGE_SIZE,
        max_fragments: int | None = None,
        deflation: Deflation | None = None,
    ) -> None:
        self._sock = sock
        self._protocol = WebSocketProtocol(max_message_size=max_message_size, max_fragments=max_fragments,
                                           deflation=deflation)
        self._messages: deque[str | bytes] = deque()
        self._lock = _write_lock_for(sock)
        if initial:
            self._absorb(initial)

    # --- state ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once a close frame was sent or received, or the connection died."""
        return self._protocol.state is not State.OPEN

    @property
    def protocol(self) -> WebSocketProtocol:
        """The sans-I/O state of this websocket (close codes each way, for logs and metrics)."""
        return self._protocol

    @property
    def close_code(self) -> int | None:
        """The peer's close code (1005: none given, 1006: connection lost), else the one we sent."""
        return self._protocol.close_code

    @property
    def close_reason(self) -> str:
        """The reason that came with ``close_code`` ("" when none was given)."""
        return self._protocol.close_reason

    def get_file_descriptor(self) -> int:
        """The socket's file descriptor, for servers that select()/poll() on it."""
        return self._sock.fileno()

    # --- reading ------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> str | bytes | None:
        """The next message (str for text, bytes for binary), or None once closed.

        Pings, pongs and the close handshake are handled on the way. A peer
        breaking the protocol is sent the matching close code and this
        returns None. With a ``timeout`` (seconds) and no message by then,
        TimeoutError is raised and the connection stays usable.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            if self.closed:
                return None
            data = self._recv(deadline)
            if data:
                self._absorb(data)
            else:
                self._lost()
        return self._messages.popleft()

    def receive_available(self) -> list[str | bytes]:
        """Every message that can be had without waiting: one non-blocking read.

        Meant for servers that wait on the file descriptor themselves. An
        empty list means nothing complete arrived; check ``closed`` to tell
        whether the peer is gone.
        """
        if not self.closed:
            data = self._recv_nowait()
            if data:
                self._absorb(data)
            elif data is not None:  # b"": the connection is gone (None: nothing to read yet)
                self._lost()
        messages = list(self._messages)
        self._messages.clear()
        return messages

    def _recv(self, deadline: float | None) -> bytes:
        """One read, blocking until ``deadline``; b"" when the connection is gone."""
        sock = self._sock
        try:
            if deadline is None:
                return sock.recv(constants.RECV_SIZE)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no websocket message within the timeout")
            previous = sock.gettimeout()
            sock.settimeout(remaining)
            try:
                return sock.recv(constants.RECV_SIZE)
            finally:
                sock.settimeout(previous)
        except (TimeoutError, BlockingIOError):
            raise
        except OSError as exc:
            logger.debug("websocket read failed: %s", exc)
            return b""

    def _recv_nowait(self) -> bytes | None:
        """One non-blocking read: None when nothing is waiting, b"" when the connection is gone."""
        sock = self._sock
        previous = sock.gettimeout()
        try:
            if previous != 0.0:
                sock.settimeout(0.0)
            try:
                return sock.recv(constants.RECV_SIZE)
            finally:
                if previous != 0.0:
                    sock.settimeout(previous)
        except BlockingIOError:
            return None
        except OSError as exc:
            logger.debug("websocket read failed: %s", exc)
            return b""

    def _absorb(self, data: bytes) -> None:
        """Run received bytes through the protocol and send whatever it answers."""
        with self._lock:
            events = self._protocol.receive_data(data)
        for event in events:
            if type(event) is Message:
                self._messages.append(event.data if event.binary else event.data.decode("utf-8"))
            elif type(event) is ProtocolViolation:
                logger.info("websocket closed with %d: %s", event.error.close_code, event.error)
        self._flush_quietly()

    def _lost(self) -> None:
        with self._lock:
            self._protocol.receive_eof()

    # --- writing ------------------------------------------------------------

    def _write(self, frame: bytes = b"") -> None:
        """Send what the protocol queued, then ``frame``; ConnectionClosed if the socket is dead."""
        with self._lock:
            queued = self._protocol.data_to_send()
            try:
                if queued:
                    self._sock.sendall(queued)
                if frame:
                    self._sock.sendall(frame)
            except OSError as exc:
                # A partial write leaves the stream unusable: the connection is lost.
                self._protocol.receive_eof()
                raise ConnectionClosed(constants.CLOSE_ABNORMAL, str(exc)) from exc

    def _flush_quietly(self) -> None:
        try:
            self._write()
        except ConnectionClosed as exc:
            logger.debug("websocket write failed: %s", exc)

    def flush(self) -> None:
        """Send anything still queued (pongs, close replies); raises ConnectionClosed if the socket died."""
        self._write()

    def _ensure_open(self) -> None:
        if self.closed:
            code = self.close_code if self.close_code is not None else constants.CLOSE_ABNORMAL
            raise ConnectionClosed(code, self.close_reason)

    def send(self, message: str | bytes | bytearray | memoryview, binary: bool | None = False) -> None:
        """Send one message: text by default, binary with ``binary=True``.

        ``binary=None`` picks binary for bytes and text for str, as in 0.6.0.
        Raises ConnectionClosed once the websocket is closed.
        """
        if binary is None:
            binary = not isinstance(message, str)
        with self._lock:
            self._protocol.send_message(message, binary)
        self._write()

    def send_frame(self, data: bytes) -> None:
        """Send one pre-encoded frame (see ``ws4redis.protocol.frame_message``) for fan-out."""
        self._ensure_open()
        self._write(data)

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping; the peer's pong is consumed by the next read."""
        with self._lock:
            self._protocol.send_ping(payload)
        self._write()

    def close(self, code: int = constants.CLOSE_NORMAL, message: str | bytes = "") -> None:
        """Send a close frame (once) and consider the websocket closed.

        As in 0.6.0 the socket itself is left to its owner. A dead socket is
        not an error here: the connection is going away anyway.
        """
        with self._lock:
            self._protocol.send_close(code, message)
        self._flush_quietly()
