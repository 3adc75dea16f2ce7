"""One Django request at a time per process, while the greenlets of a process share database connections.

Django keeps a database connection per thread. Under gevent that is a
connection per greenlet only when ``threading`` was patched before Django
created its connection handler (uWSGI's ``--gevent-early-monkey-patch``,
or ``python -m ws4redis serve``). uWSGI started as django-websocket-redis
0.6.0 documented it (no monkey-patch flag), or with ``--gevent-monkey-patch``
(which patches after the application is loaded), leaves one connection for
every greenlet of the worker: a request that yields inside a transaction
(waiting for a patched socket, or ``gevent.sleep``) would let another
request run its queries inside that transaction, or close the connection
under it at its end.

:class:`DatabaseGuard` keeps those requests apart: Django's
``request_started`` signal takes a lock of the process, ``request_finished``
(sent once the response is closed, after Django's own connection clean-up)
gives it back, and the websocket set-up takes it while it reads the session
and the user. Requests of one greenlet nest. Whoever holds the lock may use
connections another greenlet opened: after a late patch ``threading.get_ident``
names the greenlet while the connections are still kept per thread, and
Django would otherwise refuse them ("DatabaseWrapper objects created in a
thread can only be used in that same thread").
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import gevent
from django.core.signals import request_finished, request_started
from django.db import connections
from gevent.lock import Semaphore

__all__ = ["DatabaseGuard"]


class DatabaseGuard:
    """A process-wide lock around every Django request and websocket set-up (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = Semaphore(1)
        self._holder: Any = None
        self._depth = 0
        self.installed = False

    def install(self) -> None:
        """Hold the lock for every request Django's WSGI handler serves in this process."""
        if not self.installed:
            request_started.connect(self._on_started, dispatch_uid="ws4redis-database-guard-started")
            request_finished.connect(self._on_finished, dispatch_uid="ws4redis-database-guard-finished")
            self.installed = True

    def acquire(self) -> None:
        current = gevent.getcurrent()
        if self._holder is current:
            self._depth += 1
            return
        self._lock.acquire()
        self._holder, self._depth = current, 1
        for connection in connections.all(initialized_only=True):
            if not connection.allow_thread_sharing:
                connection.inc_thread_sharing()
        rawlink = getattr(current, "rawlink", None)
        if rawlink is not None:
            # A request that dies before request_finished (an exception inside Django's handler)
            # must not keep the lock for ever.
            rawlink(self._forget)

    def release(self) -> None:
        """Give the lock back; a greenlet that does not hold it releases nothing."""
        if self._holder is not gevent.getcurrent():
            return
        self._depth -= 1
        if not self._depth:
            self._holder = None
            self._lock.release()

    def _forget(self, greenlet: Any) -> None:
        if self._holder is greenlet:
            self._holder, self._depth = None, 0
            self._lock.release()

    @contextmanager
    def held(self) -> Iterator[None]:
        """The lock for the duration of a block (the websocket set-up), when the guard is installed."""
        if not self.installed:
            yield
            return
        self.acquire()
        try:
            yield
        finally:
            self.release()

    def _on_started(self, **kwargs: Any) -> None:
        self.acquire()

    def _on_finished(self, **kwargs: Any) -> None:
        self.release()
