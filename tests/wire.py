"""Raw websocket bytes as a client puts them on the wire, for tests that bypass client libraries."""

from __future__ import annotations

import os

from ws4redis import constants
from ws4redis.speedups import encode_frame

# The handshake example of RFC 6455, section 1.3: a client's key and the server's answer to it.
RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def client_frame(opcode: int, payload: bytes = b"", fin: bool = True, **options: bool) -> bytes:
    """One frame masked with a fresh key, as RFC 6455 requires of clients; no rule is checked.

    ``options`` are ``encode_frame``'s reserved bits (``rsv1=True``...), for malformed frames.
    """
    return encode_frame(opcode, payload, fin=fin, mask_key=os.urandom(constants.MASK_KEY_LENGTH), **options)
