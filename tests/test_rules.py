"""The per-connection rules every server follows (ws4redis.server.rules) and the answers of accept()."""

from __future__ import annotations

import redis

from ws4redis import constants
from ws4redis.redis_errors import BrokerUnavailable
from ws4redis.server.accept import BROKER_UNREACHABLE, Rejected
from ws4redis.server.rules import Due, EchoFilter, Inbound, Keepalive, forwarded, inbound, publish_failure


class Config:
    """The fields of ServerConfig the rules read."""

    def __init__(self, heartbeat: bytes | None = None, ping_interval: float | None = 20.0,
                 ping_timeout: float = 10.0) -> None:
        self.heartbeat = heartbeat
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout


def test_a_clients_heartbeat_is_answered_and_empty_messages_are_dropped():
    assert inbound(b"--hb--", b"--hb--") is Inbound.ANSWER_HEARTBEAT
    assert inbound(b"", b"--hb--") is Inbound.IGNORE
    assert inbound(b"", None) is Inbound.IGNORE
    assert inbound(b"--hb--", None) is Inbound.PUBLISH
    assert inbound(b"hello", b"--hb--") is Inbound.PUBLISH


def test_messages_from_redis_that_are_the_heartbeat_or_empty_are_not_forwarded():
    assert forwarded(b"hello", b"--hb--")
    assert not forwarded(b"--hb--", b"--hb--")
    assert not forwarded(b"", None)
    assert forwarded(b"--hb--", None)


def test_no_echo_filter_with_echo_or_without_a_channel_that_comes_back():
    assert EchoFilter.unless_echo(True, {"a"}, {"a"}) is None
    assert EchoFilter.unless_echo(False, {"a"}, {"b"}) is None
    echo_filter = EchoFilter.unless_echo(False, {"a", "b"}, {"b"})
    assert echo_filter is not None and echo_filter.channels == {"b"}


def test_keepalive_sends_a_ping_after_the_interval_of_silence_and_gives_up_after_the_timeout():
    keepalive = Keepalive(Config(ping_interval=20.0, ping_timeout=10.0), now=100.0)
    assert keepalive.due(119.9) is Due.NOTHING
    assert abs(keepalive.next_due(119.9) - 0.1) < 1e-9
    assert keepalive.due(120.0) == Due.PING
    assert keepalive.due(125.0) is Due.NOTHING  # one ping out, its answer still has time
    assert abs(keepalive.next_due(125.0) - 5.0) < 1e-9
    assert keepalive.due(130.0) == Due.PING_TIMEOUT


def test_anything_from_the_peer_counts_as_the_answer_and_postpones_the_next_ping():
    keepalive = Keepalive(Config(ping_interval=20.0, ping_timeout=10.0), now=0.0)
    assert keepalive.due(20.0) == Due.PING
    keepalive.received(25.0)
    assert keepalive.due(34.0) is Due.NOTHING  # no timeout: the peer spoke
    assert keepalive.due(45.0) == Due.PING  # 20 s after it last spoke


def test_the_heartbeat_is_due_after_the_legacy_interval_and_pings_can_be_off():
    keepalive = Keepalive(Config(heartbeat=b"--hb--", ping_interval=None), now=0.0)
    interval = constants.LEGACY_HEARTBEAT_INTERVAL
    assert keepalive.next_due(0.0) == interval
    assert keepalive.due(interval - 0.01) is Due.NOTHING
    assert keepalive.due(interval) == Due.HEARTBEAT
    assert keepalive.due(interval + 0.01) is Due.NOTHING
    assert keepalive.due(2 * interval) == Due.HEARTBEAT
    assert Keepalive(Config(ping_interval=None), now=0.0).next_due(0.0) is None


def test_out_of_patience_counts_from_when_the_wait_began():
    keepalive = Keepalive(Config(ping_timeout=10.0), now=0.0)
    assert not keepalive.out_of_patience(0.0, 1000.0)  # nothing waited for
    assert not keepalive.out_of_patience(5.0, 14.9)
    assert keepalive.out_of_patience(5.0, 15.0)


def test_a_message_redis_did_not_take_closes_with_1013_when_redis_is_away_else_1011():
    assert publish_failure(BrokerUnavailable("down"))[0] == constants.CLOSE_TRY_AGAIN_LATER
    assert publish_failure(redis.TimeoutError("slow"))[0] == constants.CLOSE_TRY_AGAIN_LATER
    assert publish_failure(redis.ResponseError("WRONGTYPE"))[0] == constants.CLOSE_INTERNAL_ERROR
    assert publish_failure(ValueError("bug")) == (constants.CLOSE_INTERNAL_ERROR, "internal server error")


def test_a_refusal_reads_the_same_through_wsgi_and_on_a_raw_socket():
    refusal = Rejected(403, "Forbidden: these channels are not allowed", (("Retry-After", "1"),))
    started = []
    body = refusal.send_wsgi(lambda status, headers: started.append((status, headers)))
    raw = refusal.http_response()
    assert started[0][0] == "403 Forbidden"
    assert ("Retry-After", "1") in started[0][1]
    head, _, raw_body = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 403 Forbidden\r\n") and b"Retry-After: 1" in head
    assert b"".join(body) == raw_body == b"Forbidden: these channels are not allowed\n"
    assert BROKER_UNREACHABLE.status == 503 and BROKER_UNREACHABLE.text == constants.BROKER_UNREACHABLE_TEXT
