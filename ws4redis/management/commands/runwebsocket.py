"""``manage.py runwebsocket``: the gevent websocket server of ``python -m ws4redis serve``.

By the time a management command runs, Django and often redis-py are
imported, too late for gevent's monkey-patching. So the command replaces
its own process with ``python -m ws4redis serve`` (same interpreter, same
settings module, same import path), which patches before importing them.
"""

from __future__ import annotations

import os
import sys
import sysconfig
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from ws4redis.__main__ import add_serve_arguments


def forwarded_pythonpath() -> str:
    """The project's sys.path entries (manage.py's directory, --pythonpath, PYTHONPATH) for the child."""
    paths = sysconfig.get_paths()
    roots = ("stdlib", "platstdlib", "purelib", "platlib")
    installed = tuple(os.path.realpath(paths[name]) for name in roots)
    entries: list[str] = []
    for entry in [os.getcwd(), *sys.path]:
        path = os.path.realpath(entry or os.curdir)
        inside_python = any(path == root or path.startswith(root + os.sep) for root in installed)
        if not inside_python and os.path.isdir(path) and path not in entries:
            entries.append(path)
    return os.pathsep.join(entries)  # PYTHONPATH's own entries are in sys.path already


class Command(BaseCommand):
    help = (
        "Serve websockets with ws4redis' gevent server (one Redis pub/sub connection per process), "
        "and the Django site too unless --websocket-only."
    )
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_serve_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        argv = [
            sys.executable, "-m", "ws4redis", "serve",
            "--bind", options["bind"],
            "--workers", str(options["workers"]),
            "--settings", settings.SETTINGS_MODULE,
        ]
        if options["websocket_only"]:
            argv.append("--websocket-only")
        env = {**os.environ, "PYTHONPATH": forwarded_pythonpath()}
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, argv, env)
