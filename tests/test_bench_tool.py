"""ws4redis-bench against real servers, plus its measuring parts on real processes.

The load tool is driven as a user runs it (``python -m ws4redis.bench ... --json``)
against real websocket servers on 127.0.0.1 and the suite's real redis-server,
with small sizes so the file runs in seconds.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.echo_server import start_echo, stop_echo
from tests.polling import wait_until
from tests.servers import ServerProcess, Site, serving
from ws4redis import constants
from ws4redis.bench.procstat import ProcessGone, ProcessTree
from ws4redis.bench.stats import Stats
from ws4redis.embedded_redis import free_port
from ws4redis.handshake import parse_request_head, request_head_length, upgrade_response, validate_upgrade
from ws4redis.speedups import FrameParser, encode_frame

ROOT = Path(__file__).resolve().parent.parent
BENCH_TIMEOUT = 60


def bench(*args: str, expect_status: int | None = 0) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``python -m ws4redis.bench ARGS --json``; return the parsed report and the process."""
    result = subprocess.run(
        [sys.executable, "-m", "ws4redis.bench", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=BENCH_TIMEOUT,
    )
    if expect_status is not None and result.returncode != expect_status:
        pytest.fail(
            f"ws4redis-bench exited with {result.returncode} (expected {expect_status}):\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )
    return json.loads(result.stdout), result


def bench_usage_error(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "ws4redis.bench", *args], cwd=ROOT, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2, result.stderr
    return result.stderr


# command line


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["ws://127.0.0.1:1/ws/x", "--redis", "redis://127.0.0.1:1/0", "--size", "10"], "--size"),
        (["ws://127.0.0.1:1/ws/x"], "--redis"),
        (["http://127.0.0.1:1/ws/x", "--mode", "echo"], "ws://"),
        (["ws://127.0.0.1:1/ws/x", "--mode", "echo", "--clients", "0"], "--clients"),
        (["ws://127.0.0.1:1/ws/x", "--mode", "echo", "--rate", "-1"], "--rate"),
        (["ws://127.0.0.1:1/ws/x", "--redis", "redis://x", "--envelope", '{"text": "x"}'], "--envelope"),
    ],
)
def test_bad_arguments_are_refused_naming_the_option(args, named):
    assert named in bench_usage_error(*args)


def test_a_server_pid_that_does_not_exist_is_refused():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    assert f"--server-pid {child.pid}" in bench_usage_error(
        "ws://127.0.0.1:1/ws/x", "--mode", "echo", "--server-pid", str(child.pid)
    )


def test_unreachable_server_is_an_error_not_a_crash():
    report, _ = bench(f"ws://127.0.0.1:{free_port()}/ws/x", "--mode", "echo", "-n", "3", expect_status=1)
    assert report["connected"] == 0
    assert report["errors"] == 3
    assert all(kind.startswith("connect:") for kind in report["error_kinds"])


# measuring parts


def test_latency_percentiles_use_the_nearest_rank():
    stats = Stats()
    stats.latencies.extend(ms * 1_000_000 for ms in range(1, 101))  # 1..100 ms
    summary = stats.latency_summary()
    assert summary["min"] == 1.0
    assert summary["p50"] == 50.0
    assert summary["p90"] == 90.0
    assert summary["p99"] == 99.0
    assert summary["max"] == 100.0
    assert summary["mean"] == pytest.approx(50.5)
    assert Stats().latency_summary() == {}


BUSY_TREE = """
import os, sys, time
pid = os.fork()
deadline = time.monotonic() + 30
if pid == 0:
    while time.monotonic() < deadline:  # the child burns CPU
        pass
    os._exit(0)
print(pid, flush=True)
sys.stdin.read()  # the parent sleeps until told to stop
os.kill(pid, 9)
"""


def test_process_tree_sums_cpu_and_memory_of_forked_workers():
    parent = subprocess.Popen(
        [sys.executable, "-c", BUSY_TREE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        child_pid = int(parent.stdout.readline())
        tree = ProcessTree(parent.pid)
        assert tree.process_count() == 2
        before = tree.cpu_seconds()
        wait_until(lambda: tree.cpu_seconds() - before > 0.1, what="the busy child's CPU time counted")
        assert tree.rss_bytes() > ProcessTree(child_pid).rss_bytes() > 0
    finally:
        parent.stdin.close()
        parent.wait(10)
    with pytest.raises(ProcessGone):
        tree.cpu_seconds()


# against real servers


@pytest.fixture
def echo_server(tmp_path):
    """``python -m ws4redis.echo`` on a free port, with the environment of the test run."""
    server = start_echo(tmp_path)
    try:
        yield server
    finally:
        stop_echo(server.proc)


def test_echo_mode_counts_every_round_trip(echo_server):
    report, _ = bench(
        f"ws://{echo_server.address}/", "--mode", "echo", "-n", "5", "-m", "1000", "-s", "200",
        "--server-pid", str(echo_server.proc.pid),
    )
    assert report["connected"] == 5
    assert report["published"] == report["expected"] == 5000
    assert report["delivered"] == 5000
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["errors"] == 0
    latency = report["latency_ms"]
    assert set(latency) == {"min", "mean", "p50", "p90", "p99", "max"}
    assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert report["delivered_per_second"] > 0 and report["connections_per_second"] > 0
    server = report["server"]
    assert server["pid"] == echo_server.proc.pid and server["processes"] == 1
    assert server["rss_after_connect_bytes"] > 0
    assert server["cpu_seconds"] > 0  # 5,000 round trips cost the server well over one clock tick
    assert server["cpu_per_delivered_message_us"] > 0


@contextmanager
def serving_gevent(redis_url: str, *options: str,
                   settings: dict[str, str] | None = None) -> Iterator[ServerProcess]:
    """ws4redis's gevent server (websockets only) on ``redis_url``, stopped and cleaned up afterwards."""
    site = Site(redis_url, settings)
    port = free_port()
    args = [sys.executable, "-m", "ws4redis", "serve", "--bind", f"127.0.0.1:{port}", "--websocket-only"]
    args += options
    try:
        with serving(ServerProcess("gevent", args, site, port)) as server:
            yield server
    finally:
        site.cleanup()


@pytest.fixture(scope="module")
def gevent_server(redis_server):
    with serving_gevent(redis_server.url) as server:
        yield server


def test_publish_mode_delivers_every_message_to_every_client(gevent_server, redis_server):
    report, _ = bench(
        gevent_server.url("/ws/bench-tool?subscribe-broadcast"), "--redis", redis_server.url,
        "-n", "50", "-m", "200", "--server-pid", str(gevent_server.process.pid),
    )
    assert report["channel"] == "broadcast:bench-tool"
    assert report["connected"] == 50 and report["published"] == 200
    assert report["expected"] == report["delivered"] == 50 * 200
    assert report["lost"] == 0 and report["duplicates"] == 0 and report["errors"] == 0
    latency = report["latency_ms"]
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    server = report["server"]
    assert server["processes"] == 1
    assert server["rss_after_connect_bytes"] > 0
    assert isinstance(server["rss_per_connection_bytes"], float)
    # The gevent server may spend less than one clock tick (10 ms) on 10,000 deliveries, so only
    # the arithmetic is checked here; test_echo_mode_counts_every_round_trip sees CPU time grow.
    assert server["cpu_seconds"] >= 0
    assert server["cpu_per_delivered_message_us"] == pytest.approx(server["cpu_seconds"] / 10_000 * 1e6)


def test_server_figures_cover_every_worker_process(redis_server):
    with serving_gevent(redis_server.url, "--workers", "2") as server:
        report, _ = bench(
            server.url("/ws/bench-workers?subscribe-broadcast"), "--redis", redis_server.url,
            "-n", "20", "-m", "50", "--server-pid", str(server.process.pid),
        )
    assert report["delivered"] == report["expected"] == 1000 and report["lost"] == 0
    assert report["server"]["processes"] == 3, "the supervisor and its two workers"


def test_paced_publishing_loses_nothing(gevent_server, redis_server):
    report, _ = bench(
        gevent_server.url("/ws/bench-paced?subscribe-broadcast"), "--redis", redis_server.url,
        "-n", "10", "-m", "50", "--rate", "500", "-s", "1000",
    )
    assert report["rate"] == 500 and report["size"] == 1000
    assert report["delivered"] == report["expected"] == 500 and report["lost"] == 0


def test_messages_of_an_earlier_run_are_not_counted(gevent_server):
    # Echo through Redis on one facility per client: the server persists each client's last
    # message and replays it to the next run's client, which must ignore it.
    url = gevent_server.url("/ws/bench-replay-{i}?subscribe-broadcast&publish-broadcast&echo")
    first, _ = bench(url, "--mode", "echo", "-n", "2", "-m", "5")
    second, _ = bench(url, "--mode", "echo", "-n", "2", "-m", "5")
    assert first["delivered"] == second["delivered"] == 10
    assert second["foreign"] == 2, "each client is greeted by the message persisted by the first run"
    assert second["duplicates"] == 0 and second["lost"] == 0 and second["errors"] == 0


def test_a_refused_handshake_is_reported_with_its_status(gevent_server):
    report, result = bench(
        gevent_server.url("/ws/bench-tool?subscribe-broadcast"), "--mode", "echo", "-n", "3",
        "-H", "Origin: http://elsewhere.example", expect_status=1,
    )
    assert report["connected"] == 0 and report["errors"] == 3
    [kind] = report["error_kinds"]
    assert kind.startswith("handshake: HTTP 403")


def test_a_terminal_gets_a_live_progress_line_and_a_pipe_gets_none(gevent_server, redis_server):
    """On a TTY, stderr shows the phase, deliveries, open sockets, the rate and what was lost so far,
    redrawn in place; the same run with stderr on a pipe prints no progress at all."""
    args = [sys.executable, "-m", "ws4redis.bench", gevent_server.url("/ws/bench-tool?subscribe-broadcast"),
            "--redis", redis_server.url, "-n", "20", "-m", "150", "--rate", "100"]
    controller, terminal = os.openpty()
    try:
        process = subprocess.Popen(args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                   stderr=terminal, text=True)
        os.close(terminal)
        screen = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal is gone: the process closed its end
                break
            if not chunk:
                break
            screen += chunk
        output, _ = process.communicate(timeout=BENCH_TIMEOUT)
    finally:
        os.close(controller)
    assert process.returncode == 0, (output, screen.decode(errors="replace")[-3000:])
    text = screen.decode(errors="replace")
    publishing = [line for line in text.split("\r") if line.lstrip().startswith("publish [")]
    assert publishing, f"no progress line while publishing:\n{text!r}"
    assert all(" 20 open " in line and "/s  lost 0" in line for line in publishing), publishing

    _, piped = bench(*args[3:])
    assert "publish [" not in piped.stderr and "\r" not in piped.stderr


def test_undelivered_messages_are_counted_as_lost(gevent_server, redis_server):
    report, _ = bench(
        gevent_server.url("/ws/bench-tool?subscribe-broadcast"), "--redis", redis_server.url,
        "--channel", "broadcast:nobody-listens", "-n", "3", "-m", "10", "--timeout", "1", expect_status=1,
    )
    assert report["published"] == 10
    assert report["delivered"] == 0 and report["lost"] == report["expected"] == 30
    assert any(kind.startswith("warm-up:") for kind in report["error_kinds"])
    assert any("no subscriber" in kind for kind in report["error_kinds"])


GARBAGE = b"filedescriptor out of range"


@pytest.fixture
def garbling_server():
    """A real TCP server that upgrades, echoes the first message, then writes garbage after it.

    This is what django-websocket-redis 0.6.0 does when its loop fails after
    the upgrade: the HTTP error body lands in the websocket stream.
    """
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(20)

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            head = b""
            while not request_head_length(head):
                head += conn.recv(4096)
            method, _path, headers = parse_request_head(head)
            conn.sendall(upgrade_response(validate_upgrade(method, headers)))
            parser = FrameParser()
            while data := conn.recv(65536):  # until the client hangs up
                for frame in parser.feed(data):
                    if frame.opcode == constants.OP_TEXT:
                        conn.sendall(encode_frame(constants.OP_TEXT, frame.payload) + GARBAGE)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    thread.join(10)


def test_garbage_after_a_message_is_a_protocol_error_and_the_message_still_counts(garbling_server):
    url = f"ws://127.0.0.1:{garbling_server}/"
    report, _ = bench(url, "--mode", "echo", "-n", "1", "-m", "3", expect_status=1)
    assert report["delivered"] == report["expected"] == 1 and report["lost"] == 0
    [kind] = report["error_kinds"]
    assert kind.startswith("protocol error from server (close 1002)")
    assert "filedescriptor" in kind


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--redis", "redis://127.0.0.1:1/0", "--redis-cluster", "redis://127.0.0.1:2"], "--redis-cluster"),
        (["--sentinel", "127.0.0.1:26379"], "--master-name"),
        (["--sentinel", "127.0.0.1", "--master-name", "m"], "--sentinel must be HOST:PORT"),
    ],
)
def test_bad_broker_arguments_are_refused_naming_the_option(args, named):
    assert named in bench_usage_error("ws://127.0.0.1:1/ws/x", *args)


def test_compression_is_offered_and_its_bytes_on_the_wire_are_counted(redis_server):
    """``--compression`` negotiates permessage-deflate; the report shows how many bytes it saved."""
    with serving_gevent(redis_server.url, settings={"WS4REDIS_COMPRESSION": "True"}) as server:
        runs = {
            compression: bench(
                server.url("/ws/bench-deflate?subscribe-broadcast"), "--redis", redis_server.url,
                "-n", "20", "-m", "50", "-s", "1024", "--payload", "json",
                *(["--compression"] if compression else []),
            )[0]
            for compression in (False, True)
        }
    plain, deflated = runs[False], runs[True]
    for report in (plain, deflated):
        assert report["delivered"] == report["expected"] == 1000 and report["lost"] == 0, report
        assert report["errors"] == 0 and report["payload"] == "json"
    assert plain["compression"] == {"offered": False, "negotiated_clients": 0}
    assert deflated["compression"] == {"offered": True, "negotiated_clients": 20}
    # 1,024 bytes and a 4-byte frame header per delivery uncompressed; JSON rows deflate to a third.
    assert plain["wire_bytes_per_delivery"] == pytest.approx(1028, abs=1)
    assert deflated["wire_bytes_per_delivery"] < 0.5 * plain["wire_bytes_per_delivery"], deflated


def test_an_unknown_payload_is_refused_naming_the_option():
    assert "--payload" in bench_usage_error("ws://127.0.0.1:1/ws/x", "--mode", "echo", "--payload", "xml")


def test_history_runs_publish_through_the_script_and_read_envelopes(redis_server):
    """``--history``: every message lands in the facility's stream and reaches the clients in
    history envelopes; nothing is lost or counted twice."""
    import redis

    settings = {"WS4REDIS_HISTORY": "{'size': 1000, 'ttl': 60}"}
    with serving_gevent(redis_server.url, settings=settings) as server:
        report, _ = bench(
            server.url("/ws/bench-history?subscribe-broadcast"), "--redis", redis_server.url,
            "-n", "10", "-m", "100", "--history",
        )
    assert report["history"] is True
    assert report["delivered"] == report["expected"] == 1000 and report["lost"] == 0, report
    assert report["duplicates"] == 0 and report["errors"] == 0
    client = redis.Redis.from_url(redis_server.url)
    try:
        assert client.xlen("{broadcast:bench-history}:history") >= 100
    finally:
        client.close()


# TLS, output formats, the plot ---------------------------------------------------------------------


@contextmanager
def tls_in_front_of(port: int, ca) -> Iterator[int]:
    """A TLS-terminating proxy on 127.0.0.1 (certificate for 127.0.0.1 from ``ca``) to ``port``."""
    import asyncio
    import ssl

    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    ready = threading.Event()
    state: dict = {}

    async def pipe(reader, writer) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def handle(client_reader, client_writer) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(pipe(client_reader, server_writer), pipe(server_reader, client_writer))

    async def serve() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=context)
        state["port"] = server.sockets[0].getsockname()[1]
        state["stop"] = asyncio.get_running_loop().create_future()
        ready.set()
        async with server:
            await state["stop"]

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(10), "the TLS proxy did not start"
    try:
        yield state["port"]
    finally:
        loop.call_soon_threadsafe(state["stop"].set_result, None)
        thread.join(10)


def test_wss_is_measured_through_tls_with_the_servers_ca(gevent_server, redis_server, tmp_path):
    import trustme

    ca = trustme.CA()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with tls_in_front_of(gevent_server.port, ca) as tls_port:
        url = f"wss://127.0.0.1:{tls_port}/ws/bench-tls?subscribe-broadcast"
        report, _ = bench(url, "--redis", redis_server.url, "-n", "5", "-m", "20", "--ca-file", str(ca_file))
        assert report["delivered"] == report["expected"] == 100 and report["errors"] == 0, report
        refused, _ = bench(url, "--redis", redis_server.url, "-n", "2", "-m", "5", expect_status=1)
        assert refused["connected"] == 0
        assert all("certificate verify failed" in kind for kind in refused["error_kinds"]), refused
        unchecked, _ = bench(url, "--redis", redis_server.url, "-n", "2", "-m", "5", "--insecure")
        assert unchecked["delivered"] == 10 and unchecked["errors"] == 0


def test_ca_options_need_a_wss_url():
    assert "--ca-file and --insecure are for wss://" in bench_usage_error(
        "ws://127.0.0.1:1/ws/x", "--mode", "echo", "--insecure")


def test_csv_has_a_header_and_one_row_of_figures(gevent_server, redis_server):
    import csv
    import io

    result = subprocess.run(
        [sys.executable, "-m", "ws4redis.bench", gevent_server.url("/ws/bench-csv?subscribe-broadcast"),
         "--redis", redis_server.url, "-n", "4", "-m", "25", "--csv"],
        cwd=ROOT, capture_output=True, text=True, timeout=BENCH_TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    header, row, *rest = list(csv.reader(io.StringIO(result.stdout)))
    figures = dict(zip(header, row, strict=True))
    assert not rest and figures["delivered"] == "100" and figures["lost"] == "0"
    assert float(figures["latency_ms.p99"]) >= float(figures["latency_ms.p50"]) > 0
    assert "timeline" not in header


def test_the_timeline_adds_up_and_the_plot_is_drawn(gevent_server, redis_server, tmp_path):
    png, page = tmp_path / "run.png", tmp_path / "run.html"
    url = gevent_server.url("/ws/bench-plot?subscribe-broadcast")
    report, _ = bench(url, "--redis", redis_server.url, "-n", "10", "-m", "300", "--rate", "600",
                      "--plot", str(png))
    timeline = report["timeline"]
    assert len(timeline) >= 5, timeline
    # Intervals without a delivery have no row, so each row's own length counts.
    delivered = sum(row["delivered_per_second"] * row["seconds"] for row in timeline)
    assert delivered == pytest.approx(3000, rel=0.01)
    assert all(row["p50"] <= row["p99"] for row in timeline)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    bench(url, "--redis", redis_server.url, "-n", "2", "-m", "20", "--plot", str(page))
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<svg" in text


def test_a_plot_file_of_another_kind_is_refused():
    assert "--plot writes .png, .svg, .html files" in bench_usage_error(
        "ws://127.0.0.1:1/ws/x", "--mode", "echo", "--plot", "out.jpg")


def test_compare_interleaves_targets_and_prints_one_table(redis_server, tmp_path):
    """Two servers on one Redis: every round runs both, the table has a row each, the plot both."""
    chart = tmp_path / "compare.png"
    with serving_gevent(redis_server.url) as first, serving_gevent(redis_server.url) as second:
        targets = [f"first={first.url('/ws/bench-compare?subscribe-broadcast')}@{first.process.pid}",
                   f"second={second.url('/ws/bench-compare?subscribe-broadcast')}@{second.process.pid}"]
        first_pid = first.process.pid
        compare = [part for target in targets for part in ("--compare", target)]
        arguments = [sys.executable, "-m", "ws4redis.bench", "--redis", redis_server.url, "-n", "5",
                     "-m", "40", "--rounds", "2", *compare]
        table = subprocess.run([*arguments, "--plot", str(chart)], cwd=ROOT, capture_output=True, text=True,
                               timeout=BENCH_TIMEOUT)
        report, _ = bench("--redis", redis_server.url, "-n", "5", "-m", "40", "--rounds", "2", *compare)
    assert table.returncode == 0, table.stderr
    rows = [line.split()[0] for line in table.stdout.splitlines()[2:]]
    assert rows == ["first", "second"], table.stdout
    assert chart.read_bytes()[:4] == b"\x89PNG"
    assert set(report["runs"]) == {"first", "second"}
    for name in ("first", "second"):
        runs = report["runs"][name]
        assert len(runs) == 2 and all(run["delivered"] == 200 for run in runs)
        summary = report["compare"][name]
        assert summary["rounds"] == 2 and summary["lost"] == 0 and summary["expected"] == 400
        assert summary["server_cpu_us_per_delivery"] is not None
    assert {run["server"]["pid"] for run in report["runs"]["first"]} == {first_pid}


@pytest.mark.parametrize(("args", "named"), [
    (["--compare", "a=ws://127.0.0.1:1/x"], "two targets or more"),
    (["ws://127.0.0.1:1/x", "--compare", "a=ws://127.0.0.1:1/x", "--compare", "b=ws://127.0.0.1:1/y"],
     "give no URL"),
    (["--compare", "ws://127.0.0.1:1/x", "--compare", "b=ws://127.0.0.1:1/y"], "NAME=URL"),
    ([], "a URL (ws://... or wss://...) is required"),
])
def test_bad_compare_arguments_are_refused(args, named):
    assert named in bench_usage_error(*args, "--mode", "echo")
