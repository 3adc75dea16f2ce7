"""What is particular to runserver with WSGI_APPLICATION = 'ws4redis.django_runserver.application'.

The websocket behaviour itself is tested under this server and under uWSGI
in tests/test_servers.py.
"""

from __future__ import annotations

import io
from wsgiref.util import setup_testing_defaults

import pytest
import redis

from tests import servers
from tests.wire import RFC_KEY


@pytest.fixture(scope="module")
def site(redis_server):
    site = servers.Site(redis_server.url).migrate()
    yield site
    site.cleanup()


def upgrade_environ(path: str, query: str) -> dict:
    environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": query,
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": RFC_KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "wsgi.input": io.BytesIO(),
    }
    setup_testing_defaults(environ)
    return environ


def test_other_requests_still_reach_django(site):
    with servers.serving(servers.runserver(site)) as server:
        assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")
        assert servers.http_request(server.port, "GET", "/no/such/page")[0] == 404
        with servers.ws_connect(server, "/ws/runserver?subscribe-broadcast&publish-broadcast&echo") as ws:
            ws.send("still there")
            assert ws.recv(timeout=20) == "still there"
            # Django keeps answering while a websocket holds a thread.
            assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")
        assert not server.tracebacks()


def test_without_threads_websockets_get_a_readable_500(site):
    with servers.serving(servers.runserver(site, ["--nothreading"])) as server:
        status, headers, body = servers.http_request(
            server.port, "GET", "/ws/foo?subscribe-broadcast",
            {"Upgrade": "websocket", "Connection": "Upgrade",
             "Sec-WebSocket-Key": RFC_KEY, "Sec-WebSocket-Version": "13"},
        )
        assert status == 500
        assert headers["content-type"].startswith("text/plain")
        assert b"without --nothreading" in body
        assert servers.http_request(server.port, "GET", "/ping")[::2] == (200, b"pong")


def test_a_bad_setting_stops_runserver_at_start_up(redis_server):
    site = servers.Site(redis_server.url, {"WS4REDIS_PREFIX": "'has space'"})
    try:
        with pytest.raises(servers.ServerFailed) as failed:
            servers.runserver(site).start()
        assert "WS4REDIS_PREFIX must be a string without whitespace" in str(failed.value)
    finally:
        site.cleanup()


def test_application_outside_the_development_server_answers_500_and_unsubscribes(redis_server):
    from ws4redis.django_runserver import application

    answers = []

    def start_response(status, headers, exc_info=None):
        answers.append((status, dict(headers)))

    body = b"".join(application(upgrade_environ("/ws/elsewhere", "subscribe-broadcast"), start_response))
    assert answers[0][0] == "500 Internal Server Error"
    assert b"only works under Django's development server" in body
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        assert client.pubsub_numsub("broadcast:elsewhere") == [(b"broadcast:elsewhere", 0)]
    finally:
        client.close()
