"""A RESP2 parser for the hub's pub/sub connection whose buffer stays bounded during endless bursts.

redis-py reads the socket into one ``BytesIO`` and empties it only when
everything in it has been parsed. A pub/sub connection under a steady burst
almost never reaches that point (the last read usually ends inside a
message), so the buffer grew with everything the burst carried: hundreds of
megabytes for the hub of a busy process, which the robustness test measured
as RSS growth that depended on how loaded the machine was. This parser
moves the unread tail to the front once more than
``constants.HUB_PARSER_COMPACT_AT`` bytes have been parsed, so the buffer
never holds much more than that plus one read.

It relies on redis-py's ``SocketBuffer`` (``redis._parsers.socket``), the
class every redis-py 5+ RESP2 parser reads through; tests/test_hub.py
checks the bound, so an upgrade that changes it fails the suite.
"""

from __future__ import annotations

from typing import Any

from redis._parsers import _RESP2Parser
from redis._parsers.socket import SocketBuffer

from ws4redis import constants

__all__ = ["CompactingSocketBuffer", "PubSubParser"]


class CompactingSocketBuffer(SocketBuffer):
    """``SocketBuffer`` that also drops what was parsed while unread bytes remain."""

    def purge(self) -> None:
        """Called by the parser after each complete reply."""
        if not self.unread_bytes():
            super().purge()
            return
        buffer = self._buffer
        if buffer.tell() < constants.HUB_PARSER_COMPACT_AT:
            return
        rest = buffer.read()
        buffer.seek(0)
        buffer.truncate()
        buffer.write(rest)
        buffer.seek(0)

    @property
    def size(self) -> int:
        """Bytes held, parsed or not (what the bound is about)."""
        with self._buffer.getbuffer() as view:
            return view.nbytes


class PubSubParser(_RESP2Parser):
    """redis-py's RESP2 parser, reading through a :class:`CompactingSocketBuffer`."""

    def on_connect(self, connection: Any) -> None:
        super().on_connect(connection)
        self._buffer = CompactingSocketBuffer(self._sock, self.socket_read_size, connection.socket_timeout)

    @property
    def buffered(self) -> int:
        """Bytes the parser holds at the moment (0 before it is connected)."""
        return self._buffer.size if self._buffer is not None else 0
