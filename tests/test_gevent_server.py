"""The gevent server (``python -m ws4redis serve``) as a real subprocess with real clients.

Covers the 0.6.0 behaviour through this server (broadcast, user and session
channels, echo, persisted messages, RedisPublisher, interop with the
development server), HTTP next to websockets, the handshake limits and
refusals, one Redis pub/sub connection per process (also with 1,000
clients), ``--workers 2`` and ``manage.py runwebsocket``.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
import redis

from tests.polling import wait_until
from tests.servers import (
    ROOT,
    ServerProcess,
    Site,
    gevent_server,
    http_request,
    raw_upgrade,
    read_frames,
    read_until_closed,
    runserver,
    serving,
)
from tests.servers import ws_connect as ws
from tests.wire import client_frame
from ws4redis import constants
from ws4redis.embedded_redis import free_port
from ws4redis.protocol import CloseReceived, Message, WebSocketProtocol
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import PublishPlan

URLS_MODULE = "gevent_site_urls"
URLS = '''
"""URLs of the gevent server tests: one page, and a WS4REDIS_ALLOWED_CHANNELS hook."""
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.urls import path


def page(request):
    return HttpResponse("a Django page", content_type="text/plain")


def allowed_channels(request, channels):
    if request.path_info.endswith("/forbidden"):
        raise PermissionDenied("the facility 'forbidden' is closed to websockets")
    return channels


urlpatterns = [path("page", page)]
'''


def gevent_site(redis_url: str, **overrides: str) -> Site:
    """A site of the test project served by the gevent server: plain Django WSGI app, test URLs."""
    settings = {
        "WSGI_APPLICATION": "None",
        "ROOT_URLCONF": repr(URLS_MODULE),
        "WS4REDIS_ALLOWED_CHANNELS": repr(f"{URLS_MODULE}.allowed_channels"),
        **overrides,
    }
    site = Site(redis_url, settings)
    (site.directory / f"{URLS_MODULE}.py").write_text(URLS)
    return site


def handshake_request(port: int, path: str, extra: str = "", version: str = "13", method: str = "GET",
                      ) -> bytes:
    key = base64.b64encode(os.urandom(constants.WEBSOCKET_KEY_BYTES)).decode()
    return (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode("latin-1")


def exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return b"".join(chunks)


def subscribed_clients(client: redis.Redis) -> list[dict]:
    """Redis clients in pub/sub mode (subscribed to at least one channel or pattern)."""
    return [c for c in client.client_list() if int(c["sub"]) or int(c["psub"])]


def hub_clients(client: redis.Redis) -> list[dict]:
    return [c for c in client.client_list() if c["name"].startswith("ws4redis-hub:")]


def hub_pids_of_children(client: redis.Redis, parent: int) -> set[int]:
    """Pids of the hub connections that belong to children of ``parent`` (the workers)."""
    pids = set()
    for entry in hub_clients(client):
        pid = int(entry["name"].split(":")[1])
        try:
            with open(f"/proc/{pid}/status") as status:
                if f"PPid:\t{parent}\n" in status.read():
                    pids.add(pid)
        except FileNotFoundError:
            continue  # a process of another test that is gone
    return pids


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    site = gevent_site(redis_server.url).migrate()
    yield site
    site.cleanup()


@pytest.fixture(scope="module")
def server(site) -> Iterator[ServerProcess]:
    with serving(gevent_server(site)) as server:
        yield server


@pytest.fixture
def clean_server(server, redis_client) -> ServerProcess:
    """The module's server with an empty Redis, checked for tracebacks after the test."""
    mark = server.mark()
    yield server
    assert server.alive(), server.output()[-4000:]
    assert not server.tracebacks(mark), server.output_since(mark)


# --- 0.6.0 behaviour -----------------------------------------------------------------------------


def test_a_message_published_by_one_client_reaches_the_others(clean_server):
    with ws(clean_server, "/ws/chat?subscribe-broadcast&publish-broadcast") as sender, \
            ws(clean_server, "/ws/chat?subscribe-broadcast") as receiver:
        sender.send("hello everybody")
        assert receiver.recv(timeout=10) == "hello everybody"
        # Without ?echo the sender does not get its own message back; the next one it gets is this:
        RedisPublisher(facility="chat", broadcast=True).publish_message("marker")
        assert sender.recv(timeout=10) == "marker"
        assert receiver.recv(timeout=10) == "marker"


def test_echo_returns_the_clients_own_messages(clean_server):
    with ws(clean_server, "/ws/chat?subscribe-broadcast&publish-broadcast&echo") as client:
        client.send("my own words")
        assert client.recv(timeout=10) == "my own words"
        client.send(b"\x00\xffbinary")
        assert client.recv(timeout=10) == b"\x00\xffbinary"


def test_redis_publisher_reaches_clients_and_the_persisted_message_greets_newcomers(clean_server):
    RedisPublisher(facility="news", broadcast=True).publish_message("yesterday's news")
    with ws(clean_server, "/ws/news?subscribe-broadcast") as client:
        assert client.recv(timeout=10) == "yesterday's news"
        RedisPublisher(facility="news", broadcast=True).publish_message("breaking news")
        assert client.recv(timeout=10) == "breaking news"
    with ws(clean_server, "/ws/news?subscribe-broadcast") as late:
        assert late.recv(timeout=10) == "breaking news"


def test_user_and_session_channels_reach_only_their_audience(clean_server, site):
    keys = site.sessions(users=[{"username": "alice", "groups": ["staff"]}], anonymous=1)
    alice_key, anonymous_key = keys["users"]["alice"], keys["anonymous"][0]
    path = "/ws/inbox?subscribe-user&subscribe-session&subscribe-group"
    with ws(clean_server, path, session=alice_key) as alice, \
            ws(clean_server, path, session=anonymous_key) as anon:
        RedisPublisher(facility="inbox", users=["alice"]).publish_message("for alice")
        RedisPublisher(facility="inbox", groups=["staff"]).publish_message("for staff")
        RedisPublisher(facility="inbox", sessions=[anonymous_key]).publish_message("for the anonymous one")
        assert alice.recv(timeout=10) == "for alice"
        assert alice.recv(timeout=10) == "for staff"
        assert anon.recv(timeout=10) == "for the anonymous one"
        RedisPublisher(facility="inbox", sessions=[alice_key]).publish_message("for alice's session")
        assert alice.recv(timeout=10) == "for alice's session"


def test_a_logged_in_client_publishes_to_its_user_channel(clean_server, site, redis_client):
    keys = site.sessions(users=[{"username": "bob"}])
    pubsub = redis_client.pubsub()
    pubsub.subscribe("user:bob:notes")
    assert pubsub.get_message(timeout=5)["type"] == "subscribe"
    with ws(clean_server, "/ws/notes?publish-user", session=keys["users"]["bob"]) as client:
        client.send("note to self")
        message = pubsub.get_message(timeout=10)
    pubsub.close()
    assert message is not None and message["data"] == b"note to self"
    assert redis_client.get("user:bob:notes") == b"note to self"


def test_interop_with_the_development_server(clean_server, redis_server):
    other_site = Site(redis_server.url)
    try:
        with serving(runserver(other_site)) as dev:
            with ws(dev, "/ws/mixed?subscribe-broadcast&publish-broadcast") as on_dev, \
                    ws(clean_server, "/ws/mixed?subscribe-broadcast&publish-broadcast") as on_gevent:
                on_gevent.send("from gevent")
                assert on_dev.recv(timeout=10) == "from gevent"
                on_dev.send("from runserver")
                assert on_gevent.recv(timeout=10) == "from runserver"
    finally:
        other_site.cleanup()


# --- HTTP next to websockets ---------------------------------------------------------------------


def test_plain_http_requests_reach_django_with_keep_alive(clean_server):
    status, _headers, body = http_request(clean_server.port, "GET", "/page")
    assert (status, body) == (200, b"a Django page")
    with socket.create_connection(("127.0.0.1", clean_server.port), timeout=10) as sock:
        host = f"Host: 127.0.0.1:{clean_server.port}\r\n"
        sock.sendall(f"GET /page HTTP/1.1\r\n{host}\r\n".encode())
        first = b""
        while not first.endswith(b"a Django page"):
            first += sock.recv(4096)
        # The same connection goes on: another page, then an upgrade to a websocket.
        sock.sendall(f"GET /missing HTTP/1.1\r\n{host}\r\n".encode())
        second = b""
        while b"\r\n\r\n" not in second:
            second += sock.recv(4096)
        assert second.startswith(b"HTTP/1.1 404")
        sock.sendall(handshake_request(clean_server.port, "/ws/chat?subscribe-broadcast"))
        third = b""
        while b"HTTP/1.1 101" not in third:
            third += sock.recv(4096)
    assert first.startswith(b"HTTP/1.1 200")


def test_websocket_only_answers_404_outside_websocket_url(site, redis_client):
    with serving(gevent_server(site, ["--websocket-only"])) as server:
        status, _headers, body = http_request(server.port, "GET", "/page")
        assert status == 404
        assert b"only serves websockets under /ws/" in body
        with ws(server, "/ws/chat?subscribe-broadcast") as client:
            RedisPublisher(facility="chat", broadcast=True).publish_message("still served")
            assert client.recv(timeout=10) == "still served"


# --- handshake refusals and limits ---------------------------------------------------------------


def test_bad_handshakes_get_readable_http_errors(clean_server):
    port = clean_server.port
    answer = exchange(port, f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    assert answer.startswith(b"HTTP/1.1 400") and b"websocket" in answer
    answer = exchange(port, handshake_request(port, "/ws/chat", version="8"))
    assert answer.startswith(b"HTTP/1.1 426") and b"Sec-WebSocket-Version: 13" in answer
    answer = exchange(port, handshake_request(port, "/ws/chat", method="POST"))
    assert answer.startswith(b"HTTP/1.1 405")
    answer = exchange(port, handshake_request(port, "/ws/chat").replace(b"Sec-WebSocket-Key", b"X-Key"))
    assert answer.startswith(b"HTTP/1.1 400") and b"Sec-WebSocket-Key" in answer
    answer = exchange(port, b"\x16\x03\x01 garbage that is not HTTP\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 400")


def test_a_client_too_slow_with_its_handshake_gets_408(redis_server):
    site = gevent_site(redis_server.url, WS4REDIS_HANDSHAKE_TIMEOUT="1.0")
    try:
        with serving(gevent_server(site)) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                sock.sendall(b"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # and then nothing
                answer = b""
                while True:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    answer += chunk
            assert answer.startswith(b"HTTP/1.1 408")
            assert b"Request Timeout" in answer
    finally:
        site.cleanup()


def test_cross_origin_upgrades_are_refused_and_allowed_origins_pass(clean_server):
    port = clean_server.port
    answer = exchange(port, handshake_request(port, "/ws/chat", extra="Origin: https://evil.example\r\n"))
    assert answer.startswith(b"HTTP/1.1 403") and b"evil.example" in answer
    # Another port of the same host is another origin, as for Django's CSRF check.
    other_port = exchange(port, handshake_request(port, "/ws/chat", extra="Origin: http://127.0.0.1:8089\r\n"))
    assert other_port.startswith(b"HTTP/1.1 403")
    with ws(clean_server, "/ws/chat?subscribe-broadcast", origin=f"http://127.0.0.1:{port}") as client:
        RedisPublisher(facility="chat", broadcast=True).publish_message("same origin")
        assert client.recv(timeout=10) == "same origin"


def test_allowed_channels_may_refuse_with_403(clean_server):
    port = clean_server.port
    answer = exchange(port, handshake_request(port, "/ws/forbidden?subscribe-broadcast"))
    assert answer.startswith(b"HTTP/1.1 403")
    assert b"closed to websockets" in answer


# --- one pub/sub connection per process ----------------------------------------------------------


def test_many_clients_on_many_channels_share_one_pubsub_connection(clean_server, site, redis_client):
    keys = site.sessions(anonymous=10)["anonymous"]
    with ExitStack() as stack:
        path = "/ws/a?subscribe-broadcast&subscribe-session"
        clients = [stack.enter_context(ws(clean_server, path, session=key)) for key in keys]
        for i in range(10):
            clients.append(stack.enter_context(ws(clean_server, f"/ws/facility{i}?subscribe-broadcast")))
        subscribed = subscribed_clients(redis_client)
        assert len(subscribed) == 1
        assert subscribed[0]["name"] == f"ws4redis-hub:{clean_server.process.pid}"
        # broadcast:a, ten session channels and ten facilities: 21 channels on that one connection.
        assert subscribed[0]["sub"] == "21"
        RedisPublisher(facility="a", broadcast=True).publish_message("to the first ten")
        assert [client.recv(timeout=10) for client in clients[:10]] == ["to the first ten"] * 10
    wait_until(lambda: not subscribed_clients(redis_client), what="every channel unsubscribed")


@pytest.mark.slow
def test_a_thousand_concurrent_websockets_on_one_process_share_one_pubsub_connection(clean_server,
                                                                                     redis_client):
    count = 1000
    sockets = []
    try:
        for _ in range(count):
            sock, rest = raw_upgrade(clean_server, "/ws/crowd?subscribe-broadcast")
            assert rest == b""
            sockets.append(sock)
        subscribed = [(c["name"], c["sub"]) for c in subscribed_clients(redis_client)]
        assert subscribed == [(f"ws4redis-hub:{clean_server.process.pid}", "1")]
        assert redis_client.pubsub_numsub("broadcast:crowd") == [(b"broadcast:crowd", 1)]
        assert RedisPublisher(facility="crowd", broadcast=True).publish_message("hello crowd") == 1
        for sock in sockets:
            assert read_frames(sock, 1) == [Message(b"hello crowd", False)]
    finally:
        for sock in sockets:
            sock.close()
    wait_until(lambda: not subscribed_clients(redis_client), what="the crowd's channel unsubscribed")


def test_two_workers_share_the_port_with_one_hub_each(site, redis_client):
    with serving(gevent_server(site, ["--workers", "2"])) as server, ExitStack() as stack:
        parent = server.process.pid
        wait_until(lambda: len(hub_pids_of_children(redis_client, parent)) == 2,
                   what="both workers connected to Redis")
        clients = [stack.enter_context(ws(server, "/ws/workers?subscribe-broadcast")) for _ in range(20)]
        RedisPublisher(facility="workers", broadcast=True).publish_message("to every worker")
        assert [client.recv(timeout=10) for client in clients] == ["to every worker"] * 20
        status, _headers, body = http_request(server.port, "GET", "/page")
        assert (status, body) == (200, b"a Django page")


# --- entry points --------------------------------------------------------------------------------


def test_manage_py_runwebsocket_serves_websockets(site, redis_client):
    port = free_port()
    args = [sys.executable, "-m", "django", "runwebsocket", "--bind", f"127.0.0.1:{port}"]
    with serving(ServerProcess("runwebsocket", args, site, port)) as server:
        with ws(server, "/ws/cmd?subscribe-broadcast&publish-broadcast&echo") as client:
            client.send("via manage.py")
            assert client.recv(timeout=10) == "via manage.py"
        assert f"ws4redis-hub:{server.process.pid}" in {c["name"] for c in hub_clients(redis_client)}


def test_serve_without_settings_or_with_bad_settings_fails_with_a_clear_message(site):
    env = {key: value for key, value in site.env.items() if key != "DJANGO_SETTINGS_MODULE"}
    serve_args = [sys.executable, "-m", "ws4redis", "serve", "--bind", f"127.0.0.1:{free_port()}"]
    result = subprocess.run(serve_args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "DJANGO_SETTINGS_MODULE" in result.stderr
    bad = gevent_site(site.redis_url, WS4REDIS_SEND_QUEUE_BYTES="0")
    try:
        result = subprocess.run(serve_args, cwd=ROOT, env=bad.env, capture_output=True, text=True, timeout=60)
    finally:
        bad.cleanup()
    assert result.returncode == 3
    assert "WS4REDIS_SEND_QUEUE_BYTES" in result.stderr


def test_a_closing_client_is_answered_and_released(clean_server, redis_client):
    sock, rest = raw_upgrade(clean_server, "/ws/bye?subscribe-broadcast")
    with sock:
        protocol = WebSocketProtocol(client=True)
        protocol.send_close(1000, "bye")
        sock.sendall(protocol.data_to_send())
        events = read_until_closed(sock, rest)
    assert events == [CloseReceived(1000, "")]
    wait_until(lambda: not subscribed_clients(redis_client), what="the channel released")


def test_a_client_vanishing_without_close_releases_its_channel(clean_server, redis_client):
    sock, _rest = raw_upgrade(clean_server, "/ws/abrupt?subscribe-broadcast")
    assert len(subscribed_clients(redis_client)) == 1
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # linger 0: a TCP reset, no close frame
    wait_until(lambda: not subscribed_clients(redis_client), what="the channel released")


# --- publishing what websockets receive --------------------------------------------------------


def test_the_publish_plan_packs_what_redis_py_would_and_keeps_the_message(redis_client):
    message = b"caf\xc3\xa9 \r\n$3\r\n not a header"
    plan = PublishPlan(["broadcast:plan-b", "broadcast:plan-a"], 60)
    expected = redis.Connection().pack_commands([
        ("SET", "broadcast:plan-a", message, "EX", 60), ("PUBLISH", "broadcast:plan-a", message),
        ("SET", "broadcast:plan-b", message, "EX", 60), ("PUBLISH", "broadcast:plan-b", message),
    ])
    assert plan.pack(message) == b"".join(expected)
    listening = redis_client.pubsub()
    listening.subscribe("broadcast:plan-a")
    try:
        assert listening.get_message(timeout=10)["type"] == "subscribe"
        assert plan.execute(redis_client, message) == 1
        assert redis_client.get("broadcast:plan-a") == redis_client.get("broadcast:plan-b") == message
        assert 0 < redis_client.ttl("broadcast:plan-a") <= 60
    finally:
        listening.close()
    # Without expiry only PUBLISH goes out, and nothing is kept.
    fleeting = PublishPlan(["broadcast:plan-c"], 0)
    only_publish = redis.Connection().pack_commands([("PUBLISH", "broadcast:plan-c", b"x")])
    assert fleeting.pack(b"x") == b"".join(only_publish)
    assert fleeting.execute(redis_client, b"x") == 0
    assert redis_client.exists("broadcast:plan-c") == 0


def test_bursts_from_many_websockets_are_all_published_in_order(clean_server):
    senders, rounds = 8, 60
    with ExitStack() as stack:
        listener = stack.enter_context(ws(clean_server, "/ws/burst?subscribe-broadcast"))
        talkers = [stack.enter_context(ws(clean_server, "/ws/burst?publish-broadcast"))
                   for _ in range(senders)]
        for number in range(rounds):
            for index, talker in enumerate(talkers):
                talker.send(f"{index}:{number}")
        received = [listener.recv(timeout=10) for _ in range(senders * rounds)]
    by_sender: dict[str, list[int]] = {}
    for text in received:
        index, number = text.split(":")
        by_sender.setdefault(index, []).append(int(number))
    assert by_sender == {str(index): list(range(rounds)) for index in range(senders)}


@pytest.mark.parametrize("query", ["publish-broadcast", "subscribe-broadcast"])
def test_the_tcp_connection_is_closed_right_after_the_close_handshake(clean_server, query):
    # The descriptor once went through gevent's os.close, which defers the close to the next wake-up
    # of an idle loop (the keepalive tick, 10 s by default): the client waited for the FIN that long.
    sock, initial = raw_upgrade(clean_server, f"/ws/bye?{query}", timeout=5)
    with sock:
        sock.sendall(client_frame(constants.OP_CLOSE, struct.pack("!H", constants.CLOSE_NORMAL)))
        protocol = WebSocketProtocol(client=True)
        events = list(protocol.receive_data(initial)) if initial else []
        while chunk := sock.recv(4096):  # a TimeoutError here fails the test
            events.extend(protocol.receive_data(chunk))
    assert [event.code for event in events if isinstance(event, CloseReceived)] == [constants.CLOSE_NORMAL]


def _keep_alive_request(sock: socket.socket) -> bytes:
    """A plain request on a kept-alive connection; returns the whole response (its body is known)."""
    sock.sendall(b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    answer = b""
    while not answer.endswith(b"a Django page"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        answer += chunk
    return answer


def test_an_idle_kept_alive_connection_is_closed_at_the_handshake_timeout(redis_server):
    timeout = 1.0
    site = gevent_site(redis_server.url, WS4REDIS_HANDSHAKE_TIMEOUT=str(timeout))
    try:
        with serving(gevent_server(site)) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                assert _keep_alive_request(sock).startswith(b"HTTP/1.1 200")
                started = time.monotonic()
                answer = b""
                while chunk := sock.recv(4096):
                    answer += chunk
                took = time.monotonic() - started
            assert answer.startswith(b"HTTP/1.1 408"), answer[:80]
            assert took < timeout + 2.0, f"the idle connection was kept {took:.1f} s"
    finally:
        site.cleanup()


def test_a_kept_alive_connection_is_closed_after_its_request_budget(redis_server):
    site = gevent_site(redis_server.url)
    try:
        with serving(gevent_server(site)) as server:
            with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
                request = b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                sock.sendall(request * (constants.MAX_REQUESTS_PER_CONNECTION + 5))
                answer = b""
                while chunk := sock.recv(65536):
                    answer += chunk
            assert answer.count(b"HTTP/1.1 200") == constants.MAX_REQUESTS_PER_CONNECTION
    finally:
        site.cleanup()
