"""The run that expects the compiled core must really be using it, and vice versa."""

import os

import ws4redis.speedups as speedups


def test_implementation_matches_expectation():
    if os.environ.get("WS4REDIS_NO_EXTENSIONS", "") not in ("", "0"):
        assert speedups.COMPILED is False
        assert speedups.mask.__module__ == "ws4redis.pure.mask"
    elif os.environ.get("WS4REDIS_EXPECT_COMPILED") == "1":
        assert speedups.COMPILED is True, "compiled speedups were expected but the pure path was selected"
        assert speedups.FrameParser.__module__ == "ws4redis._speedups_frames"
        assert speedups.validate_utf8.__module__ == "ws4redis._speedups_utf8"
    else:
        assert isinstance(speedups.COMPILED, bool)
