"""One benchmark websocket client: a raw asyncio Protocol with minimal per-message work.

A load generator written with a full websocket library spends more CPU per
message than the server it measures. This client does the least it can: the
upgrade request is written by hand, the server's answer is checked with
``ws4redis.handshake.accept_key``, and frames are cut by ``FrameParser`` from
``ws4redis.speedups`` (compiled when available) with UTF-8 validation off.

Every benchmark message starts with a fixed-width ASCII header, so a text
frame carries it unchanged and one slice plus ``int(..., 16)`` recovers each
field::

    kind (4) | run (8 hex) | source (8 hex) | sequence (8 hex) | send time, monotonic ns (16 hex) | padding

The first three fields form the sender's tag. The run number is random per
run, so a message left over from an earlier run (a persisted message a
server replays on connect, say) is told apart and ignored.

``time.monotonic_ns`` is CLOCK_MONOTONIC on Linux, shared by every process,
so a timestamp taken by the publisher compares with the receive time taken
by a client. Latency is counted from that send time to the moment the frame
is read; loss and duplicates from a per-client bitmap of sequence numbers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import ssl
import zlib
from time import monotonic_ns
from urllib.parse import urlsplit

from ws4redis import constants
from ws4redis.bench.stats import Stats
from ws4redis.exceptions import ProtocolError
from ws4redis.handshake import accept_key
from ws4redis.speedups import FrameParser, encode_frame

KIND_DATA = b"W4RB"
KIND_WARMUP = b"W4RW"
TAG_SIZE = 20  # kind, run and source
RUN_PREFIX_SIZE = 12  # kind and run
SEQ_FIELD = slice(20, 28)
SENT_FIELD = slice(28, 44)
HEADER_SIZE = 44
PUBLISHER_SOURCE = 0
# What browsers offer (RFC 7692); ws4redis answers with server_no_context_takeover.
DEFLATE_OFFER = "permessage-deflate; client_max_window_bits"
_DEFLATE_TAIL = b"\x00\x00\xff\xff"  # RFC 7692, section 7.2.2: put back before inflating
_MESSAGE_EVENT = b'{"event":"message"'  # how a history envelope with a message starts
PAYLOADS = ("dots", "json")
_WORDS = ("hello", "world", "message", "update", "price", "ticket", "order", "status", "ready",
          "shipped", "user", "channel", "group", "online", "away", "typing", "seen", "sent")


def tag(kind: bytes, run: int, source: int) -> bytes:
    """The first header fields, identifying the sender of a message."""
    return b"%s%08x%08x" % (kind, run, source)


def padding(size: int, kind: str = "dots") -> bytes:
    """The bytes after the header that make a message ``size`` bytes long.

    ``dots`` compresses to almost nothing; ``json`` looks like the rows of a
    chat or a dashboard list (the same keys, growing ids and timestamps, words
    from a small vocabulary), which deflate shrinks to about a third.
    """
    length = size - HEADER_SIZE
    if kind == "dots":
        return b"." * length
    if kind != "json":
        raise ValueError(f"payload must be one of {PAYLOADS}, got {kind!r}")
    words = random.Random(length)
    rows = []
    total = 0
    row_id, at = 480_000, 1_765_000_000
    while total < length:
        row_id += words.randrange(1, 20)
        at += words.randrange(0, 90)
        row = (
            f'{{"id":{row_id},"user":"{words.choice(_WORDS)}{words.randrange(100)}",'
            f'"text":"{" ".join(words.choice(_WORDS) for _ in range(words.randrange(2, 8)))}",'
            f'"at":{at}}},'
        )
        rows.append(row)
        total += len(row)
    return "".join(rows).encode("ascii")[:length]


def message(sender: bytes, seq: int, padding: bytes) -> bytes:
    """A benchmark message from ``sender`` (a :func:`tag`) stamped with the current time."""
    return b"%s%08x%016x" % (sender, seq, monotonic_ns()) + padding


class HandshakeFailed(Exception):
    """The server did not upgrade the connection to a websocket."""


class Target:
    """Where the clients connect: host, port and the upgrade request for client ``i``."""

    def __init__(self, url: str, headers: list[str] | None = None, compression: bool = False,
                 history: bool = False, ca_file: str | None = None, insecure: bool = False) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("ws", "wss"):
            raise ValueError(f"URL must start with ws:// or wss://, got {url!r}")
        if not parts.hostname:
            raise ValueError(f"URL has no host: {url!r}")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "wss" else 80)
        # TLS for wss://: the system's CAs, or those of ca_file; insecure checks no certificate.
        self.ssl: ssl.SSLContext | None = None
        if parts.scheme == "wss":
            self.ssl = ssl.create_default_context(cafile=ca_file)
            if insecure:
                self.ssl.check_hostname = False
                self.ssl.verify_mode = ssl.CERT_NONE
        elif ca_file or insecure:
            raise ValueError("--ca-file and --insecure are for wss:// URLs")
        query = "&".join(part for part in (parts.query, "history" if history else "") if part)
        self.path = (parts.path or "/") + (f"?{query}" if query else "")
        self.history = history  # the clients get history envelopes (JSON) and take the message out
        self.headers = "".join(f"{line.strip()}\r\n" for line in headers or ())
        if compression:
            self.headers += f"Sec-WebSocket-Extensions: {DEFLATE_OFFER}\r\n"
        self.compression = compression

    def request(self, index: int, key: str) -> bytes:
        """The HTTP upgrade request; ``{i}`` in the URL path becomes the client index."""
        path = self.path.replace("{i}", str(index))
        return (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: {self.host}:{self.port}\r\n"
            "Upgrade: websocket\r\n"
            "Connection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: {constants.WEBSOCKET_VERSION}\r\n"
            f"{self.headers}\r\n"
        ).encode("latin-1")


class BenchClient(asyncio.Protocol):
    """A websocket client counting the benchmark messages it receives.

    ``sender`` (a :func:`tag`) selects which messages are this client's:
    the publisher's (publish mode) or its own echoes (echo mode). Others are
    counted as foreign and otherwise ignored, so a server that also
    broadcasts an echo to other clients, or replays a message of an earlier
    run, does not distort the figures. A warm-up message of this run marks
    the client ``warmed``.
    """

    def __init__(self, index: int, target: Target, stats: Stats, messages: int, sender: bytes) -> None:
        self.index = index
        self.stats = stats
        self.sender = sender
        self.warmup = KIND_WARMUP + sender[len(KIND_WARMUP) : RUN_PREFIX_SIZE]
        self.seen = bytearray(messages)
        self.highest = -1  # the highest sequence number received
        self.received = 0  # distinct sequence numbers received
        self.transport: asyncio.Transport | None = None
        self.open = False
        self.closing = False
        self.warmed = False
        self.waiting: asyncio.Future | None = None
        self.waiting_seq = -1
        self._head = bytearray()
        self._fragments: list[bytes] = []
        self._parser = FrameParser(
            require_mask=False, validate_utf8=False, allow_compressed=target.compression
        )
        # One inflater for the connection's life: it reads messages compressed with or without
        # the server's context, and allocates nothing per message.
        self._inflater = zlib.decompressobj(-15) if target.compression else None
        self._inflating = False  # the fragmented message in progress is compressed
        self._history = target.history
        loop = asyncio.get_running_loop()
        self.handshake: asyncio.Future = loop.create_future()
        self.finished: asyncio.Future = loop.create_future()
        key = base64.b64encode(os.urandom(constants.WEBSOCKET_KEY_BYTES)).decode("ascii")
        self._accept = accept_key(key).encode("ascii")
        self._request = target.request(index, key)

    # asyncio.Protocol callbacks

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self.open:
            data = self._read_head(data)
            if not data:
                return
        stats = self.stats
        stats.wire_bytes += len(data)
        error = None
        held = self._parser.buffered
        try:
            frames = self._parser.feed(data)
        except ProtocolError as exc:
            error = exc
            frames = exc.frames  # the frames completed before the faulty one still count
        now = monotonic_ns()
        delivered = 0
        for frame in frames:
            opcode = frame.opcode
            if opcode < constants.OP_CLOSE:  # text, binary or continuation: the parser refuses 3-7
                payload = frame.payload
                if frame.rsv1:
                    self._inflating = True
                if not frame.fin or self._fragments:
                    self._fragments.append(payload)
                    if not frame.fin:
                        continue
                    payload = b"".join(self._fragments)
                    self._fragments.clear()
                if self._inflating:
                    self._inflating = False
                    try:
                        payload = self._inflater.decompress(payload + _DEFLATE_TAIL)
                    except zlib.error as exc:
                        self._fail(f"compressed message does not inflate: {exc}")
                        return
                if self._history:
                    if not payload.startswith(_MESSAGE_EVENT):
                        continue  # where the channels stand: not a message
                    payload = json.loads(payload)["data"].encode("utf-8")
                if payload[:TAG_SIZE] != self.sender:
                    if payload[:RUN_PREFIX_SIZE] == self.warmup:
                        self.warmed = True
                    else:
                        stats.foreign += 1
                    continue
                try:
                    seq = int(payload[SEQ_FIELD], 16)
                    sent = int(payload[SENT_FIELD], 16)
                except ValueError:  # our tag, then garbage: a mangled message
                    stats.foreign += 1
                    continue
                seen = self.seen
                if seq >= len(seen):
                    stats.foreign += 1
                    continue
                if seen[seq]:
                    stats.duplicates += 1
                    continue
                seen[seq] = 1
                self.received += 1
                if seq > self.highest:
                    self.highest = seq
                stats.latencies.append(now - sent)
                stats.arrivals.append(now)
                delivered += 1
                if seq == self.waiting_seq:
                    self.waiting_seq = -1
                    if not self.waiting.done():
                        self.waiting.set_result(None)
            elif opcode == constants.OP_PING:
                self._send(constants.OP_PONG, frame.payload)
            elif opcode == constants.OP_CLOSE:
                self._closed_by_server(frame.payload)
                break  # nothing counts after a close, but what came before it does
        if delivered:
            stats.delivered += delivered
            stats.last_delivery_ns = now
            if stats.delivered >= stats.wake_at:
                stats.wake.set()
        if error is not None:
            self._protocol_error(error, data, frames, held)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(f"connection closed during the handshake ({exc})"))
        elif self.open and not self.closing:
            self.stats.error("connection lost")
        if self.open:
            self.open = False
            self.stats.open_clients -= 1
        if self.waiting is not None and not self.waiting.done():
            self.waiting.set_exception(ConnectionError("connection lost"))
        if not self.finished.done():
            self.finished.set_result(None)
        self.stats.wake.set()

    # used by the runner

    def send_message(self, payload: bytes) -> None:
        self._send(constants.OP_TEXT, payload)

    def skipped(self) -> int:
        """Sequence numbers below the highest one received that never arrived."""
        return self.highest + 1 - self.received

    def expect(self, seq: int) -> asyncio.Future:
        """A future resolved when the message numbered ``seq`` comes back."""
        self.waiting = asyncio.get_running_loop().create_future()
        self.waiting_seq = seq
        return self.waiting

    def close(self, code: int = constants.CLOSE_NORMAL) -> None:
        """Start the closing handshake; ``finished`` resolves when the server closes the TCP stream."""
        if self.transport is None or self.transport.is_closing():
            return
        self.closing = True
        if self.open:
            self._send(constants.OP_CLOSE, code.to_bytes(2, "big"))
        else:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # internals

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            mask_key = random.randbytes(constants.MASK_KEY_LENGTH)
            self.transport.write(encode_frame(opcode, payload, mask_key=mask_key))

    def _read_head(self, data: bytes) -> bytes:
        """Collect the HTTP response head; return the bytes after it once it is complete."""
        head = self._head
        head += data
        end = head.find(b"\r\n\r\n")
        if end < 0:
            # The answer to an upgrade is a few short headers: bound it as servers bound requests.
            if len(head) > constants.MAX_REQUEST_HEAD_SIZE:
                self._refuse(f"response head larger than {constants.MAX_REQUEST_HEAD_SIZE} bytes")
            return b""
        lines = bytes(head[:end]).split(b"\r\n")
        rest = bytes(head[end + 4 :])
        self._head = bytearray()
        status = lines[0].split(None, 2)
        if len(status) < 2 or status[1] != b"101":
            body = rest[:200].decode("utf-8", "replace").strip()
            self._refuse(f"HTTP {b' '.join(status[1:]).decode('latin-1')}" + (f": {body}" if body else ""))
            return b""
        accept = None
        extensions = b""
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"sec-websocket-accept":
                accept = value.strip()
            elif name == b"sec-websocket-extensions":
                extensions = value.strip()
        if accept != self._accept:
            self._refuse("wrong or missing Sec-WebSocket-Accept")
            return b""
        if extensions and not (self._inflater is not None and extensions.startswith(b"permessage-deflate")):
            self._refuse(f"the server answered with an extension that was not offered: {extensions!r}")
            return b""
        self.open = True
        self.stats.open_clients += 1
        if extensions:
            self.stats.compressed_clients += 1
        self.handshake.set_result(None)
        return rest

    def _refuse(self, reason: str) -> None:
        if not self.handshake.done():
            self.handshake.set_exception(HandshakeFailed(reason))
        self.abort()

    def _protocol_error(self, error: ProtocolError, data: bytes, frames: list, held: int) -> None:
        """Record the error with the bytes where it happened, and fail the connection.

        The bytes say more than the rule they broke: a server writing an HTTP
        error body into the upgraded stream shows up here. They start after
        the frames completed by this chunk (re-encoded to learn their size)
        minus what the parser held from earlier chunks.
        """
        offset = max(0, sum(len(encode_frame(f.opcode, f.payload, fin=f.fin)) for f in frames) - held)
        self._fail(
            f"protocol error from server (close {error.close_code}): {error}; "
            f"bytes: {data[offset : offset + 24]!r}"
        )

    def _fail(self, reason: str) -> None:
        self.stats.error(reason)
        if not self.closing:
            self.closing = True
            self._send(constants.OP_CLOSE, constants.CLOSE_PROTOCOL_ERROR.to_bytes(2, "big"))
        self.transport.close()

    def _closed_by_server(self, payload: bytes) -> None:
        code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else constants.CLOSE_NO_STATUS
        if not self.closing:
            self.stats.error(f"closed by server with code {code}")
            self.closing = True
            self._send(constants.OP_CLOSE, payload[:2])
        self.transport.close()
