"""ws4redis.redis_store against a real Redis: key layout, SELF, publishing, persistence, RedisMessage."""

from __future__ import annotations

import logging
import pickle

import pytest
from django.test import override_settings

from tests.pubsub import received, subscribe_confirmed
from ws4redis.redis_store import SELF, RedisMessage, RedisStore, get_prefix

FACILITY = "foobar"


@pytest.fixture
def store(redis_client):
    return RedisStore(redis_client)


# Key layout ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({"broadcast": True}, ["broadcast:foobar"]),
        ({"users": ["john", "mary"]}, ["user:john:foobar", "user:mary:foobar"]),
        ({"groups": ["admins"]}, ["group:admins:foobar"]),
        ({"sessions": ["abc123"]}, ["session:abc123:foobar"]),
        (
            {"broadcast": True, "groups": ["g"], "users": ["u"], "sessions": ["s"]},
            ["broadcast:foobar", "group:g:foobar", "user:u:foobar", "session:s:foobar"],
        ),
        ({"users": ("john", "john")}, ["user:john:foobar"]),
        ({"broadcast": False}, []),
    ],
)
def test_channel_names_follow_the_0_6_0_layout(store, kwargs, expected):
    assert store._get_message_channels(facility=FACILITY, **kwargs) == expected


@override_settings(WS4REDIS_PREFIX="site1")
def test_a_prefix_comes_first_in_every_name(store):
    assert get_prefix() == "site1:"
    assert RedisStore.get_prefix() == "site1:"
    names = store._get_message_channels(facility=FACILITY, broadcast=True, groups=["g"], users=["u"],
                                        sessions=["s"])
    assert names == ["site1:broadcast:foobar", "site1:group:g:foobar", "site1:user:u:foobar",
                     "site1:session:s:foobar"]


def test_no_prefix_means_no_leading_colon():
    with override_settings(WS4REDIS_PREFIX=None):
        assert get_prefix() == ""
    with override_settings(WS4REDIS_PREFIX=""):
        assert get_prefix() == ""


def test_facility_defaults_to_the_0_6_0_placeholder(store):
    assert store._get_message_channels(broadcast=True) == ["broadcast:{facility}"]


def test_deprecated_audience_forms_still_work(store, make_request):
    request = make_request()
    with pytest.deprecated_call():
        assert store._get_message_channels(facility=FACILITY, users="john") == ["user:john:foobar"]
    with pytest.deprecated_call():
        assert store._get_message_channels(facility=FACILITY, groups="g") == ["group:g:foobar"]
    with pytest.deprecated_call():
        names = store._get_message_channels(request=request, facility=FACILITY, sessions=True)
    assert names == [f"session:{request.session.session_key}:foobar"]


@pytest.mark.parametrize("audience", ["users", "groups", "sessions"])
def test_audiences_must_be_lists(store, audience):
    with pytest.raises(ValueError, match=audience):
        store._get_message_channels(facility=FACILITY, **{audience: 42})


# SELF ------------------------------------------------------------------------------------------


def test_self_is_a_picklable_singleton():
    assert pickle.loads(pickle.dumps(SELF)) is SELF
    assert type(SELF)() is SELF
    assert repr(SELF) == "SELF"


def test_self_resolves_user_groups_and_session_from_a_real_request(store, make_request, alice):
    request = make_request(user=alice)
    assert request.session["ws4redis:memberof"] == ["blue", "green"]
    key = request.session.session_key
    assert key
    names = store._get_message_channels(request=request, facility=FACILITY, users=[SELF, "bob"],
                                        groups=[SELF], sessions=[SELF])
    assert names == ["group:blue:foobar", "group:green:foobar", "user:alice:foobar", "user:bob:foobar",
                     f"session:{key}:foobar"]


def test_deprecated_true_audiences_resolve_like_self(store, make_request, alice):
    request = make_request(user=alice)
    with pytest.deprecated_call():
        names = store._get_message_channels(request=request, facility=FACILITY, users=True, groups=True)
    assert names == ["group:blue:foobar", "group:green:foobar", "user:alice:foobar"]


def test_self_for_an_anonymous_request_is_dropped_with_a_warning(store, make_request, caplog):
    request = make_request()
    with caplog.at_level(logging.WARNING, logger="ws4redis"):
        names = store._get_message_channels(request=request, facility=FACILITY, users=[SELF], groups=[SELF])
    assert names == []
    messages = [record.getMessage() for record in caplog.records]
    assert any("users=[SELF]" in message and "anonymous" in message for message in messages)
    assert any("groups=[SELF]" in message and "anonymous" in message for message in messages)


def test_self_session_without_session_is_dropped_with_a_warning(store, make_request, caplog):
    request = make_request(session=False)
    with caplog.at_level(logging.WARNING, logger="ws4redis"):
        assert store._get_message_channels(request=request, facility=FACILITY, sessions=[SELF]) == []
    assert any("sessions=[SELF]" in record.getMessage() for record in caplog.records)


def test_self_without_any_request_is_dropped(store):
    assert store._get_message_channels(facility=FACILITY, users=[SELF], sessions=[SELF]) == []


# Publishing and persistence --------------------------------------------------------------------


def test_publish_reaches_subscribers_of_every_channel_and_persists_the_message(store, redis_client, listener):
    store._publishers = set(store._get_message_channels(facility=FACILITY, broadcast=True, users=["john"]))
    subscribe_confirmed(listener, "broadcast:foobar", "user:john:foobar")
    assert store.publish_message(RedisMessage("hello"), expire=60) == 2
    assert sorted(received(listener, 2)) == [("broadcast:foobar", b"hello"), ("user:john:foobar", b"hello")]
    for channel in ("broadcast:foobar", "user:john:foobar"):
        assert redis_client.get(channel) == b"hello"
        assert 0 < redis_client.ttl(channel) <= 60


def test_expire_defaults_to_the_setting(store, redis_client):
    store._publishers = {"broadcast:foobar"}
    with override_settings(WS4REDIS_EXPIRE=123):
        store.publish_message(RedisMessage("x"))
    assert 100 < redis_client.ttl("broadcast:foobar") <= 123


def test_a_subclass_expire_attribute_overrides_the_setting(redis_client):
    class ShortLived(RedisStore):
        _expire = 5

    store = ShortLived(redis_client)
    store._publishers = {"broadcast:foobar"}
    store.publish_message(RedisMessage("x"))
    assert 0 < redis_client.ttl("broadcast:foobar") <= 5
    store.publish_message(RedisMessage("y"), expire=500)
    assert 5 < redis_client.ttl("broadcast:foobar") <= 500


def test_expire_zero_publishes_without_persisting(store, redis_client, listener):
    store._publishers = {"broadcast:foobar"}
    subscribe_confirmed(listener, "broadcast:foobar")
    with override_settings(WS4REDIS_EXPIRE=0):
        assert store.publish_message(RedisMessage("gone")) == 1
    assert received(listener, 1) == [("broadcast:foobar", b"gone")]
    assert redis_client.get("broadcast:foobar") is None
    store.publish_message(RedisMessage("also gone"), expire=0)
    assert redis_client.exists("broadcast:foobar") == 0


def test_only_the_last_message_of_a_channel_is_kept(store, redis_client):
    store._publishers = {"broadcast:foobar"}
    for text in ("one", "two", "three"):
        store.publish_message(RedisMessage(text), expire=60)
    assert redis_client.get("broadcast:foobar") == b"three"
    assert redis_client.type("broadcast:foobar") == b"string"


@pytest.mark.parametrize("transaction", [True, False])
def test_pipeline_publish_publishes_and_persists(store, redis_client, listener, transaction):
    store._publishers = set(store._get_message_channels(facility=FACILITY, broadcast=True, groups=["g"],
                                                        sessions=["s"]))
    subscribe_confirmed(listener, "broadcast:foobar", "group:g:foobar")
    redis_client.config_resetstat()
    receivers = store.pipeline_publish_message(RedisMessage("piped"), expire=30, transaction=transaction)
    assert receivers == 2
    stats = redis_client.info("commandstats")
    assert ("cmdstat_multi" in stats) is transaction
    assert ("cmdstat_exec" in stats) is transaction
    assert stats["cmdstat_publish"]["calls"] == 3
    assert sorted(received(listener, 2)) == [("broadcast:foobar", b"piped"), ("group:g:foobar", b"piped")]
    for channel in ("broadcast:foobar", "group:g:foobar", "session:s:foobar"):
        assert redis_client.get(channel) == b"piped"
        assert 0 < redis_client.ttl(channel) <= 30


def test_pipeline_publish_without_expiry_and_without_channels(store, redis_client, listener):
    assert store.pipeline_publish_message(RedisMessage("nowhere")) == 0
    store._publishers = {"broadcast:foobar"}
    subscribe_confirmed(listener, "broadcast:foobar")
    assert store.pipeline_publish_message(RedisMessage("live only"), expire=0) == 1
    assert received(listener, 1) == [("broadcast:foobar", b"live only")]
    assert redis_client.get("broadcast:foobar") is None


@override_settings(WS4REDIS_PREFIX="site1")
def test_publishing_with_a_prefix_uses_prefixed_keys(store, redis_client, listener):
    store._publishers = set(store._get_message_channels(facility=FACILITY, broadcast=True))
    subscribe_confirmed(listener, "site1:broadcast:foobar")
    store.publish_message(RedisMessage("prefixed"))
    assert received(listener, 1) == [("site1:broadcast:foobar", b"prefixed")]
    assert redis_client.get("site1:broadcast:foobar") == b"prefixed"
    assert redis_client.get("broadcast:foobar") is None


def test_publish_accepts_str_and_bytes_and_rejects_other_types(store, redis_client):
    store._publishers = {"broadcast:foobar"}
    store.publish_message("text ✓")
    assert redis_client.get("broadcast:foobar") == "text ✓".encode()
    store.publish_message(b"\x00\xff")
    assert redis_client.get("broadcast:foobar") == b"\x00\xff"
    with pytest.raises(ValueError, match="RedisMessage"):
        store.publish_message(12)
    with override_settings(WS4REDIS_HEARTBEAT="--beat--"), pytest.raises(ValueError, match="heartbeat"):
        store.publish_message("--beat--")


# RedisMessage ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value, expected",
    [
        ("héllo", "héllo".encode()),
        (b"raw\x00bytes", b"raw\x00bytes"),
        (bytearray(b"array"), b"array"),
        (memoryview(b"view"), b"view"),
        ([b"message", b"chan", b"payload"], b"payload"),
        (["message", "chan", "text payload"], b"text payload"),
        ([b"pmessage", b"pat*", b"chan", b"matched"], b"matched"),
        ("", b""),
    ],
)
def test_redis_message_converts_to_bytes(value, expected):
    message = RedisMessage(value)
    assert isinstance(message, RedisMessage)
    assert isinstance(message, bytes)
    assert message == expected


@pytest.mark.parametrize(
    "value",
    [
        [b"subscribe", b"chan", 1],
        [b"unsubscribe", b"chan", 0],
        [b"pong", b""],
        [],
        None,
    ],
)
def test_pubsub_replies_that_are_not_messages_become_none(value):
    assert RedisMessage(value) is None


@override_settings(WS4REDIS_HEARTBEAT="--heartbeat--")
def test_heartbeats_become_none_in_every_form():
    assert RedisMessage("--heartbeat--") is None
    assert RedisMessage(b"--heartbeat--") is None
    assert RedisMessage(bytearray(b"--heartbeat--")) is None
    assert RedisMessage([b"message", b"chan", b"--heartbeat--"]) is None
    assert RedisMessage("--heartbeat-- not quite") == b"--heartbeat-- not quite"


def test_without_heartbeat_setting_nothing_is_dropped():
    with override_settings(WS4REDIS_HEARTBEAT=None):
        assert RedisMessage("--heartbeat--") == b"--heartbeat--"


def test_redis_message_rejects_unsupported_types():
    with pytest.raises(TypeError, match="int"):
        RedisMessage(42)
