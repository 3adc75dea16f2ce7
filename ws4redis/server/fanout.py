"""The fan-out's send lanes: compiled (ext/fanout.pyx) where possible, pure Python otherwise.

They write to sockets, so they belong to the servers' shared parts, not to the
sans-I/O core of ``ws4redis.speedups``; they follow its choice of core
(``WS4REDIS_NO_EXTENSIONS``). The compiled module is built for POSIX only.
"""

from __future__ import annotations

import os
import warnings

from ws4redis import speedups

__all__ = ["COMPILED", "Audience", "SendLanes"]

_compiled = False
if speedups.COMPILED and os.name == "posix":
    try:
        from ws4redis._speedups_fanout import Audience, SendLanes
    except ImportError as exc:
        warnings.warn(f"ws4redis: the compiled send lanes are unavailable ({exc}); using the pure-Python "
                      f"fan-out", RuntimeWarning, stacklevel=2)
    else:
        _compiled = True
if not _compiled:
    from ws4redis.server.lanes import Audience, SendLanes  # noqa: F811

COMPILED: bool = _compiled
