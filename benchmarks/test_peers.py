"""The committed fan-out comparison (``python -m benchmarks.peers``) runs and compares every peer.

A short run: ws4redis' gevent server, the websockets + redis.asyncio peer, the Bun peer (npm is
reachable here: its absence fails the test with the reason) and the send floor each deliver every
message, flat out and paced, and each has its row in both tables.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_peer_comparison_measures_every_server():
    result = subprocess.run([sys.executable, "-m", "benchmarks.peers"], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    tables = result.stdout.split("ws4redis-bench --compare:")[1:]
    assert len(tables) == 2, result.stdout
    for table in tables:
        rows = {line.split()[0]: line for line in table.splitlines()[2:] if " of " in line}
        assert set(rows) == {"ws4redis", "websockets", "bun", "send_floor"}, result.stderr + table
        assert all(" 0 of " in row and row.rstrip().endswith(" 0") for row in rows.values()), table
