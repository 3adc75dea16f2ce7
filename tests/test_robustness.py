"""The gevent server under hostile or unlucky conditions, as a real subprocess.

Slow consumers are closed with 1008 instead of growing the server; oversized
messages and fragment floods get 1009, broken frames 1002/1007; silent peers
are pinged and dropped with 1011; Redis may go away and come back while
clients stay connected; the 0.6.0 text heartbeat keeps working.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed

from tests.polling import wait_until
from tests.servers import (
    STARTERS,
    ServerProcess,
    Site,
    gevent_server,
    http_request,
    raw_upgrade,
    read_frames,
    read_until_closed,
    serving,
)
from tests.servers import ws_connect as ws
from tests.wire import RFC_KEY, client_frame
from ws4redis import constants
from ws4redis.protocol import CloseReceived, Message, Ping
from ws4redis.publisher import RedisPublisher

HEARTBEAT = "--heartbeat--"
QUEUE_BYTES = 256 * 1024
QUEUE_MESSAGES = 500
MAX_MESSAGE = 1024
MAX_FRAGMENTS = 8


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


UPGRADE_HEADERS = {
    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": RFC_KEY,
}


def refused_upgrade(server: ServerProcess) -> int:
    """The status of a fresh upgrade request (101 when it is accepted); only the status line is read."""
    lines = [f"{name}: {value}" for name, value in UPGRADE_HEADERS.items()]
    request = "\r\n".join(["GET /ws/outage?subscribe-broadcast HTTP/1.1", "Host: 127.0.0.1", *lines, "", ""])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(request.encode())
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1])


def close_events(events: list) -> list[CloseReceived]:
    return [event for event in events if isinstance(event, CloseReceived)]


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    site = Site(redis_server.url, {
        "WS4REDIS_SEND_QUEUE_BYTES": str(QUEUE_BYTES),
        "WS4REDIS_SEND_QUEUE_MESSAGES": str(QUEUE_MESSAGES),
        "WS4REDIS_MAX_MESSAGE_SIZE": str(MAX_MESSAGE),
        "WS4REDIS_MAX_FRAGMENTS": str(MAX_FRAGMENTS),
        "WS4REDIS_HEARTBEAT": repr(HEARTBEAT),
    })
    yield site
    site.cleanup()


@pytest.fixture(scope="module")
def server(site) -> Iterator[ServerProcess]:
    with serving(gevent_server(site)) as server:
        yield server


@pytest.fixture
def clean_server(server, redis_client) -> Iterator[ServerProcess]:
    mark = server.mark()
    yield server
    assert server.alive(), server.output()[-4000:]
    assert not server.tracebacks(mark), server.output_since(mark)


# --- slow consumers ------------------------------------------------------------------------------


def test_a_client_that_never_reads_is_closed_with_1008_and_the_server_stays_small(clean_server):
    sock, rest = raw_upgrade(clean_server, "/ws/firehose?subscribe-broadcast", receive_buffer=4096)
    mark = clean_server.mark()
    before = rss_kib(clean_server.process.pid)
    payload = "x" * 4000
    publisher = RedisPublisher(facility="firehose", broadcast=True)
    pipe = publisher._connection.pipeline(transaction=False)
    for i in range(10_000):  # 40 MB for a client that reads nothing
        pipe.publish("broadcast:firehose", f"{i:05d}{payload}")
        if i % 1000 == 999:
            pipe.execute()
    growth = rss_kib(clean_server.process.pid) - before
    with sock:
        events = read_until_closed(sock, rest)
    closes = close_events(events)
    assert closes and closes[0].code == constants.CLOSE_POLICY_VIOLATION, events[-3:]
    assert "too slow" in closes[0].reason
    messages = [event for event in events if isinstance(event, Message)]
    # Whole messages only, in order, and never more than the queue plus the kernel's buffers.
    assert [int(m.data[:5]) for m in messages] == list(range(len(messages)))
    assert len(messages) < 10_000
    assert growth < 20 * 1024, f"the server grew by {growth} KiB"
    wait_until(lambda: "fell" in clean_server.output_since(mark), what="the slow-consumer log line")
    assert "WS4REDIS_SEND_QUEUE" in clean_server.output_since(mark)


def test_a_slow_client_does_not_hold_back_the_others(clean_server):
    slow, _rest = raw_upgrade(clean_server, "/ws/shared?subscribe-broadcast", receive_buffer=4096)
    batch, batches = QUEUE_MESSAGES // 2, 20
    with ws(clean_server, "/ws/shared?subscribe-broadcast", max_queue=None) as fast, slow:
        publisher = RedisPublisher(facility="shared", broadcast=True)
        received = []
        for start in range(0, batch * batches, batch):
            pipe = publisher._connection.pipeline(transaction=False)
            for i in range(start, start + batch):
                pipe.publish("broadcast:shared", f"message {i} " + "y" * 2000)  # 10 MB in all
            pipe.execute()
            # The fast client keeps up; the slow one falls further behind with every batch.
            received += [fast.recv(timeout=20) for _ in range(batch)]
        assert [int(text.split()[1]) for text in received] == list(range(batch * batches))
        closes = close_events(read_until_closed(slow))
    assert [close.code for close in closes] == [constants.CLOSE_POLICY_VIOLATION]


# --- limits on what clients send -----------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_with_1009(clean_server):
    sock, rest = raw_upgrade(clean_server, "/ws/limits?publish-broadcast&subscribe-broadcast&echo")
    with sock:
        sock.sendall(client_frame(constants.OP_TEXT, b"a" * MAX_MESSAGE))
        assert read_frames(sock, 1) == [Message(b"a" * MAX_MESSAGE, False)]
        sock.sendall(client_frame(constants.OP_TEXT, b"b" * (MAX_MESSAGE + 1)))
        closes = close_events(read_until_closed(sock, rest))
    assert [close.code for close in closes] == [constants.CLOSE_MESSAGE_TOO_BIG]


def test_a_fragment_flood_is_refused_with_1009(clean_server):
    sock, rest = raw_upgrade(clean_server, "/ws/limits?publish-broadcast")
    with sock:
        frames = [client_frame(constants.OP_TEXT, b"f", fin=False)]
        flood = 10 * MAX_FRAGMENTS
        frames += [client_frame(constants.OP_CONTINUATION, b"f", fin=False) for _ in range(flood)]
        sock.sendall(b"".join(frames))
        closes = close_events(read_until_closed(sock, rest))
    assert [close.code for close in closes] == [constants.CLOSE_MESSAGE_TOO_BIG]


@pytest.mark.parametrize(("frame", "code"), [
    (bytes([0x81, 0x03]) + b"abc", constants.CLOSE_PROTOCOL_ERROR),  # not masked
    (client_frame(0x3, b"reserved opcode"), constants.CLOSE_PROTOCOL_ERROR),
    (client_frame(constants.OP_TEXT, b"\xff\xfe not utf-8"), constants.CLOSE_INVALID_PAYLOAD),
    (client_frame(constants.OP_PING, b"p" * 126), constants.CLOSE_PROTOCOL_ERROR),
])
def test_malformed_frames_close_with_the_right_code(clean_server, redis_client, frame, code):
    sock, rest = raw_upgrade(clean_server, "/ws/junk?publish-broadcast")
    with sock:
        sock.sendall(frame)
        closes = close_events(read_until_closed(sock, rest))
    assert [close.code for close in closes] == [code]
    assert redis_client.get("broadcast:junk") is None  # nothing of it was published


def test_garbage_connections_do_not_hurt_the_server(clean_server):
    for junk in (b"\x00" * 100, b"GET / HTTP/1.1\r\n" + b"\xff" * 50 + b"\r\n\r\n", b"\r\n" * 10, b""):
        with socket.create_connection(("127.0.0.1", clean_server.port), timeout=10) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            while sock.recv(4096):
                pass
    with ws(clean_server, "/ws/after?subscribe-broadcast&publish-broadcast&echo") as client:
        client.send("still here")
        assert client.recv(timeout=10) == "still here"


# --- keepalive -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["gevent", "runserver"])  # uWSGI: tests/test_uwsgi.py
def test_a_peer_that_never_answers_pings_is_closed_with_1011(redis_server, kind):
    """Every server follows the keepalive of ws4redis.server.rules (the development server too)."""
    site = Site(redis_server.url, {"WS4REDIS_PING_INTERVAL": "0.3", "WS4REDIS_PING_TIMEOUT": "0.6"})
    facility = f"keepalive-{kind}"  # the message published below is kept: each run its own channel
    try:
        with serving(STARTERS[kind](site)) as server:
            sock, rest = raw_upgrade(server, f"/ws/{facility}?subscribe-broadcast")
            with sock:
                events = read_until_closed(sock, rest)
            assert any(isinstance(event, Ping) for event in events)
            assert [close.code for close in close_events(events)] == [constants.CLOSE_INTERNAL_ERROR]
            # A client answering pings (websockets does) stays open across many intervals.
            with ws(server, f"/ws/{facility}?subscribe-broadcast") as client:
                with pytest.raises(TimeoutError):
                    client.recv(timeout=2.0)
                RedisPublisher(facility=facility, broadcast=True).publish_message("still open")
                assert client.recv(timeout=10) == "still open"
    finally:
        site.cleanup()


def test_the_heartbeat_of_060_is_answered_and_never_published(clean_server):
    with ws(clean_server, "/ws/beat?subscribe-broadcast&publish-broadcast") as beating, \
            ws(clean_server, "/ws/beat?subscribe-broadcast") as listener:
        beating.send(HEARTBEAT)
        assert beating.recv(timeout=10) == HEARTBEAT
        RedisPublisher(facility="beat", broadcast=True).publish_message("after the heartbeat")
        assert listener.recv(timeout=10) == "after the heartbeat"
        # An idle server sends the heartbeat on its own, every LEGACY_HEARTBEAT_INTERVAL seconds.
        assert listener.recv(timeout=constants.LEGACY_HEARTBEAT_INTERVAL + 5) == HEARTBEAT


# --- Redis going away ----------------------------------------------------------------------------


def test_redis_restarting_mid_stream_keeps_clients_and_resumes_delivery(clean_server, redis_server,
                                                                        redis_client):
    mark = clean_server.mark()
    publisher = RedisPublisher(facility="outage", broadcast=True)
    with ws(clean_server, "/ws/outage?subscribe-broadcast") as first, \
            ws(clean_server, "/ws/outage?subscribe-broadcast") as second, \
            ws(clean_server, "/ws/outage?publish-broadcast") as talker:
        publisher.publish_message("before the outage")
        assert [first.recv(timeout=10), second.recv(timeout=10)] == ["before the outage"] * 2
        redis_client.save()  # the persisted message survives the restart
        redis_server.stop()
        try:
            talker.send("said while Redis is down")
            with pytest.raises(ConnectionClosed) as closed:
                talker.recv(timeout=10)
            assert closed.value.rcvd.code == constants.CLOSE_TRY_AGAIN_LATER
            # Open websockets wait; new ones are told to come back later.
            wait_until(lambda: refused_upgrade(clean_server) == 503, what="503 for new websockets")
            assert b"message broker is unreachable" in http_request(
                clean_server.port, "GET", "/ws/outage?subscribe-broadcast", UPGRADE_HEADERS)[2]
        finally:
            redis_server.start()
        wait_until(lambda: redis_client.pubsub_numsub("broadcast:outage") == [(b"broadcast:outage", 1)],
                   what="the hub subscribed again")
        # Re-sent after the reconnect: the message kept in Redis.
        assert [first.recv(timeout=10), second.recv(timeout=10)] == ["before the outage"] * 2
        publisher.publish_message("after the outage")
        assert [first.recv(timeout=10), second.recv(timeout=10)] == ["after the outage"] * 2
    log = clean_server.output_since(mark)
    assert "lost the Redis pub/sub connection" in log
    assert "restored after a" in log and "persisted messages re-sent" in log
    redis_client.flushall()
    redis_client.save()


def test_a_message_redis_refuses_to_keep_closes_its_sender_with_1011_and_spares_the_others(
        clean_server, redis_client):
    mark = clean_server.mark()
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    with ws(clean_server, "/ws/refused?subscribe-broadcast") as listener, \
            ws(clean_server, "/ws/refused?publish-broadcast") as sender, \
            ws(clean_server, "/ws/refused?publish-broadcast") as bystander:
        redis_client.config_set("maxmemory-policy", "noeviction")
        redis_client.config_set("maxmemory", 1)  # SET is refused ("OOM"), PUBLISH still goes through
        try:
            sender.send("not kept")
            with pytest.raises(ConnectionClosed) as closed:
                sender.recv(timeout=10)
            assert closed.value.rcvd.code == constants.CLOSE_INTERNAL_ERROR
        finally:
            redis_client.config_set("maxmemory", 0)
            redis_client.config_set("maxmemory-policy", policy)
        # SET EX and PUBLISH are pipelined without MULTI: delivered live, but not kept.
        assert listener.recv(timeout=10) == "not kept"
        assert redis_client.get("broadcast:refused") is None
        bystander.send("kept")
        assert listener.recv(timeout=10) == "kept"
    assert redis_client.get("broadcast:refused") == b"kept"
    assert "publishing the message of" in clean_server.output_since(mark)
