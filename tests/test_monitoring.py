"""Metrics, health endpoints and connection log lines of real servers (WS4REDIS_MONITORING).

Every count is checked against what the test itself did: the numbers a scrape
shows before an action are subtracted from those after it, so what other
tests did to the same server does not matter.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import servers
from tests.polling import wait_until
from tests.servers import Site, http_request, raw_upgrade, read_until_closed, serving
from tests.servers import ws_connect as ws
from ws4redis import constants
from ws4redis.embedded_redis import free_port
from ws4redis.protocol import CloseReceived
from ws4redis.publisher import RedisPublisher

UNDER_WEBSOCKET_URL = {"metrics": "/ws/_metrics", "healthz": "/ws/_healthz", "readyz": "/ws/_readyz"}


def scrape(server: servers.ServerProcess, path: str = "/metrics") -> dict[tuple[str, tuple], float]:
    """``{(sample name, ((label, value), ...)): value}`` of one scrape."""
    status, headers, body = http_request(server.port, "GET", path)
    assert status == 200, (status, body[:300])
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    site = Site(redis_server.url, {"WS4REDIS_MONITORING": "True", "WS4REDIS_SEND_QUEUE_MESSAGES": "200"})
    yield site
    site.cleanup()


@pytest.fixture(scope="module")
def server(site) -> Iterator[servers.ServerProcess]:
    with serving(servers.gevent_server(site)) as server:
        yield server


def test_health_and_readiness_answer_200_while_the_hub_reaches_redis(server):
    assert http_request(server.port, "GET", "/healthz")[::2] == (200, b"ok\n")
    # Ready once the hub, which connects as the server starts, holds its pub/sub connection.
    wait_until(lambda: http_request(server.port, "GET", "/readyz")[0] == 200, what="ready")
    assert http_request(server.port, "GET", "/readyz")[::2] == (200, b"ready\n")
    assert value(scrape(server), "ws4redis_hub_connected") == 1
    assert value(scrape(server), "ws4redis_redis_pubsub_connections") == 1


def test_a_fan_out_is_counted_as_it_was_sent(server):
    subscribers, messages = 5, 40
    before = scrape(server)
    with ExitStack() as stack:
        path = "/ws/counted?subscribe-broadcast"
        clients = [stack.enter_context(ws(server, path)) for _ in range(subscribers)]
        during = scrape(server)
        assert delta(before, during, "ws4redis_websockets_open", server="gevent") == subscribers
        assert delta(before, during, "ws4redis_subscriptions", audience="broadcast") == subscribers
        publisher = RedisPublisher(facility="counted", broadcast=True)
        for n in range(messages):
            publisher.publish_message(f"message {n}")
        expected = [f"message {n}" for n in range(messages)]
        for client in clients:
            assert [client.recv(timeout=10) for _ in range(messages)] == expected
    def closed() -> bool:
        now = scrape(server)
        return (delta(before, now, "ws4redis_websockets_open", server="gevent") == 0
                and delta(before, now, "ws4redis_close_codes_sent_total", code="1000") == subscribers)

    wait_until(closed, what="every websocket counted as closed")
    after = scrape(server)
    deliveries = subscribers * messages
    assert delta(before, after, "ws4redis_deliveries_total") == deliveries
    assert delta(before, after, "ws4redis_frames_sent_total") >= deliveries
    frame_bytes = sum(len(f"message {n}") + 2 for n in range(messages)) * subscribers
    assert delta(before, after, "ws4redis_bytes_sent_total") >= frame_bytes
    assert delta(before, after, "ws4redis_deliveries_dropped_total", reason="slow_consumer") == 0
    assert delta(before, after, "ws4redis_websockets_opened_total", server="gevent") == subscribers
    assert delta(before, after, "ws4redis_close_codes_received_total", code="1000") == subscribers
    assert delta(before, after, "ws4redis_close_codes_sent_total", code="1000") == subscribers


def test_messages_of_websockets_are_counted_when_redis_takes_them_and_the_log_has_a_line_per_websocket(
        server):
    before = scrape(server)
    mark = server.mark()
    with ws(server, "/ws/talk?publish-broadcast&subscribe-broadcast&echo") as client:
        for n in range(3):
            client.send(f"said {n}")
            assert client.recv(timeout=10) == f"said {n}"
    wait_until(lambda: "websocket close" in server.output_since(mark), what="the close log line")
    after = scrape(server)
    assert delta(before, after, "ws4redis_messages_received_total") == 3
    assert delta(before, after, "ws4redis_messages_published_total") == 3
    log = server.output_since(mark)
    assert "websocket open server=gevent peer=127.0.0.1 path=/ws/talk channels=broadcast:talk" in log
    close = next(line for line in log.splitlines() if "websocket close" in line)
    for field in ("server=gevent", "path=/ws/talk", "code_sent=1000", "code_received=1000", "messages_in=3",
                  "duration="):
        assert field in close, close


def test_refused_handshakes_are_counted_by_status(server):
    before = scrape(server)
    status = http_request(server.port, "GET", "/ws/refused?subscribe-broadcast", {
        "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Origin": "https://evil.example",
    })[0]
    assert status == 403
    assert http_request(server.port, "GET", "/ws/refused", {"Upgrade": "websocket"})[0] == 400
    after = scrape(server)
    assert delta(before, after, "ws4redis_handshake_rejections_total", status="403") == 1
    assert delta(before, after, "ws4redis_handshake_rejections_total", status="400") == 1


def test_a_slow_consumer_is_counted_with_what_it_did_not_get(server):
    before = scrape(server)
    sock, rest = raw_upgrade(server, "/ws/slowpoke?subscribe-broadcast", receive_buffer=4096)
    publisher = RedisPublisher(facility="slowpoke", broadcast=True)
    pipe = publisher._connection.pipeline(transaction=False)
    for n in range(3000):
        pipe.publish("broadcast:slowpoke", f"{n:05d}" + "x" * 2000)
    pipe.execute()
    # Not one byte read until the server gave up: Redis buffers for the hub, which may take its time.
    wait_until(lambda: delta(before, scrape(server), "ws4redis_slow_consumer_closes_total") == 1,
               what="the slow consumer closed")
    with sock:
        events = read_until_closed(sock, rest)
    assert [e.code for e in events if isinstance(e, CloseReceived)] == [constants.CLOSE_POLICY_VIOLATION]
    # The close code is counted once the server let the connection go, the rest once the hub
    # dispatched all 3000 (it may still have been at it when the consumer was closed).
    def settled() -> bool:
        now = scrape(server)
        return (delta(before, now, "ws4redis_close_codes_sent_total", code="1008") == 1
                and delta(before, now, "ws4redis_deliveries_total") == 3000)

    wait_until(settled, what="the connection released and every message dispatched")
    after = scrape(server)
    assert delta(before, after, "ws4redis_slow_consumer_closes_total") == 1
    assert delta(before, after, "ws4redis_close_codes_sent_total", code="1008") == 1
    dropped = delta(before, after, "ws4redis_deliveries_dropped_total", reason="slow_consumer")
    received = sum(1 for e in events if not isinstance(e, CloseReceived))
    assert dropped > 0
    assert delta(before, after, "ws4redis_deliveries_total") == 3000
    assert received + dropped <= 3000, (received, dropped)


def test_readiness_flips_while_redis_is_away_and_the_outage_is_counted(server, redis_server):
    before = scrape(server)
    with ws(server, "/ws/ready?subscribe-broadcast") as client:
        redis_server.stop()
        try:
            wait_until(lambda: http_request(server.port, "GET", "/readyz")[0] == 503, what="/readyz 503")
            status, _, body = http_request(server.port, "GET", "/readyz")
            assert (status, body) == (503, b"not ready: the hub is not connected to Redis\n")
            assert http_request(server.port, "GET", "/healthz")[0] == 200  # the process still serves
            assert value(scrape(server), "ws4redis_hub_connected") == 0
            time.sleep(0.5)
        finally:
            redis_server.start()
        wait_until(lambda: http_request(server.port, "GET", "/readyz")[0] == 200, what="/readyz 200 again")
        RedisPublisher(facility="ready", broadcast=True).publish_message("back")
        assert client.recv(timeout=10) == "back"
    after = scrape(server)
    assert delta(before, after, "ws4redis_hub_reconnects_total") == 1
    assert delta(before, after, "ws4redis_hub_outage_seconds_total") >= 0.5


def test_the_stats_command_prints_the_numbers_of_a_running_server(server):
    with ws(server, "/ws/stats?subscribe-broadcast"):
        wait_until(lambda: value(scrape(server), "ws4redis_websockets_open", server="gevent") == 1,
                   what="the websocket counted")
        url = f"http://127.0.0.1:{server.port}/metrics"
        table = subprocess.run([sys.executable, "-m", "ws4redis", "stats", url], capture_output=True,
                               text=True, timeout=60, check=True).stdout
        as_json = json.loads(subprocess.run([sys.executable, "-m", "ws4redis", "stats", url, "--json"],
                                            capture_output=True, text=True, timeout=60, check=True).stdout)
    line = next(line for line in table.splitlines() if line.startswith("websockets_open{server=gevent}"))
    assert line.split()[-1] == "1"
    assert as_json["ws4redis_websockets_open"]["server=gevent"] == 1
    refused = subprocess.run([sys.executable, "-m", "ws4redis", "stats", f"http://127.0.0.1:{server.port}/nope"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "WS4REDIS_MONITORING" in refused.stderr


def test_without_the_setting_the_paths_belong_to_the_site(redis_server):
    site = Site(redis_server.url)
    try:
        with serving(servers.gevent_server(site, ["--websocket-only"])) as server:
            for path in ("/metrics", "/healthz", "/readyz"):
                assert http_request(server.port, "GET", path)[0] == 404
    finally:
        site.cleanup()


def test_one_scrape_shows_every_worker(site):
    with serving(servers.gevent_server(site, ["--workers", "2"])) as server:
        with ExitStack() as stack:
            for _ in range(8):
                stack.enter_context(ws(server, "/ws/workers?subscribe-broadcast"))
            wait_until(lambda: value(scrape(server), "ws4redis_workers") == 2, what="two workers counted")
            # Snapshots of the other worker are at most a second old.
            wait_until(lambda: value(scrape(server), "ws4redis_websockets_open", server="gevent") == 8,
                       what="the websockets of both workers counted")
            wait_until(lambda: value(scrape(server), "ws4redis_redis_pubsub_connections") == 2,
                       what="the hubs of both workers counted")
        wait_until(lambda: value(scrape(server), "ws4redis_websockets_open", server="gevent") == 0,
                   what="every websocket counted as closed")


@pytest.mark.uwsgi
@pytest.mark.parametrize(("module", "paths"), [
    pytest.param("tests.project.wsgi", UNDER_WEBSOCKET_URL, id="0.6.0-wsgi.py"),
    pytest.param("ws4redis.uwsgi_runserver:application", constants.MONITORING_PATHS, id="uwsgi_runserver"),
])
def test_uwsgi_workers_answer_the_same_endpoints(redis_server, module, paths):
    site = Site(redis_server.url, {"WS4REDIS_MONITORING": repr(paths)})
    try:
        with serving(servers.uwsgi(site, module=module, workers=2)) as server:
            assert http_request(server.port, "GET", paths["healthz"])[::2] == (200, b"ok\n")
            wait_until(lambda: http_request(server.port, "GET", paths["readyz"])[0] == 200, what="ready")
            with ExitStack() as stack:
                for _ in range(4):
                    stack.enter_context(ws(server, "/ws/uwsgi?subscribe-broadcast"))
                wait_until(lambda: value(scrape(server, paths["metrics"]), "ws4redis_websockets_open",
                                         server="uwsgi") == 4, what="the websockets of both workers")
                assert value(scrape(server, paths["metrics"]), "ws4redis_workers") == 2
    finally:
        site.cleanup()


def test_a_bad_monitoring_setting_stops_the_server_naming_it(redis_server):
    site = Site(redis_server.url, {"WS4REDIS_MONITORING": "{'metrics': 'metrics'}"})
    try:
        bind = f"127.0.0.1:{free_port()}"
        process = subprocess.run([sys.executable, "-m", "ws4redis", "serve", "--bind", bind],
                                 env=site.env, capture_output=True, text=True, timeout=60)
    finally:
        site.cleanup()
    assert process.returncode == constants.EXIT_CONFIG_ERROR
    assert "WS4REDIS_MONITORING must be" in process.stderr


def test_a_websocket_that_goes_away_is_counted_once(server):
    before = scrape(server)
    sock, _rest = raw_upgrade(server, "/ws/vanish?subscribe-broadcast")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()  # a reset, no close frame
    wait_until(lambda: delta(before, scrape(server), "ws4redis_websockets_open", server="gevent") == 0,
               what="the vanished websocket released")
    after = scrape(server)
    assert delta(before, after, "ws4redis_websockets_opened_total", server="gevent") == 1
    assert sum(delta(before, after, "ws4redis_close_codes_received_total", code=str(code))
               for code in (1000, 1001, 1005, 1006)) == 0


# --- the parts, without a server -----------------------------------------------------------------


def test_audiences_follow_the_key_layout_of_0_6_0():
    from ws4redis.metrics import audience_of

    assert audience_of(b"broadcast:chat", b"") == "broadcast"
    assert audience_of(b"site:user:john:chat", b"site:") == "user"
    assert audience_of(b"group:admins:chat", b"") == "group"
    assert audience_of(b"session:abc:chat", b"") == "session"
    assert audience_of(b"other:x", b"") == "other"
    assert audience_of(b"broadcast:chat", b"site:") == "other"


def test_merged_keeps_the_counters_of_dead_workers_and_only_the_gauges_of_live_ones(tmp_path):
    from ws4redis.metrics import Metrics, merged

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        for pid, deliveries in ((dead.pid, 5), (live.pid, 7)):
            snapshot = {"pid": pid, "counters": {"deliveries": {"": deliveries}},
                        "gauges": {"websockets_open": {"gevent": 3}}}
            (tmp_path / f"{pid}.json").write_text(json.dumps(snapshot))
        (tmp_path / "broken.json").write_text("{not json")
        own = Metrics()
        own.deliveries = 1
        own.add_gauges(lambda: {"websockets_open": {"gevent": 2}})
        numbers = merged(own, tmp_path)
    finally:
        live.kill()
        live.wait()
    assert numbers["workers"] == 2
    assert numbers["counters"]["deliveries"][""] == 1 + 5 + 7
    assert numbers["gauges"]["websockets_open"]["gevent"] == 2 + 3


@pytest.mark.parametrize("setting", [
    "'yes'", "{'metrics': 'metrics'}", "{'stats': '/stats'}", "{'metrics': '/x', 'healthz': '/x'}",
    "{'readyz': '/ready?now'}",
])
def test_bad_monitoring_settings_are_refused_naming_the_setting(setting):
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from ws4redis import settings as private_settings

    with override_settings(WS4REDIS_MONITORING=eval(setting)), pytest.raises(ImproperlyConfigured) as error:
        private_settings.validate_settings()
    assert "WS4REDIS_MONITORING" in str(error.value)


def test_monitoring_paths_take_the_defaults_unless_moved_or_left_out():
    from django.test import override_settings

    from ws4redis import settings as private_settings

    with override_settings(WS4REDIS_MONITORING=True):
        assert private_settings.monitoring_paths() == {"/metrics": "metrics", "/healthz": "healthz",
                                                       "/readyz": "readyz"}
    with override_settings(WS4REDIS_MONITORING={"metrics": "/ws/_m", "readyz": None}):
        assert private_settings.monitoring_paths() == {"/ws/_m": "metrics", "/healthz": "healthz"}
    with override_settings(WS4REDIS_MONITORING=None):
        assert private_settings.monitoring_paths() == {}
