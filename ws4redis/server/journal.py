"""One log line when a websocket opens and one when it closes, the same on every server.

They go to the ``ws4redis.connections`` logger at INFO, so a project can route
or silence them on their own (``LOGGING = {"loggers": {"ws4redis.connections":
...}}``). The message reads ``key=value`` for people and grep; the same fields
ride on the record as ``record.ws4redis`` (a dict), for JSON formatters.
The close line also feeds the close-code counters of :mod:`ws4redis.metrics`.
"""

from __future__ import annotations

import logging
from typing import Any

from ws4redis.metrics import METRICS
from ws4redis.protocol import WebSocketProtocol

__all__ = ["closed", "opened"]

logger = logging.getLogger("ws4redis.connections")


def _log(event: str, fields: dict[str, Any]) -> None:
    if logger.isEnabledFor(logging.INFO):
        text = " ".join(f"{name}={value}" for name, value in fields.items())
        record = {"event": f"websocket_{event}", **fields}
        logger.info("websocket %s %s", event, text, extra={"ws4redis": record})


def opened(server: str, peer: str, path: str, channels: list[str]) -> None:
    METRICS.opened(server)
    _log("open", {"server": server, "peer": peer, "path": path, "channels": ",".join(channels) or "-"})


def closed(server: str, peer: str, path: str, protocol: WebSocketProtocol, duration: float,
           messages_in: int, frames_out: int, bytes_out: int) -> None:
    """``protocol`` tells the close codes each way (``-`` where no close frame went)."""
    sent, received = protocol.close_sent, protocol.close_received
    METRICS.closed(sent, received)
    _log("close", {
        "server": server, "peer": peer, "path": path, "duration": f"{duration:.3f}",
        "code_sent": "-" if sent is None else sent, "code_received": "-" if received is None else received,
        "messages_in": messages_in, "frames_out": frames_out, "bytes_out": bytes_out,
    })
