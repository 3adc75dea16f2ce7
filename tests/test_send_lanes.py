"""The fan-out's send lanes inside a real gevent server: what goes through them, and what must not.

``ws4redis_lane_deliveries`` says how many deliveries the lanes wrote; every test
checks both that a lane was (or was not) used and that the client got exactly
what it should, in order. The suite's two runs cover both twins (compiled lanes,
pure lanes).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest

from tests import servers
from tests.polling import wait_until
from tests.servers import Site, raw_upgrade, serving
from tests.servers import ws_connect as ws
from tests.test_monitoring import delta, scrape
from tests.wire import client_frame
from ws4redis import constants
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage
from ws4redis.speedups import FrameParser


def server_parser() -> FrameParser:
    return FrameParser(require_mask=False, max_message_size=1 << 24)


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    # A queue limit below the lanes' cork (LANE_CORK_FRAMES): a spill alone can overflow it.
    site = Site(redis_server.url, {"WS4REDIS_MONITORING": "True", "WS4REDIS_SEND_QUEUE_MESSAGES": "200"})
    yield site
    site.cleanup()


@pytest.fixture(scope="module")
def server(site) -> Iterator[servers.ServerProcess]:
    with serving(servers.gevent_server(site)) as server:
        yield server


def publish(facility: str, messages: list[str]) -> None:
    publisher = RedisPublisher(facility=facility, broadcast=True)
    for message in messages:
        publisher.publish_message(RedisMessage(message))


def test_a_broadcast_goes_out_through_the_lanes_in_order(server):
    subscribers, messages = 20, 50
    expected = [f"lane {n}" for n in range(messages)]
    before = scrape(server)
    with ExitStack() as stack:
        path = "/ws/laned?subscribe-broadcast"
        clients = [stack.enter_context(ws(server, path)) for _ in range(subscribers)]
        publish("laned", expected)
        for client in clients:
            assert [client.recv(timeout=10) for _ in range(messages)] == expected
    after = scrape(server)
    assert delta(before, after, "ws4redis_deliveries_total") == subscribers * messages
    assert delta(before, after, "ws4redis_lane_deliveries") == subscribers * messages


def test_pings_and_live_messages_never_overtake_each_other(server):
    """Each pong is the connection's own frame: it takes the socket back from the lane and returns
    it; the messages around it arrive complete and in order."""
    messages = 300
    expected = [f"mixed {n}" for n in range(messages)]
    before = scrape(server)
    sock, rest = raw_upgrade(server, "/ws/mixed?subscribe-broadcast")
    try:
        publisher = RedisPublisher(facility="mixed", broadcast=True)
        for n, message in enumerate(expected):
            publisher.publish_message(RedisMessage(message))
            if n % 10 == 0:
                sock.sendall(client_frame(constants.OP_PING, f"p{n}".encode()))
        texts, pongs = [], []
        parser = server_parser()
        chunk = rest
        deadline = time.monotonic() + 20
        while True:
            for frame in parser.feed(chunk):
                (texts if frame.opcode == constants.OP_TEXT else pongs).append(frame.payload.decode())
            if (len(texts) >= messages and len(pongs) >= messages // 10) or time.monotonic() > deadline:
                break
            chunk = sock.recv(65536)
            assert chunk, "the server closed"
        assert texts == expected
        assert pongs == [f"p{n}" for n in range(0, messages, 10)]
    finally:
        sock.close()
    after = scrape(server)
    assert 0 < delta(before, after, "ws4redis_lane_deliveries") <= messages


def test_own_messages_are_filtered_off_the_lane_and_the_lane_resumes_after(server):
    """Without ?echo a client's own message must not come back: while its copy is due every delivery
    goes through the echo filter, afterwards through the lane again."""
    path = "/ws/echoing?subscribe-broadcast&publish-broadcast"
    with ws(server, path) as talker, ws(server, path) as listener:
        publish("echoing", ["before"])
        assert talker.recv(timeout=10) == listener.recv(timeout=10) == "before"
        talker.send("mine")
        assert listener.recv(timeout=10) == "mine"
        publish("echoing", ["after 1"])
        assert talker.recv(timeout=10) == "after 1"  # not "mine"
        assert listener.recv(timeout=10) == "after 1"
        before = scrape(server)
        publish("echoing", ["after 2"])
        assert talker.recv(timeout=10) == listener.recv(timeout=10) == "after 2"
        # Both on their lanes again: the talker rejoined once its write queue ran empty.
        wait_until(lambda: delta(before, scrape(server), "ws4redis_lane_deliveries") == 2,
                   what="both deliveries written by the lanes")


def test_a_closed_websockets_lane_never_reaches_the_next_one_on_its_descriptor(server):
    """Lanes and descriptors are reused; a channel's audience built before must not reach the
    new socket. Many open-close rounds make reuse of both numbers certain."""
    for round_ in range(30):
        with ws(server, f"/ws/old{round_}?subscribe-broadcast") as old:
            publish(f"old{round_}", ["warm"])
            assert old.recv(timeout=10) == "warm"
        with ws(server, f"/ws/new{round_}?subscribe-broadcast") as new:
            publish(f"old{round_}", ["not for you"])
            publish(f"new{round_}", ["for you"])
            assert new.recv(timeout=10) == "for you"
            with pytest.raises(TimeoutError):
                new.recv(timeout=0.2)


def test_a_client_that_does_not_read_is_closed_with_1008_and_the_others_get_everything(server):
    """The lane spills when the socket is full; the queue limits then close the client (1008),
    and the readers on the same channel lose nothing."""
    messages = 3000
    payload = "x" * 2000  # 6 MB in all: beyond what the kernel buffers for a loopback socket
    before = scrape(server)
    slow, _ = raw_upgrade(server, "/ws/flooded?subscribe-broadcast", receive_buffer=4096)
    try:
        with ws(server, "/ws/flooded?subscribe-broadcast", max_size=None, max_queue=4096) as reader:
            pipe = RedisPublisher(facility="flooded", broadcast=True)._connection.pipeline(transaction=False)
            for n in range(messages):
                pipe.publish("broadcast:flooded", f"{n:05d}{payload}")
            pipe.execute()
            for n in range(messages):
                assert reader.recv(timeout=10)[:5] == f"{n:05d}"
        wait_until(lambda: delta(before, scrape(server), "ws4redis_slow_consumer_closes_total") == 1,
                   what="the slow client closed with 1008")
        slow.settimeout(10)
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        data = b""
        while True:
            chunk = slow.recv(1 << 16)
            if not chunk:
                break
            data += chunk
        # Its stream ends with the close frame 1008 after whole frames only, none missing before it.
        parser = server_parser()
        frames = parser.feed(data)
        assert parser.buffered == 0
        assert frames[-1].opcode == constants.OP_CLOSE
        assert int.from_bytes(frames[-1].payload[:2], "big") == constants.CLOSE_POLICY_VIOLATION
        indexes = [frame.payload[:5].decode() for frame in frames[:-1]]
        assert 0 < len(indexes) < messages
        assert indexes == [f"{n:05d}" for n in range(len(indexes))]
    finally:
        slow.close()
