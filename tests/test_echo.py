"""``python -m ws4redis.echo`` as a real subprocess, driven by the websockets library and raw sockets.

The subprocess inherits the environment, so the pure run of the suite
(WS4REDIS_NO_EXTENSIONS=1) exercises the pure-Python core end to end.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys

import pytest
from websockets.exceptions import ConnectionClosed, ConnectionClosedError
from websockets.sync.client import connect

from tests.echo_server import ROOT, EchoProcess, start_echo, stop_echo
from tests.wire import RFC_ACCEPT, RFC_KEY, client_frame
from ws4redis import constants
from ws4redis.handshake import NOT_A_WEBSOCKET_REQUEST
from ws4redis.speedups import Frame, FrameParser, encode_frame

MIB = 1 << 20
TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE, PING, PONG = constants.OP_CLOSE, constants.OP_PING, constants.OP_PONG

# The codes the websockets library lets a client send, plus the edges of the private ranges.
SENDABLE = sorted(constants.SENDABLE_CLOSE_CODES) + [3000, 3999, 4000, 4999]


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    server = start_echo(tmp_path_factory.mktemp("echo"))
    try:
        yield server
    finally:
        stop_echo(server.proc)
    assert server.proc.returncode == 0, server.log.read_text()


def ws_connect(server: EchoProcess, **kwargs):
    return connect(server.url, proxy=None, compression=None, open_timeout=10, close_timeout=10, **kwargs)


# --- raw sockets ---------------------------------------------------------------------


def http_exchange(server: EchoProcess, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send ``request`` and read the complete response: status, headers (lower-cased), body."""
    with socket.create_connection((server.host, server.port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            assert chunk, f"connection closed mid-response: {data!r}"
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.lower(): value.strip() for name, _, value in fields}
        while len(body) < int(headers.get("content-length", 0)):
            body += sock.recv(65536)
        return int(lines[0].split()[1]), headers, body


UPGRADE = (
    "GET /ws/echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    f"Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n"
)


class RawClient:
    """A hand-rolled client that can send what no library would."""

    def __init__(self, server: EchoProcess) -> None:
        self.sock = socket.create_connection((server.host, server.port), timeout=15)
        self.sock.sendall((UPGRADE + "\r\n").encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(4096)
            assert chunk, "the server closed during the handshake"
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert f"Sec-WebSocket-Accept: {RFC_ACCEPT}".encode() in head
        self.parser = FrameParser(require_mask=False, max_message_size=64 * MIB)
        self.frames = self.parser.feed(rest)

    def send(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        self.sock.sendall(client_frame(opcode, payload, fin=fin))

    def read_frame(self):
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server closed the connection")
            self.frames = self.parser.feed(data)
        return self.frames.pop(0)

    def expect_close(self, code: int) -> None:
        frame = self.read_frame()
        assert frame.opcode == CLOSE, frame
        assert struct.unpack("!H", frame.payload[:2])[0] == code
        # Then the server closes the TCP connection.
        with pytest.raises(EOFError):
            self.read_frame()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(echo):
    client = RawClient(echo)
    yield client
    client.close()


# --- echoing with the websockets library --------------------------------------------------


def test_text_binary_and_non_ascii(echo):
    with ws_connect(echo) as ws:
        for message in ["hello", "", "grüße, 你好, 𝄞 🎉", b"\x00\x01\xfe\xff", b""]:
            ws.send(message)
            reply = ws.recv()
            assert reply == message and type(reply) is type(message)


def test_larger_messages_at_every_length_boundary(echo):
    with ws_connect(echo) as ws:
        for size in (125, 126, 65535, 65536, 500_000):
            data = os.urandom(size)
            ws.send(data)
            assert ws.recv() == data
            text = "é" * (size // 2)
            ws.send(text)
            assert ws.recv() == text


def test_fragmented_messages(echo):
    with ws_connect(echo) as ws:
        ws.send(["frag", "men", "ted ✓"])
        assert ws.recv() == "fragmented ✓"
        ws.send([b"\x00" * 1000, b"\x01" * 70000, b"\x02"])
        assert ws.recv() == b"\x00" * 1000 + b"\x01" * 70000 + b"\x02"


def test_pings_are_answered(echo):
    with ws_connect(echo) as ws:
        for payload in (b"", b"heartbeat", b"x" * 125):
            assert ws.ping(payload).wait(10), "no pong"
        ws.send("still echoing")
        assert ws.recv() == "still echoing"


@pytest.mark.parametrize("code", SENDABLE)
def test_close_codes_are_echoed(echo, code):
    with ws_connect(echo) as ws:
        ws.close(code, "bye ✓")
        assert ws.close_code == code


def test_16mib_message_is_refused_with_1009_by_default(echo):
    with ws_connect(echo, max_size=None) as ws:
        try:
            ws.send(os.urandom(16 * MIB))
        except ConnectionClosedError as exc:  # the refusal may arrive while sending
            assert exc.rcvd is not None and exc.rcvd.code == 1009
        else:
            with pytest.raises(ConnectionClosedError) as info:
                ws.recv()
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_16mib_messages_echo_intact_with_a_larger_limit(tmp_path):
    server = start_echo(tmp_path, "--max-message-size", "20MiB")
    try:
        with ws_connect(server, max_size=None) as ws:
            data = os.urandom(16 * MIB)
            ws.send(data)
            assert ws.recv(timeout=60) == data
            text = "ü" * (8 * MIB)  # 16 MiB of two-byte UTF-8
            ws.send(text)
            assert ws.recv(timeout=60) == text
    finally:
        stop_echo(server.proc)
    assert server.proc.returncode == 0, server.log.read_text()


# --- protocol violations over raw sockets ------------------------------------------------


def test_raw_echo_and_ping(raw):
    raw.send(TEXT, b"fra", fin=False)
    raw.send(PING, b"in between")
    raw.send(CONT, b"gments")
    assert raw.read_frame() == Frame(PONG, b"in between")
    assert raw.read_frame() == Frame(TEXT, b"fragments")
    raw.send(CLOSE, struct.pack("!H", 1000))
    raw.expect_close(1000)


def test_invalid_utf8_text_closes_with_1007(raw):
    raw.send(TEXT, "valid ✓".encode())
    assert raw.read_frame() == Frame(TEXT, "valid ✓".encode())
    raw.send(TEXT, b"invalid \xed\xa0\x80 surrogate")
    raw.expect_close(1007)


def test_invalid_utf8_across_fragments_closes_with_1007(raw):
    raw.send(TEXT, b"\xe2\x82", fin=False)
    raw.send(CONT, b"\x28")
    raw.expect_close(1007)


def test_invalid_utf8_close_reason_closes_with_1007(raw):
    raw.send(CLOSE, struct.pack("!H", 1000) + b"\xff\xfe")
    raw.expect_close(1007)


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes_close_with_1002(echo, code):
    client = RawClient(echo)
    try:
        client.send(CLOSE, struct.pack("!H", code))
        client.expect_close(1002)
    finally:
        client.close()


@pytest.mark.parametrize(
    "frame",
    [
        encode_frame(TEXT, b"unmasked"),
        encode_frame(TEXT, b"rsv", rsv1=True, mask_key=b"abcd"),
        encode_frame(5, b"", mask_key=b"abcd"),
        encode_frame(PING, b"", fin=False, mask_key=b"abcd"),
        encode_frame(CONT, b"orphan", mask_key=b"abcd"),
    ],
)
def test_frame_level_violations_close_with_1002(raw, frame):
    raw.sock.sendall(frame)
    raw.expect_close(1002)


def test_huge_frame_header_is_refused_at_once(raw):
    raw.sock.sendall(encode_frame(BINARY, bytes(16 * MIB), mask_key=b"abcd")[:14])
    raw.expect_close(1009)


def test_fragment_flood_closes_with_1009(raw):
    limit = constants.default_max_fragments(constants.DEFAULT_MAX_MESSAGE_SIZE)
    raw.sock.sendall(encode_frame(TEXT, b"", fin=False, mask_key=b"abcd"))
    raw.sock.sendall(encode_frame(CONT, b"", fin=False, mask_key=b"abcd") * limit)
    raw.expect_close(1009)


# --- bad handshakes -------------------------------------------------------------------------


def test_plain_http_get_gets_400_with_an_explanation(echo):
    status, headers, body = http_exchange(echo, b"GET /ws/echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert body.decode().strip() == NOT_A_WEBSOCKET_REQUEST


def test_unsupported_version_gets_426(echo):
    request = UPGRADE.replace("Version: 13", "Version: 8") + "\r\n"
    status, headers, body = http_exchange(echo, request.encode())
    assert status == 426
    assert headers["sec-websocket-version"] == "13"
    assert b"version" in body


@pytest.mark.parametrize(
    ("request_bytes", "status", "words"),
    [
        (UPGRADE.replace(f"Sec-WebSocket-Key: {RFC_KEY}\r\n", "") + "\r\n", 400, "Key"),
        (UPGRADE.replace(RFC_KEY, "short") + "\r\n", 400, "16 bytes"),
        (UPGRADE.replace("Connection: Upgrade", "Connection: close") + "\r\n", 400, "Connection"),
        (UPGRADE.replace("GET", "POST", 1) + "\r\n", 405, "GET"),
        ("NONSENSE\r\n\r\n", 400, "request line"),
        ("GET / HTTP/1.1\r\nX-Big: " + "x" * 9000 + "\r\n\r\n", 431, "Too Large"),
    ],
)
def test_bad_handshakes(echo, request_bytes, status, words):
    got, _, body = http_exchange(echo, request_bytes.encode())
    assert got == status
    assert words in body.decode()


def test_still_serving_after_all_that(echo):
    with ws_connect(echo) as ws:
        ws.send("alive")
        assert ws.recv() == "alive"


# --- shutdown ----------------------------------------------------------------------------------


def test_sigterm_closes_clients_with_1001(tmp_path):
    server = start_echo(tmp_path)
    try:
        with ws_connect(server) as ws:
            ws.send("before")
            assert ws.recv() == "before"
            server.proc.send_signal(signal.SIGTERM)
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=15)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1001
            assert ws.close_code == 1001
        assert server.proc.wait(15) == 0
    finally:
        stop_echo(server.proc)
    assert "closing 1 connection(s) with 1001" in server.log.read_text()


def test_sigint_stops_an_idle_server(tmp_path):
    server = start_echo(tmp_path)
    try:
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(15) == 0
    finally:
        stop_echo(server.proc)


def test_bad_arguments_fail_with_a_message():
    result = subprocess.run(
        [sys.executable, "-m", "ws4redis.echo", "--bind", "127.0.0.1:0", "--max-message-size", "lots"],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert b"--max-message-size" in result.stderr
