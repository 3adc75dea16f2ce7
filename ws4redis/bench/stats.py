"""What the benchmark counts while it runs, and the summary it reports."""

from __future__ import annotations

import asyncio
from array import array
from collections import Counter

PERCENTILES = (50, 90, 99)
TIMELINE_POINTS = 60


class Stats:
    """Counters shared by every client connection of one run.

    Latencies are kept exactly, one signed 64-bit nanosecond value per
    delivery (8 bytes each), so percentiles are computed from the real
    samples rather than from a histogram.
    """

    def __init__(self) -> None:
        self.latencies = array("q")
        self.arrivals = array("q")  # when each delivery was read (monotonic ns), beside its latency
        self.delivered = 0
        self.duplicates = 0
        self.foreign = 0  # messages that were not sent by this benchmark
        self.open_clients = 0  # websockets open right now
        self.last_delivery_ns = 0
        self.wire_bytes = 0  # what the clients read after their handshakes, frame headers included
        self.compressed_clients = 0  # clients whose handshake negotiated permessage-deflate
        self.errors: Counter[str] = Counter()
        # The publisher sleeps until `delivered` reaches `wake_at`.
        self.wake_at = 0
        self.wake = asyncio.Event()

    def error(self, kind: str) -> None:
        self.errors[kind] += 1

    def latency_summary(self) -> dict[str, float]:
        """min, mean, p50, p90, p99 and max in milliseconds (nearest rank); {} without samples."""
        samples = sorted(self.latencies)
        if not samples:
            return {}
        count = len(samples)
        summary = {"min": samples[0] / 1e6, "mean": sum(samples) / count / 1e6}
        for pct in PERCENTILES:
            rank = max(1, -(-pct * count // 100))  # ceil(pct / 100 * count), nearest-rank method
            summary[f"p{pct}"] = samples[rank - 1] / 1e6
        summary["max"] = samples[-1] / 1e6
        return summary

    def timeline(self, start_ns: int, points: int = TIMELINE_POINTS) -> list[dict[str, float]]:
        """Deliveries per second and latency percentiles over time, from ``start_ns`` on.

        The run is cut into about ``points`` equal intervals (at least 10 ms each); each row
        gives its start (seconds into the run) and length, its deliveries per second and its
        p50/p90/p99 in ms; intervals without a delivery have no row.
        """
        if not self.arrivals:
            return []
        end_ns = max(self.arrivals)
        step = max(10_000_000, -(-(end_ns - start_ns) // points))
        buckets: dict[int, list[int]] = {}
        for arrived, latency in zip(self.arrivals, self.latencies, strict=True):
            buckets.setdefault(max(0, arrived - start_ns) // step, []).append(latency)
        rows = []
        for index in sorted(buckets):
            samples = sorted(buckets[index])
            count = len(samples)
            seconds = step / 1e9
            row = {"t": index * seconds, "seconds": seconds, "delivered_per_second": count / seconds}
            for pct in PERCENTILES:
                row[f"p{pct}"] = samples[max(1, -(-pct * count // 100)) - 1] / 1e6
            rows.append(row)
        return rows
