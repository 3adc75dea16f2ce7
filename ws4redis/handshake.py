"""The HTTP upgrade of RFC 6455, section 4, as pure functions (sans-I/O).

Servers hand in the request (method and headers, from a WSGI environ or from
raw bytes) and get back either a :class:`Handshake` that knows the response
headers, or a :class:`~ws4redis.exceptions.HandshakeError` whose ``status``,
``headers`` and message make a complete, readable HTTP error answer.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from http import HTTPStatus

from ws4redis import constants
from ws4redis.deflate import CompressionSettings, DeflateParams, negotiate
from ws4redis.exceptions import HandshakeError, UpgradeRequiredError

__all__ = [
    "Handshake",
    "Headers",
    "accept_key",
    "error_response",
    "headers_from_environ",
    "parse_request_head",
    "plain_response",
    "status_line",
    "request_head_length",
    "upgrade_response",
    "validate_upgrade",
]

NOT_A_WEBSOCKET_REQUEST = (
    "Bad Request: this URL serves websockets only; connect with a websocket client (Upgrade: websocket)"
)

_HEAD_END = b"\r\n\r\n"
_CRLF = b"\r\n"
# RFC 9110, section 5.6.2: header names and methods are tokens.
_TOKEN_PATTERN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN = re.compile(_TOKEN_PATTERN)
_REQUEST_LINE = re.compile(rf"({_TOKEN_PATTERN}) ([^\s]+) HTTP/(\d)\.(\d)")
_FORBIDDEN_IN_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")


class Headers(Mapping[str, str]):
    """Request headers looked up case-insensitively; repeated ones are joined with ", "."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = {}
        for name, value in items:
            key = name.lower()
            previous = self._items.get(key)
            # RFC 9110, section 5.3: repeated fields combine into one list.
            self._items[key] = value if previous is None else f"{previous}, {value}"

    def __getitem__(self, name: str) -> str:
        return self._items[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Headers({list(self._items.items())!r})"


def headers_from_environ(environ: Mapping[str, object]) -> Headers:
    """The request headers of a WSGI environ (``HTTP_SEC_WEBSOCKET_KEY`` -> ``sec-websocket-key``)."""
    items = []
    for name, value in environ.items():
        if name.startswith("HTTP_"):
            items.append((name[5:].replace("_", "-"), str(value)))
        elif name in ("CONTENT_TYPE", "CONTENT_LENGTH") and value:
            items.append((name.replace("_", "-"), str(value)))
    return Headers(items)


def accept_key(key: str | bytes) -> str:
    """Sec-WebSocket-Accept for a Sec-WebSocket-Key (section 4.2.2, step 5.4)."""
    raw = key.encode("ascii") if isinstance(key, str) else key
    return base64.b64encode(hashlib.sha1(raw + constants.WEBSOCKET_GUID).digest()).decode("ascii")


def _tokens(value: str) -> list[str]:
    """The items of a comma-separated header, stripped, empty ones dropped."""
    return [item.strip() for item in value.split(",") if item.strip()]


@dataclass(frozen=True)
class Handshake:
    """A valid upgrade request, ready to be answered with 101 Switching Protocols."""

    key: str
    subprotocols: list[str] = field(default_factory=list)
    # permessage-deflate, once negotiated (with_compression): its parameters and response value.
    deflate: DeflateParams | None = None
    extensions: str | None = None

    def with_compression(self, offer: str | None, settings: CompressionSettings | None) -> Handshake:
        """This handshake with permessage-deflate negotiated from the client's offer, if any fits."""
        negotiated = negotiate(offer, settings)
        if negotiated is None:
            return self
        return replace(self, deflate=negotiated[0], extensions=negotiated[1])

    @property
    def accept(self) -> str:
        """Sec-WebSocket-Accept: proof to the client that this server read its key."""
        return accept_key(self.key)

    def response_headers(self, subprotocol: str | None = None) -> list[tuple[str, str]]:
        """Headers of the 101 response; ``subprotocol`` must be one the client offered."""
        headers = [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", self.accept),
        ]
        if subprotocol is not None:
            # Section 4.2.2: the server may only select a protocol the client listed.
            if subprotocol not in self.subprotocols:
                raise ValueError(f"subprotocol {subprotocol!r} was not offered by the client")
            headers.append(("Sec-WebSocket-Protocol", subprotocol))
        if self.extensions is not None:
            headers.append(("Sec-WebSocket-Extensions", self.extensions))
        return headers


def validate_upgrade(method: str, headers: Mapping[str, str]) -> Handshake:
    """Check an opening handshake (section 4.2.1) and return what the answer needs.

    ``headers`` may be any mapping; names are compared case-insensitively.
    """
    if not isinstance(headers, Headers):
        headers = Headers(headers.items())
    upgrade = [token.lower() for token in _tokens(headers.get("upgrade", ""))]
    if "websocket" not in upgrade:
        raise HandshakeError(NOT_A_WEBSOCKET_REQUEST, 400)
    if method != "GET":
        raise HandshakeError(
            f"Method Not Allowed: a websocket handshake is a GET request, not {method}",
            405,
            [("Allow", "GET")],
        )
    connection = [token.lower() for token in _tokens(headers.get("connection", ""))]
    if "upgrade" not in connection:
        raise HandshakeError("Bad Request: the Connection header must contain the 'Upgrade' token", 400)
    version = headers.get("sec-websocket-version")
    if version is None:
        raise UpgradeRequiredError(
            "Upgrade Required: the Sec-WebSocket-Version header is missing; "
            f"this server speaks version {constants.WEBSOCKET_VERSION}"
        )
    if version.strip() != constants.WEBSOCKET_VERSION:
        raise UpgradeRequiredError(
            f"Upgrade Required: websocket version {version.strip()!r} is not supported; "
            f"this server speaks version {constants.WEBSOCKET_VERSION}"
        )
    key = headers.get("sec-websocket-key")
    if key is None:
        raise HandshakeError("Bad Request: the Sec-WebSocket-Key header is missing", 400)
    key = key.strip()
    try:
        decoded = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if len(decoded) != constants.WEBSOCKET_KEY_BYTES:
        raise HandshakeError(
            "Bad Request: Sec-WebSocket-Key must be the base64 encoding of "
            f"{constants.WEBSOCKET_KEY_BYTES} bytes",
            400,
        )
    return Handshake(key, _tokens(headers.get("sec-websocket-protocol", "")))


def request_head_length(
    data: bytes | bytearray, max_size: int = constants.MAX_REQUEST_HEAD_SIZE
) -> int | None:
    """Length of the request head at the start of ``data`` (blank line included).

    None means the head is not complete yet: read more. A head that cannot
    fit in ``max_size`` bytes is refused with 414 when even the request line
    does not end, 431 otherwise, so a server never buffers more.
    """
    end = data.find(_HEAD_END, 0, max_size)
    if end >= 0:
        return end + len(_HEAD_END)
    if len(data) < max_size:
        return None
    if data.find(_CRLF, 0, max_size) < 0:
        raise HandshakeError(f"URI Too Long: the request line exceeds {max_size} bytes", 414)
    raise HandshakeError(f"Request Header Fields Too Large: the request head exceeds {max_size} bytes", 431)


def parse_request_head(
    data: bytes | bytearray,
    max_size: int = constants.MAX_REQUEST_HEAD_SIZE,
    max_headers: int = constants.MAX_REQUEST_HEADERS,
) -> tuple[str, str, Headers]:
    """``(method, path, headers)`` of the HTTP/1.1 request head at the start of ``data``.

    Bytes after the blank line that ends the head are not looked at (they
    belong to the websocket stream). Garbage is refused with 400, oversized
    input with 414/431 (see :func:`request_head_length`).
    """
    length = request_head_length(data, max_size)
    if length is None:
        raise HandshakeError("Bad Request: the request head is incomplete", 400)
    # Latin-1 maps every byte to a character, so decoding never fails and
    # any non-ASCII garbage is caught by the patterns below.
    lines = bytes(data[: length - len(_HEAD_END)]).decode("latin-1").split("\r\n")
    request = _REQUEST_LINE.fullmatch(lines[0])
    if request is None:
        raise HandshakeError("Bad Request: malformed request line", 400)
    method, path, major, minor = request.groups()
    # RFC 6455, section 4.1: the handshake needs HTTP/1.1 or later.
    if (int(major), int(minor)) < (1, 1):
        raise HandshakeError("Bad Request: websockets need HTTP/1.1", 400)
    if len(lines) - 1 > max_headers:
        raise HandshakeError(f"Request Header Fields Too Large: more than {max_headers} headers", 431)
    items = []
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        # RFC 9112, section 5: no whitespace before the colon, no obsolete
        # line folding (a line starting with whitespace).
        if not colon or _TOKEN.fullmatch(name) is None:
            raise HandshakeError(f"Bad Request: malformed header line {line[:64]!r}", 400)
        value = value.strip(" \t")
        if _FORBIDDEN_IN_VALUE.search(value):
            raise HandshakeError(f"Bad Request: control character in header {name}", 400)
        items.append((name, value))
    return method, path, Headers(items)


def upgrade_response(handshake: Handshake, subprotocol: str | None = None) -> bytes:
    """The complete 101 Switching Protocols response head."""
    lines = ["HTTP/1.1 101 Switching Protocols"]
    lines += [f"{name}: {value}" for name, value in handshake.response_headers(subprotocol)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def status_line(status: int) -> str:
    """``"404 Not Found"``: the status as HTTP and WSGI's ``start_response`` write it."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return f"{status} {phrase}"


def plain_response(status: int, body: bytes, content_type: str = "text/plain; charset=utf-8",
                   headers: Iterable[tuple[str, str]] = ()) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    lines = [
        f"HTTP/1.1 {status_line(status)}",
        f"Content-Type: {content_type}",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in headers),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def error_response(error: HandshakeError) -> bytes:
    """A complete HTTP response refusing the handshake, its message as a text body."""
    return plain_response(error.status, (str(error) + "\n").encode("utf-8"), headers=error.headers)
