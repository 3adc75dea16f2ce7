"""End-to-end benchmarks: Redis fan-out and echo round trips through real ws4redis servers.

Each benchmark starts a real redis-server and a real server (the gevent
server ``python -m ws4redis serve`` or uWSGI with gevent), connects real
websocket clients with ws4redis-bench's client and checks that nothing was
lost. pytest-benchmark times the whole run; the figures that matter
(deliveries per second, latency percentiles, server CPU per message, RSS per
connection) go to ``extra_info``, which ``--benchmark-json`` saves.

Sizes stay small for the CI smoke run (``pytest benchmarks --benchmark-disable``):
50 subscribers x 200 messages. ``WS4REDIS_E2E_FULL=1`` runs the issue's
target instead: 1,000 subscribers x 1,000 messages.
"""

from __future__ import annotations

import os
import re
import threading
import urllib.request

import pytest

from benchmarks.e2e_servers import SERVERS, private_redis, run_bench, running
from ws4redis.bench.runner import Options

FULL = os.environ.get("WS4REDIS_E2E_FULL", "").strip().lower() not in ("", "0", "false", "no")
FAN_OUT = (1000, 1000) if FULL else (50, 200)  # subscribers, messages
ECHO = (100, 1000) if FULL else (20, 100)  # clients, round trips each
MESSAGE_SIZE = 100


@pytest.fixture(scope="module")
def redis_url():
    with private_redis() as server:
        yield server.url


@pytest.fixture(scope="module", params=sorted(SERVERS))
def server(request, redis_url):
    with running(request.param, redis_url) as server:
        yield server


def record(benchmark, report: dict) -> None:
    latency = report["latency_ms"]
    info = {
        "delivered": report["delivered"],
        "delivered_per_second": round(report["delivered_per_second"]),
        "p50_ms": latency.get("p50"),
        "p99_ms": latency.get("p99"),
    }
    if report.get("wire_bytes_per_delivery") is not None:
        info["wire_bytes_per_delivery"] = round(report["wire_bytes_per_delivery"], 1)
    if "server" in report:
        info["server_cpu_us_per_message"] = report["server"]["cpu_per_delivered_message_us"]
        info["server_rss_bytes_per_connection"] = report["server"]["rss_per_connection_bytes"]
    benchmark.extra_info.update(info)


def measure_complete_run(benchmark, options: Options, expected: int) -> None:
    """Time one ws4redis-bench run, record its figures, and check that all ``expected`` deliveries came."""
    report = benchmark.pedantic(run_bench, args=(options,), rounds=1, iterations=1)
    record(benchmark, report)
    assert report["errors"] == 0, report["error_kinds"]
    assert report["lost"] == 0, f"{report['lost']} of {report['expected']} deliveries lost"
    assert report["delivered"] == report["expected"] == expected


def test_fan_out(benchmark, server, redis_url):
    subscribers, messages = FAN_OUT
    options = Options(
        url=server.url("/ws/e2e-fanout?subscribe-broadcast"),
        clients=subscribers,
        messages=messages,
        size=MESSAGE_SIZE,
        redis_url=redis_url,
        server_pid=server.process.pid,
        timeout=15.0,
    )
    measure_complete_run(benchmark, options, expected=subscribers * messages)


def test_echo_round_trips(benchmark, server):
    clients, round_trips = ECHO
    # One facility per client, so each echo comes back through Redis to its sender only.
    options = Options(
        url=server.url("/ws/e2e-echo-{i}?subscribe-broadcast&publish-broadcast&echo"),
        clients=clients,
        messages=round_trips,
        size=MESSAGE_SIZE,
        mode="echo",
        server_pid=server.process.pid,
        timeout=15.0,
    )
    measure_complete_run(benchmark, options, expected=clients * round_trips)


@pytest.mark.parametrize("monitoring", [False, True], ids=["monitoring-off", "monitoring-on-scraped"])
def test_metrics_cost(benchmark, redis_url, monitoring):
    """The fan-out of ``test_fan_out`` with WS4REDIS_MONITORING on and a scraper every second, or off.

    The counters themselves are always kept (one addition per message, two per socket write);
    what the setting adds is the endpoint and the gauges a scrape computes. Compare the two
    ``server_cpu_us_per_message`` figures of one run (target: on <= 1.03 x off).
    """
    subscribers, messages = FAN_OUT
    overrides = {"WS4REDIS_MONITORING": "True"} if monitoring else None
    with running("gevent", redis_url, overrides) as server:
        stop = threading.Event()
        scrapes = []

        def scrape() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/metrics", timeout=10) as answer:
                return answer.read().decode()

        def scrape_every_second() -> None:
            while True:
                scrapes.append(scrape())
                if stop.wait(1.0):
                    return

        scraper = threading.Thread(target=scrape_every_second, daemon=True)
        if monitoring:
            scraper.start()
        try:
            options = Options(
                url=server.url("/ws/e2e-metrics?subscribe-broadcast"), clients=subscribers,
                messages=messages, size=MESSAGE_SIZE, redis_url=redis_url,
                server_pid=server.process.pid, timeout=15.0,
            )
            measure_complete_run(benchmark, options, expected=subscribers * messages)
        finally:
            stop.set()
            if monitoring:
                scraper.join(10)
        benchmark.extra_info["scrapes"] = len(scrapes)
        if monitoring:
            assert scrapes, "the scraper never got an answer"
            counted = re.search(r"^ws4redis_deliveries_total (\S+)$", scrape(), re.MULTILINE)
            assert counted and float(counted.group(1)) >= subscribers * messages, counted


@pytest.mark.parametrize("compression", [False, True], ids=["deflate-off", "deflate-on"])
def test_compression_cost(benchmark, redis_url, compression):
    """1 KiB JSON-like messages fanned out with permessage-deflate negotiated by every client, or not.

    The server has WS4REDIS_COMPRESSION on in both runs; only the clients' offer differs, so the
    two runs differ by the compression alone. Compare ``server_cpu_us_per_message`` (target:
    on <= 1.5 x off) and ``wire_bytes_per_delivery`` (target: on <= 0.4 x off) of one run.
    """
    subscribers, messages = FAN_OUT
    with running("gevent", redis_url, {"WS4REDIS_COMPRESSION": "True"}) as server:
        options = Options(
            url=server.url("/ws/e2e-deflate?subscribe-broadcast"), clients=subscribers,
            messages=messages, size=1024, payload="json", compression=compression,
            redis_url=redis_url, server_pid=server.process.pid, timeout=15.0,
        )
        report = benchmark.pedantic(run_bench, args=(options,), rounds=1, iterations=1)
    record(benchmark, report)
    assert report["errors"] == 0 and report["lost"] == 0, report
    assert report["compression"]["negotiated_clients"] == (subscribers if compression else 0)
    if compression:
        assert report["wire_bytes_per_delivery"] < 0.5 * (1024 + 4), "compressed frames are smaller"


@pytest.mark.parametrize("history", [False, True], ids=["history-off", "history-on"])
def test_history_cost(benchmark, redis_url, history):
    """The fan-out of ``test_fan_out`` with WS4REDIS_HISTORY on (every publish appends to the
    channel's stream in one script, clients get history envelopes with offsets), or off.
    Compare the two ``server_cpu_us_per_message`` figures of one run (target: on <= 1.2 x off).
    """
    subscribers, messages = FAN_OUT
    overrides = {"WS4REDIS_HISTORY": "{'size': 1000, 'ttl': 300}"} if history else None
    with running("gevent", redis_url, overrides) as server:
        options = Options(
            url=server.url("/ws/e2e-history?subscribe-broadcast"), clients=subscribers, messages=messages,
            size=MESSAGE_SIZE, redis_url=redis_url, server_pid=server.process.pid, timeout=15.0,
            history=history,
        )
        measure_complete_run(benchmark, options, expected=subscribers * messages)
    benchmark.extra_info["history"] = history
