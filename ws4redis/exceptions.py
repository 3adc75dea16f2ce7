"""Exceptions with a meaning: each carries what the peer must be told."""

from __future__ import annotations

from ws4redis import constants


class WebSocketError(Exception):
    """Base class of every error raised by ws4redis."""


class ProtocolError(WebSocketError):
    """The peer broke RFC 6455; the connection must be closed with ``close_code``."""

    def __init__(self, message: str, close_code: int = constants.CLOSE_PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.close_code = close_code

    def __reduce__(self):
        return (type(self), (str(self), self.close_code))


class InvalidPayloadError(ProtocolError):
    """Text that is not UTF-8, or a malformed close payload reason (1007)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, constants.CLOSE_INVALID_PAYLOAD)

    def __reduce__(self):
        return (type(self), (str(self),))


class MessageTooBigError(ProtocolError):
    """A frame or a reassembled message exceeds the configured limit (1009)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, constants.CLOSE_MESSAGE_TOO_BIG)

    def __reduce__(self):
        return (type(self), (str(self),))


class HandshakeError(WebSocketError):
    """An HTTP upgrade request that cannot become a websocket.

    ``status`` is the HTTP status to answer with (400, 403, 426...) and the
    message is sent as a readable body.
    """

    def __init__(self, message: str, status: int = 400, headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or []


class ConnectionClosed(WebSocketError):
    """Raised when reading from or writing to a websocket that is closed."""

    def __init__(self, code: int = constants.CLOSE_ABNORMAL, reason: str = "") -> None:
        super().__init__(f"websocket closed with code {code}" + (f": {reason}" if reason else ""))
        self.code = code
        self.reason = reason


class UpgradeRequiredError(HandshakeError):
    """The request lacks a supported ``Sec-WebSocket-Version`` (426)."""

    def __init__(self, message: str = "Upgrade Required: Sec-WebSocket-Version: 13") -> None:
        super().__init__(message, 426, [("Sec-WebSocket-Version", constants.WEBSOCKET_VERSION)])


class AuthenticationFailed(HandshakeError):
    """WS4REDIS_AUTHENTICATE found credentials it will not take: an expired, forged or revoked token (401).

    Raise it from the hook with the reason the client should read; ``scheme``
    names what the client should send instead (``WWW-Authenticate``).
    """

    def __init__(self, message: str = "the credentials are not valid", scheme: str = "Bearer") -> None:
        challenge = ("WWW-Authenticate", f'{scheme} realm="websocket"')
        super().__init__(f"Unauthorized: {message}", 401, [challenge])


# The name django-websocket-redis 0.6.0 raised for oversized frames.
FrameTooLargeException = MessageTooBigError
