"""Drawing runs of ws4redis-bench: throughput and latency over time (``--plot``).

matplotlib is an optional dependency (the ``bench`` extra): the command line
checks for it before a run starts, so a missing library costs no run.
"""

from __future__ import annotations

import html
import importlib.util
import io
from collections.abc import Sequence
from pathlib import Path

__all__ = ["FORMATS", "missing_library", "plot"]

FORMATS = (".png", ".svg", ".html")


def missing_library() -> str | None:
    """Why ``plot`` cannot draw here, or None."""
    if importlib.util.find_spec("matplotlib") is None:
        return "--plot needs matplotlib: pip install 'ws4redis[bench]'"
    return None


def plot(runs: Sequence[tuple[str, dict]], path: str | Path) -> Path:
    """Draw the timeline of each ``(label, report)`` into ``path`` (.png, .svg or .html); returns it."""
    import matplotlib

    matplotlib.use("Agg")  # no screen needed
    from matplotlib.figure import Figure

    target = Path(path)
    figure = Figure(figsize=(9, 6), layout="constrained")
    rate, latency = figure.subplots(2, 1, sharex=True)
    for label, report in runs:
        timeline = report.get("timeline") or []
        times = [row["t"] for row in timeline]
        (line,) = rate.plot(times, [row["delivered_per_second"] for row in timeline], label=label)
        color = line.get_color()  # one color per run in both panels
        latency.plot(times, [row["p50"] for row in timeline], color=color, label=f"{label} p50")
        latency.plot(times, [row["p99"] for row in timeline], color=color, linestyle="--",
                     label=f"{label} p99")
    first = runs[0][1] if runs else {}
    rate.set_title(f"{first.get('mode', '')} {first.get('url', '')}: {first.get('clients', 0):,} clients, "
                   f"{first.get('size', 0)}-byte messages", fontsize=9)
    rate.set_ylabel("delivered messages / s")
    latency.set_ylabel("latency (ms)")
    latency.set_xlabel("seconds into the publish phase")
    for axes in (rate, latency):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=8)
    if target.suffix == ".html":
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg")
        title = html.escape(f"ws4redis-bench {first.get('url', '')}")
        page = (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title></head>'
                f"<body>\n{buffer.getvalue()}\n</body></html>\n")
        target.write_text(page, encoding="utf-8")
    else:
        figure.savefig(target, format=target.suffix.lstrip("."))
    return target
