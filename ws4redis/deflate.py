"""permessage-deflate (RFC 7692), sans-I/O: the negotiation, one compression per publish, capped inflating.

A push server sends one published message to thousands of sockets. Compressing
it per socket would cost CPU and a compressor's memory per connection, so the
server always answers with ``server_no_context_takeover``: every message is
compressed on its own, and a :class:`Compressor` (one per process and window
size) compresses a published message once for every socket that negotiated
the extension, as nchan and Gorilla's PreparedMessage do. The server also asks
for ``client_no_context_takeover`` by default (RFC 7692, section 7.1.1.2 lets
it), so a connection keeps no inflating window between messages either.

Incoming compressed messages are inflated with a hard cap: output beyond the
connection's maximum message size is never produced (zlib's ``max_length``),
so a 1 KiB frame inflating to 1 GiB costs the cap plus one zlib state, and
ends the connection with 1009. Data that does not inflate fails it with 1002.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ws4redis import constants
from ws4redis.exceptions import MessageTooBigError, ProtocolError

__all__ = [
    "EXTENSION", "Compressor", "DeflateParams", "Deflation", "Inflater", "compressor_for", "negotiate",
]

EXTENSION = "permessage-deflate"
# Section 7.2.1: what a sync flush ends with, removed from each message and put back to inflate.
_TAIL = b"\x00\x00\xff\xff"
_PARAMETERS = ("server_no_context_takeover", "client_no_context_takeover", "server_max_window_bits",
               "client_max_window_bits")
# zlib cannot deflate with a window of 2**8 (it silently uses 2**9), so an offer that insists on
# server_max_window_bits=8 is declined.
_MIN_SERVER_WINDOW_BITS = 9


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """What one connection negotiated (the server never keeps a compression context)."""

    server_window_bits: int = 15
    client_window_bits: int = 15
    client_no_context_takeover: bool = True


@dataclass(frozen=True, slots=True)
class CompressionSettings:
    """WS4REDIS_COMPRESSION, read once: messages under ``threshold`` bytes go out uncompressed."""

    threshold: int = constants.DEFAULT_COMPRESSION_THRESHOLD
    level: int = constants.DEFAULT_COMPRESSION_LEVEL
    mem_level: int = constants.DEFAULT_COMPRESSION_MEM_LEVEL
    client_no_context_takeover: bool = True

    @classmethod
    def from_setting(cls, value: Any) -> CompressionSettings | None:
        """None when compression is off (the default); raises ValueError naming a bad key."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if not isinstance(value, Mapping):
            raise ValueError(f"must be True, False, None or a dict of options, got {value!r}")
        unknown = sorted(set(value) - {"threshold", "level", "mem_level", "client_no_context_takeover"})
        if unknown:
            raise ValueError(f"has unknown keys {unknown}: the keys are threshold, level, mem_level and "
                             "client_no_context_takeover")
        settings = cls(**value)
        for name, low, high in (("threshold", 0, None), ("level", 0, 9), ("mem_level", 1, 9)):
            number = getattr(settings, name)
            if not isinstance(number, int) or isinstance(number, bool) or number < low or \
                    (high is not None and number > high):
                bound = f"between {low} and {high}" if high is not None else f">= {low}"
                raise ValueError(f"[{name!r}] must be an integer {bound}, got {number!r}")
        if not isinstance(settings.client_no_context_takeover, bool):
            raise ValueError(f"['client_no_context_takeover'] must be True or False, got "
                             f"{settings.client_no_context_takeover!r}")
        return settings


def _offers(header: str) -> list[tuple[str, list[tuple[str, str | None]]]]:
    """The extensions of a Sec-WebSocket-Extensions header: (name, [(parameter, value or None)])."""
    offers = []
    for item in header.split(","):
        parts = [part.strip() for part in item.split(";")]
        if not parts[0]:
            continue
        params = []
        for part in parts[1:]:
            if not part:
                continue
            name, equals, value = part.partition("=")
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]  # section 7.1: a quoted-string value is the same token
            params.append((name.strip().lower(), value if equals else None))
        offers.append((parts[0].lower(), params))
    return offers


def _window_bits(value: str | None) -> int | None:
    if value is None or not value.isdigit() or value.startswith("0") or not 8 <= int(value) <= 15:
        return None
    return int(value)


def negotiate(header: str | None, settings: CompressionSettings | None) -> tuple[DeflateParams, str] | None:
    """The first acceptable permessage-deflate offer: its parameters and the response header value.

    None when compression is off, not offered, or every offer is invalid (section 7: such an
    offer is declined, the connection goes on uncompressed).
    """
    if settings is None or not header:
        return None
    for name, params in _offers(header):
        if name != EXTENSION:
            continue
        names = [param for param, _ in params]
        if len(set(names)) != len(names) or not set(names) <= set(_PARAMETERS):
            continue
        values = dict(params)
        if values.get("server_no_context_takeover", None) is not None or \
                values.get("client_no_context_takeover", None) is not None:
            continue  # these two take no value
        server_bits = 15
        if "server_max_window_bits" in values:
            offered = _window_bits(values["server_max_window_bits"])
            if offered is None or offered < _MIN_SERVER_WINDOW_BITS:
                continue
            server_bits = offered
        client_bits = 15
        if "client_max_window_bits" in values:
            raw = values["client_max_window_bits"]
            if raw is not None:
                offered = _window_bits(raw)
                if offered is None:
                    continue
                client_bits = offered
        no_takeover = settings.client_no_context_takeover or "client_no_context_takeover" in values
        response = [EXTENSION, "server_no_context_takeover"]
        if no_takeover:
            response.append("client_no_context_takeover")
        if "server_max_window_bits" in values:
            response.append(f"server_max_window_bits={server_bits}")
        if "client_max_window_bits" in values:
            response.append(f"client_max_window_bits={client_bits}")
        return DeflateParams(server_bits, client_bits, no_takeover), "; ".join(response)
    return None


class Compressor:
    """Deflates whole messages with no context between them: the same bytes suit every socket.

    One zlib stream is reused, reset by a full flush after each message (cheaper than a new
    compressor per message); the result carries no reference to earlier messages.
    """

    __slots__ = ("window_bits", "_stream")

    def __init__(self, window_bits: int, level: int, mem_level: int) -> None:
        self.window_bits = window_bits
        self._stream = zlib.compressobj(level, zlib.DEFLATED, -window_bits, mem_level)

    def compress(self, payload: bytes | bytearray | memoryview) -> bytes:
        stream = self._stream
        data = stream.compress(payload) + stream.flush(zlib.Z_FULL_FLUSH)
        return data[:-4] if data.endswith(_TAIL) else data


_compressors: dict[tuple[int, int, int], Compressor] = {}


def compressor_for(params: DeflateParams, settings: CompressionSettings) -> Compressor:
    """The process's compressor for a window size and the settings' level (shared by every socket)."""
    key = (params.server_window_bits, settings.level, settings.mem_level)
    compressor = _compressors.get(key)
    if compressor is None:
        compressor = _compressors[key] = Compressor(*key)
    return compressor


class Inflater:
    """Inflates the compressed messages of one connection, never beyond ``max_size`` bytes each."""

    __slots__ = ("_window_bits", "_reset", "_max_size", "_stream", "_size")

    def __init__(self, params: DeflateParams, max_size: int) -> None:
        self._window_bits = params.client_window_bits
        self._reset = params.client_no_context_takeover
        self._max_size = max_size
        self._stream: Any = None
        self._size = 0

    def begin(self) -> None:
        """A compressed message starts."""
        if self._reset or self._stream is None or self._stream.eof:
            self._stream = zlib.decompressobj(-self._window_bits)
        self._size = 0

    def feed(self, data: bytes, final: bool) -> bytes:
        """The inflated bytes of one fragment (``final``: the message's last one)."""
        if final:
            data += _TAIL
        room = self._max_size - self._size
        try:
            out = self._stream.decompress(data, room + 1)
        except zlib.error as exc:
            self._stream = None
            raise ProtocolError(f"compressed message does not inflate: {exc}") from None
        self._size += len(out)
        if self._size > self._max_size or self._stream.unconsumed_tail:
            self._stream = None
            raise MessageTooBigError(
                f"compressed message inflates beyond the limit of {self._max_size} bytes"
            )
        if final and self._reset:
            self._stream = None  # nothing is kept between messages
        return out


class Deflation:
    """permessage-deflate on one connection: its inflater, its compressor, the threshold.

    The compressor is the process's, shared by every socket (``shared``), on the servers whose
    sockets all live in one thread. A server with a thread per websocket (the development
    server) gives each its own: zlib lets go of the GIL while it compresses, and two threads
    interleaving their calls on one stream would each send a mix of both messages.
    """

    __slots__ = ("params", "compressor", "inflater", "threshold", "header")

    def __init__(self, params: DeflateParams, settings: CompressionSettings, max_size: int,
                 header: str = "", shared: bool = True) -> None:
        self.params = params
        self.header = header  # the Sec-WebSocket-Extensions value of the 101 response
        self.compressor = compressor_for(params, settings) if shared else \
            Compressor(params.server_window_bits, settings.level, settings.mem_level)
        self.inflater = Inflater(params, max_size)
        self.threshold = settings.threshold

    def compress(self, payload: bytes) -> bytes | None:
        """The compressed payload, or None when it stays uncompressed (under the threshold)."""
        if len(payload) < self.threshold:
            return None
        return self.compressor.compress(payload)
