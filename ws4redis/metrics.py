"""What one server process counts, how workers share it, and its Prometheus exposition.

The counters are plain integers on one object per process (:data:`METRICS`),
incremented where the event happens: a websocket message delivered to a
thousand local subscribers costs one addition (the hub adds the number of
listeners once per message), a socket write two additions on its own
connection (frames and bytes, summed into the process's counters when it
finishes or a scrape comes); nothing else touches the per-delivery path.
Gauges that a component already knows (open websockets, subscribed channels,
whether the hub reaches Redis) are asked for when a scrape comes, through
:meth:`Metrics.add_gauges`, and cost nothing meanwhile.

Workers of one server (``serve --workers N``, uWSGI's ``--processes N``)
each write their snapshot to a file of a shared directory once a second
(:class:`SnapshotWriter`); whichever worker answers a scrape adds its own live
numbers to the other workers' files (:func:`merged`). Counters of a worker
that died stay counted, so totals never go down; its gauges are left out.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from ws4redis import constants

__all__ = [
    "AUDIENCES",
    "DROP_REASONS",
    "METRICS",
    "Metrics",
    "SnapshotWriter",
    "audience_of",
    "merged",
    "prometheus_text",
    "shared_directory",
]

logger = logging.getLogger("ws4redis.metrics")

AUDIENCES = ("broadcast", "user", "group", "session")
DROP_REASONS = ("slow_consumer", "closed")
SNAPSHOT_INTERVAL = 1.0


def audience_of(channel: bytes, prefix: bytes) -> str:
    """``broadcast``, ``user``, ``group`` or ``session`` for a channel of 0.6.0's key layout, else ``other``.

    ``prefix`` is ``b"<WS4REDIS_PREFIX>:"``, or empty.
    """
    if not channel.startswith(prefix):
        return "other"
    head = channel[len(prefix):].partition(b":")[0].decode("ascii", "replace")
    return head if head in AUDIENCES else "other"


class Metrics:
    """The counters of this process; see the module docstring for what costs what."""

    def __init__(self) -> None:
        self.websockets_opened: dict[str, int] = {}
        self.handshake_rejections: dict[int, int] = {}
        self.messages_received = 0  # from websockets, heartbeats excluded
        self.messages_published = 0  # of those, taken by Redis
        self.deliveries = 0  # messages handed to a local websocket by the hub: messages x listeners
        self.deliveries_dropped: dict[str, int] = dict.fromkeys(DROP_REASONS, 0)
        self.echoes_suppressed = 0
        self.frames_sent = 0
        self.bytes_sent = 0
        self.slow_consumer_closes = 0
        self.close_codes_sent: dict[int, int] = {}
        self.close_codes_received: dict[int, int] = {}
        self.hub_reconnects = 0
        self.hub_drops_by_redis = 0
        self.hub_outage_seconds = 0.0
        self._gauges: list[Callable[[], dict[str, dict[str, float]]]] = []

    # --- events (rare ones; the frequent ones are plain additions at their place) ---------

    def opened(self, server: str) -> None:
        self.websockets_opened[server] = self.websockets_opened.get(server, 0) + 1

    def rejected(self, status: int) -> None:
        self.handshake_rejections[status] = self.handshake_rejections.get(status, 0) + 1

    def closed(self, sent: int | None, received: int | None) -> None:
        """The close codes of one finished websocket (None: no close frame went that way)."""
        if sent is not None:
            self.close_codes_sent[sent] = self.close_codes_sent.get(sent, 0) + 1
        if received is not None:
            self.close_codes_received[received] = self.close_codes_received.get(received, 0) + 1

    def dropped(self, reason: str, count: int) -> None:
        if count:
            self.deliveries_dropped[reason] += count

    def add_gauges(self, source: Callable[[], dict[str, dict[str, float]]]) -> None:
        """Register ``source``: at every snapshot it returns ``{gauge name: {label value: value}}``.

        A name of a counter (``frames_sent``...) adds the part of it a component keeps itself,
        not yet handed to this object, to the counter.
        """
        self._gauges.append(source)

    def remove_gauges(self, source: Callable[[], dict[str, dict[str, float]]]) -> None:
        if source in self._gauges:
            self._gauges.remove(source)

    # --- snapshots ----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every number of this process, JSON-ready (labels as strings)."""
        counters = self._counters()
        gauges: dict[str, dict[str, float]] = {}
        for source in list(self._gauges):
            try:
                values = source()
            except Exception:  # a gauge must never break a scrape
                logger.exception("ws4redis: a metrics gauge failed")
                continue
            _add(counters, {name: by_label for name, by_label in values.items() if name in counters})
            _add(gauges, {name: by_label for name, by_label in values.items() if name not in counters})
        return {"pid": os.getpid(), "counters": counters, "gauges": gauges}

    def _counters(self) -> dict[str, dict[str, float]]:
        return {
            "websockets_opened": _strings(self.websockets_opened),
            "handshake_rejections": _strings(self.handshake_rejections),
            "messages_received": {"": self.messages_received},
            "messages_published": {"": self.messages_published},
            "deliveries": {"": self.deliveries},
            "deliveries_dropped": _strings(self.deliveries_dropped),
            "echoes_suppressed": {"": self.echoes_suppressed},
            "frames_sent": {"": self.frames_sent},
            "bytes_sent": {"": self.bytes_sent},
            "slow_consumer_closes": {"": self.slow_consumer_closes},
            "close_codes_sent": _strings(self.close_codes_sent),
            "close_codes_received": _strings(self.close_codes_received),
            "hub_reconnects": {"": self.hub_reconnects},
            "hub_drops_by_redis": {"": self.hub_drops_by_redis},
            "hub_outage_seconds": {"": self.hub_outage_seconds},
        }


def _strings(values: dict[Any, float]) -> dict[str, float]:
    return {str(label): value for label, value in values.items()}


METRICS = Metrics()


# --- many workers --------------------------------------------------------------------------------


def shared_directory() -> Path | None:
    """The directory the workers of this server share snapshots in, or None for a lone process.

    ``python -m ws4redis serve --workers N`` names one in ``WS4REDIS_METRICS_DIR``; uWSGI workers
    forked by a master use one named after the master's pid.
    """
    named = os.environ.get(constants.METRICS_DIR_ENVIRONMENT)
    if named:
        return Path(named)
    try:
        import uwsgi  # type: ignore[import-not-found]
    except ImportError:
        return None
    master = uwsgi.masterpid()
    if not master:
        return None
    return Path(tempfile.gettempdir()) / f"ws4redis-metrics-uwsgi-{master}"


class SnapshotWriter:
    """Writes this worker's snapshot to the shared directory every second (a libev timer, no greenlet)."""

    def __init__(self, directory: Path, metrics: Metrics = METRICS) -> None:
        self.directory = directory
        self.metrics = metrics
        self._timer: Any = None

    def start(self) -> None:
        import gevent

        self.directory.mkdir(parents=True, exist_ok=True)
        self.write()
        self._timer = gevent.get_hub().loop.timer(SNAPSHOT_INTERVAL, SNAPSHOT_INTERVAL)
        self._timer.start(self.write)

    def stop(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.stop()
            timer.close()
        self.write()  # the last counts stay, for totals that never go down

    def write(self) -> None:
        path = self.directory / f"{os.getpid()}.json"
        staging = path.with_suffix(".tmp")
        try:
            staging.write_text(json.dumps(self.metrics.snapshot()))
            os.replace(staging, path)
        except OSError as exc:
            logger.warning("ws4redis: cannot write the metrics snapshot %s: %s", path, exc)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _others(directory: Path | None) -> Iterator[dict[str, Any]]:
    if directory is None or not directory.is_dir():
        return
    own = os.getpid()
    for path in sorted(directory.glob("*.json")):
        try:
            snapshot = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now, or not ours
        if snapshot.get("pid") != own:
            yield snapshot


def merged(metrics: Metrics = METRICS, directory: Path | None = None) -> dict[str, Any]:
    """This process's live snapshot plus the other workers' (counters of dead ones, gauges of live ones)."""
    own = metrics.snapshot()
    result = {"workers": 1, "counters": own["counters"], "gauges": own["gauges"]}
    for snapshot in _others(directory):
        alive = _alive(int(snapshot.get("pid", 0)))
        result["workers"] += alive
        _add(result["counters"], snapshot.get("counters", {}))
        if alive:
            _add(result["gauges"], snapshot.get("gauges", {}))
    return result


def _add(into: dict[str, dict[str, float]], more: dict[str, dict[str, float]]) -> None:
    for name, by_label in more.items():
        target = into.setdefault(name, {})
        for label, value in by_label.items():
            target[label] = target.get(label, 0) + value


# --- Prometheus ----------------------------------------------------------------------------------

# name in the snapshot -> (Prometheus name, label name or None, help)
COUNTERS = {
    "websockets_opened": ("ws4redis_websockets_opened", "server", "Websockets accepted, by server path."),
    "handshake_rejections": ("ws4redis_handshake_rejections", "status",
                             "Upgrade requests refused, by HTTP status."),
    "messages_received": ("ws4redis_messages_received", None,
                          "Messages received from websockets (heartbeats not counted)."),
    "messages_published": ("ws4redis_messages_published", None,
                           "Messages of websockets published to Redis."),
    "deliveries": ("ws4redis_deliveries", None,
                   "Messages from Redis handed to local websockets (messages x subscribers)."),
    "deliveries_dropped": ("ws4redis_deliveries_dropped", "reason",
                           "Deliveries thrown away: the websocket fell behind (slow_consumer) or was "
                           "gone (closed)."),
    "echoes_suppressed": ("ws4redis_echoes_suppressed", None,
                          "Deliveries not made: a websocket's own message, asked for without echo."),
    "frames_sent": ("ws4redis_frames_sent", None, "Websocket frames written, control frames included."),
    "bytes_sent": ("ws4redis_bytes_sent", None, "Bytes written to websockets."),
    "slow_consumer_closes": ("ws4redis_slow_consumer_closes", None,
                             "Websockets closed with 1008 for not reading."),
    "close_codes_sent": ("ws4redis_close_codes_sent", "code", "Close frames sent, by code."),
    "close_codes_received": ("ws4redis_close_codes_received", "code", "Close frames received, by code."),
    "hub_reconnects": ("ws4redis_hub_reconnects", None,
                       "Times the hub got its Redis pub/sub connection back."),
    "hub_drops_by_redis": ("ws4redis_hub_drops_by_redis", None,
                           "Times Redis closed the hub's connection while staying reachable "
                           "(client-output-buffer-limit): messages of that burst were lost."),
    "hub_outage_seconds": ("ws4redis_hub_outage_seconds", None,
                           "Seconds the hub spent without its Redis pub/sub connection."),
}
GAUGES = {
    "websockets_open": ("ws4redis_websockets_open", "server", "Websockets open now, by server path."),
    "subscriptions": ("ws4redis_subscriptions", "audience",
                      "Channel subscriptions of open websockets, by audience."),
    "hub_connected": ("ws4redis_hub_connected", None, "1 when every hub of the workers reaches Redis."),
    "pubsub_connections": ("ws4redis_redis_pubsub_connections", None,
                           "Redis pub/sub connections held by the hubs."),
    "lane_deliveries": ("ws4redis_lane_deliveries", None,
                        "Of the deliveries, those written by the fan-out's send lanes, since the "
                        "workers started."),
    "lane_sends": ("ws4redis_lane_sends", None,
                   "System calls the send lanes made to write them (deliveries per send: how well a "
                   "burst was batched), since the workers started."),
}


def prometheus_text(numbers: dict[str, Any]) -> bytes:
    """``numbers`` (from :func:`merged`) in the Prometheus text exposition format."""
    from prometheus_client.core import CollectorRegistry, CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.exposition import generate_latest

    class Collector:
        def collect(self) -> Iterable[Any]:
            for key, (name, label, text) in COUNTERS.items():
                yield _family(CounterMetricFamily, name, label, text, numbers["counters"].get(key, {}))
            gauges = numbers["gauges"]
            for key, (name, label, text) in GAUGES.items():
                values = gauges.get(key, {})
                if key == "hub_connected" and values:
                    # Summed over workers: connected only when all of them are.
                    values = {"": float(values.get("", 0) == numbers["workers"])}
                yield _family(GaugeMetricFamily, name, label, text, values)
            yield _family(GaugeMetricFamily, "ws4redis_workers", None,
                          "Worker processes whose numbers this scrape adds up.", {"": numbers["workers"]})

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector())  # type: ignore[arg-type]
    return generate_latest(registry)


def _family(kind: type, name: str, label: str | None, text: str, values: dict[str, float]) -> Any:
    if label is None:
        return kind(name, text, value=values.get("", 0))
    family = kind(name, text, labels=[label])
    for value_label, value in sorted(values.items()):
        family.add_metric([value_label], value)
    return family
