"""0.6.0's uWSGI command lines and WSGI modules, unchanged, served by this package.

Each command line of django-websocket-redis 0.6.0's documentation is started
in a real uWSGI process: the single-server form (its wsgi.py), the same with
either monkey-patch flag, under a master with several workers, and the
two-server form (Django on ``--socket``, websockets on ``--http-socket``,
both on unix sockets as nginx reaches them). The whole cross-server suite
(tests/test_servers.py) runs against the single-server form without a
monkey-patch flag; here each form shows that a websocket subscribes, receives,
publishes and that Django pages answer.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from websockets.sync.client import unix_connect

from tests import servers
from tests.polling import wait_until
from ws4redis.embedded_redis import free_port

pytestmark = pytest.mark.uwsgi

LATE_PATCH_WARNING = "--gevent-monkey-patch patches after Django is loaded"


@pytest.fixture
def site(redis_server):
    site = servers.Site(redis_server.url).migrate()
    yield site
    site.cleanup()


def roundtrip(connect, store: redis.Redis) -> None:
    """A websocket on a fresh facility receives a publish from Redis, and its own message comes back."""
    facility = f"dropin{uuid.uuid4().hex[:8]}"
    with connect(f"/ws/{facility}?subscribe-broadcast&publish-broadcast&echo") as ws:
        assert store.publish(f"broadcast:{facility}", "from redis") == 1
        assert ws.recv(timeout=10) == "from redis"
        ws.send("from the browser")
        assert ws.recv(timeout=10) == "from the browser"
        assert store.get(f"broadcast:{facility}") == b"from the browser"


def django_page(port: int) -> tuple[int, bytes]:
    status, _headers, body = servers.http_request(port, "GET", "/ping")
    return status, body


SINGLE_SERVER_FORMS = {
    "0.6.0 wsgi.py, no monkey patch": ("tests.project.wsgi", None),
    "0.6.0 wsgi.py, --gevent-monkey-patch": ("tests.project.wsgi", "--gevent-monkey-patch"),
    "0.6.0 wsgi.py, --gevent-early-monkey-patch": ("tests.project.wsgi", "--gevent-early-monkey-patch"),
    "ws4redis.uwsgi_runserver:application, no monkey patch": ("ws4redis.uwsgi_runserver:application", None),
}


@pytest.mark.parametrize("form", list(SINGLE_SERVER_FORMS))
def test_the_single_server_command_line_serves_websockets_and_django(form, site, redis_client):
    module, monkey_patch = SINGLE_SERVER_FORMS[form]
    with servers.serving(servers.uwsgi(site, gevent=100, module=module, monkey_patch=monkey_patch)) as server:
        roundtrip(lambda path: servers.ws_connect(server, path), redis_client)
        assert django_page(server.port) == (200, b"pong")
        output = server.output()
        assert not server.tracebacks(), server.tracebacks()
        assert output.count(LATE_PATCH_WARNING) == (1 if monkey_patch == "--gevent-monkey-patch" else 0)


@pytest.mark.parametrize("monkey_patch", [None, "--gevent-monkey-patch", "--gevent-early-monkey-patch"])
def test_a_master_with_two_workers_gives_each_worker_its_own_hub_started_at_the_fork(
        monkey_patch, site, redis_client):
    server = servers.uwsgi(site, gevent=100, module="tests.project.wsgi", monkey_patch=monkey_patch,
                           workers=2)
    with servers.serving(server):
        # Eager: the hubs connect when the workers start, before any websocket asks for one.
        wait_until(lambda: len(hub_names(redis_client)) == 2, what="a hub per worker")
        workers = process_tree(server.process.pid) - {server.process.pid}
        assert {int(name.partition(":")[2]) for name in hub_names(redis_client)} <= workers
        for _ in range(4):  # the kernel spreads the connections over both workers
            roundtrip(lambda path: servers.ws_connect(server, path), redis_client)
        assert not server.tracebacks(), server.tracebacks()


def hub_names(store: redis.Redis) -> list[str]:
    return [client["name"] for client in store.client_list() if client["name"].startswith("ws4redis-hub:")]


def process_tree(pid: int) -> set[int]:
    """``pid`` and its children."""
    with open(f"/proc/{pid}/task/{pid}/children") as children:
        return {pid, *(int(child) for child in children.read().split())}


class UnixServer(servers.ServerProcess):
    """A uWSGI instance listening on a unix socket, as behind nginx."""

    def __init__(self, name: str, args: list[str], site: servers.Site, path: Path) -> None:
        super().__init__(name, args, site, port=0)
        self.path = path

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_UNIX) as sock:
            try:
                sock.connect(str(self.path))
            except OSError:
                return False
        return True

    def _ready(self) -> bool:
        return True


def two_server_form(site: servers.Site) -> tuple[UnixServer, UnixServer]:
    """0.6.0's two uWSGI command lines, each on its unix socket."""
    django_socket = site.directory / "django.socket"
    web_socket = site.directory / "web.socket"
    common = ["--virtualenv", sys.prefix, "--chdir", str(servers.ROOT), "--die-on-term",
              "--disable-logging"]
    django = UnixServer("uwsgi-django", [
        servers.uwsgi_binary(), *common, "--socket", str(django_socket), "--buffer-size=32768",
        "--workers=5", "--master", "--module", "tests.project.wsgi_django",
    ], site, django_socket)
    websocket = UnixServer("uwsgi-websocket", [
        servers.uwsgi_binary(), *common, "--http-socket", str(web_socket), "--gevent", "1000",
        "--http-websockets", "--workers=2", "--master", "--module", "tests.project.wsgi_websocket",
    ], site, web_socket)
    return django, websocket


def uwsgi_protocol_get(path: Path, target: str) -> tuple[int, bytes]:
    """A GET over the uwsgi protocol (what nginx's uwsgi_pass speaks); returns (status, body)."""
    variables = {
        "REQUEST_METHOD": "GET", "PATH_INFO": target, "QUERY_STRING": "", "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_HOST": "127.0.0.1",
        "REMOTE_ADDR": "127.0.0.1",
    }
    body = b"".join(
        struct.pack("<H", len(key)) + key.encode() + struct.pack("<H", len(value)) + value.encode()
        for key, value in variables.items()
    )
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(struct.pack("<BHB", 0, len(body), 0) + body)
        response = b""
        while chunk := sock.recv(65536):
            response += chunk
    head, _, content = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), content


def test_the_two_server_form_behind_nginx_serves_django_and_websockets(site, redis_client):
    django, websocket = two_server_form(site)
    with servers.serving(django), servers.serving(websocket):
        assert uwsgi_protocol_get(django.path, "/ping") == (200, b"pong")

        def connect(path: str):
            return unix_connect(str(websocket.path), f"ws://127.0.0.1{path}", proxy=None, compression=None,
                                open_timeout=20, close_timeout=10)

        wait_until(lambda: len(hub_names(redis_client)) == 2, what="a hub per websocket worker")
        for _ in range(4):
            roundtrip(connect, redis_client)
        assert not websocket.tracebacks(), websocket.tracebacks()
        assert not django.tracebacks(), django.tracebacks()


def concurrent_overlaps(port: int, count: int = 3) -> list[str]:
    """``count`` requests to the view that holds a transaction open while it yields, all at once."""
    answers: list[str] = []

    def one() -> None:
        status, _headers, body = servers.http_request(port, "GET", "/overlap?hold=0.5", timeout=30)
        answers.append(f"{status} {body.decode()}")

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
        time.sleep(0.05)
    for thread in threads:
        thread.join(60)
    return answers


def test_late_patching_shares_database_connections_and_ws4redis_keeps_django_requests_apart(site):
    """The hazard of --gevent-monkey-patch, shown on plain Django, and the safe default of ws4redis."""
    plain = servers.uwsgi(site, gevent=100, module="tests.project.wsgi_django",
                          monkey_patch="--gevent-monkey-patch")
    with servers.serving(plain):
        answers = concurrent_overlaps(plain.port)
    # Requests run inside each other's transactions ("inherited"), or Django refuses the connection
    # another greenlet opened (500).
    assert answers != ["200 own"] * 3, f"plain Django under --gevent-monkey-patch: {answers}"
    for monkey_patch in ("--gevent-monkey-patch", None):
        guarded = servers.uwsgi(site, gevent=100, module="tests.project.wsgi", monkey_patch=monkey_patch)
        with servers.serving(guarded):
            assert concurrent_overlaps(guarded.port) == ["200 own"] * 3, monkey_patch
    early = servers.uwsgi(site, gevent=100, module="tests.project.wsgi_django",
                          monkey_patch="--gevent-early-monkey-patch")
    with servers.serving(early):
        assert concurrent_overlaps(early.port) == ["200 own"] * 3  # a connection per greenlet


def test_with_redis_down_at_start_the_first_websocket_is_refused_at_once_with_503():
    site = servers.Site(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    try:
        with servers.serving(servers.uwsgi(site, gevent=100, module="tests.project.wsgi")) as server:
            time.sleep(0.5)  # the hub started at the fork has tried Redis by now
            started = time.monotonic()
            upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                       "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
            status, _headers, body = servers.http_request(server.port, "GET", "/ws/down?subscribe-broadcast",
                                                          upgrade)
            took = time.monotonic() - started
            assert (status, body) == (503, b"Service Unavailable: the message broker is unreachable\n")
            assert took < 3.0, f"the refusal took {took:.2f} s (the hub would have waited 5 s)"
    finally:
        site.cleanup()
