"""permessage-deflate (RFC 7692) behind WS4REDIS_COMPRESSION, on the three servers and in the core.

The negotiation and the capped inflater are checked as pure functions; then real servers (gevent,
uWSGI with 0.6.0's command line, runserver) negotiate with the ``websockets`` client and with raw
sockets that read the frames as they travel: a published message is compressed once and every
socket that negotiated gets the same bytes, small messages and clients that did not ask stay
uncompressed, a decompression bomb ends with 1009 while the server's memory stays put, corrupt
data ends with 1002. Headless Chromium negotiates it by itself (``WebSocket.extensions``).
"""

from __future__ import annotations

import json
import os
import threading
import uuid
import zlib
from collections.abc import Iterator

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests import servers
from tests.servers import Site, raw_upgrade_head
from ws4redis import constants
from ws4redis.deflate import CompressionSettings, DeflateParams, Inflater, negotiate
from ws4redis.exceptions import MessageTooBigError, ProtocolError
from ws4redis.protocol import Message, ProtocolViolation, WebSocketProtocol
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage
from ws4redis.speedups import FrameParser, encode_frame

KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi", "runserver")]
HUB_KINDS = [kind for kind in KINDS if kind.values[0] != "runserver"]
OFFER = "permessage-deflate; client_max_window_bits"
MAX_MESSAGE = 2 << 20
THRESHOLD = 64
GIB = 1 << 30


def deflate(data: bytes) -> bytes:
    """``data`` as a permessage-deflate sender puts it on the wire (sync flush, tail removed)."""
    stream = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = stream.compress(data) + stream.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]


def inflate(data: bytes) -> bytes:
    return zlib.decompressobj(-15).decompress(data + b"\x00\x00\xff\xff")


def bomb() -> bytes:
    """About 1 MB of deflate that inflates to 1 GiB of zeros (a block of 1 MiB of zeros, repeated)."""
    block = deflate(bytes(1 << 20)) + b"\x00\x00\xff\xff"  # each block ends on a sync flush
    return (block * (GIB // (1 << 20)))[:-4]


def masked(opcode: int, payload: bytes, **flags) -> bytes:
    return encode_frame(opcode, payload, mask_key=os.urandom(4), **flags)


# --- negotiation ---------------------------------------------------------------------------------

ON = CompressionSettings()


@pytest.mark.parametrize(("offer", "response"), [
    ("permessage-deflate", "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("permessage-deflate; client_max_window_bits",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=15"),
    ("permessage-deflate; server_max_window_bits=10; client_max_window_bits=12",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=10; "
     "client_max_window_bits=12"),
    ('permessage-deflate; server_max_window_bits="11"',
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover; server_max_window_bits=11"),
    # An offer the server cannot take is declined; the next one is considered.
    ("permessage-deflate; server_max_window_bits=8, permessage-deflate",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
    ("x-webkit-deflate-frame, permessage-deflate; server_no_context_takeover",
     "permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
])
def test_an_offer_is_answered_with_no_context_on_the_server_side(offer, response):
    params, answer = negotiate(offer, ON)
    assert answer == response
    assert isinstance(params, DeflateParams) and params.client_no_context_takeover


@pytest.mark.parametrize("offer", [
    None, "", "x-webkit-deflate-frame", "permessage-deflate; unknown_parameter",
    "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
    "permessage-deflate; server_max_window_bits", "permessage-deflate; server_max_window_bits=16",
    "permessage-deflate; client_max_window_bits=7", "permessage-deflate; server_no_context_takeover=1",
    "permessage-deflate; server_max_window_bits=010",
])
def test_an_offer_that_cannot_be_taken_leaves_the_connection_uncompressed(offer):
    assert negotiate(offer, ON) is None


def test_compression_off_negotiates_nothing():
    assert negotiate("permessage-deflate", None) is None
    assert CompressionSettings.from_setting(None) is None and CompressionSettings.from_setting(False) is None


@pytest.mark.parametrize(("value", "message"), [
    ("yes", "must be True, False, None or a dict"),
    ({"threshold": -1}, "['threshold'] must be an integer >= 0"),
    ({"level": 12}, "['level'] must be an integer between 0 and 9"),
    ({"mem_level": 0}, "['mem_level'] must be an integer between 1 and 9"),
    ({"windowbits": 10}, "unknown keys ['windowbits']"),
    ({"client_no_context_takeover": "no"}, "['client_no_context_takeover'] must be True or False"),
])
def test_a_bad_compression_setting_names_itself(value, message):
    from ws4redis import settings as private_settings

    with override_settings(WS4REDIS_COMPRESSION=value), pytest.raises(ImproperlyConfigured) as error:
        private_settings.validate_settings()
    assert str(error.value).startswith("WS4REDIS_COMPRESSION") and message in str(error.value)


# --- the core ---------------------------------------------------------------------------------------

def server_protocol(max_size: int = MAX_MESSAGE) -> WebSocketProtocol:
    from ws4redis.deflate import Deflation

    params, header = negotiate(OFFER, ON)
    return WebSocketProtocol(max_message_size=max_size, deflation=Deflation(params, ON, max_size, header))


def test_compressed_messages_are_inflated_whole_and_fragmented():
    protocol = server_protocol()
    text = json.dumps({"greeting": "grüße " * 200}).encode()
    compressed = deflate(text)
    events = protocol.receive_data(masked(constants.OP_TEXT, compressed, rsv1=True))
    assert events == [Message(text, False)]
    # Fragments: RSV1 on the first only; inflated as they come.
    third = len(compressed) // 3
    wire = (masked(constants.OP_BINARY, compressed[:third], fin=False, rsv1=True)
            + masked(constants.OP_PING, b"in between")
            + masked(constants.OP_CONTINUATION, compressed[third:2 * third], fin=False)
            + masked(constants.OP_CONTINUATION, compressed[2 * third:]))
    events = protocol.receive_data(wire)
    assert [event for event in events if isinstance(event, Message)] == [Message(text, True)]
    # An uncompressed message may follow a compressed one.
    assert protocol.receive_data(masked(constants.OP_TEXT, b"plain")) == [Message(b"plain", False)]


@pytest.mark.parametrize(("frame", "code"), [
    (masked(constants.OP_TEXT, deflate(b"\xff\xfe not utf-8"), rsv1=True), constants.CLOSE_INVALID_PAYLOAD),
    (masked(constants.OP_TEXT, b"\xff\xff\xff\xff garbage", rsv1=True), constants.CLOSE_PROTOCOL_ERROR),
    (masked(constants.OP_PING, b"", rsv1=True), constants.CLOSE_PROTOCOL_ERROR),
    (masked(constants.OP_TEXT, b"x", rsv2=True), constants.CLOSE_PROTOCOL_ERROR),
])
def test_bad_compressed_input_fails_with_the_right_code(frame, code):
    protocol = server_protocol()
    events = protocol.receive_data(frame)
    assert isinstance(events[-1], ProtocolViolation) and protocol.close_code == code
    assert protocol.data_to_send().startswith(bytes([0x88]))


def test_rsv1_is_refused_when_nothing_was_negotiated():
    protocol = WebSocketProtocol()
    events = protocol.receive_data(masked(constants.OP_TEXT, deflate(b"hello"), rsv1=True))
    assert isinstance(events[-1], ProtocolViolation) and protocol.close_code == constants.CLOSE_PROTOCOL_ERROR


def test_a_continuation_with_rsv1_is_refused():
    parser = FrameParser(allow_compressed=True)
    parser.feed(masked(constants.OP_TEXT, b"a", fin=False, rsv1=True))
    with pytest.raises(ProtocolError):
        parser.feed(masked(constants.OP_CONTINUATION, b"b", rsv1=True))


def test_the_inflater_never_produces_more_than_its_cap():
    """1 GiB of zeros in about a megabyte: refused after the cap, with at most the cap in memory."""
    import tracemalloc

    data = bomb()
    assert len(data) < MAX_MESSAGE
    inflater = Inflater(DeflateParams(), max_size=1 << 20)
    inflater.begin()
    tracemalloc.start()
    try:
        with pytest.raises(MessageTooBigError):
            inflater.feed(data, final=True)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < (1 << 20) + len(data) + (4 << 20), peak


def test_outgoing_messages_are_compressed_above_the_threshold_only():
    protocol = server_protocol()
    protocol.send_message("x" * 10)
    protocol.send_message("y" * 1000)
    parser = FrameParser(require_mask=False, allow_compressed=True)
    small, big = parser.feed(protocol.data_to_send())
    assert (small.rsv1, small.payload) == (False, b"x" * 10)
    assert big.rsv1 and inflate(big.payload) == b"y" * 1000 and len(big.payload) < 100


# --- real servers --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    made = Site(redis_server.url, {"WS4REDIS_COMPRESSION": repr({"threshold": THRESHOLD}),
                                   "WS4REDIS_MAX_MESSAGE_SIZE": repr(MAX_MESSAGE)})
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def running(site) -> Iterator[servers.ServerPool]:
    started = servers.ServerPool({"compression": site})
    yield started
    started.stop_all()


def server_of(running, kind: str) -> servers.ServerProcess:
    return running.get(kind, "compression")


class RawListener:
    """A raw socket that negotiated (or not) and reads the server's frames as they are on the wire."""

    def __init__(self, server, path: str, offer: str | None = OFFER) -> None:
        headers = {"Sec-WebSocket-Extensions": offer} if offer else {}
        self.sock, self.head, rest = raw_upgrade_head(server, path, headers=headers)
        self.parser = FrameParser(require_mask=False, allow_compressed=True, max_message_size=1 << 24)
        self.frames = list(self.parser.feed(rest)) if rest else []

    @property
    def extensions(self) -> str | None:
        for line in self.head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "sec-websocket-extensions":
                return value.strip()
        return None

    def read(self, count: int) -> list:
        while len(self.frames) < count:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError(f"closed after {len(self.frames)} frames")
            self.frames.extend(self.parser.feed(chunk))
        taken, self.frames = self.frames[:count], self.frames[count:]
        return taken

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("kind", KINDS)
def test_the_websockets_client_negotiates_and_exchanges_compressed_messages(running, kind):
    from websockets.sync.client import connect

    server = server_of(running, kind)
    url = server.url(f"/ws/zip-{uuid.uuid4().hex[:6]}?subscribe-broadcast&publish-broadcast&echo")
    with connect(url, compression="deflate", proxy=None, open_timeout=20) as talker, \
            connect(url, compression="deflate", proxy=None, open_timeout=20) as listener:
        negotiated = talker.response.headers["Sec-WebSocket-Extensions"]
        assert negotiated.startswith("permessage-deflate; server_no_context_takeover"), negotiated
        message = json.dumps({"rows": [{"id": index, "name": f"row {index}"} for index in range(200)]})
        talker.send(message)  # the websockets client compresses it
        assert listener.recv(timeout=10) == message
        assert talker.recv(timeout=10) == message
        # Redis carries bytes only: a payload that is not UTF-8 goes out as a binary frame.
        talker.send(b"\xff\x01binary" * 100)
        assert listener.recv(timeout=10) == b"\xff\x01binary" * 100
    assert not server.tracebacks()


@pytest.mark.parametrize("kind", HUB_KINDS)
def test_a_published_message_is_compressed_once_for_every_socket(running, kind):
    server = server_of(running, kind)
    facility = f"once-{uuid.uuid4().hex[:6]}"
    path = f"/ws/{facility}?subscribe-broadcast"
    compressed = [RawListener(server, path) for _ in range(3)]
    plain = RawListener(server, path, offer=None)
    try:
        assert all(listener.extensions.startswith("permessage-deflate") for listener in compressed)
        assert plain.extensions is None
        message = json.dumps([{"user": f"user{index}", "text": "hello, world"} for index in range(40)])
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage(message))
        RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("short"))
        frames = [listener.read(2) for listener in compressed]
        big = {bytes(frame.payload) for frame, _ in frames}
        assert len(big) == 1, "every socket got the same compressed bytes"
        assert all(frame.rsv1 and frame.opcode == constants.OP_TEXT for frame, _ in frames)
        (payload,) = big
        assert inflate(payload) == message.encode() and len(payload) < 0.4 * len(message)
        assert all((small.rsv1, small.payload) == (False, b"short") for _, small in frames)
        plain_big, plain_small = plain.read(2)
        assert (plain_big.rsv1, plain_big.payload, plain_small.payload) == (False, message.encode(), b"short")
    finally:
        for listener in (*compressed, plain):
            listener.close()


@pytest.mark.parametrize("kind", KINDS)
def test_a_decompression_bomb_closes_with_1009_and_memory_stays_put(running, kind):
    server = server_of(running, kind)
    pids = servers.process_tree(server)
    before = servers.rss_kib(pids)
    listener = RawListener(server, f"/ws/bomb-{uuid.uuid4().hex[:6]}?publish-broadcast")
    try:
        listener.sock.sendall(masked(constants.OP_TEXT, bomb(), rsv1=True))
        events = servers.read_until_closed(listener.sock)
    finally:
        listener.close()
    closes = [event for event in events if type(event).__name__ == "CloseReceived"]
    assert closes and closes[0].code == constants.CLOSE_MESSAGE_TOO_BIG, events
    grown = servers.rss_kib(pids) - before
    # The cap is 2 MiB of output; 1 GiB would have been inflated without it.
    assert grown < 64 * 1024, f"{kind} grew by {grown} KiB"
    assert not server.tracebacks()


@pytest.mark.parametrize("kind", KINDS)
def test_corrupt_compressed_data_closes_with_1002(running, kind):
    server = server_of(running, kind)
    listener = RawListener(server, f"/ws/corrupt-{uuid.uuid4().hex[:6]}?publish-broadcast")
    try:
        listener.sock.sendall(masked(constants.OP_TEXT, b"\xff\xff\xff\xff not deflate", rsv1=True))
        events = servers.read_until_closed(listener.sock)
    finally:
        listener.close()
    closes = [event for event in events if type(event).__name__ == "CloseReceived"]
    assert closes and closes[0].code == constants.CLOSE_PROTOCOL_ERROR, events
    assert not server.tracebacks()


@pytest.mark.browser
@pytest.mark.parametrize("kind", KINDS)
def test_chromium_negotiates_compression_and_exchanges_messages(running, kind):
    from tests.chromium import WAIT, browser_driver

    server = server_of(running, kind)
    facility = f"chromium-{uuid.uuid4().hex[:6]}"
    with browser_driver() as driver:
        # A page of the same origin as the websockets (Chromium's local network checks).
        driver.get(f"http://127.0.0.1:{server.port}/")
        result = driver.execute_async_script(
            """
            var done = arguments[arguments.length - 1], big = 'chromium '.repeat(300);
            var ws = new WebSocket(arguments[0]);
            ws.onopen = function () { ws.send(big); };
            ws.onmessage = function (event) { done([ws.extensions, event.data === big]); ws.close(); };
            ws.onerror = function () { done(['error', false]); };
            """,
            f"ws://127.0.0.1:{server.port}/ws/{facility}?subscribe-broadcast&publish-broadcast&echo",
        )
    assert result[0].startswith("permessage-deflate") and "server_no_context_takeover" in result[0], result
    assert result[1] is True, f"Chromium did not get its message back within {WAIT} s: {result}"


@pytest.mark.parametrize("kind", KINDS)
def test_websockets_compressing_at_the_same_time_each_get_their_own_messages(running, kind):
    """The development server runs a thread per websocket: a compressor shared between threads
    would interleave two messages' deflate calls and send each client a mix of both."""
    from websockets.sync.client import connect

    server = server_of(running, kind)
    failures = []

    def talk(index: int) -> None:
        url = server.url(f"/ws/own-{index}-{uuid.uuid4().hex[:6]}?subscribe-broadcast&publish-broadcast&echo")
        with connect(url, compression="deflate", proxy=None, open_timeout=20, max_size=None) as client:
            for round_ in range(8):
                message = json.dumps([{"client": index, "round": round_, "row": row} for row in range(6000)])
                client.send(message)
                echoed = client.recv(timeout=20)
                if echoed != message:
                    failures.append((index, round_, len(echoed), len(message)))

    threads = [threading.Thread(target=talk, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert not server.tracebacks()
