"""The socket adapter over real sockets: socketpair, TCP with a real client library, gevent."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.wire import client_frame
from ws4redis import constants
from ws4redis.exceptions import ConnectionClosed
from ws4redis.handshake import parse_request_head, request_head_length, upgrade_response, validate_upgrade
from ws4redis.protocol import frame_message
from ws4redis.speedups import Frame, FrameParser, encode_frame
from ws4redis.websocket import WebSocket

TEXT, BINARY, CONT = constants.OP_TEXT, constants.OP_BINARY, constants.OP_CONTINUATION
CLOSE, PING, PONG = constants.OP_CLOSE, constants.OP_PING, constants.OP_PONG


class Peer:
    """The client end of a socketpair, speaking raw frames."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.parser = FrameParser(require_mask=False, max_message_size=1 << 24)
        self.frames: list = []

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self, timeout: float = 10.0):
        self.sock.settimeout(timeout)
        while not self.frames:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("the server side closed the socket")
            self.frames += self.parser.feed(data)
        return self.frames.pop(0)


@pytest.fixture
def pair():
    server_sock, client_sock = socket.socketpair()
    server_sock.settimeout(10)  # a safety net: a broken test fails instead of hanging
    yield server_sock, Peer(client_sock)
    server_sock.close()
    client_sock.close()


def close_code(frame) -> int:
    assert frame.opcode == CLOSE
    return struct.unpack("!H", frame.payload[:2])[0]


# --- receiving ------------------------------------------------------------------


def test_receive_text_binary_and_fragments(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.send(client_frame(TEXT, "grüße".encode()) + client_frame(BINARY, b"\x00\xff"))
    peer.send(client_frame(TEXT, b"frag", fin=False) + client_frame(CONT, b"mented"))
    assert ws.receive() == "grüße"
    assert ws.receive() == b"\x00\xff"
    assert ws.receive() == "fragmented"
    assert not ws.closed


def test_initial_bytes_are_the_start_of_the_stream(pair):
    server_sock, peer = pair
    first = client_frame(TEXT, b"already read")
    second = client_frame(TEXT, b"still on the wire")
    ws = WebSocket(server_sock, initial=first + second[:3])
    peer.send(second[3:])
    assert ws.receive() == "already read"
    assert ws.receive() == "still on the wire"


def test_ping_is_answered_while_receiving(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.send(client_frame(PING, b"hello?") + client_frame(TEXT, b"after ping"))
    assert ws.receive() == "after ping"
    assert peer.read_frame() == Frame(PONG, b"hello?")


def test_receive_timeout_keeps_the_connection(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    with pytest.raises(TimeoutError):
        ws.receive(timeout=0.05)
    assert not ws.closed
    assert server_sock.gettimeout() == 10  # the socket's own setting is restored
    peer.send(client_frame(TEXT, b"late"))
    assert ws.receive(timeout=10) == "late"


def test_receive_available(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    assert ws.receive_available() == []
    assert server_sock.gettimeout() == 10
    peer.send(client_frame(TEXT, b"one") + client_frame(BINARY, b"two"))
    peer.send(client_frame(TEXT, b"thr", fin=False))
    messages: list = []
    while len(messages) < 2:  # a socketpair delivers it all at once, but do not rely on it
        messages += ws.receive_available()
    assert messages == ["one", b"two"]
    peer.send(client_frame(CONT, b"ee"))
    while not messages[2:]:
        messages += ws.receive_available()
    assert messages[2:] == ["three"]


def test_receive_available_on_eof(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.send(client_frame(TEXT, b"last"))
    peer.sock.shutdown(socket.SHUT_WR)
    messages: list = []
    while not ws.closed:
        messages += ws.receive_available()
    assert messages == ["last"]
    assert ws.close_code == 1006
    assert ws.receive_available() == []
    assert ws.receive() is None


def test_eof_returns_none(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.sock.shutdown(socket.SHUT_WR)
    assert ws.receive() is None
    assert ws.closed and ws.close_code == 1006
    with pytest.raises(ConnectionClosed) as info:
        ws.send("nobody listens")
    assert info.value.code == 1006


# --- the close handshake and violations ---------------------------------------------


def test_peer_close_is_echoed(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.send(client_frame(CLOSE, struct.pack("!H", 4321) + b"bye"))
    assert ws.receive() is None
    assert ws.closed and ws.close_code == 4321 and ws.close_reason == "bye"
    assert close_code(peer.read_frame()) == 4321
    with pytest.raises(ConnectionClosed) as info:
        ws.send("too late")
    assert info.value.code == 4321
    with pytest.raises(ConnectionClosed):
        ws.send_frame(frame_message("too late"))
    assert ws.receive() is None  # stays None


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (encode_frame(TEXT, b"not masked"), 1002),
        (client_frame(3), 1002),
        (client_frame(CLOSE, struct.pack("!H", 1005)), 1002),
        (client_frame(TEXT, b"\xff"), 1007),
        (client_frame(CLOSE, struct.pack("!H", 1000) + b"\xc3"), 1007),
        (client_frame(BINARY, bytes(2000)), 1009),
        (client_frame(TEXT, b"x" * 1500, fin=False) + client_frame(CONT, b"x" * 600), 1009),
    ],
)
def test_violations_close_with_the_right_code(pair, data, code):
    server_sock, peer = pair
    ws = WebSocket(server_sock, max_message_size=2000 - 1)
    peer.send(client_frame(TEXT, b"fine first") + data)
    assert ws.receive() == "fine first"
    assert ws.receive() is None
    assert ws.closed and ws.close_code == code
    assert close_code(peer.read_frame()) == code


def test_oversized_frame_is_refused_before_its_payload_arrives(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock, max_message_size=1000)
    peer.send(client_frame(BINARY, bytes(100_000))[:14])  # the header only
    assert ws.receive() is None
    assert close_code(peer.read_frame()) == 1009


def test_fragment_flood(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock, max_fragments=10)
    peer.send(client_frame(TEXT, b"", fin=False) + client_frame(CONT, b"", fin=False) * 10)
    assert ws.receive() is None
    assert close_code(peer.read_frame()) == 1009


def test_server_close(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    ws.close(1001, "going away")
    ws.close()  # only one close frame is ever sent
    assert ws.closed and ws.close_code == 1001
    frame = peer.read_frame()
    assert close_code(frame) == 1001 and frame.payload[2:] == b"going away"
    with pytest.raises(ConnectionClosed):
        ws.send("no")
    server_sock.shutdown(socket.SHUT_WR)  # what the socket's owner does next
    with pytest.raises(EOFError):
        peer.read_frame()  # nothing but the one close frame was sent


def test_close_on_a_dead_socket_does_not_raise(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.sock.close()
    ws.close()
    assert ws.closed


# --- sending --------------------------------------------------------------------------


def test_send_variants(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    ws.send("text ✓")
    ws.send(b"utf-8 bytes as text")
    ws.send(b"\x00\x01", binary=True)
    ws.send(b"\x02", binary=None)  # 0.6.0: bytes are binary
    ws.send("str", binary=None)
    ws.send_frame(frame_message("pre-encoded"))
    ws.ping(b"p")
    ws.flush()
    assert [peer.read_frame() for _ in range(7)] == [
        Frame(TEXT, "text ✓".encode()),
        Frame(TEXT, b"utf-8 bytes as text"),
        Frame(BINARY, b"\x00\x01"),
        Frame(BINARY, b"\x02"),
        Frame(TEXT, b"str"),
        Frame(TEXT, b"pre-encoded"),
        Frame(PING, b"p"),
    ]
    assert ws.get_file_descriptor() == server_sock.fileno()


def test_send_rejects_invalid_text(pair):
    server_sock, _ = pair
    ws = WebSocket(server_sock)
    with pytest.raises(ValueError):
        ws.send(b"\xff")
    assert not ws.closed


def test_send_to_a_vanished_peer_raises_connection_closed(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    peer.sock.close()
    with pytest.raises(ConnectionClosed) as info:
        ws.send("anyone?")
    assert info.value.code == 1006
    assert ws.closed


def test_concurrent_senders_never_interleave_frames(pair):
    server_sock, peer = pair
    ws = WebSocket(server_sock)
    senders, count = 4, 30
    payloads = {i: bytes([i]) * 50_000 for i in range(senders)}

    def send_many(i: int) -> None:
        for _ in range(count):
            ws.send(payloads[i], binary=True)

    threads = [threading.Thread(target=send_many, args=(i,)) for i in range(senders)]
    for thread in threads:
        thread.start()
    received = [peer.read_frame() for _ in range(senders * count)]
    for thread in threads:
        thread.join()
    assert all(frame.payload == payloads[frame.payload[0]] for frame in received)
    assert sorted(frame.payload[0] for frame in received) == sorted(list(range(senders)) * count)


# --- a real TCP connection driven by a client library ------------------------------------


def serve_one(listener: socket.socket, results: list) -> None:
    """Accept one client, upgrade it by hand and echo until it closes."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10)
        data = b""
        while (length := request_head_length(data)) is None:
            data += conn.recv(4096)
        method, path, headers = parse_request_head(data)
        conn.sendall(upgrade_response(validate_upgrade(method, headers)))
        ws = WebSocket(conn, initial=data[length:])
        while (message := ws.receive()) is not None:
            ws.send(message, binary=isinstance(message, bytes))
        results.append((path, ws.close_code))


def test_over_tcp_with_websocket_client():
    import websocket  # the websocket-client library

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    results: list = []
    server = threading.Thread(target=serve_one, args=(listener, results), daemon=True)
    server.start()
    try:
        client = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/echo?echo", timeout=10)
        client.send("héllo")
        assert client.recv() == "héllo"
        client.send_binary(b"\x00\x01\x02")
        assert client.recv() == b"\x00\x01\x02"
        big = os.urandom(300_000)
        client.send_binary(big)
        assert client.recv() == big
        client.ping(b"are you alive")
        opcode, frame = client.recv_data_frame(control_frame=True)
        assert (opcode, frame.data) == (PONG, b"are you alive")
        client.close(status=4000)
        server.join(10)
        assert results == [("/ws/echo?echo", 4000)]
    finally:
        listener.close()


# --- gevent ---------------------------------------------------------------------------------


def test_under_gevent_sockets():
    import gevent
    import gevent.socket

    server_sock, client_sock = gevent.socket.socketpair()
    peer = Peer(client_sock)
    ws = WebSocket(server_sock)
    try:
        assert ws.receive_available() == []  # a gevent socket must not block here either
        with pytest.raises(TimeoutError):
            ws.receive(timeout=0.05)

        def reader() -> list:
            return [ws.receive() for _ in range(3)]

        def sender(i: int) -> None:
            for _ in range(10):
                ws.send(bytes([i]) * 100_000, binary=True)

        reading = gevent.spawn(reader)
        senders = [gevent.spawn(sender, i) for i in range(3)]
        peer.send(client_frame(TEXT, b"a") + client_frame(PING, b"p") + client_frame(TEXT, b"b"))
        peer.send(client_frame(BINARY, b"c"))
        frames = [peer.read_frame() for _ in range(31)]
        gevent.joinall([reading, *senders], timeout=10, raise_error=True)
        assert reading.value == ["a", "b", b"c"]
        assert Frame(PONG, b"p") in frames
        data = [frame.payload for frame in frames if frame.opcode == BINARY]
        assert len(data) == 30 and all(payload == payload[:1] * 100_000 for payload in data)
    finally:
        server_sock.close()
        client_sock.close()


MONKEY_PATCHED_SCRIPT = """
from gevent import monkey

monkey.patch_all()

import os
import socket

import gevent

from ws4redis.speedups import FrameParser, encode_frame
from ws4redis.websocket import WebSocket

server_sock, client_sock = socket.socketpair()
assert type(server_sock).__module__.startswith("gevent."), type(server_sock)
ws = WebSocket(server_sock)
assert ws.receive_available() == []
try:
    ws.receive(timeout=0.05)
except TimeoutError:
    pass
else:
    raise AssertionError("receive(timeout) returned without a message")


def sender(i):
    for _ in range(10):
        ws.send(bytes([i]) * 100_000, binary=True)


def reader():
    return [ws.receive() for _ in range(2)]


greenlets = [gevent.spawn(sender, i) for i in range(3)] + [gevent.spawn(reader)]
frame = encode_frame(1, b"hi", mask_key=os.urandom(4))
client_sock.sendall(frame + encode_frame(2, b"yo", mask_key=os.urandom(4)))
parser = FrameParser(require_mask=False)
frames = []
while len(frames) < 30:
    frames += parser.feed(client_sock.recv(1 << 16))
gevent.joinall(greenlets, timeout=10, raise_error=True)
assert greenlets[-1].value == ["hi", b"yo"], greenlets[-1].value
assert all(f.payload == f.payload[:1] * 100_000 for f in frames)
print("ok", len(frames))
"""


def test_under_gevent_monkey_patching():
    """Monkey-patching must happen first, so this runs in a fresh interpreter."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", MONKEY_PATCHED_SCRIPT], cwd=root, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ok", "30"]
