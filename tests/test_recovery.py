"""Messages that survive a reconnect (WS4REDIS_HISTORY) on the gevent server, uWSGI and runserver.

Real servers on the suite's Redis; clients are raw sockets that read the frames as they travel
and can cut their TCP connection at any moment. A client that asked for ``history`` gets JSON
envelopes with offsets; coming back with ``since`` it gets exactly what it missed, in order, then
the live messages, with no gap and no duplicate at the seam, and is told whether the history
still held everything (``recovered``). Clients that did not ask keep 0.6.0's bare messages, now
with their type (text or binary) carried from ``RedisMessage``.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from django.test import override_settings

from tests import servers
from tests.servers import Site, raw_upgrade_head
from ws4redis import constants
from ws4redis.embedded_redis import EmbeddedRedis
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage
from ws4redis.speedups import FrameParser

KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi", "runserver")]
HISTORY = {"size": 2000, "ttl": 300,
           "facilities": {"recover": {}, "seam": {}, "types": {}, "tiny": {"size": 5}}}
WAIT = 20.0
JS_CLIENT = Path(__file__).resolve().parent.parent / "ws4redis" / "static" / "js" / "ws4redis.js"


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    made = Site(redis_server.url, {"WS4REDIS_HISTORY": repr(HISTORY), "WS4REDIS_SEND_QUEUE_MESSAGES": "5000"})
    yield made
    made.cleanup()


@pytest.fixture(scope="module")
def running(site) -> Iterator[servers.ServerPool]:
    started = servers.ServerPool({"history": site})
    yield started
    started.stop_all()


@pytest.fixture(autouse=True)
def history_here(redis_client):
    """The test process publishes with the servers' setting, on an emptied Redis."""
    with override_settings(WS4REDIS_HISTORY=HISTORY):
        yield


def publish(facility: str, *messages: str | bytes, binary: bool | None = None) -> None:
    publisher = RedisPublisher(facility=facility, broadcast=True)
    for message in messages:
        publisher.publish_message(RedisMessage(message, binary=binary))


class Client:
    """A websocket on a raw socket: frames as they arrive, JSON events, and a TCP cut on demand."""

    def __init__(self, server: servers.ServerProcess, facility: str, history: bool = True,
                 since: dict[str, str] | None = None) -> None:
        query = "subscribe-broadcast" + ("&history" if history else "")
        if since is not None:
            query += "&since=" + quote(json.dumps(since))
        self.sock, self.head, rest = raw_upgrade_head(server, f"/ws/{facility}?{query}", timeout=WAIT)
        self.parser = FrameParser(require_mask=False, max_message_size=1 << 24)
        self.frames: deque = deque(self.parser.feed(rest) if rest else [])

    def frame(self, timeout: float = WAIT):
        deadline = time.monotonic() + timeout
        while not self.frames:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.sock.recv(65536)
            if not chunk:
                raise AssertionError("the server closed the connection")
            self.frames.extend(self.parser.feed(chunk))
        return self.frames.popleft()

    def event(self, timeout: float = WAIT) -> dict:
        frame = self.frame(timeout)
        assert frame.opcode == constants.OP_TEXT, frame
        return json.loads(frame.payload)

    def until(self, kind: str) -> tuple[list[dict], dict]:
        """The message events before the first event of ``kind``, and that event."""
        messages = []
        while True:
            event = self.event()
            if event["event"] == kind:
                return messages, event
            messages.append(event)

    def cut(self) -> None:
        """Drop the TCP connection at once (RST), as a network switch would, with no close frame."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def server_of(running, kind: str) -> servers.ServerProcess:
    return running.get(kind, "history")


def texts(events: list[dict]) -> list[str]:
    return [event["data"] for event in events]


@pytest.mark.parametrize("kind", KINDS)
def test_a_client_cut_mid_stream_gets_exactly_what_it_missed_then_live(running, kind):
    """1,000 messages published flat out; the client cuts its TCP connection after 100 and comes
    back with its last offset at once, while the publisher still runs (messages land in the
    history and live at the same time: the seam), and ends with every message exactly once,
    in order."""
    server = server_of(running, kind)
    first = Client(server, "recover")
    _, position = first.until("position")
    assert position["offsets"] == {"broadcast": "0-0"}
    publisher = threading.Thread(target=publish, args=("recover", *(f"m{index}" for index in range(1000))))
    publisher.start()
    try:
        seen = [first.event() for _ in range(100)]
        first.cut()
        offset = seen[-1]["offset"]
        second = Client(server, "recover", since={"broadcast": offset})
        missed, recovery = second.until("recovery")
        later = [second.event() for _ in range(1000 - len(seen) - len(missed))]
    finally:
        publisher.join(60)
    assert recovery["recovered"] is True and recovery["missed"] == len(missed) > 0, recovery
    everything = seen + missed + later
    assert texts(everything) == [f"m{index}" for index in range(1000)]
    offsets = [tuple(map(int, event["offset"].split("-"))) for event in everything]
    assert offsets == sorted(set(offsets)), "offsets rise with every message"
    assert all(event["channel"] == "broadcast" and event["binary"] is False for event in everything)
    assert not server.tracebacks()


def come_back(server: servers.ServerProcess, facility: str, *away: str,
              other: servers.ServerProcess | None = None) -> tuple[list[dict], dict, Client]:
    """A client sees one message, is cut off while ``away`` is published, and comes back with its
    offset (to ``other`` when given): what it missed, the recovery event, and the client."""
    client = Client(server, facility)
    client.until("position")
    publish(facility, "seen")
    offset = client.event()["offset"]
    client.cut()
    publish(facility, *away)
    back = Client(other or server, facility, since={"broadcast": offset})
    missed, recovery = back.until("recovery")
    return missed, recovery, back


@pytest.mark.parametrize("kind", KINDS)
def test_messages_published_while_away_come_back_in_order_and_live_ones_follow(running, kind):
    away = [f"away {index}" for index in range(1000)]
    missed, recovery, back = come_back(server_of(running, kind), "seam", *away)
    assert texts(missed) == [f"away {index}" for index in range(1000)]
    assert recovery == {"event": "recovery", "recovered": True, "missed": 1000,
                        "offsets": {"broadcast": missed[-1]["offset"]}}
    publish("seam", "live")
    assert texts([back.event()]) == ["live"]


@pytest.mark.parametrize("kind", KINDS)
def test_a_history_trimmed_past_the_offset_is_not_recovered(running, kind):
    gone = [f"gone {index}" for index in range(300)]
    missed, recovery, _ = come_back(server_of(running, kind), "tiny", *gone)
    assert recovery["recovered"] is False, recovery
    assert texts(missed)[-1] == "gone 299" and 5 <= len(missed) <= 5 + constants.HISTORY_TRIM_MARGIN


@pytest.mark.parametrize("kind", KINDS)
def test_a_new_client_gets_the_newest_message_with_its_offset_then_the_position(running, kind):
    server = server_of(running, kind)
    publish("recover", "older", "newest")
    client = Client(server, "recover")
    newest, position = client.until("position")
    assert texts(newest) == ["newest"] and position["offsets"] == {"broadcast": newest[0]["offset"]}


@pytest.mark.parametrize("kind", KINDS)
def test_the_type_is_carried_end_to_end(running, kind):
    """Binary bytes that happen to be UTF-8 stay binary, for bare and for history clients alike."""
    server = server_of(running, kind)
    bare = Client(server, "types", history=False)
    enveloped = Client(server, "types")
    enveloped.until("position")
    time.sleep(0.2)  # the bare client has no event to wait for: give its subscription time
    publish("types", b"looks like text", binary=True)
    publish("types", "is text")
    first, second = bare.frame(), bare.frame()
    assert (first.opcode, first.payload) == (constants.OP_BINARY, b"looks like text")
    assert (second.opcode, second.payload) == (constants.OP_TEXT, b"is text")
    events = [enveloped.event(), enveloped.event()]
    assert [(event["binary"], event["data"]) for event in events] == [
        (True, "bG9va3MgbGlrZSB0ZXh0"), (False, "is text")]


@pytest.mark.parametrize("kind", KINDS)
def test_a_websockets_binary_message_stays_binary_through_redis(running, kind):
    """A client's binary frame whose bytes happen to be UTF-8 is published with its type."""
    server = server_of(running, kind)
    listener = Client(server, "types", history=False)
    time.sleep(0.2)  # the bare client has no event to wait for: give its subscription time
    with servers.ws_connect(server, "/ws/types?publish-broadcast") as talker:
        talker.send(b"bytes, not text")
        talker.send("text")
        first, second = listener.frame(), listener.frame()
    assert (first.opcode, first.payload) == (constants.OP_BINARY, b"bytes, not text")
    assert (second.opcode, second.payload) == (constants.OP_TEXT, b"text")


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize(("query", "reason"), [
    ("subscribe-broadcast&history", "facility 'plain' keeps no history"),
    ("subscribe-broadcast&history&since=not-json", "since must be a JSON object"),
    ("subscribe-broadcast&since=%7B%7D", "'since' needs 'history'"),
])
def test_a_history_request_that_cannot_be_served_gets_400_naming_why(running, kind, query, reason):
    server = server_of(running, kind)
    facility = "plain" if "history" in query and "since" not in query else "recover"
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
    status, _, body = servers.http_request(server.port, "GET", f"/ws/{facility}?{query}", headers)
    assert status == 400 and reason in body.decode(), (status, body)


@pytest.mark.parametrize("kind", KINDS)
def test_another_server_process_recovers_what_the_first_ones_client_missed(running, kind):
    """A server restarted (or another behind the same load balancer): the offset is all it needs."""
    others = [other for other in ("gevent", "uwsgi", "runserver") if other != kind]
    missed, recovery, _ = come_back(server_of(running, kind), "recover", "while away",
                                    other=server_of(running, others[0]))
    assert texts(missed) == ["while away"] and recovery["recovered"] is True


@pytest.mark.browser
def test_ws4redis_js_resumes_where_it_left_off_across_a_server_restart(site):
    """Headless Chromium with ws4redis.js (history: true) loses its server for a restart while 50
    messages are published; it reconnects by itself, gets the 50 in order, and hears recovered(true)."""
    from tests.chromium import browser_driver, wait_until

    server = servers.gevent_server(site)
    server.start()
    try:
        with browser_driver() as driver:
            driver.get(f"http://127.0.0.1:{server.port}/")  # the page's origin is the websocket's
            driver.execute_script(JS_CLIENT.read_text())
            driver.execute_script(
                """
                window.log = [];
                window.client = WS4Redis({
                    uri: arguments[0], history: true, reconnect_base_delay: 100, reconnect_max_delay: 400,
                    connected: function () { log.push(['connected']); },
                    receive_message: function (data, meta) {
                        var shown = typeof data === 'string' ? data : Array.from(new Uint8Array(data));
                        log.push(['message', shown, meta.channel]);
                    },
                    recovered: function (complete, evt) { log.push(['recovered', complete, evt.missed]); }
                });
                """,
                f"ws://127.0.0.1:{server.port}/ws/recover?subscribe-broadcast",
            )

            def entries(kind: str) -> list:
                return [entry for entry in driver.execute_script("return window.log;") if entry[0] == kind]

            wait_until(driver, lambda _: entries("connected"), "ws4redis.js did not connect")
            publish("recover", "one", "two")
            publish("recover", b"\x01\x02", binary=True)
            wait_until(driver, lambda _: len(entries("message")) == 3, "the live messages did not arrive")
            server.stop()
            publish("recover", *(f"away {index}" for index in range(50)))
            server.start()
            wait_until(driver, lambda _: entries("recovered") and len(entries("message")) == 53,
                       f"ws4redis.js did not resume: {driver.execute_script('return window.log;')[-5:]}")
            offsets = driver.execute_script("return client.get_offsets();")
            driver.execute_script("client.close();")
            messages, recovered, connected = entries("message"), entries("recovered"), entries("connected")
    finally:
        server.stop()
    assert entries_of(messages) == ["one", "two", [1, 2], *(f"away {index}" for index in range(50))]
    assert recovered == [["recovered", True, 50]]
    assert len(connected) == 2
    assert set(offsets) == {"broadcast"}


def entries_of(messages: list) -> list:
    assert all(channel == "broadcast" for _, _, channel in messages)
    return [data for _, data, _ in messages]


HUB_KINDS = [kind for kind in KINDS if kind.values[0] != "runserver"]


@contextmanager
def own_redis_and_server(kind: str,
                         persistent: bool) -> Iterator[tuple[EmbeddedRedis, servers.ServerProcess]]:
    """A redis-server of this test's own (with an append-only file when ``persistent``) and a server on it."""
    extra = ["--appendonly", "yes", "--appendfsync", "always"] if persistent else []
    with EmbeddedRedis(extra_args=extra) as redis_server:
        site = Site(redis_server.url, {"WS4REDIS_HISTORY": repr(HISTORY)})
        server = servers.STARTERS[kind](site)
        try:
            server.start()
            yield redis_server, server
        finally:
            server.stop()
            site.cleanup()


def listening(server: servers.ServerProcess, redis_server: EmbeddedRedis) -> Client:
    """A history client on ``recover`` that has received one live message (so the hub has an offset)."""
    client = Client(server, "recover")
    client.until("position")
    publish_to(redis_server, "recover", "before")
    assert texts([client.event()]) == ["before"]
    return client


def publish_to(redis_server: EmbeddedRedis, facility: str, *messages: str) -> None:
    client = redis.Redis.from_url(redis_server.url)
    try:
        publisher = RedisPublisher(connection=client, facility=facility, broadcast=True)
        for message in messages:
            publisher.publish_message(RedisMessage(message))
    finally:
        client.close()


@pytest.mark.parametrize("kind", HUB_KINDS)
def test_after_redis_restarts_the_hub_replays_what_its_clients_missed(kind):
    """Redis restarts with its data (AOF); what is published before the hub has subscribed again
    reaches every history client anyway, exactly once, in order, without a reconnect of theirs."""
    with own_redis_and_server(kind, persistent=True) as (redis_server, server):
        client = listening(server, redis_server)
        redis_server.stop()
        redis_server.start()
        publish_to(redis_server, "recover", *(f"after {index}" for index in range(50)))
        assert texts([client.event() for _ in range(50)]) == [f"after {index}" for index in range(50)]
        publish_to(redis_server, "recover", "live")
        assert texts([client.event()]) == ["live"]
        assert not server.tracebacks()


@pytest.mark.parametrize("kind", HUB_KINDS)
def test_after_redis_lost_its_data_history_clients_hear_it_was_not_recovered(kind):
    with own_redis_and_server(kind, persistent=False) as (redis_server, server):
        client = listening(server, redis_server)
        redis_server.stop()
        redis_server.start()
        publish_to(redis_server, "recover", "after")
        events = [client.event(), client.event()]
        assert events[0]["event"] == "recovery" and events[0]["recovered"] is False, events
        assert texts(events[1:]) == ["after"]


@pytest.mark.parametrize("kind", HUB_KINDS)
def test_what_is_published_while_the_hub_reconnects_is_replayed_once(kind):
    """Redis drops the hub's pub/sub connection (as its output buffer limit or a network blip
    would) and 50 messages are published at once, before the hub is back: the hub replays them
    from the history, and live messages after them come once."""
    with own_redis_and_server(kind, persistent=False) as (redis_server, server):
        client = listening(server, redis_server)
        killer = redis.Redis.from_url(redis_server.url)
        try:
            publisher = RedisPublisher(connection=killer, facility="recover", broadcast=True)
            assert killer.client_kill_filter(_type="pubsub") >= 1
            for index in range(50):
                publisher.publish_message(RedisMessage(f"gap {index}"))
        finally:
            killer.close()
        assert texts([client.event() for _ in range(50)]) == [f"gap {index}" for index in range(50)]
        publish_to(redis_server, "recover", "live")
        assert texts([client.event()]) == ["live"]
        assert "the history of" not in server.output(), "nothing was lost"
