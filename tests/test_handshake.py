"""The opening handshake (RFC 6455, section 4): every rule and raw HTTP parsing.

Origins are checked by ``ws4redis.settings.origin_allowed`` (tests/test_settings.py).
"""

from __future__ import annotations

import base64

import pytest

from tests.wire import RFC_ACCEPT, RFC_KEY
from ws4redis import constants
from ws4redis.exceptions import HandshakeError, UpgradeRequiredError
from ws4redis.handshake import (
    NOT_A_WEBSOCKET_REQUEST,
    Handshake,
    Headers,
    accept_key,
    error_response,
    headers_from_environ,
    parse_request_head,
    request_head_length,
    upgrade_response,
    validate_upgrade,
)


def good_headers(**changes: str | None) -> dict[str, str]:
    headers = {
        "Host": "example.com",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    for name, value in changes.items():
        name = name.replace("_", "-")
        if value is None:
            headers.pop(name)
        else:
            headers[name] = value
    return headers


def refused(method: str, headers: dict[str, str]) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade(method, headers)
    return info.value


# --- accept key and the happy path ------------------------------------------


def test_accept_key_matches_the_rfc_example():
    assert accept_key(RFC_KEY) == RFC_ACCEPT
    assert accept_key(RFC_KEY.encode()) == RFC_ACCEPT


def test_valid_request():
    handshake = validate_upgrade("GET", good_headers())
    assert handshake.key == RFC_KEY
    assert handshake.accept == RFC_ACCEPT
    assert handshake.subprotocols == []
    assert handshake.response_headers() == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", RFC_ACCEPT),
    ]


def test_header_names_and_tokens_are_case_insensitive():
    headers = {
        "upgrade": "WebSocket",
        "CONNECTION": "keep-alive, UPGRADE",
        "sec-websocket-key": RFC_KEY,
        "SEC-WEBSOCKET-VERSION": "13",
    }
    assert validate_upgrade("GET", headers).accept == RFC_ACCEPT


def test_subprotocols_are_listed_and_only_an_offered_one_is_chosen():
    handshake = validate_upgrade("GET", good_headers(Sec_WebSocket_Protocol="chat, superchat ,,v2"))
    assert handshake.subprotocols == ["chat", "superchat", "v2"]
    assert ("Sec-WebSocket-Protocol", "superchat") in handshake.response_headers("superchat")
    with pytest.raises(ValueError):
        handshake.response_headers("mqtt")


# --- the rules ------------------------------------------------------------------


@pytest.mark.parametrize("upgrade", [None, "", "h2c", "websockets"])
def test_not_an_upgrade_request_is_400_with_a_readable_body(upgrade):
    error = refused("GET", good_headers(Upgrade=upgrade))
    assert error.status == 400
    assert str(error) == NOT_A_WEBSOCKET_REQUEST
    assert "websocket client" in str(error)


def test_plain_browser_get_gets_the_explanation():
    error = refused("GET", {"Host": "example.com", "Accept": "text/html"})
    assert error.status == 400 and "websockets only" in str(error)


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "get"])
def test_method_must_be_get(method):
    error = refused(method, good_headers())
    assert error.status == 405
    assert error.headers == [("Allow", "GET")]
    assert "GET" in str(error)


@pytest.mark.parametrize("connection", [None, "keep-alive", "upgraded"])
def test_connection_must_contain_upgrade(connection):
    error = refused("GET", good_headers(Connection=connection))
    assert error.status == 400 and "Connection" in str(error)


def test_missing_version_is_426():
    error = refused("GET", good_headers(Sec_WebSocket_Version=None))
    assert isinstance(error, UpgradeRequiredError)
    assert error.status == 426
    assert error.headers == [("Sec-WebSocket-Version", "13")]
    assert "missing" in str(error)


@pytest.mark.parametrize("version", ["8", "12", "14", "13, 8", ""])
def test_other_versions_are_426(version):
    error = refused("GET", good_headers(Sec_WebSocket_Version=version))
    assert error.status == 426
    assert ("Sec-WebSocket-Version", constants.WEBSOCKET_VERSION) in error.headers


def test_missing_key_is_400():
    error = refused("GET", good_headers(Sec_WebSocket_Key=None))
    assert error.status == 400 and "Sec-WebSocket-Key" in str(error)


@pytest.mark.parametrize(
    "key",
    [
        "",
        "not base64 at all!",
        base64.b64encode(b"fifteen bytes!!").decode(),
        base64.b64encode(b"seventeen bytes!!").decode(),
        RFC_KEY.rstrip("="),  # unpadded
        f"{RFC_KEY}, {RFC_KEY}",  # sent twice
    ],
)
def test_invalid_key_is_400(key):
    error = refused("GET", good_headers(Sec_WebSocket_Key=key))
    assert error.status == 400 and "16 bytes" in str(error)


# --- headers ---------------------------------------------------------------------


def test_headers_mapping():
    headers = Headers([("X-A", "1"), ("x-a", "2"), ("Host", "h")])
    assert headers["x-A"] == "1, 2"
    assert "HOST" in headers and 42 not in headers
    assert len(headers) == 2 and sorted(headers) == ["host", "x-a"]
    assert headers.get("missing") is None


def test_headers_from_environ():
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/ws/foobar",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": RFC_KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "CONTENT_LENGTH": "",
        "CONTENT_TYPE": "text/plain",
        "wsgi.input": object(),
    }
    headers = headers_from_environ(environ)
    assert headers["Sec-WebSocket-Key"] == RFC_KEY
    assert headers["content-type"] == "text/plain"
    assert "content-length" not in headers and "path-info" not in headers
    assert validate_upgrade(environ["REQUEST_METHOD"], headers).accept == RFC_ACCEPT


# --- raw HTTP -----------------------------------------------------------------------


REQUEST = (
    b"GET /ws/foobar?subscribe-broadcast&echo HTTP/1.1\r\n"
    b"Host: localhost:8000\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + RFC_KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Version:13\r\n"
    b"X-Multi: a\r\n"
    b"x-multi: b\r\n"
    b"\r\n"
)


def test_parse_request_head():
    method, path, headers = parse_request_head(REQUEST + b"\x81\x85 frame bytes")
    assert method == "GET"
    assert path == "/ws/foobar?subscribe-broadcast&echo"
    assert headers["sec-websocket-version"] == "13"
    assert headers["X-Multi"] == "a, b"
    assert validate_upgrade(method, headers).accept == RFC_ACCEPT


def test_request_head_length():
    assert request_head_length(REQUEST + b"extra") == len(REQUEST)
    for cut in range(len(REQUEST)):
        assert request_head_length(REQUEST[:cut]) is None


def test_head_too_large_is_431():
    head = b"GET / HTTP/1.1\r\n" + b"X-Filler: " + b"x" * 9000 + b"\r\n\r\n"
    for function in (request_head_length, parse_request_head):
        with pytest.raises(HandshakeError) as info:
            function(head)
        assert info.value.status == 431
    with pytest.raises(HandshakeError) as info:
        request_head_length(head[:8192])  # a server stops reading at the limit
    assert info.value.status == 431


def test_endless_request_line_is_414():
    with pytest.raises(HandshakeError) as info:
        request_head_length(b"GET /" + b"a" * 9000)
    assert info.value.status == 414


def test_custom_size_limit():
    assert request_head_length(REQUEST, max_size=len(REQUEST)) == len(REQUEST)
    with pytest.raises(HandshakeError):
        request_head_length(REQUEST, max_size=len(REQUEST) - 1)


def test_too_many_headers_is_431():
    head = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(129)) + b"\r\n"
    with pytest.raises(HandshakeError) as info:
        parse_request_head(head)
    assert info.value.status == 431
    assert parse_request_head(head, max_headers=129)[0] == "GET"


@pytest.mark.parametrize(
    "head",
    [
        b"\r\n\r\n",
        b"GET\r\n\r\n",
        b"GET / HTTP/1.1 extra\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",
        b"GET / FTP/1.1\r\n\r\n",
        b"G\xe9T / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
        b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nName : x\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
        b"GET / HTTP/1.1\r\nA: b\x00c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n",  # incomplete
    ],
)
def test_garbage_is_400(head):
    with pytest.raises(HandshakeError) as info:
        parse_request_head(head)
    assert info.value.status == 400
    assert str(info.value).startswith("Bad Request")


# --- responses ------------------------------------------------------------------


def test_upgrade_response():
    handshake = Handshake(RFC_KEY, ["chat"])
    response = upgrade_response(handshake, "chat")
    assert response.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nSec-WebSocket-Accept: " + RFC_ACCEPT.encode() + b"\r\n" in response
    assert b"\r\nSec-WebSocket-Protocol: chat\r\n" in response
    assert response.endswith(b"\r\n\r\n")


def test_error_response_has_status_headers_and_body():
    error = refused("GET", good_headers(Sec_WebSocket_Version="8"))
    response = error_response(error)
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 426 Upgrade Required\r\n")
    assert b"\r\nSec-WebSocket-Version: 13" in head
    assert b"\r\nContent-Length: %d" % len(body) in head
    assert body.decode() == str(error) + "\n"
    assert error_response(HandshakeError("odd", 599)).startswith(b"HTTP/1.1 599 Error\r\n")
