"""A close frame reaches a peer that is still sending, on every server path.

A socket closed while unread input waits makes the kernel answer with a
reset, and a reset makes the peer's kernel drop what it had received but not
yet read: the close frame with its code. The hub servers shut their write
side after the close frame and read on until the peer closes (bounded by
WS4REDIS_PING_TIMEOUT); the peer reads the code, then the end of the stream.
"""

from __future__ import annotations

import time
import uuid

import pytest

from tests import servers
from tests.test_floods import KINDS, STARTERS
from tests.wire import client_frame
from ws4redis import constants
from ws4redis.protocol import CloseReceived, Message
from ws4redis.speedups import encode_frame

MESSAGES = 50  # 200 KB: more than the kernel lets wait for a peer that reads nothing, less than the queue


@pytest.fixture(scope="module")
def site(redis_server):
    site = servers.Site(redis_server.url)
    yield site
    site.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_a_peer_still_sending_after_its_protocol_error_reads_the_close_code(site, kind, redis_client):
    facility = f"closing{uuid.uuid4().hex[:8]}"
    with servers.serving(STARTERS[kind](site)) as server:
        sock, rest = servers.raw_upgrade(server, f"/ws/{facility}?subscribe-broadcast", receive_buffer=4096)
        with sock:
            # Messages it has not read yet fill its receive window: the close frame has to wait
            # in the server's send buffer, where closing the socket would throw it away.
            for number in range(MESSAGES):
                redis_client.publish(f"broadcast:{facility}", f"{number:04d}" + "m" * 3996)
            time.sleep(0.5)
            unmasked = encode_frame(constants.OP_TEXT, b"not masked")  # clients must mask: 1002
            sock.sendall(unmasked)
            garbage = client_frame(constants.OP_TEXT, b"g" * 4000)
            sock.settimeout(0.5)
            deadline = time.monotonic() + 1.0
            try:  # what a busy client has in flight when the server gives up on it
                while time.monotonic() < deadline:
                    sock.sendall(garbage)
            except OSError:
                pass
            sock.settimeout(10)
            events = servers.read_until_closed(sock, rest)
        closes = [event for event in events if isinstance(event, CloseReceived)]
        assert [close.code for close in closes] == [constants.CLOSE_PROTOCOL_ERROR], events[-3:]
        messages = [event for event in events if isinstance(event, Message)]
        assert [int(message.data[:4]) for message in messages] == list(range(MESSAGES))
        assert server.alive()
