"""The websocket server's behaviour, the same under Django's development server, uWSGI and the gevent server.

Every test talks to real server subprocesses (tests/servers.py) over real
sockets, with the suite's redis-server, using the ``websockets`` client, or
raw sockets where the input must be malformed. Each test uses its own
facility, so messages kept in Redis by one test never reach another.

The servers differ by design in one respect: the development server gives
each websocket its own Redis pub/sub connection (0.6.0's loop), while uWSGI
and the gevent server carry all websockets of a process over one (the hub,
``ws4redis.hub``). Where that shows (how many receivers PUBLISH counts, what
happens while Redis is away) the expectation is stated per server kind.

Two settings variants ("sites") run under each server:

* ``plain``: no prefix, WS4REDIS_HEARTBEAT set, WS4REDIS_ALLOWED_CHANNELS as
  a dotted path, WS4REDIS_MAX_MESSAGE_SIZE lowered to 64 KiB;
* ``prefixed``: WS4REDIS_PREFIX = 'pfx', WS4REDIS_ALLOWED_CHANNELS as the
  callable itself, WS4REDIS_PROCESS_REQUEST set.
"""

from __future__ import annotations

import select
import socket
import time
import uuid
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import redis
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from tests import servers
from tests.polling import wait_until
from tests.wire import RFC_KEY, client_frame
from ws4redis import constants
from ws4redis.protocol import CloseReceived, Message, Ping, WebSocketProtocol
from ws4redis.server.rules import EchoFilter
from ws4redis.wsgi_server import WebsocketWSGIServer

HEARTBEAT = "--heartbeat--"
MAX_MESSAGE_SIZE = 65536
USERS = [{"username": "alice", "groups": ["staff"]}, {"username": "bob", "groups": []}]
SITES = {
    "plain": {
        "imports": "",
        "overrides": {
            "WS4REDIS_PREFIX": "None",
            "WS4REDIS_HEARTBEAT": repr(HEARTBEAT),
            "WS4REDIS_ALLOWED_CHANNELS": "'tests.project.views.allowed_channels'",
            "WS4REDIS_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
        },
        "prefix": "",
    },
    "prefixed": {
        "imports": "from tests.project.views import allowed_channels as _allowed_channels",
        "overrides": {
            "WS4REDIS_PREFIX": "'pfx'",
            "WS4REDIS_ALLOWED_CHANNELS": "_allowed_channels",
            "WS4REDIS_PROCESS_REQUEST": "'tests.project.views.process_request'",
        },
        "prefix": "pfx:",
    },
}
KINDS = {"runserver": (), "uwsgi": (pytest.mark.uwsgi,), "gevent": ()}
# Servers carrying every websocket of a process over one Redis pub/sub connection.
HUB_KINDS = ("uwsgi", "gevent")


def kinds(*names: str) -> list:
    """Parameters for a test that starts its own server of each of the given kinds (default: all)."""
    return [pytest.param(kind, marks=KINDS[kind]) for kind in names or KINDS]


def setups(*site_names: str) -> list:
    """Parameters (server kind, site name) for every server and the given sites."""
    return [
        pytest.param((kind, site), id=f"{kind}-{site}", marks=marks)
        for kind, marks in KINDS.items()
        for site in site_names
    ]


CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4999]
AUDIENCES = ["broadcast", "user", "group", "session"]
RECV_TIMEOUT = 20.0


@pytest.fixture(scope="module")
def sites(redis_server):
    created = {}
    try:
        for name, spec in SITES.items():
            site = servers.Site(redis_server.url, spec["overrides"], spec["imports"]).migrate()
            created[name] = (site, site.sessions(USERS, anonymous=2))
        yield created
    finally:
        for site, _sessions in created.values():
            site.cleanup()


@pytest.fixture(scope="module")
def pool(sites):
    pool = servers.ServerPool({name: site for name, (site, _sessions) in sites.items()})
    try:
        yield pool
        problems = {
            f"{kind}/{site}": server.tracebacks() for (kind, site), server in pool.servers.items()
        }
        problems = {name: found for name, found in problems.items() if found}
        assert not problems, f"server-side tracebacks during the tests: {problems}"
    finally:
        pool.stop_all()


@pytest.fixture(scope="module")
def store(redis_server):
    """A client of the suite's Redis. Not ``redis_client``: that one flushes, and the sessions live there."""
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    yield client
    client.close()


@dataclass
class Live:
    """One running server with its site, as a test sees it."""

    server: servers.ServerProcess
    kind: str
    site_name: str
    sessions: dict
    store: redis.Redis
    mark: int

    @property
    def prefix(self) -> str:
        return SITES[self.site_name]["prefix"]

    @property
    def heartbeat(self) -> str | None:
        return HEARTBEAT if "WS4REDIS_HEARTBEAT" in SITES[self.site_name]["overrides"] else None

    def session(self, name: str = "alice") -> str:
        return self.sessions["users"][name]

    def anonymous(self, index: int = 0) -> str:
        return self.sessions["anonymous"][index]

    def channel(self, audience: str, facility: str, session_name: str = "alice") -> str:
        """The Redis name (0.6.0 key layout) an audience of ``session_name``'s client maps to."""
        who = {
            "broadcast": "",
            "user": f"{session_name}:",
            "group": "staff:",
            "session": f"{self.session(session_name)}:",
        }[audience]
        return f"{self.prefix}{audience}:{who}{facility}"

    def connect(self, path: str, session: str | None = None, **options):
        return servers.ws_connect(self.server, path, session, **options)

    def recv(self, ws):
        """The next message, skipping the idle heartbeats a slow test run may see."""
        while True:
            message = ws.recv(timeout=RECV_TIMEOUT)
            if message != self.heartbeat:
                return message

    def assert_no_tracebacks(self) -> None:
        found = self.server.tracebacks(self.mark)
        assert not found, f"the server printed tracebacks: {found}"


def _live(request, pool, sites, store) -> Live:
    kind, site_name = request.param
    server = pool.get(kind, site_name)
    return Live(server, kind, site_name, sites[site_name][1], store, server.mark())


@pytest.fixture(params=setups(*SITES))
def live(request, pool, sites, store):
    return _live(request, pool, sites, store)


@pytest.fixture(params=setups("plain"))
def plain(request, pool, sites, store):
    return _live(request, pool, sites, store)


@pytest.fixture(params=setups("prefixed"))
def prefixed(request, pool, sites, store):
    return _live(request, pool, sites, store)


@pytest.fixture
def facility():
    return f"f{uuid.uuid4().hex[:12]}"


def upgrade_headers(**extra: str) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update(extra)
    return headers


# --- audiences ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("audience", AUDIENCES)
def test_subscriber_receives_what_is_published_for_its_audience(live, facility, audience):
    with live.connect(f"/ws/{facility}?subscribe-{audience}", live.session("alice")) as ws:
        channel = live.channel(audience, facility)
        assert live.store.publish(channel, f"to {audience}") == 1
        assert live.recv(ws) == f"to {audience}"
    live.assert_no_tracebacks()


@pytest.mark.parametrize("audience", AUDIENCES)
def test_client_publishes_to_its_audience_and_the_message_is_kept(live, facility, audience):
    session = live.session("alice")
    with live.connect(f"/ws/{facility}?subscribe-{audience}", session) as listener, \
            live.connect(f"/ws/{facility}?publish-{audience}", session) as publisher:
        publisher.send(f"from {audience}")
        assert live.recv(listener) == f"from {audience}"
    channel = live.channel(audience, facility)
    assert live.store.get(channel) == f"from {audience}".encode()
    assert 0 < live.store.ttl(channel) <= 3600
    live.assert_no_tracebacks()


def test_other_users_do_not_receive_user_messages(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-user&subscribe-broadcast", live.session("bob")) as bob:
        live.store.publish(live.channel("user", facility, "alice"), "for alice only")
        live.store.publish(live.channel("broadcast", facility), "for everyone")
        assert live.recv(bob) == "for everyone"


def test_persisted_message_is_sent_on_connect(live, facility):
    live.store.set(live.channel("broadcast", facility), "kept for late joiners", ex=60)
    with live.connect(f"/ws/{facility}?subscribe-broadcast") as ws:
        assert live.recv(ws) == "kept for late joiners"


def test_prefix_is_used_for_every_key(live, facility):
    with live.connect(f"/ws/{facility}?publish-broadcast") as publisher:
        publisher.send("where am I kept")
        with live.connect(f"/ws/{facility}?subscribe-broadcast") as late:
            assert live.recv(late) == "where am I kept"
    keys = {key.decode() for key in live.store.scan_iter(match=f"*{facility}")}
    assert keys == {f"{live.prefix}broadcast:{facility}"}


def test_process_request_hook_decides_the_user(prefixed, facility):
    headers = {"X-Test-User": "carol"}
    with prefixed.connect(f"/ws/{facility}?subscribe-user", additional_headers=headers) as ws:
        assert prefixed.store.publish(f"pfx:user:carol:{facility}", "hello carol") == 1
        assert prefixed.recv(ws) == "hello carol"


# --- echo --------------------------------------------------------------------------------------------


def test_echo_returns_own_messages(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
        ws.send("boomerang")
        assert live.recv(ws) == "boomerang"


def test_without_echo_own_messages_do_not_come_back_but_others_identical_ones_do(live, facility):
    path = f"/ws/{facility}?subscribe-broadcast&publish-broadcast"
    with live.connect(path) as sender, live.connect(path) as other:
        sender.send("same words")
        assert live.recv(other) == "same words"
        other.send("same words")
        # The first message the sender gets is the other client's copy, not its own.
        assert live.recv(sender) == "same words"
        live.store.publish(live.channel("broadcast", facility), "marker")
        assert live.recv(sender) == "marker"
        assert live.recv(other) == "marker"


# --- refusals ----------------------------------------------------------------------------------------


def test_allowed_channels_permission_denied_is_403(live):
    status, _headers, body = servers.http_request(
        live.server.port, "GET", "/ws/forbidden?subscribe-broadcast", upgrade_headers()
    )
    assert status == 403
    assert b"the facility 'forbidden' is closed to websockets" in body
    with pytest.raises(InvalidStatus) as refused:
        live.connect("/ws/forbidden?subscribe-broadcast")
    assert refused.value.response.status_code == 403
    live.assert_no_tracebacks()


def test_allowed_channels_may_drop_channels(live):
    facility = "readonly"
    with live.connect(f"/ws/{facility}?subscribe-broadcast") as listener, \
            live.connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast") as client:
        client.send("must not be published")
        marker = f"marker {uuid.uuid4()}"
        live.store.publish(live.channel("broadcast", facility), marker)
        assert live.recv(listener) == marker
        assert live.recv(client) == marker


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_plain_requests_to_the_websocket_url_get_400(live, method):
    status, headers, body = servers.http_request(live.server.port, method, "/ws/foo?subscribe-broadcast")
    assert status == 400
    assert headers["content-type"].startswith("text/plain")
    assert b"websocket" in body.lower()


def test_missing_websocket_version_gets_426(live):
    headers = upgrade_headers()
    del headers["Sec-WebSocket-Version"]
    status, response_headers, body = servers.http_request(live.server.port, "GET", "/ws/foo", headers)
    assert status == 426
    assert response_headers["sec-websocket-version"] == "13"
    assert b"Sec-WebSocket-Version" in body


def test_foreign_origin_gets_403_and_own_origin_is_accepted(live, facility):
    with pytest.raises(InvalidStatus) as refused:
        live.connect(f"/ws/{facility}?subscribe-broadcast", origin="http://evil.example")
    assert refused.value.response.status_code == 403
    assert b"evil.example" in refused.value.response.body
    own_origin = f"http://127.0.0.1:{live.server.port}"
    with live.connect(f"/ws/{facility}?subscribe-broadcast", origin=own_origin) as ws:
        live.store.publish(live.channel("broadcast", facility), "welcome")
        assert live.recv(ws) == "welcome"


def test_first_offered_subprotocol_is_echoed(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-broadcast", subprotocols=["chat", "superchat"]) as ws:
        assert ws.subprotocol == "chat"


# --- closing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", CLOSE_CODES)
def test_every_valid_close_code_closes_cleanly(live, facility, code):
    channel = live.channel("broadcast", facility)
    with live.connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast") as ws:
        ws.close(code, "bye")
    assert ws.protocol.close_rcvd is not None, "the server did not answer the close frame"
    assert ws.protocol.close_rcvd.code == code
    assert servers.wait_unsubscribed(live.store, [channel]) == {channel: 0}
    live.assert_no_tracebacks()


def test_nothing_but_the_close_frame_follows_a_close(live, facility):
    sock, rest = servers.raw_upgrade(live.server, f"/ws/{facility}?subscribe-broadcast")
    with sock:
        sock.sendall(client_frame(constants.OP_CLOSE, (1000).to_bytes(2, "big")))
        data = rest
        while chunk := sock.recv(65536):
            data += chunk
    assert data == b"\x88\x02\x03\xe8"


def test_malformed_frames_close_with_their_code(live, facility):
    cases = {
        constants.CLOSE_INVALID_PAYLOAD: client_frame(constants.OP_TEXT, b"caf\xc3"),
        constants.CLOSE_PROTOCOL_ERROR: b"\x81\x05hello",  # unmasked client frame
    }
    if live.site_name == "plain":
        cases[constants.CLOSE_MESSAGE_TOO_BIG] = client_frame(
            constants.OP_BINARY, b"x" * (MAX_MESSAGE_SIZE + 1)
        )
    path = f"/ws/{facility}?subscribe-broadcast&publish-broadcast"
    for code, frame in cases.items():
        with live.connect(f"/ws/{facility}?subscribe-broadcast") as listener:
            sock, rest = servers.raw_upgrade(live.server, path)
            with sock:
                sock.sendall(frame)
                events = servers.read_until_closed(sock, rest)
            closes = [event for event in events if isinstance(event, CloseReceived)]
            assert [close.code for close in closes] == [code]
            marker = f"marker {code}"
            live.store.publish(live.channel("broadcast", facility), marker)
            assert live.recv(listener) == marker, "a malformed message was published"
    assert live.store.get(live.channel("broadcast", facility)) is None
    live.assert_no_tracebacks()


# --- payloads ----------------------------------------------------------------------------------------


def test_binary_round_trip_is_binary_and_utf8_bytes_come_back_as_text(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
        ws.send(b"\x00\xff\x80 not text")
        assert live.recv(ws) == b"\x00\xff\x80 not text"
        ws.send(b"plain ascii bytes")
        assert live.recv(ws) == "plain ascii bytes"


def test_invalid_utf8_from_redis_arrives_in_a_binary_frame(live, facility):
    sock, rest = servers.raw_upgrade(live.server, f"/ws/{facility}?subscribe-broadcast")
    with sock:
        live.store.publish(live.channel("broadcast", facility), b"\xff\xfe broken \xc3")
        live.store.publish(live.channel("broadcast", facility), "fine text")
        assert rest == b""
        messages = servers.read_frames(sock, count=2)
    assert [(m.binary, m.data) for m in messages] == [(True, b"\xff\xfe broken \xc3"), (False, b"fine text")]


def test_non_ascii_text_round_trip(live, facility):
    text = "Grüße, 世界 ✓ 😀 \u0000 end"
    with live.connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
        ws.send(text)
        assert live.recv(ws) == text
    assert live.store.get(live.channel("broadcast", facility)) == text.encode("utf-8")


def test_heartbeat_is_answered_and_never_published(plain, facility):
    path = f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo"
    with plain.connect(f"/ws/{facility}?subscribe-broadcast") as listener, plain.connect(path) as client:
        client.send(HEARTBEAT)
        assert client.recv(timeout=RECV_TIMEOUT) == HEARTBEAT
        plain.store.publish(plain.channel("broadcast", facility), "marker")
        assert plain.recv(listener) == "marker"
        assert plain.recv(client) == "marker"
    assert plain.store.get(plain.channel("broadcast", facility)) is None


def test_burst_of_messages_is_delivered_at_once(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-broadcast") as ws:
        pipe = live.store.pipeline(transaction=False)
        for number in range(5):
            pipe.publish(live.channel("broadcast", facility), f"burst {number}")
        assert pipe.execute() == [1] * 5
        assert [live.recv(ws) for _ in range(5)] == [f"burst {number}" for number in range(5)]


# --- many clients, subscriptions released ------------------------------------------------------------


def test_fifty_clients_receive_one_broadcast_and_leave_no_subscription(live, facility):
    channel = live.channel("broadcast", facility)
    path = f"/ws/{facility}?subscribe-broadcast"
    with ExitStack() as stack:
        clients = [stack.enter_context(live.connect(path)) for _ in range(40)]
        # Closed without a close frame: the server must notice the dead connections itself.
        aborted = [stack.enter_context(servers.raw_upgrade(live.server, path)[0]) for _ in range(10)]
        # PUBLISH counts Redis subscribers: the hub is one, however many websockets it serves.
        receivers = 1 if live.kind in HUB_KINDS else 50
        assert live.store.publish(channel, "to all fifty") == receivers
        assert [live.recv(ws) for ws in clients] == ["to all fifty"] * 40
        for sock in aborted:
            events = servers.read_frames(sock, count=1)
            assert [(type(e), e.data) for e in events] == [(Message, b"to all fifty")]
    assert servers.wait_unsubscribed(live.store, [channel]) == {channel: 0}
    live.assert_no_tracebacks()


def test_anonymous_subscribe_user_is_logged(live, facility):
    with live.connect(f"/ws/{facility}?subscribe-user", live.anonymous()):
        deadline = time.monotonic() + RECV_TIMEOUT
        while "asked for subscribe-user" not in live.server.output_since(live.mark):
            assert time.monotonic() < deadline, "no warning about the anonymous subscribe-user in the log"
            time.sleep(0.05)
    assert f"facility '{facility}'" in live.server.output_since(live.mark)


# --- pieces of the loop, without a server ------------------------------------------------------------


def test_echo_filter_drops_exactly_the_own_copies():
    echo = EchoFilter(publishers={"a", "b"}, subscribed={"b", "c"})
    echo.published(b"x")
    echo.published(b"x")
    assert echo.is_echo("a", b"x") is False  # not subscribed there: it never comes back
    assert echo.is_echo("b", b"x") is True
    assert echo.is_echo("b", b"x") is True
    assert echo.is_echo("b", b"x") is False  # a third copy is somebody else's
    assert echo.is_echo("c", b"x") is False


def test_select_hook_handles_descriptors_above_1024():
    server = WebsocketWSGIServer.__new__(WebsocketWSGIServer)
    servers.raise_fd_limit(2200)
    padding = []
    try:
        while True:
            left, right = socket.socketpair()
            padding.append((left, right))
            if left.fileno() > 1100:
                break
        left, right = padding[-1]
        assert server.select([left.fileno()], [], [], 0.0)[0] == []
        right.sendall(b"x")
        ready = server.select([left.fileno(), padding[0][0].fileno()], [], [], 5.0)[0]
        assert ready == [left.fileno()]
        with pytest.raises(ValueError):
            select.select([left.fileno()], [], [], 0)  # what 0.6.0 used would fail here
    finally:
        for left, right in padding:
            left.close()
            right.close()



# --- Redis going away --------------------------------------------------------------------------------
#
# Deliberately different per server. The development server's loop waits on each websocket's own
# pub/sub connection: when it breaks there is nothing left to deliver from, so the websocket is
# closed with 1011. With a hub (uWSGI, gevent server) the websockets do not depend on a connection
# of their own: they stay open while the hub reconnects, then get the persisted messages again and
# the live ones. Either way a new websocket is refused with 503 while Redis is away, because it
# could not be subscribed, and plain HTTP goes on.


def upgrade_status(server: servers.ServerProcess, path: str) -> tuple[int, bytes]:
    status, _headers, body = servers.http_request(server.port, "GET", path, upgrade_headers())
    return status, body


@pytest.mark.parametrize("kind", kinds(*(kind for kind in KINDS if kind not in HUB_KINDS)))
def test_redis_going_away_closes_with_1011_and_later_requests_get_503(kind):
    from ws4redis.embedded_redis import EmbeddedRedis

    with EmbeddedRedis() as own_redis:
        site = servers.Site(own_redis.url)
        try:
            with servers.serving(servers.STARTERS[kind](site)) as server:
                with servers.ws_connect(server, "/ws/doomed?subscribe-broadcast") as ws:
                    own_redis.stop()
                    with pytest.raises(ConnectionClosedError) as closed:
                        ws.recv(timeout=RECV_TIMEOUT)
                    assert closed.value.rcvd is not None
                    assert closed.value.rcvd.code == constants.CLOSE_INTERNAL_ERROR
                status, body = upgrade_status(server, "/ws/doomed?subscribe-broadcast")
                assert status == 503
                assert b"message broker is unreachable" in body
                assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")
                assert server.alive()
                assert not server.tracebacks()
        finally:
            site.cleanup()


@pytest.mark.parametrize("kind", kinds(*HUB_KINDS))
def test_redis_restarting_keeps_hub_websockets_open_and_delivery_resumes(kind):
    from ws4redis.embedded_redis import EmbeddedRedis

    channel, path = "broadcast:outage", "/ws/outage?subscribe-broadcast"
    with EmbeddedRedis() as own_redis:
        store = redis.Redis(host=own_redis.host, port=own_redis.port)
        site = servers.Site(own_redis.url)
        try:
            with servers.serving(servers.STARTERS[kind](site)) as server, \
                    servers.ws_connect(server, path) as listener, \
                    servers.ws_connect(server, "/ws/outage?publish-broadcast") as talker:
                talker.send("kept through the outage")
                assert listener.recv(timeout=RECV_TIMEOUT) == "kept through the outage"
                store.save()  # the persisted message survives the restart
                own_redis.stop()
                talker.send("said while Redis is down")
                with pytest.raises(ConnectionClosedError) as closed:
                    talker.recv(timeout=RECV_TIMEOUT)
                assert closed.value.rcvd.code == constants.CLOSE_TRY_AGAIN_LATER
                wait_until(lambda: upgrade_status(server, path)[0] == 503, RECV_TIMEOUT,
                           "503 for new websockets")
                assert b"message broker is unreachable" in upgrade_status(server, path)[1]
                assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")
                own_redis.start()
                wait_until(lambda: store.pubsub_numsub(channel) == [(channel.encode(), 1)], RECV_TIMEOUT,
                           "the hub subscribed again")
                # The listener never noticed: it gets the persisted message again, then live ones.
                assert listener.recv(timeout=RECV_TIMEOUT) == "kept through the outage"
                store.publish(channel, "after the outage")
                assert listener.recv(timeout=RECV_TIMEOUT) == "after the outage"
                with servers.ws_connect(server, path) as newcomer:
                    assert newcomer.recv(timeout=RECV_TIMEOUT) == "kept through the outage"
                log = server.output()
                assert "lost the Redis pub/sub connection" in log
                assert "restored after a" in log and "persisted messages re-sent" in log
                assert not server.tracebacks()
        finally:
            store.close()
            site.cleanup()


@pytest.mark.parametrize("kind", kinds())
def test_idle_connections_get_pings_and_heartbeats(redis_server, kind):
    overrides = {"WS4REDIS_PING_INTERVAL": "0.5", "WS4REDIS_HEARTBEAT": repr(HEARTBEAT)}
    site = servers.Site(redis_server.url, overrides)
    try:
        with servers.serving(servers.STARTERS[kind](site)) as server:
            sock, rest = servers.raw_upgrade(server, "/ws/idle?subscribe-broadcast")
            with sock:
                assert rest == b""
                protocol = WebSocketProtocol(client=True)
                pings = 0
                heartbeat = Message(HEARTBEAT.encode(), False)
                while True:
                    events = protocol.receive_data(sock.recv(65536))
                    pings += sum(isinstance(event, Ping) for event in events)
                    if heartbeat in events:
                        break
                sock.sendall(protocol.data_to_send())  # the pongs
            assert pings >= 2
            assert not server.tracebacks()
    finally:
        site.cleanup()


@pytest.fixture(params=[
    pytest.param((kind, site), id=f"{kind}-{site}") for kind in ("runserver", "gevent") for site in SITES
])
def eager_live(request, pool, sites, store):
    return _live(request, pool, sites, store)


def test_frames_sent_right_behind_the_handshake_are_not_lost(eager_live, facility):
    """A client must wait for the 101 before sending frames (RFC 6455, section 4.1); one that does not
    is still served by runserver and the gevent server. Under uWSGI such bytes stay in uWSGI's request
    buffer."""
    live = eager_live
    request = (
        f"GET /ws/{facility}?subscribe-broadcast&publish-broadcast&echo HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{live.server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {RFC_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", live.server.port), timeout=RECV_TIMEOUT) as sock:
        sock.sendall(request + client_frame(constants.OP_TEXT, b"eager"))
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(4096)
        head, _, rest = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101")
        protocol = WebSocketProtocol(client=True)
        events = protocol.receive_data(rest)
        while not any(isinstance(event, Message) for event in events):
            events += protocol.receive_data(sock.recv(65536))
    assert [event for event in events if isinstance(event, Message)] == [Message(b"eager", False)]


@pytest.mark.parametrize("kind", kinds())
def test_a_failing_hook_gets_a_readable_500_and_the_server_goes_on(redis_server, kind):
    hook = "'tests.project.views.broken_allowed_channels'"
    site = servers.Site(redis_server.url, {"WS4REDIS_ALLOWED_CHANNELS": hook})
    try:
        with servers.serving(servers.STARTERS[kind](site)) as server:
            for _ in range(2):
                status, headers, body = servers.http_request(
                    server.port, "GET", "/ws/any?subscribe-broadcast", upgrade_headers()
                )
                assert status == 500
                assert headers["content-type"].startswith("text/plain")
                assert b"could not set up the websocket" in body
            assert "RuntimeError: bug in the project's allowed-channels hook" in server.output()
            assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")
            assert server.alive()
    finally:
        site.cleanup()


SESSION_STORES = {
    # django-redis-sessions, which 0.6.0's docs recommended.
    "redis_sessions": {"SESSION_ENGINE": "'redis_sessions.session'",
                       "SESSION_REDIS": "{'url': os.environ['WS4REDIS_TEST_REDIS_URL']}"},
    # Django's own RedisCache with the cache session engine.
    "cache": {"SESSION_ENGINE": "'django.contrib.sessions.backends.cache'"},
}


def assert_user_and_group_delivery(ws, store: redis.Redis, user: str, group: str, facility: str) -> None:
    """``ws`` (on ?subscribe-user&subscribe-group) receives what is published to its user and group."""
    assert store.publish(f"user:{user}:{facility}", f"for {user}") == 1
    assert ws.recv(timeout=RECV_TIMEOUT) == f"for {user}"
    assert store.publish(f"group:{group}:{facility}", f"for {group}") == 1
    assert ws.recv(timeout=RECV_TIMEOUT) == f"for {group}"


@pytest.mark.parametrize("engine", list(SESSION_STORES))
@pytest.mark.parametrize("kind", kinds())
def test_the_session_stores_of_0_6_0_docs_identify_the_user_on_every_server(redis_server, kind, engine):
    site = servers.Site(redis_server.url, SESSION_STORES[engine], imports="import os").migrate()
    store = redis.Redis(host=redis_server.host, port=redis_server.port)
    facility = f"stores{uuid.uuid4().hex[:8]}"
    try:
        sessions = site.sessions([{"username": "carol", "groups": ["ops"]}])["users"]
        with servers.serving(servers.STARTERS[kind](site)) as server:
            path = f"/ws/{facility}?subscribe-user&subscribe-group"
            with servers.ws_connect(server, path, session=sessions["carol"]) as ws:
                assert_user_and_group_delivery(ws, store, "carol", "ops", facility)
            assert not server.tracebacks(), server.tracebacks()
    finally:
        store.close()
        site.cleanup()


REDIS_OUTAGE = 5.0
RESUME_BOUND = 1.0  # the hub retries every 0.2 s at the most; the bound leaves room for a loaded machine


@pytest.mark.parametrize("kind", kinds(*HUB_KINDS))
def test_after_a_redis_outage_the_hub_is_back_at_once_and_nothing_published_after_is_lost(kind):
    from ws4redis.embedded_redis import EmbeddedRedis

    channel = "broadcast:quick"
    with EmbeddedRedis() as own_redis:
        site = servers.Site(own_redis.url)
        try:
            with servers.serving(servers.STARTERS[kind](site)) as server, \
                    servers.ws_connect(server, "/ws/quick?subscribe-broadcast") as listener:
                own_redis.stop()
                time.sleep(REDIS_OUTAGE)
                own_redis.start()
                up = time.monotonic()
                store = redis.Redis(host=own_redis.host, port=own_redis.port)
                try:
                    counted: list[int] = []  # numbers Redis handed to a subscriber (the hub)
                    resumed = None
                    number = 0
                    while len(counted) < 20 and time.monotonic() - up < RECV_TIMEOUT:
                        if store.publish(channel, f"after {number}"):
                            counted.append(number)
                            resumed = resumed or time.monotonic() - up
                        number += 1
                        time.sleep(0.01)
                finally:
                    store.close()
                assert resumed is not None, "the hub never subscribed again"
                assert resumed < RESUME_BOUND, f"subscribed again {resumed:.3f} s after Redis came back"
                got = [listener.recv(timeout=RECV_TIMEOUT) for _ in counted]
                assert got == [f"after {n}" for n in counted]
                assert counted == list(range(counted[0], counted[0] + len(counted)))
                print(f"{kind}: subscribed again {resumed * 1000:.0f} ms after Redis was back")
        finally:
            site.cleanup()


def session_store_site(broker_url: str, store_url: str, engine: str) -> servers.Site:
    """A site whose sessions live in the Redis at ``store_url``, apart from the message broker's."""
    overrides = {
        "redis_sessions": {"SESSION_ENGINE": "'redis_sessions.session'",
                           "SESSION_REDIS": f"{{'url': {store_url!r}}}"},
        "cache": {"SESSION_ENGINE": "'django.contrib.sessions.backends.cache'",
                  "CACHES": f"{{'default': {{'BACKEND': 'django.core.cache.backends.redis.RedisCache', "
                            f"'LOCATION': {store_url!r}}}}}"},
    }[engine]
    return servers.Site(broker_url, overrides).migrate()


@pytest.mark.parametrize("engine", list(SESSION_STORES))
@pytest.mark.parametrize("kind", kinds())
def test_a_session_store_that_fails_answers_503_never_an_anonymous_websocket(redis_server, kind, engine):
    from ws4redis.embedded_redis import EmbeddedRedis

    facility = f"blip{uuid.uuid4().hex[:8]}"
    path = f"/ws/{facility}?subscribe-user&subscribe-group"
    store = redis.Redis(host=redis_server.host, port=redis_server.port)
    with EmbeddedRedis() as session_redis:
        site = session_store_site(redis_server.url, session_redis.url, engine)
        try:
            key = site.sessions([{"username": "dave", "groups": ["ops"]}])["users"]["dave"]
            redis.Redis(host=session_redis.host, port=session_redis.port).save()  # survives the restart
            with servers.serving(servers.STARTERS[kind](site)) as server:
                session_redis.stop()
                headers = {**upgrade_headers(), "Cookie": f"sessionid={key}"}
                status, _headers, body = servers.http_request(server.port, "GET", path, headers)
                assert (status, body) == (503, b"Service Unavailable: the session store is unreachable\n")
                session_redis.start()
                with servers.ws_connect(server, path, session=key) as ws:
                    assert_user_and_group_delivery(ws, store, "dave", "ops", facility)
                assert not server.tracebacks(), server.tracebacks()
        finally:
            store.close()
            site.cleanup()


@pytest.mark.parametrize("kind", kinds())
def test_a_page_on_another_port_of_the_same_host_may_not_open_websockets(redis_server, kind):
    """Django's CSRF origin rule: the browser sends the user's cookies there too, the channels stay closed."""
    site = servers.Site(redis_server.url)
    try:
        with servers.serving(servers.STARTERS[kind](site)) as server:
            path = "/ws/origins?subscribe-broadcast"
            for origin in (f"http://127.0.0.1:{server.port + 1}", f"https://127.0.0.1:{server.port}"):
                headers = {**upgrade_headers(), "Origin": origin}
                status, _headers, body = servers.http_request(server.port, "GET", path, headers)
                assert status == 403, (origin, body)
                assert b"CSRF_TRUSTED_ORIGINS" in body
            with servers.ws_connect(server, path, origin=f"http://127.0.0.1:{server.port}") as ws:
                ws.ping().wait(RECV_TIMEOUT)  # the page's own origin is served
    finally:
        site.cleanup()


@pytest.mark.parametrize("kind", kinds(*HUB_KINDS))
def test_when_redis_drops_the_hub_for_its_output_buffer_limit_the_log_says_so_and_delivery_resumes(kind):
    from ws4redis.embedded_redis import EmbeddedRedis

    channel, path = "broadcast:burst", "/ws/burst?subscribe-broadcast"
    with EmbeddedRedis() as own_redis:
        store = redis.Redis(host=own_redis.host, port=own_redis.port)
        store.config_set("client-output-buffer-limit", "pubsub 65536 32768 60")
        # The metrics under WEBSOCKET_URL, where 0.6.0's wsgi.py lets uWSGI's requests reach ws4redis.
        site = servers.Site(own_redis.url, {"WS4REDIS_MONITORING": "{'metrics': '/ws/_metrics'}"})
        try:
            with servers.serving(servers.STARTERS[kind](site)) as server, \
                    servers.ws_connect(server, path) as listener:
                mark = server.mark()
                # One message larger than the hard limit: Redis closes the hub's connection at once.
                assert store.publish(channel, "x" * 200_000) == 1
                wait_until(lambda: "client-output-buffer-limit" in server.output_since(mark), RECV_TIMEOUT,
                           "the log line naming the Redis limit")
                assert "pubsub 65536 32768 60" in server.output_since(mark)
                wait_until(lambda: store.publish(channel, "small again") == 1, RECV_TIMEOUT,
                           "the hub subscribed again")
                assert listener.recv(timeout=RECV_TIMEOUT) == "small again"
                # Operators see it without reading Redis' log: the counter of drops by Redis.
                metrics = servers.http_request(server.port, "GET", "/ws/_metrics")[2].decode()
                assert "\nws4redis_hub_drops_by_redis_total 1.0\n" in metrics, metrics
                assert "\nws4redis_hub_reconnects_total 1.0\n" in metrics
                assert not server.tracebacks(), server.tracebacks()
        finally:
            store.close()
            site.cleanup()
