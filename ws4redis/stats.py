"""``python -m ws4redis stats URL``: the numbers of a running server, for a person at a terminal.

It scrapes the server's metrics endpoint (WS4REDIS_MONITORING) like Prometheus
would and prints one line per number, so an operator needs nothing but the
package to see how many sockets are open and what was dropped. ``--json``
gives the same for scripts.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request

__all__ = ["fetch", "main", "render"]


def fetch(url: str, timeout: float = 10.0) -> dict[str, dict[str, float]]:
    """``{metric name: {labels as "k=v,...": value}}`` scraped from ``url``."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (an operator's URL)
        text = response.read().decode("utf-8")
    numbers: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue
            labels = ",".join(f"{name}={value}" for name, value in sorted(sample.labels.items()))
            numbers.setdefault(sample.name, {})[labels] = sample.value
    return numbers


def render(numbers: dict[str, dict[str, float]]) -> str:
    """One aligned line per sample, grouped by metric."""
    rows: list[tuple[str, str]] = []
    for name in sorted(numbers):
        for labels, value in sorted(numbers[name].items()):
            shown = f"{value:.3f}" if value != int(value) else f"{int(value)}"
            rows.append((f"{name.removeprefix('ws4redis_')}{'{' + labels + '}' if labels else ''}", shown))
    width = max((len(label) for label, _ in rows), default=0)
    return "\n".join(f"{label:<{width}}  {value:>12}" for label, value in rows)


def main(url: str, as_json: bool = False) -> int:
    try:
        numbers = fetch(url)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        print(f"ws4redis stats: cannot read {url}: {exc} (is WS4REDIS_MONITORING on, and the URL its "
              "'metrics' path?)", file=sys.stderr)
        return 1
    print(json.dumps(numbers, indent=2, sort_keys=True) if as_json else render(numbers))
    return 0
