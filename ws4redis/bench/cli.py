"""Command line of ``ws4redis-bench`` (also ``python -m ws4redis.bench``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import csv
import dataclasses
import importlib.util
import io
import json
import resource
import sys
import time
from collections.abc import Callable

from ws4redis.bench.client import HEADER_SIZE, PAYLOADS
from ws4redis.bench.compare import format_table, median_run, parse_target, run_interleaved, summarize
from ws4redis.bench.plot import FORMATS, missing_library, plot
from ws4redis.bench.procstat import ProcessGone
from ws4redis.bench.runner import Options, Progress, Run, check_options

PROGRESS_INTERVAL = 0.25  # seconds between progress bar redraws
BAR_WIDTH = 30

EPILOG = """\
publish mode: N clients connect to URL, the tool PUBLISHes M messages to the Redis channel
(default broadcast:<last path segment of URL>) and every client must receive every message.
On a Redis Cluster (--redis-cluster) it SPUBLISHes, as ws4redis does there; with --sentinel
it publishes to the master the sentinels name.
echo mode: every client sends M messages, one at a time, and waits for each to come back.
Each message carries a sequence number and its send time, so latency and loss are exact.
Exit status: 0 when nothing was lost and no error happened, 1 otherwise, 2 for bad arguments.

examples:
  ws4redis-bench ws://127.0.0.1:8001/ws/bench?subscribe-broadcast --redis redis://127.0.0.1:6380/0 \\
      -n 1000 -m 200 --server-pid 1234
  ws4redis-bench ws://127.0.0.1:8001/ws/bench?subscribe-broadcast --redis-cluster redis://127.0.0.1:7000
  ws4redis-bench ws://127.0.0.1:8001/ws/bench?subscribe-broadcast --sentinel 10.0.0.1:26379 \
      --sentinel 10.0.0.2:26379 --master-name mymaster
  ws4redis-bench ws://127.0.0.1:8002/ --mode echo -n 50 -m 1000 --json
  ws4redis-bench --compare ours=ws://127.0.0.1:8001/ws/b?subscribe-broadcast@1234 \
      --compare peer=ws://127.0.0.1:8003/ws/b?subscribe-broadcast@5678 --redis redis://127.0.0.1:6380/0 \
      -n 1000 -m 200 --rate 20 --rounds 3 --plot compare.png
"""


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be zero or positive, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ws4redis-bench",
        description="Load-test a websocket server: Redis fan-out or echo round trips.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", nargs="?",
                        help="ws://HOST:PORT/PATH?QUERY; {i} in it becomes the client index (or --compare)")
    parser.add_argument(
        "--compare", action="append", default=[], metavar="NAME=URL[@PID]",
        help="measure this target too, repeatable (two or more): the runs interleave, one table follows",
    )
    parser.add_argument("--rounds", type=positive_int, default=3,
                        help="with --compare: runs of every target, interleaved; the table shows medians (3)")
    parser.add_argument("-n", "--clients", type=positive_int, default=100, help="websocket clients (100)")
    parser.add_argument("-m", "--messages", type=positive_int, default=1000, help="messages (1000)")
    parser.add_argument(
        "-s", "--size", type=positive_int, default=100, help=f"message size in bytes, >= {HEADER_SIZE} (100)"
    )
    parser.add_argument("--mode", choices=("publish", "echo"), default="publish")
    broker = parser.add_mutually_exclusive_group()
    broker.add_argument("--redis", dest="redis_url", help="Redis URL to publish to (publish mode)")
    broker.add_argument(
        "--redis-cluster", dest="cluster_url", metavar="URL",
        help="a node of the Redis Cluster to publish to, SPUBLISH on the channel's master (publish mode)",
    )
    broker.add_argument(
        "--sentinel", dest="sentinels", action="append", default=[], metavar="HOST:PORT",
        help="a sentinel naming the master to publish to, repeatable; needs --master-name (publish mode)",
    )
    parser.add_argument("--master-name", help="the master the sentinels watch (with --sentinel)")
    parser.add_argument("--channel", help="Redis channel (default broadcast:<facility from the URL>)")
    parser.add_argument(
        "--rate", type=non_negative_float, default=0.0, help="messages per second in total, 0 = flat out (0)"
    )
    parser.add_argument(
        "--window",
        type=int,
        default=0,
        help="publish mode: messages in flight before the publisher waits for deliveries "
        "(0 = unlimited when --rate is set, about 20,000 deliveries when flat out)",
    )
    parser.add_argument(
        "--concurrency", type=positive_int, default=100, help="handshakes in progress at once (100)"
    )
    parser.add_argument(
        "--connect-rate", type=non_negative_float, default=0.0, help="connections per second, 0 = no limit"
    )
    parser.add_argument(
        "--duration", type=positive_float, default=60.0, help="cap on the publish/echo phase in seconds (60)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        help="seconds allowed for one connection, the warm-up, and the wait for the last deliveries (10)",
    )
    parser.add_argument(
        "--server-pid",
        type=positive_int,
        help="report RSS per connection and CPU per message of this process and its children",
    )
    parser.add_argument(
        "-H", "--header", action="append", default=[], dest="headers", help="extra request header, repeatable"
    )
    parser.add_argument(
        "--envelope",
        help="publish mode: wrap each published message, {message} marks where it goes "
        '(e.g. \'{"type": "bench.message", "text": "{message}"}\' for Django Channels)',
    )
    parser.add_argument(
        "--compression", action="store_true",
        help="offer permessage-deflate as browsers do (the report then counts the clients that got it)",
    )
    parser.add_argument(
        "--payload", choices=PAYLOADS, default="dots",
        help="what fills each message after its header: dots (default) or JSON-like rows, which "
        "compress as real traffic does",
    )
    parser.add_argument(
        "--history", action="store_true",
        help="publish as ws4redis does on a facility with WS4REDIS_HISTORY, and have the clients ask "
        "for history envelopes (the facility must keep a history)",
    )
    parser.add_argument("--ca-file", help="wss://: CA certificates (PEM) to check the server's with")
    parser.add_argument("--insecure", action="store_true", help="wss://: check no certificate (testing only)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the report as JSON")
    output.add_argument("--csv", action="store_true", help="print the report as CSV: a header and one row")
    parser.add_argument(
        "--plot", metavar="FILE",
        help="draw throughput and latency over time into FILE (.png, .svg or .html; needs matplotlib)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--no-uvloop", action="store_true", help="use asyncio's own event loop")
    return parser


def parse_options(argv: list[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.targets = []
    if args.compare:
        if args.url or args.server_pid:
            parser.error("--compare names every target (NAME=URL@PID): give no URL or --server-pid beside it")
        try:
            args.targets = [parse_target(text) for text in args.compare]
        except ValueError as exc:
            parser.error(str(exc))
        if len(args.targets) < 2:
            parser.error("--compare needs two targets or more")
        args.url = args.targets[0].url
    elif not args.url:
        parser.error("a URL (ws://... or wss://...) is required, or --compare targets")
    if args.size < HEADER_SIZE:
        parser.error(f"--size must be at least {HEADER_SIZE} bytes (the benchmark header), got {args.size}")
    if args.mode == "publish" and not (args.redis_url or args.cluster_url or args.sentinels):
        parser.error("--redis URL (or --redis-cluster URL, or --sentinel HOST:PORT) is required in "
                     "publish mode")
    if args.sentinels and not args.master_name:
        parser.error("--sentinel needs --master-name, the name the sentinels monitor the master by")
    sentinels = []
    for entry in args.sentinels:
        host, _, port = entry.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            parser.error(f"--sentinel must be HOST:PORT, got {entry!r}")
        sentinels.append((host, int(port)))
    if args.window < 0:
        parser.error(f"--window must be zero or positive, got {args.window}")
    options = Options(
        url=args.url,
        clients=args.clients,
        messages=args.messages,
        size=args.size,
        mode=args.mode,
        redis_url=args.redis_url or args.cluster_url,
        broker="cluster" if args.cluster_url else "sentinel" if sentinels else "redis",
        sentinels=tuple(sentinels),
        master_name=args.master_name,
        channel=args.channel,
        rate=args.rate,
        window=args.window,
        concurrency=args.concurrency,
        connect_rate=args.connect_rate,
        duration=args.duration,
        timeout=args.timeout,
        server_pid=args.server_pid,
        headers=tuple(args.headers),
        envelope=args.envelope,
        compression=args.compression,
        payload=args.payload,
        history=args.history,
        ca_file=args.ca_file,
        insecure=args.insecure,
    )
    if args.plot:
        if not args.plot.endswith(FORMATS):
            parser.error(f"--plot writes {', '.join(FORMATS)} files, got {args.plot!r}")
        problem = missing_library()
        if problem:
            parser.error(problem)
    try:
        check_options(options)
        for target in args.targets:
            check_options(dataclasses.replace(options, url=target.url, server_pid=target.pid))
    except (ValueError, ProcessGone) as exc:
        parser.error(str(exc))
    return options, args


def raise_fd_limit(needed: int) -> None:
    """Lift the soft open-files limit to the hard one when the clients need more."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else hard, hard))


async def draw_progress(progress: Progress) -> None:
    """The phase, its progress, the open sockets and, while messages flow, the rate of the last interval
    and the messages lost so far."""
    last_done, last_time = 0, time.monotonic()
    while True:
        await asyncio.sleep(PROGRESS_INTERVAL)
        now = time.monotonic()
        total = progress.total or 1
        filled = min(BAR_WIDTH, BAR_WIDTH * progress.done // total)
        rate = (progress.done - last_done) / (now - last_time) if progress.done >= last_done else 0.0
        last_done, last_time = progress.done, now
        flowing = progress.phase in ("publish", "echo", "drain")
        figures = f"  {rate:,.0f}/s  lost {progress.lost():,}" if flowing else ""
        sys.stderr.write(
            f"\r{progress.phase:>8} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] "
            f"{progress.done:,}/{progress.total:,}  {progress.connected():,} open{figures}   "
        )
        sys.stderr.flush()


async def run(options: Options, show_progress: bool) -> dict:
    progress = Progress()
    bar = asyncio.create_task(draw_progress(progress)) if show_progress else None
    try:
        return await Run(options, progress).execute()
    finally:
        if bar is not None:
            bar.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await bar
            sys.stderr.write("\r" + " " * (BAR_WIDTH + 40) + "\r")


def event_loop_factory(disable_uvloop: bool) -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """uvloop's loop when installed (the ``bench`` extra) and wanted, else asyncio's (only slower)."""
    if not disable_uvloop and importlib.util.find_spec("uvloop") is not None:
        import uvloop

        return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def format_report(report: dict) -> str:
    r = report
    lat = r["latency_ms"]
    lines = [
        f"ws4redis-bench {r['mode']} {r['url']}",
        f"  connect   {r['connected']:,}/{r['clients']:,} clients in {r['connect_seconds']:.2f} s "
        f"({r['connections_per_second']:,.0f} conn/s)",
        f"  deliver   {r['delivered']:,}/{r['expected']:,} messages of {r['size']} bytes "
        f"in {r['seconds']:.2f} s ({r['delivered_per_second']:,.0f} msg/s)",
        f"  lost      {r['lost']:,}   duplicates {r['duplicates']:,}   foreign {r['foreign']:,}",
    ]
    wire = r.get("wire_bytes_per_delivery")
    if wire is not None:
        compression = r["compression"]
        negotiated = (f", permessage-deflate on {compression['negotiated_clients']:,} clients"
                      if compression["offered"] else "")
        lines.append(f"  wire      {wire:,.1f} bytes read per delivered message{negotiated}")
    if lat:
        lines.append(
            "  latency   " + "  ".join(f"{name} {lat[name]:.2f} ms" for name in ("p50", "p90", "p99", "max"))
        )
    server = report.get("server")
    if server:
        cpu = server["cpu_per_delivered_message_us"]
        lines.append(
            f"  server    {server['rss_per_connection_bytes'] / 1024:.1f} KiB RSS per connection, "
            + (f"{cpu:.2f} us CPU per delivered message" if cpu is not None else "no message delivered")
            + f" ({server['processes']} processes)"
        )
    client = report["client"]
    cpu = f", {client['cpu_seconds']:.2f} s CPU" if "cpu_seconds" in client else ""
    lines.append(f"  client    {client['loop']} loop, compiled core: {client['compiled']}{cpu}")
    if report["errors"]:
        lines.append(f"  errors    {report['errors']}")
        lines.extend(f"    {count:>6} x {kind}" for kind, count in sorted(report["error_kinds"].items()))
    else:
        lines.append("  errors    none")
    return "\n".join(lines)


def flatten(report: dict, prefix: str = "") -> dict[str, object]:
    """The report's figures as one level of ``name.sub`` columns (the timeline stays out)."""
    columns: dict[str, object] = {}
    for name, value in report.items():
        if name == "timeline":
            continue
        if isinstance(value, dict):
            columns.update(flatten(value, f"{prefix}{name}."))
        else:
            columns[f"{prefix}{name}"] = value
    return columns


def format_csv(report: dict) -> str:
    """The report as CSV: a header row and one row of figures, for spreadsheets and scripts."""
    columns = flatten(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerow(columns.values())
    return buffer.getvalue()


def print_comparison(reports: dict[str, list[dict]], options: Options, args: argparse.Namespace) -> int:
    """The table (or JSON, CSV) and plot of a --compare run; the exit status."""
    summary = summarize(reports)
    if args.plot:
        plot([(name, median_run(runs)) for name, runs in reports.items()], args.plot)
    if args.json:
        print(json.dumps({"compare": summary, "runs": reports}, indent=2))
    elif args.csv:
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["target", *next(iter(summary.values()))])
        writer.writerows([name, *row.values()] for name, row in summary.items())
        print(buffer.getvalue(), end="")
    else:
        print(format_table(summary, options))
    clean = all(row["lost"] == 0 and row["errors"] == 0 for row in summary.values())
    return 0 if clean and all(run["connected"] for runs in reports.values() for run in runs) else 1


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ws4redis-bench`` console script."""
    from ws4redis.speedups import COMPILED

    options, args = parse_options(argv)
    raise_fd_limit(options.clients + 64)
    factory, loop_name = event_loop_factory(args.no_uvloop)
    show_progress = not args.quiet and sys.stderr.isatty()
    loop = factory()
    try:
        if args.targets:
            reports = run_interleaved(args.targets, options, args.rounds,
                                      lambda pointed: loop.run_until_complete(run(pointed, show_progress)))
        else:
            report = loop.run_until_complete(run(options, show_progress))
    except ProcessGone as exc:
        sys.stderr.write(f"ws4redis-bench: {exc}\n")
        return 1
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    if args.targets:
        return print_comparison(reports, options, args)
    report.setdefault("client", {}).update(loop=loop_name, compiled=COMPILED)
    if args.plot:
        plot([(report["url"], report)], args.plot)
    if args.json:
        print(json.dumps(report, indent=2))
    elif args.csv:
        print(format_csv(report), end="")
    else:
        print(format_report(report))
    return 0 if report["lost"] == 0 and report["errors"] == 0 and report["connected"] else 1
