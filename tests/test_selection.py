"""The run that expects the compiled core must really be using it, and vice versa."""

import os

import ws4redis.speedups as speedups
from tests.compiled import import_compiled
from ws4redis.server import fanout


def test_implementation_matches_expectation():
    if speedups.extensions_disabled():
        assert speedups.COMPILED is False
        assert speedups.mask.__module__ == "ws4redis.pure.mask"
        assert fanout.COMPILED is False and fanout.SendLanes.__module__ == "ws4redis.server.lanes"
    elif os.environ.get("WS4REDIS_EXPECT_COMPILED") == "1":
        assert speedups.COMPILED is True, "compiled speedups were expected but the pure path was selected"
        assert speedups.FrameParser.__module__ == "ws4redis._speedups_frames"
        assert speedups.validate_utf8.__module__ == "ws4redis._speedups_utf8"
        assert fanout.COMPILED is True and fanout.SendLanes.__module__ == "ws4redis._speedups_fanout"
    else:
        built, _ = import_compiled()
        assert speedups.COMPILED is (built is not None), "the facade uses the extensions exactly when built"
        assert fanout.COMPILED is (built is not None)
