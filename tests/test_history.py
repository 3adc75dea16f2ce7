"""WS4REDIS_HISTORY: the settings, the key layout, the envelopes and the publish script on a real Redis.

The recovery of websockets on the three servers is tested in tests/test_recovery.py.
"""

from __future__ import annotations

import json

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests.pubsub import received, subscribe_confirmed
from ws4redis.history import (
    HistoryPolicy,
    HistorySettings,
    channel_labels,
    message_event,
    offset_order,
    parse_since,
    read_missed,
    read_positions,
    stream_key,
    unwrap,
    wrap,
)
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_cluster import key_slot
from ws4redis.redis_store import RedisMessage

HISTORY = {"size": 10, "ttl": 60}


# --- settings ------------------------------------------------------------------------------------


def test_history_is_off_unless_configured():
    assert HistorySettings.from_setting(None) is None and HistorySettings.from_setting(False) is None
    every = HistorySettings.from_setting(True)
    assert every.for_facility("anything") == HistoryPolicy()


def test_listed_facilities_only_and_their_overrides():
    settings = HistorySettings.from_setting(
        {"size": 50, "ttl": 120, "facilities": {"chat": {}, "news": {"size": 1000}, "noisy": None}})
    assert settings.for_facility("chat") == HistoryPolicy(50, 120)
    assert settings.for_facility("news") == HistoryPolicy(1000, 120)
    assert settings.for_facility("noisy") is None and settings.for_facility("other") is None
    assert HistorySettings.from_setting({"size": 5}).for_facility("x") == HistoryPolicy(5, 300)


@pytest.mark.parametrize(("value", "message"), [
    ("yes", "must be None, True or a dict"),
    ({"length": 5}, "unknown keys ['length']"),
    ({"size": 0}, "['size'] must be an integer >= 1, got 0"),
    ({"ttl": 1.5}, "['ttl'] must be an integer >= 1"),
    ({"facilities": ["chat"]}, "['facilities'] must be a dict of facility names"),
    ({"facilities": {"chat": 5}}, "['facilities']['chat'] must be a dict of size and ttl"),
    ({"facilities": {"chat": {"size": -1}}}, "['facilities']['chat']['size'] must be an integer >= 1"),
    ({"facilities": {"chat": {"depth": 1}}}, "['facilities']['chat'] has unknown keys ['depth']"),
])
def test_a_bad_history_setting_names_itself(value, message):
    from ws4redis import settings as private_settings

    with override_settings(WS4REDIS_HISTORY=value), pytest.raises(ImproperlyConfigured) as error:
        private_settings.validate_settings()
    assert str(error.value).startswith("WS4REDIS_HISTORY") and message in str(error.value), str(error.value)


# --- keys, envelopes, offsets ------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [
    b"broadcast:chat", b"site:user:alice:chat", b"group:{team}:chat", b"broadcast:a{b", b"x{y}{}z",
])
def test_a_stream_shares_its_channels_cluster_slot(channel):
    key = stream_key(channel)
    assert key != channel and key.endswith(b":history")
    assert key_slot(key) == key_slot(channel)


@pytest.mark.parametrize("channel", [b"broadcast:a}b", b"broadcast:a{}b", b"x{}{y}z"])
def test_a_channel_no_key_can_share_a_slot_with_is_refused(channel):
    with pytest.raises(ValueError, match="cannot have a history"):
        stream_key(channel)


@pytest.mark.parametrize(("binary", "data"),
                         [(False, "grüße".encode()), (True, b"\xff\x00\x01"), (False, b"")])
def test_an_envelope_unwraps_to_what_was_wrapped(binary, data):
    assert unwrap(wrap(b"1733449200000-7", binary, data)) == (b"1733449200000-7", binary, data)


@pytest.mark.parametrize("payload", [b"plain", b"\x00w4h", b"\x00w4hx1-0\x00data", b"\x00w4ht1-0 no end"])
def test_a_message_without_a_valid_envelope_is_delivered_as_it_is(payload):
    assert unwrap(payload) == (None, None, payload)


def test_offsets_sort_by_number_not_by_text():
    assert offset_order("9-0") < offset_order("10-0") < offset_order("10-1")
    assert offset_order(b"1733449200000-12") == (1733449200000, 12)


def test_since_is_a_json_object_of_offsets():
    assert parse_since('{"broadcast": "1-0", "group:a": "22-3"}') == {"broadcast": "1-0", "group:a": "22-3"}
    for bad in ("1-0", "[]", '{"broadcast": 5}', '{"broadcast": "1-0; FLUSHALL"}', "{" + " " * 5000 + "}"):
        with pytest.raises(ValueError):
            parse_since(bad)


def test_labels_hide_user_names_and_session_keys():
    labels = channel_labels(
        ["site:broadcast:chat", "site:user:alice:chat", "site:session:s3cr3t:chat", "site:group:a:b:chat"],
        "site:", "chat",
    )
    assert labels == {b"site:broadcast:chat": "broadcast", b"site:user:alice:chat": "user",
                      b"site:session:s3cr3t:chat": "session", b"site:group:a:b:chat": "group:a:b"}


def test_a_history_client_receives_json_with_the_type():
    text = json.loads(message_event("broadcast", b"5-0", False, "héllo".encode()))
    assert text == {"event": "message", "channel": "broadcast", "offset": "5-0", "binary": False,
                    "data": "héllo"}
    binary = json.loads(message_event("user", None, True, b"\xff\x00"))
    assert (binary["offset"], binary["binary"], binary["data"]) == (None, True, "/wA=")


# --- publishing on a real Redis ----------------------------------------------------------------------


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_a_publish_appends_keeps_and_publishes_in_one_script(redis_client, listener):
    subscribe_confirmed(listener, "broadcast:chat")
    publisher = RedisPublisher(facility="chat", broadcast=True)
    assert publisher.publish_message(RedisMessage("hello")) == 1
    assert publisher.publish_message(RedisMessage(b"\xff\xfe", binary=True)) == 1
    [(offset1, fields1), (offset2, fields2)] = redis_client.xrange("{broadcast:chat}:history")
    assert fields1 == {b"t": b"t", b"d": b"hello"} and fields2 == {b"t": b"b", b"d": b"\xff\xfe"}
    assert 0 < redis_client.ttl("{broadcast:chat}:history") <= 60
    assert redis_client.get("broadcast:chat") == b"\xff\xfe"  # the persisted message stays bare
    assert received(listener, 2) == [("broadcast:chat", wrap(offset1, False, b"hello")),
                                     ("broadcast:chat", wrap(offset2, True, b"\xff\xfe"))]


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_bytes_that_are_text_stay_text_unless_said_otherwise(redis_client):
    publisher = RedisPublisher(facility="chat", broadcast=True)
    publisher.publish_message(RedisMessage(b"utf-8 bytes"))
    publisher.publish_message(RedisMessage(b"declared", binary=True))
    publisher.pipeline_publish_message(RedisMessage("pipelined"))
    kinds = [fields[b"t"] for _, fields in redis_client.xrange("{broadcast:chat}:history")]
    assert kinds == [b"t", b"b", b"t"]


@override_settings(WS4REDIS_HISTORY={"size": 10, "ttl": 60, "facilities": {"chat": {}}})
def test_facilities_without_history_publish_as_before(redis_client, listener):
    subscribe_confirmed(listener, "broadcast:other")
    RedisPublisher(facility="other", broadcast=True).publish_message(RedisMessage("bare"))
    assert received(listener, 1) == [("broadcast:other", b"bare")]
    assert redis_client.exists("{broadcast:other}:history") == 0


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_the_stream_is_trimmed_to_about_its_size(redis_client):
    publisher = RedisPublisher(facility="chat", broadcast=True)
    for index in range(500):
        publisher.publish_message(RedisMessage(f"m{index}"))
    length = redis_client.xlen("{broadcast:chat}:history")
    # MAXLEN ~ trims whole stream nodes (100 entries each): never fewer than asked, at most a node more.
    assert 10 <= length <= 10 + 100, length


@override_settings(WS4REDIS_HISTORY=HISTORY, WS4REDIS_EXPIRE=0)
def test_no_persisted_message_when_expire_is_zero(redis_client):
    RedisPublisher(facility="chat", broadcast=True).publish_message(RedisMessage("only in the stream"))
    assert redis_client.get("broadcast:chat") is None
    assert redis_client.xlen("{broadcast:chat}:history") == 1


# --- reading what was missed ------------------------------------------------------------------------------


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_what_was_missed_is_read_in_order_and_recovered_when_the_offset_is_still_there(redis_client):
    publisher = RedisPublisher(facility="chat", broadcast=True)
    for index in range(5):
        publisher.publish_message(RedisMessage(f"m{index}"))
    offsets = [offset.decode() for offset, _ in redis_client.xrange("{broadcast:chat}:history")]
    streams = {"broadcast": b"{broadcast:chat}:history", "user": b"{user:alice:chat}:history"}
    missed = read_missed(redis_client, streams, {"broadcast": offsets[1]}, limit=100)
    assert [(label, data) for label, _, _, data in missed.entries] == [
        ("broadcast", b"m2"), ("broadcast", b"m3"), ("broadcast", b"m4")]
    assert missed.recovered is True
    assert missed.offsets == {"broadcast": offsets[4], "user": "0-0"}
    # Nothing missed since the newest: recovered, nothing replayed.
    assert read_missed(redis_client, streams, {"broadcast": offsets[4]}, 100).entries == []


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_a_trimmed_or_unknown_offset_is_not_recovered(redis_client):
    publisher = RedisPublisher(facility="chat", broadcast=True)
    publisher.publish_message(RedisMessage("first"))
    first = redis_client.xrange("{broadcast:chat}:history")[0][0].decode()
    for index in range(300):
        publisher.publish_message(RedisMessage(f"m{index}"))
    streams = {"broadcast": b"{broadcast:chat}:history"}
    missed = read_missed(redis_client, streams, {"broadcast": first}, limit=HistoryPolicy(10).replay_limit())
    assert missed.recovered is False
    assert [data for _, _, _, data in missed.entries][-1] == b"m299"
    assert len(missed.entries) == redis_client.xlen("{broadcast:chat}:history")
    # More missed than the limit: the newest that fit, and not recovered.
    capped = read_missed(redis_client, streams, {"broadcast": first}, limit=3)
    assert [data for _, _, _, data in capped.entries] == [b"m297", b"m298", b"m299"]
    assert capped.recovered is False


def test_positions_of_empty_streams_are_zero(redis_client):
    assert read_positions(redis_client, {"broadcast": b"{broadcast:none}:history"}) == {"broadcast": "0-0"}


@override_settings(WS4REDIS_HISTORY=HISTORY)
def test_a_client_that_started_on_an_empty_channel_recovers_unless_trimmed(redis_client):
    streams = {"broadcast": b"{broadcast:chat}:history"}
    assert read_missed(redis_client, streams, {"broadcast": "0-0"}, 100).recovered is True
    publisher = RedisPublisher(facility="chat", broadcast=True)
    for index in range(3):
        publisher.publish_message(RedisMessage(f"m{index}"))
    missed = read_missed(redis_client, streams, {"broadcast": "0-0"}, 100)
    assert missed.recovered is True and [data for _, _, _, data in missed.entries] == [b"m0", b"m1", b"m2"]
    for index in range(300):
        publisher.publish_message(RedisMessage(f"more {index}"))
    assert read_missed(redis_client, streams, {"broadcast": "0-0"}, 1000).recovered is False
