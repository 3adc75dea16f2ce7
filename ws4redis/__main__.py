"""``python -m ws4redis serve``: run the production gevent websocket server.

    python -m ws4redis serve [--bind 127.0.0.1:8001] [--workers N] [--websocket-only]
                             [--settings myproject.settings]
    python -m ws4redis stats http://127.0.0.1:8001/metrics [--json]

Why this module imports almost nothing at the top: the order of start-up is
the whole point. The listening socket is bound and the workers are forked
first; each worker then monkey-patches with gevent and only after that
imports Django, the project's settings and redis-py, so every socket they
open cooperates with gevent. With ``--workers N`` (N > 1) the parent stays
a small supervisor: it restarts a worker that dies, forwards SIGTERM/SIGINT
to all of them and exits once they have closed their websockets.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback

from ws4redis import constants
from ws4redis.bind import address_family, parse_bind

DEFAULT_BIND = "127.0.0.1:8001"


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``serve`` is a sub-command so that others can join it without breaking scripts."""
    parser = argparse.ArgumentParser(prog="python -m ws4redis", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve websockets (and the Django site) with gevent")
    add_serve_arguments(serve)
    serve.add_argument("--settings", help="Django settings module (default: $DJANGO_SETTINGS_MODULE)")
    stats = commands.add_parser("stats", help="print the metrics of a running server (WS4REDIS_MONITORING)")
    stats.add_argument("url", help="the server's metrics endpoint, e.g. http://127.0.0.1:8001/metrics")
    stats.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``python -m ws4redis serve`` and ``manage.py runwebsocket``."""
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"address to listen on (default {DEFAULT_BIND})")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the socket, one Redis pub/sub connection each (default 1)")
    parser.add_argument("--websocket-only", action="store_true",
                        help="answer 404 to everything outside WEBSOCKET_URL instead of serving Django")


def raise_nofile_limit() -> int:
    """Lift the soft limit of open files to the hard one: every websocket is a file descriptor."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            print(f"ws4redis: could not raise RLIMIT_NOFILE to {target}: {exc}", file=sys.stderr)
    return soft


def listen(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts from."""
    sock = socket.socket(address_family(host), socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(constants.SERVER_LISTEN_BACKLOG)
    sock.set_inheritable(True)
    return sock


def run_worker_process(listener: socket.socket, websocket_only: bool) -> int:
    """Patch with gevent, set Django up and serve until told to stop; returns the exit status."""
    from gevent import monkey

    monkey.patch_all()

    import logging

    import django
    from django.core.exceptions import ImproperlyConfigured

    try:
        django.setup()
    except ImproperlyConfigured as exc:
        print(f"ws4redis: the Django settings are not usable: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG_ERROR
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=logging.INFO, stream=sys.stderr,
            format="%(asctime)s ws4redis[%(process)d] %(levelname)s %(message)s",
        )
    from ws4redis.gevent_server import run_worker

    # socket.socket is gevent's now: hand it the descriptor bound before patching.
    gevent_listener = socket.socket(listener.family, listener.type, fileno=listener.detach())
    try:
        return run_worker(gevent_listener, websocket_only)
    except ImproperlyConfigured as exc:
        print(f"ws4redis: {exc}", file=sys.stderr)
        return constants.EXIT_CONFIG_ERROR


class Supervisor:
    """The parent of ``--workers N``: forks the workers, replaces dead ones, forwards stop signals."""

    def __init__(self, listener: socket.socket, count: int, websocket_only: bool) -> None:
        self.listener = listener
        self.count = count
        self.websocket_only = websocket_only
        self.children: set[int] = set()
        self.stopping = False
        self.status = 0

    def _on_signal(self, signum: int, frame: object) -> None:
        # A second signal while stopping means "now": the workers are killed.
        forwarded = signal.SIGKILL if self.stopping else signal.SIGTERM
        self.stopping = True
        self._signal_children(forwarded)

    def _signal_children(self, signum: int) -> None:
        for pid in list(self.children):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                self.children.discard(pid)

    def _spawn(self) -> None:
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                for signum in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(signum, signal.SIG_DFL)
                status = run_worker_process(self.listener, self.websocket_only)
            except BaseException:
                # A forked worker must never unwind into the supervisor's code
                # (it would run a second supervisor): report, then _exit(1).
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(status)
        self.children.add(pid)

    def run(self) -> int:
        """Fork the workers and wait for them, replacing the ones that die; the exit status to return.

        The workers share a directory for their metrics snapshots (``ws4redis.metrics``), so a
        scrape answered by any of them shows them all; it goes when the supervisor does.
        """
        directory = tempfile.mkdtemp(prefix="ws4redis-metrics-")
        os.environ[constants.METRICS_DIR_ENVIRONMENT] = directory
        try:
            return self._supervise()
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def _supervise(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for _ in range(self.count):
            self._spawn()
        while self.children:
            try:
                pid, wait_status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.children.discard(pid)
            status = os.waitstatus_to_exitcode(wait_status)
            if self.stopping:
                continue
            if status == constants.EXIT_CONFIG_ERROR:
                print("ws4redis: a worker found the settings unusable; stopping", file=sys.stderr)
                self.status = status
                self.stopping = True
                self._signal_children(signal.SIGTERM)
                continue
            print(f"ws4redis: worker {pid} exited with status {status}; starting a new one in "
                  f"{constants.WORKER_RESPAWN_DELAY:g} s", file=sys.stderr)
            time.sleep(constants.WORKER_RESPAWN_DELAY)
            if not self.stopping:
                self._spawn()
        return self.status


def serve(bind: str, workers: int, websocket_only: bool, settings: str | None) -> int:
    """Bind, then run one worker in this process or supervise ``workers`` forked ones."""
    if settings:
        os.environ["DJANGO_SETTINGS_MODULE"] = settings
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        print("ws4redis: no Django settings: pass --settings or set DJANGO_SETTINGS_MODULE", file=sys.stderr)
        return 2
    if workers < 1:
        print(f"ws4redis: --workers must be at least 1, got {workers}", file=sys.stderr)
        return 2
    try:
        host, port = parse_bind(bind)
        listener = listen(host, port)
    except (ValueError, OSError) as exc:
        print(f"ws4redis: cannot listen on {bind}: {exc}", file=sys.stderr)
        return 2
    limit = raise_nofile_limit()
    print(f"ws4redis: listening on {host}:{port} with {workers} worker(s), up to {limit} open files each",
          file=sys.stderr, flush=True)
    if workers == 1:
        return run_worker_process(listener, websocket_only)
    return Supervisor(listener, workers, websocket_only).run()


def main(argv: list[str] | None = None) -> int:
    """``python -m ws4redis``; the process exit status."""
    args = build_parser().parse_args(argv)
    if args.command == "stats":
        from ws4redis import stats

        return stats.main(args.url, args.json)
    return serve(args.bind, args.workers, args.websocket_only, args.settings)


if __name__ == "__main__":
    sys.exit(main())
