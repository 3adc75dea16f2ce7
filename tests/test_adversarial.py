"""The adversarial suite: ws4redis attacked as an attacker would, on the gevent server and uWSGI.

Each attack is bounded (a few seconds) and runs against a real server subprocess; the server
must answer with the documented code, stay small and alive, and keep serving everybody else.
Where an attack is tested elsewhere (because it needs a server set up its own way), this list
says where; ``test_every_attack_of_the_list_has_its_test`` keeps the list true.

- stalled and trickled request heads, first and on a kept-alive connection: here
- header floods (431/414) and a 2^63 frame length, a fragment flood, an oversized message: here
- malformed frames (1002/1007) and garbage connections: here
- a slow consumer (1008) that holds back nobody else: here
- a peer that floods pings or heartbeats and never reads: tests/test_floods.py
- a peer that never answers pings (1011): here (gevent, runserver) and tests/test_uwsgi.py
- Redis killed and restarted, delivery after: here, and
  tests/test_servers.py (the hub back within 250 ms, nothing lost after)
- Redis dropping the hub for its output buffer limit: tests/test_servers.py
- SIGTERM closes every websocket with 1001: tests/test_shutdown.py, tests/test_going_away.py
- connect/close churn, with descriptors, memory and subscriptions before and after: here
- Redis' reply to a publish lost with its connection (published once, never twice; 1013): here

uWSGI is started with 0.6.0's command line (its HTTP router in front). It reads request heads
itself, in the router, which is event-driven: a stalled head costs the router a descriptor and
never a worker's async core, and uWSGI's own timeouts (``--http-timeout``) end it.
"""

from __future__ import annotations

import re
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed

from tests import servers
from tests.polling import wait_until
from tests.servers import (
    STARTERS,
    ServerProcess,
    Site,
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
HANDSHAKE_TIMEOUT = 2.0
UWSGI_CORES = 40  # fewer than the stalled heads below: they must not take a core each
STALLED_HEADS = 100


UPGRADE_HEADERS = {
    "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": RFC_KEY,
}


def upgrade_request(path: str, extra: str = "") -> bytes:
    lines = "".join(f"{name}: {value}\r\n" for name, value in UPGRADE_HEADERS.items())
    return f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{lines}{extra}\r\n".encode("latin-1")


def refused_upgrade(server: ServerProcess) -> int:
    """The status of a fresh upgrade request (101 when it is accepted); only the status line is read."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(upgrade_request("/ws/outage?subscribe-broadcast"))
        answer = b""
        while b"\r\n" not in answer:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
    return int(answer.split()[1])


def answer_to(server: ServerProcess, request: bytes) -> bytes:
    """Everything the server answers to ``request`` until it closes (a reset ends it too)."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        try:
            sock.sendall(request)
        except (BrokenPipeError, ConnectionResetError):  # refused before it was all sent
            return b""
        answer = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer
            if not chunk:
                return answer
            answer += chunk


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
        "WS4REDIS_HANDSHAKE_TIMEOUT": str(HANDSHAKE_TIMEOUT),
    })
    yield site
    site.cleanup()


SERVERS: dict[str, Callable[[Site], ServerProcess]] = {
    "gevent": servers.gevent_server,
    "uwsgi": lambda site: servers.uwsgi(site, gevent=UWSGI_CORES, module="tests.project.wsgi"),
}


@pytest.fixture(scope="module", params=[
    "gevent", pytest.param("uwsgi", marks=pytest.mark.uwsgi)])
def server(request, site) -> Iterator[ServerProcess]:
    with serving(SERVERS[request.param](site)) as server:
        yield server


@pytest.fixture
def clean_server(server, redis_client) -> Iterator[ServerProcess]:
    mark = server.mark()
    yield server
    assert server.alive(), server.output()[-4000:]
    assert not server.tracebacks(mark), server.output_since(mark)


@pytest.fixture
def facility(server, request) -> str:
    """A facility of this test on this server: persisted messages of one never greet another."""
    return f"{request.node.originalname.removeprefix('test_')[:40]}-{server.name}"


# --- slow consumers ------------------------------------------------------------------------------


def test_a_client_that_never_reads_is_closed_with_1008_and_the_server_stays_small(clean_server, facility):
    sock, rest = raw_upgrade(clean_server, f"/ws/{facility}?subscribe-broadcast", receive_buffer=4096)
    mark = clean_server.mark()
    pids = servers.process_tree(clean_server)
    before = servers.rss_kib(pids)
    payload = "x" * 4000
    publisher = RedisPublisher(facility=facility, broadcast=True)
    pipe = publisher._connection.pipeline(transaction=False)
    for i in range(10_000):  # 40 MB for a client that reads nothing
        pipe.publish(f"broadcast:{facility}", f"{i:05d}{payload}")
        if i % 1000 == 999:
            pipe.execute()
    growth = servers.rss_kib(pids) - before
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


def test_a_slow_client_does_not_hold_back_the_others(clean_server, facility):
    """Batches of 500 KB until the server gives up on the client that never reads (its log says so).

    How much the kernel buffers before the server's queue fills varies from run to run, and
    behind uWSGI's HTTP router (a second hop, whose receive buffer may grow to tcp_rmem's
    maximum) it can be many megabytes: the test publishes until the slow client fell behind,
    up to 60 MB, rather than a fixed amount.
    """
    mark = clean_server.mark()
    slow, _rest = raw_upgrade(clean_server, f"/ws/{facility}?subscribe-broadcast", receive_buffer=4096)
    batch, most = QUEUE_MESSAGES // 2, 120
    with ws(clean_server, f"/ws/{facility}?subscribe-broadcast", max_queue=None) as fast, slow:
        publisher = RedisPublisher(facility=facility, broadcast=True)
        received = []
        sent = 0
        while sent < batch * most and "fell" not in clean_server.output_since(mark):
            pipe = publisher._connection.pipeline(transaction=False)
            for i in range(sent, sent + batch):
                pipe.publish(f"broadcast:{facility}", f"message {i} " + "y" * 2000)
            pipe.execute()
            sent += batch
            # The fast client keeps up; the slow one falls further behind with every batch.
            received += [fast.recv(timeout=20) for _ in range(batch)]
        assert "fell" in clean_server.output_since(mark), f"still queued for after {sent} messages"
        assert [int(text.split()[1]) for text in received] == list(range(sent))
        closes = close_events(read_until_closed(slow))
    assert [close.code for close in closes] == [constants.CLOSE_POLICY_VIOLATION]


# --- request heads -------------------------------------------------------------------------------


class Trickler:
    """Sends one more byte of a never-ending header on every socket, every half second."""

    def __init__(self, sockets: list[socket.socket]) -> None:
        self.sockets = sockets
        self.answers: dict[int, bytes] = {}
        self.answered_after: dict[int, float] = {}
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Trickler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for sock in self.sockets:
            sock.close()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for index, sock in enumerate(self.sockets):
                if index in self.answers:
                    continue
                try:
                    readable, _, _ = select.select([sock], [], [], 0)
                    if readable:
                        self.answers[index] = sock.recv(4096) or b"<closed>"
                        self.answered_after[index] = time.monotonic() - self.started
                    else:
                        sock.send(b"y")
                except OSError as exc:
                    self.answers[index] = repr(exc).encode()
                    self.answered_after[index] = time.monotonic() - self.started


def whole_response(sock: socket.socket) -> bytes:
    """One response read to the end of its body (``Content-Length`` says where)."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096) or pytest.fail(f"closed before the response head ended: {data!r}")
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    while len(body) < length:
        body += sock.recv(4096) or pytest.fail(f"closed before the response body ended: {data!r}")
    return head


def stalled_heads(server: ServerProcess, count: int, first: bytes = b"") -> list[socket.socket]:
    """``count`` connections that began a request head (after ``first``, a whole request) and never end it."""
    sockets = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        if first:
            sock.sendall(first)
            assert whole_response(sock).startswith(b"HTTP/1.1 200")
        try:
            sock.sendall(b"GET /ws/slow?subscribe-broadcast HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: y")
        except OSError:
            pass  # closed after the first answer (uWSGI's router): nothing to hold, nothing held
        sockets.append(sock)
    return sockets


@pytest.mark.parametrize("kept_alive", [False, True], ids=["first-head", "kept-alive-head"])
def test_trickled_request_heads_hold_no_worker_and_end_at_the_handshake_timeout(
        clean_server, facility, kept_alive):
    # A whole request first: the next head arrives on a kept-alive connection (gevent) or on one
    # the router closes right after its answer (uWSGI's router keeps nothing alive by default).
    first = b"GET /ping HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" if kept_alive else b""
    with Trickler(stalled_heads(clean_server, STALLED_HEADS, first)) as trickler:
        time.sleep(1.0)  # every one of them is in, trickling, before the real client comes
        with ws(clean_server, f"/ws/{facility}?subscribe-broadcast", open_timeout=10) as client:
            RedisPublisher(facility=facility, broadcast=True).publish_message("served meanwhile")
            assert client.recv(timeout=10) == "served meanwhile"
        if clean_server.name == "gevent":
            wait_until(lambda: len(trickler.answers) == STALLED_HEADS, limit=HANDSHAKE_TIMEOUT + 10,
                       what="an answer to every trickled head")
            statuses = {answer[:12] for answer in trickler.answers.values()}
            assert statuses == {b"HTTP/1.1 408"}, statuses
            slowest = max(trickler.answered_after.values())
            print(f"{STALLED_HEADS} trickled heads: every one answered 408, the last after {slowest:.1f} s")
            assert slowest < HANDSHAKE_TIMEOUT + 6, f"a trickled head was held {slowest:.1f} s"


@pytest.mark.parametrize("head", [
    pytest.param(upgrade_request("/ws/x?subscribe-broadcast", "X-Big: " + "a" * 100_000 + "\r\n"),
                 id="huge-header"),
    pytest.param(upgrade_request("/ws/x?subscribe-broadcast", "".join(f"X-{i}: v\r\n" for i in range(1000))),
                 id="many-headers"),
    pytest.param(upgrade_request("/ws/x?subscribe-broadcast&" + "a" * 70_000), id="long-uri"),
])
def test_header_floods_are_refused_and_the_server_goes_on(clean_server, facility, head):
    answer = answer_to(clean_server, head)
    assert not answer.startswith(b"HTTP/1.1 101"), answer[:200]
    if clean_server.name == "gevent":  # uWSGI closes such a connection without an answer
        expected = b"HTTP/1.1 414" if b"&aaaa" in head else b"HTTP/1.1 431"
        assert answer.startswith(expected), answer[:200]
    with ws(clean_server, f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as client:
        client.send("still serving")
        assert client.recv(timeout=10) == "still serving"


# --- limits on what clients send -----------------------------------------------------------------


def test_a_message_over_the_size_limit_is_refused_with_1009(clean_server, facility):
    sock, rest = raw_upgrade(clean_server, f"/ws/{facility}?publish-broadcast&subscribe-broadcast&echo")
    with sock:
        sock.sendall(client_frame(constants.OP_TEXT, b"a" * MAX_MESSAGE))
        assert read_frames(sock, 1) == [Message(b"a" * MAX_MESSAGE, False)]
        sock.sendall(client_frame(constants.OP_TEXT, b"b" * (MAX_MESSAGE + 1)))
        closes = close_events(read_until_closed(sock, rest))
    assert [close.code for close in closes] == [constants.CLOSE_MESSAGE_TOO_BIG]


def test_a_frame_announcing_2_63_bytes_is_refused_with_1009_at_once(clean_server, facility):
    sock, rest = raw_upgrade(clean_server, f"/ws/{facility}?publish-broadcast", timeout=10)
    with sock:
        # FIN + text, masked, 64-bit length 2^63 - 1, a mask key, and not one byte of payload.
        sock.sendall(bytes([0x81, 0xFF]) + struct.pack("!Q", (1 << 63) - 1) + b"mask")
        closes = close_events(read_until_closed(sock, rest))  # a TimeoutError fails the test
    assert [close.code for close in closes] == [constants.CLOSE_MESSAGE_TOO_BIG]


def test_a_fragment_flood_is_refused_with_1009(clean_server, facility):
    sock, rest = raw_upgrade(clean_server, f"/ws/{facility}?publish-broadcast")
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
def test_malformed_frames_close_with_the_right_code(clean_server, redis_client, facility, frame, code):
    sock, rest = raw_upgrade(clean_server, f"/ws/{facility}?publish-broadcast")
    with sock:
        sock.sendall(frame)
        closes = close_events(read_until_closed(sock, rest))
    assert [close.code for close in closes] == [code]
    assert redis_client.get(f"broadcast:{facility}") is None  # nothing of it was published


def test_garbage_connections_do_not_hurt_the_server(clean_server, facility):
    for junk in (b"\x00" * 100, b"GET / HTTP/1.1\r\n" + b"\xff" * 50 + b"\r\n\r\n", b"\r\n" * 10, b""):
        with socket.create_connection(("127.0.0.1", clean_server.port), timeout=10) as sock:
            sock.sendall(junk)
            sock.shutdown(socket.SHUT_WR)
            try:
                while sock.recv(4096):
                    pass
            except ConnectionResetError:
                pass  # uWSGI's router resets what it cannot parse
    with ws(clean_server, f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as client:
        client.send("still here")
        assert client.recv(timeout=10) == "still here"


# --- churn ---------------------------------------------------------------------------------------


CHURN = 1500  # about 3 s on either server


def test_connect_close_churn_leaves_no_descriptor_memory_or_subscription_behind(
        clean_server, redis_client, facility):
    channels = [f"broadcast:{facility}-{n}" for n in range(20)]

    def churn(rounds: int) -> None:
        for n in range(rounds):
            path = f"/ws/{facility}-{n % 20}?subscribe-broadcast"
            sock, _rest = raw_upgrade(clean_server, path, timeout=10)
            with sock:
                if n % 2:  # half say goodbye, half vanish
                    sock.sendall(client_frame(constants.OP_CLOSE, struct.pack("!H", constants.CLOSE_NORMAL)))

    def settled(pids: set[int]) -> tuple[int, int]:
        assert not any(servers.wait_unsubscribed(redis_client, channels).values())
        time.sleep(0.5)
        return servers.open_fds(pids), servers.rss_kib(pids)

    pids = servers.process_tree(clean_server)
    churn(CHURN)  # warm up: pools, caches and the allocator reach their working size
    fds_before, rss_before = settled(pids)
    started = time.monotonic()
    churn(CHURN)
    took = time.monotonic() - started
    fds_after, rss_after = settled(pids)
    print(f"{clean_server.name}: {CHURN} cycles in {took:.1f} s; fds {fds_before} -> {fds_after}, "
          f"RSS {rss_before} -> {rss_after} KiB")
    assert fds_after <= fds_before + 2, (fds_before, fds_after)
    # A leak of 4 KiB per connection would be 6 MiB; once warm, 5,000 cycles grew uWSGI by 72 KiB.
    assert rss_after - rss_before < 4 * 1024, (rss_before, rss_after)


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


def test_the_heartbeat_of_060_is_answered_and_never_published(clean_server, facility):
    with ws(clean_server, f"/ws/{facility}?subscribe-broadcast&publish-broadcast") as beating, \
            ws(clean_server, f"/ws/{facility}?subscribe-broadcast") as listener:
        beating.send(HEARTBEAT)
        assert beating.recv(timeout=10) == HEARTBEAT
        RedisPublisher(facility=facility, broadcast=True).publish_message("after the heartbeat")
        assert listener.recv(timeout=10) == "after the heartbeat"
        # An idle server sends the heartbeat on its own, every LEGACY_HEARTBEAT_INTERVAL seconds.
        assert listener.recv(timeout=constants.LEGACY_HEARTBEAT_INTERVAL + 5) == HEARTBEAT


# --- Redis going away ----------------------------------------------------------------------------


def test_redis_restarting_mid_stream_keeps_clients_and_resumes_delivery(clean_server, redis_server,
                                                                        redis_client, facility):
    mark = clean_server.mark()
    publisher = RedisPublisher(facility=facility, broadcast=True)
    channel = f"broadcast:{facility}"
    with ws(clean_server, f"/ws/{facility}?subscribe-broadcast") as first, \
            ws(clean_server, f"/ws/{facility}?subscribe-broadcast") as second, \
            ws(clean_server, f"/ws/{facility}?publish-broadcast") as talker:
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
                clean_server.port, "GET", f"/ws/{facility}?subscribe-broadcast", UPGRADE_HEADERS)[2]
        finally:
            redis_server.start()
        wait_until(lambda: redis_client.pubsub_numsub(channel) == [(channel.encode(), 1)],
                   what="the hub subscribed again")
        # Re-sent after the reconnect: the message kept in Redis.
        assert [first.recv(timeout=10), second.recv(timeout=10)] == ["before the outage"] * 2
        publisher.publish_message("after the outage")
        assert [first.recv(timeout=10), second.recv(timeout=10)] == ["after the outage"] * 2
    log = clean_server.output_since(mark)
    assert "lost the Redis pub/sub connection" in log
    assert "restored after a" in log and "persisted messages re-sent" in log
    redis_client.delete(channel)
    redis_client.save()


def test_a_message_redis_refuses_to_keep_closes_its_sender_with_1011_and_spares_the_others(
        clean_server, redis_client, facility):
    mark = clean_server.mark()
    policy = redis_client.config_get("maxmemory-policy")["maxmemory-policy"]
    path = f"/ws/{facility}"
    with ws(clean_server, f"{path}?subscribe-broadcast") as listener, \
            ws(clean_server, f"{path}?publish-broadcast") as sender, \
            ws(clean_server, f"{path}?publish-broadcast") as bystander:
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
        assert redis_client.get(f"broadcast:{facility}") is None
        bystander.send("kept")
        assert listener.recv(timeout=10) == "kept"
    assert redis_client.get(f"broadcast:{facility}") == b"kept"
    assert "publishing the message of" in clean_server.output_since(mark)


# --- the list above ------------------------------------------------------------------------------


def test_every_attack_of_the_list_has_its_test():
    """Each file the module docstring sends an attack to exists and still holds such a test."""
    expected = {
        "tests/test_floods.py": "test_a_peer_that_floods_and_never_reads_is_held_back_then_closed_with_1008",
        "tests/test_uwsgi.py": "1011",
        "tests/test_servers.py": "test_when_redis_drops_the_hub_for_its_output_buffer_limit",
        "tests/test_shutdown.py": "test_sigterm_closes_every_client_with_1001",
        "tests/test_going_away.py": "closes_every_websocket_with_1001",
    }
    root = Path(__file__).resolve().parent.parent
    named = set(re.findall(r"tests/test_\w+\.py", __doc__))
    assert named == set(expected)
    for path, test in expected.items():
        assert test in (root / path).read_text(), f"{path} no longer holds {test}"


# --- a reply lost after Redis published --------------------------------------------------------


@pytest.mark.parametrize("kind", [pytest.param("gevent"), pytest.param("uwsgi", marks=pytest.mark.uwsgi)])
def test_a_publish_whose_reply_is_lost_is_published_once_and_its_sender_told(redis_server, kind):
    """The connection breaks after Redis published the batch: no retry, no duplicate, 1013 for the sender."""
    import redis as redis_py

    from tests.cutting_proxy import CuttingProxy

    with CuttingProxy(redis_server.port) as proxy:
        connection = {"host": "127.0.0.1", "port": proxy.port, "db": 0}
        site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(connection)})
        watcher = redis_py.Redis(host=redis_server.host, port=redis_server.port).pubsub()
        watcher.subscribe("broadcast:once")
        assert watcher.get_message(timeout=5)["type"] == "subscribe"
        try:
            with serving(SERVERS[kind](site)) as server, \
                    ws(server, "/ws/once?publish-broadcast") as sender:
                proxy.arm()
                sender.send("exactly once")
                with pytest.raises(ConnectionClosed) as closed:
                    sender.recv(timeout=10)
                assert closed.value.rcvd.code == constants.CLOSE_TRY_AGAIN_LATER
                assert proxy.cuts == 1
                published = []
                deadline = time.monotonic() + 2.0
                while time.monotonic() < deadline:
                    message = watcher.get_message(timeout=0.2)
                    if message is not None and message["type"] == "message":
                        published.append(message["data"])
                assert published == [b"exactly once"]
        finally:
            watcher.close()
            site.cleanup()
