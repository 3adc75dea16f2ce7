"""The hot path of RFC 6455, compiled when possible, pure Python otherwise.

Both implementations expose the identical API and are held together by
parity tests. ``WS4REDIS_NO_EXTENSIONS=1`` in the environment forces the
pure-Python path at import time (and builds a pure wheel at build time).
"""

from __future__ import annotations

import os
import warnings

__all__ = [
    "COMPILED",
    "Frame",
    "FrameParser",
    "Utf8Validator",
    "encode_frame",
    "mask",
    "mask_inplace",
    "validate_utf8",
]


def extensions_disabled() -> bool:
    return os.environ.get("WS4REDIS_NO_EXTENSIONS", "").strip().lower() not in ("", "0", "false", "no")


if extensions_disabled():
    _compiled = False
else:
    try:
        from ws4redis._speedups_frames import Frame, FrameParser, encode_frame
        from ws4redis._speedups_mask import mask, mask_inplace
        from ws4redis._speedups_utf8 import Utf8Validator, validate_utf8
    except ImportError as exc:
        warnings.warn(
            f"ws4redis: compiled speedups unavailable ({exc}); using the slower pure-Python core",
            RuntimeWarning,
            stacklevel=2,
        )
        _compiled = False
    else:
        _compiled = True

if not _compiled:
    from ws4redis.pure.frames import Frame, FrameParser, encode_frame  # noqa: F811
    from ws4redis.pure.mask import mask, mask_inplace  # noqa: F811
    from ws4redis.pure.utf8 import Utf8Validator, validate_utf8  # noqa: F811

COMPILED: bool = _compiled
