"""The answers of the monitoring endpoints (WS4REDIS_MONITORING), the same on every hub server.

``/metrics`` gives every worker's numbers (:mod:`ws4redis.metrics`) in the
Prometheus text format; ``/healthz`` says the process serves (200 while it
answers at all); ``/readyz`` says whether it should get new websockets: 200
while its hub holds its Redis pub/sub connections and it is not stopping,
503 with the reason otherwise, which is when a load balancer or Kubernetes
should send clients elsewhere. Front doors look the request path up in
``ServerConfig.monitoring`` and write the :class:`Answer` their own way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ws4redis.handshake import plain_response, status_line
from ws4redis.metrics import METRICS, merged, prometheus_text, shared_directory
from ws4redis.server.accept import StartResponse
from ws4redis.server.config import ServerConfig

__all__ = ["PROMETHEUS_TEXT", "Answer", "answer", "answer_for"]

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"

    def http_response(self) -> bytes:
        return plain_response(self.status, self.body, self.content_type)

    def send_wsgi(self, start_response: StartResponse) -> list[bytes]:
        start_response(status_line(self.status), [
            ("Content-Type", self.content_type), ("Content-Length", str(len(self.body))),
            ("Cache-Control", "no-store"),
        ])
        return [self.body]


def answer_for(config: ServerConfig, target: str, hub: Any, stopping: bool) -> Answer | None:
    """The answer when the request ``target`` (its query string ignored) is a monitoring path, else None."""
    if not config.monitoring:
        return None
    endpoint = config.monitoring.get(target.partition("?")[0])
    return None if endpoint is None else answer(endpoint, hub, stopping)


def answer(endpoint: str, hub: Any, stopping: bool) -> Answer:
    """The answer of ``endpoint`` (``metrics``, ``healthz``, ``readyz``) for a server with ``hub``."""
    if endpoint == "metrics":
        return Answer(200, prometheus_text(merged(METRICS, shared_directory())), PROMETHEUS_TEXT)
    if endpoint == "healthz":
        return Answer(200, b"ok\n")
    if stopping:
        return Answer(503, b"not ready: the server is shutting down\n")
    if not hub.connected:
        return Answer(503, b"not ready: the hub is not connected to Redis\n")
    return Answer(200, b"ready\n")
