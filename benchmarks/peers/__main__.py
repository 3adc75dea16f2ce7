"""The fan-out comparison: ws4redis' gevent server beside its peers, measured by ws4redis-bench.

    python -m benchmarks.peers            # a short run: 200 clients
    python -m benchmarks.peers --full     # the README's: 1,000 clients, 1,000 messages flat out,
                                          # 200 paced at 20,000 deliveries/s, 3 rounds
    python -m benchmarks.peers --baseline DIR   # also a ws4redis checkout at DIR (built in place,
                                                # say a previous commit's worktree), as "baseline"

Starts a private redis-server, ws4redis' gevent server (``python -m ws4redis serve``) and each
peer of this package on free ports, then runs ``ws4redis-bench --compare`` flat out and paced
(interleaved rounds, medians), and prints both tables. Every server is stopped at the end.

The peers: ``websockets`` (websockets + redis.asyncio, written by hand), ``bun`` (Bun.serve, i.e.
uWebSockets, with Bun's Redis client; installed from npm into benchmarks/peers/bun on first use,
left out with the reason when npm cannot get it) and ``send_floor`` (one blocking ``os.write``
per delivery: what the kernel charges).
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from benchmarks.e2e_servers import private_redis, running
from tests.servers import ServerProcess, Site, serving
from ws4redis.embedded_redis import free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent.parent
BUN_DIR = Path(__file__).resolve().parent / "bun"
PATH = "/ws/peers?subscribe-broadcast"
DELIVERIES_PER_SECOND = 20_000  # the paced run's offered load


def bun() -> Path:
    """Bun from npm (benchmarks/peers/bun/package.json), installed there on first use.

    Raises RuntimeError with the reason when it cannot be had (no npm, no registry).
    """
    binary = BUN_DIR / "node_modules" / ".bin" / "bun"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is not installed")
        result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(BUN_DIR)],
                                capture_output=True, text=True, timeout=600)
        if result.returncode != 0 or not binary.exists():
            raise RuntimeError(f"npm install bun failed: {(result.stderr or result.stdout).strip()[-500:]}")
    return binary


def peer_commands() -> dict[str, list[str]]:
    """Each peer's command line (PORT and REDIS_URL follow), the ones that cannot run left out, said why."""
    commands = {
        "websockets": [sys.executable, "-m", "benchmarks.peers.websockets_server"],
        "send_floor": [sys.executable, "-m", "benchmarks.peers.send_floor"],
    }
    try:
        commands["bun"] = [str(bun()), str(BUN_DIR / "server.js")]
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as exc:
        print(f"benchmarks.peers: the Bun peer is left out: {exc}", file=sys.stderr, flush=True)
    return commands


@contextmanager
def baseline(checkout: Path, redis_url: str) -> Iterator[ServerProcess]:
    """The gevent server of the ws4redis checkout at ``checkout``, on the same test project."""
    port = free_port()
    launcher = (f"import runpy, sys; sys.path.insert(0, {str(checkout.resolve())!r}); "
                "runpy.run_module('ws4redis', run_name='__main__', alter_sys=True)")
    site = Site(redis_url)
    try:
        args = [sys.executable, "-c", launcher, "serve", "--bind", f"127.0.0.1:{port}"]
        with serving(ServerProcess("baseline", args, site, port)) as server:
            yield server
    finally:
        site.cleanup()


@contextmanager
def peer(name: str, command: list[str], redis_url: str) -> Iterator[tuple[str, int]]:
    """Start a peer on a free port; yield its URL and pid once it says it listens."""
    port = free_port()
    process = subprocess.Popen([*command, str(port), redis_url], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        if not line.startswith("listening"):
            raise RuntimeError(f"{name} did not start (exit {process.poll()})")
        yield f"ws://127.0.0.1:{port}{PATH}", process.pid
    finally:
        stop_process(process)


def compare(redis_url: str, targets: list[str], clients: int, messages: int, rate: float, rounds: int,
            extra: list[str]) -> int:
    command = [sys.executable, "-m", "ws4redis.bench", "--redis", redis_url, "-n", str(clients),
               "-m", str(messages), "--rate", str(rate), "--rounds", str(rounds), "--quiet", *extra]
    for target in targets:
        command += ["--compare", target]
    return subprocess.run(command, cwd=ROOT).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="1,000 clients and the README's message counts")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default: 3 with --full, else 1)")
    parser.add_argument("--plot", help="draw each table's runs into FILE-flat.png and FILE-paced.png")
    parser.add_argument("--baseline", type=Path, metavar="DIR",
                        help="also run the gevent server of the ws4redis checkout at DIR (built in place)")
    parser.add_argument("--only", metavar="PEERS",
                        help="comma-separated peers to run (websockets, bun, send_floor; all by default)")
    args = parser.parse_args(argv)
    clients, flat, paced = (1000, 1000, 200) if args.full else (200, 200, 100)
    rounds = args.rounds or (3 if args.full else 1)
    status = 0
    with ExitStack() as stack:
        redis_server = stack.enter_context(private_redis())
        ours = stack.enter_context(running("gevent", redis_server.url))
        targets = [f"ws4redis={ours.url(PATH)}@{ours.process.pid}"]
        if args.baseline is not None:
            before = stack.enter_context(baseline(args.baseline, redis_server.url))
            targets.append(f"baseline={before.url(PATH)}@{before.process.pid}")
        for name, command in peer_commands().items():
            if args.only is None or name in args.only.split(","):
                url, pid = stack.enter_context(peer(name, command, redis_server.url))
                targets.append(f"{name}={url}@{pid}")
        time.sleep(0.5)
        for name, messages, rate in (("flat", flat, 0.0), ("paced", paced, DELIVERIES_PER_SECOND / clients)):
            print(f"\n{name}:", flush=True)
            extra = ["--plot", f"{args.plot}-{name}.png"] if args.plot else []
            status |= compare(redis_server.url, targets, clients, messages, rate, rounds, extra)
    return status


if __name__ == "__main__":
    sys.exit(main())
