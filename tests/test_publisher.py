"""ws4redis.publisher against a real Redis: RedisPublisher's audiences and fetch_message."""

from __future__ import annotations

import pytest
from django.test import override_settings

from tests.pubsub import received, subscribe_confirmed
from ws4redis.connection import get_connection_pool
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import SELF, RedisMessage


def test_the_default_connection_is_the_shared_pool():
    publisher = RedisPublisher(facility="x", broadcast=True)
    assert publisher._connection.connection_pool is get_connection_pool()


def test_a_given_connection_is_used(redis_client):
    publisher = RedisPublisher(connection=redis_client, facility="x", broadcast=True)
    assert publisher._connection is redis_client
    publisher.publish_message(RedisMessage("via given client"))
    assert redis_client.get("broadcast:x") == b"via given client"


@pytest.mark.parametrize(
    "kwargs, channels",
    [
        ({"broadcast": True}, ["broadcast:news"]),
        ({"users": ["john", "mary"]}, ["user:john:news", "user:mary:news"]),
        ({"groups": ["admins"]}, ["group:admins:news"]),
        ({"sessions": ["k1", "k2"]}, ["session:k1:news", "session:k2:news"]),
    ],
)
def test_each_audience_is_published_and_persisted(redis_client, listener, kwargs, channels):
    subscribe_confirmed(listener, *channels)
    publisher = RedisPublisher(facility="news", **kwargs)
    assert publisher.publishers == frozenset(channels)
    assert publisher.publish_message(RedisMessage("extra!"), expire=10) == len(channels)
    assert sorted(received(listener, len(channels))) == [(channel, b"extra!") for channel in channels]
    for channel in channels:
        assert redis_client.get(channel) == b"extra!"
        assert 0 < redis_client.ttl(channel) <= 10


def test_self_is_resolved_from_the_request(redis_client, listener, make_request, alice):
    request = make_request(user=alice)
    key = request.session.session_key
    publisher = RedisPublisher(facility="news", request=request, users=[SELF], groups=[SELF], sessions=[SELF])
    expected = ["group:blue:news", "group:green:news", "user:alice:news", f"session:{key}:news"]
    assert publisher.publishers == frozenset(expected)
    subscribe_confirmed(listener, *expected)
    assert publisher.pipeline_publish_message(RedisMessage("to me")) == 4
    assert sorted(received(listener, 4)) == sorted((channel, b"to me") for channel in expected)


@override_settings(WS4REDIS_PREFIX="site1")
def test_prefix_applies_to_publishing(redis_client):
    RedisPublisher(facility="news", broadcast=True).publish_message(RedisMessage("prefixed"))
    assert redis_client.get("site1:broadcast:news") == b"prefixed"
    assert redis_client.get("broadcast:news") is None


# fetch_message ---------------------------------------------------------------------------------


def publish_everywhere(request, facility="news"):
    key = request.session.session_key
    RedisPublisher(facility=facility, sessions=[key]).publish_message(RedisMessage("session msg"))
    RedisPublisher(facility=facility, users=["alice"]).publish_message(RedisMessage("user msg"))
    RedisPublisher(facility=facility, groups=["green"]).publish_message(RedisMessage("group msg"))
    RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage("broadcast msg"))


@pytest.mark.parametrize(
    "audience, expected",
    [
        ("session", b"session msg"),
        ("user", b"user msg"),
        ("group", b"group msg"),
        ("broadcast", b"broadcast msg"),
        ("any", b"session msg"),
    ],
)
def test_fetch_message_for_each_audience(redis_client, make_request, alice, audience, expected):
    request = make_request(user=alice)
    publish_everywhere(request)
    message = RedisPublisher().fetch_message(request, "news", audience)
    assert message == expected
    assert isinstance(message, RedisMessage)


def test_fetch_any_falls_back_in_the_0_6_0_order(redis_client, make_request, alice):
    request = make_request(user=alice)
    publish_everywhere(request)
    publisher = RedisPublisher()
    fallbacks = [
        (f"session:{request.session.session_key}:news", b"user msg"),
        ("user:alice:news", b"group msg"),
        ("group:green:news", b"broadcast msg"),
        ("broadcast:news", None),
    ]
    for deleted, expected in fallbacks:
        redis_client.delete(deleted)
        assert publisher.fetch_message(request, "news") == expected


def test_fetch_for_an_anonymous_request_sees_session_and_broadcast_only(redis_client, make_request):
    request = make_request()
    RedisPublisher(facility="news", users=["alice"]).publish_message(RedisMessage("user msg"))
    RedisPublisher(facility="news", broadcast=True).publish_message(RedisMessage("broadcast msg"))
    publisher = RedisPublisher()
    assert publisher.fetch_message(request, "news", "user") is None
    assert publisher.fetch_message(request, "news", "group") is None
    assert publisher.fetch_message(request, "news") == b"broadcast msg"
    RedisPublisher(facility="news", sessions=[request.session.session_key]).publish_message("mine")
    assert publisher.fetch_message(request, "news") == b"mine"


def test_fetch_without_session_or_persisted_message_returns_none(redis_client, make_request):
    publisher = RedisPublisher()
    assert publisher.fetch_message(make_request(session=False), "news", "session") is None
    assert publisher.fetch_message(make_request(), "empty") is None


@override_settings(WS4REDIS_PREFIX="site1")
def test_fetch_uses_the_prefix(redis_client, make_request):
    RedisPublisher(facility="news", broadcast=True).publish_message(RedisMessage("prefixed"))
    assert redis_client.exists("site1:broadcast:news")
    assert RedisPublisher().fetch_message(make_request(), "news") == b"prefixed"


def test_fetch_rejects_unknown_audiences(make_request):
    with pytest.raises(ValueError, match="audience"):
        RedisPublisher().fetch_message(make_request(), "news", "everyone")


# --- while Redis is away -------------------------------------------------------------------------

DEAD_REDIS = {"host": "127.0.0.1", "port": 1, "db": 0}  # nothing listens on port 1


@override_settings(WS4REDIS_CONNECTION=DEAD_REDIS)
def test_publishing_without_redis_raises_broker_unavailable_which_0_6_0_code_still_catches():
    import redis

    from ws4redis.redis_errors import BrokerUnavailable

    publisher = RedisPublisher(facility="away", broadcast=True)
    with pytest.raises(BrokerUnavailable, match="message not published, Redis is unreachable") as raised:
        publisher.publish_message("lost")
    assert isinstance(raised.value, redis.ConnectionError)
    with pytest.raises(BrokerUnavailable):
        publisher.pipeline_publish_message("lost")


def with_broker_middleware():
    from django.conf import settings

    return override_settings(
        MIDDLEWARE=[*settings.MIDDLEWARE, "ws4redis.middleware.BrokerUnavailableMiddleware"])


@override_settings(WS4REDIS_CONNECTION=DEAD_REDIS)
def test_a_view_publishing_without_redis_answers_a_readable_503_with_the_middleware():
    from django.test import Client

    from ws4redis.redis_errors import BrokerUnavailable

    with pytest.raises(BrokerUnavailable):  # without the middleware: Django's 500 path
        Client().get("/publish?message=hello")
    with with_broker_middleware():
        response = Client().get("/publish?message=hello")
    assert response.status_code == 503
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    assert response["Retry-After"] == "1"
    assert response.content == b"Service Unavailable: the message broker is unreachable\n"


def test_the_view_publishes_with_the_middleware_when_redis_is_there(redis_client, listener):
    from django.test import Client

    subscribe_confirmed(listener, "broadcast:present")
    with with_broker_middleware():
        response = Client().get("/publish?facility=present&message=hello")
    assert (response.status_code, response.content) == (200, b"1 receivers")
    assert received(listener, 1) == [("broadcast:present", b"hello")]


def test_a_publish_whose_reply_is_lost_raises_and_is_never_sent_twice(redis_server, listener):
    """Redis published, the connection broke before its reply: BrokerUnavailable, one delivery.

    With retries configured (redis-py's ``retry`` option), as a project may do for resilience:
    they cover sending, never a batch that went out.
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.cutting_proxy import CuttingProxy
    from ws4redis.connection import close_connection_pools
    from ws4redis.redis_errors import BrokerUnavailable

    subscribe_confirmed(listener, "broadcast:lost-reply")
    proxy = CuttingProxy(redis_server.port)
    connection = {"host": "127.0.0.1", "port": proxy.port, "db": 0, "retry": Retry(NoBackoff(), 2)}
    with proxy, override_settings(WS4REDIS_CONNECTION=connection):
        try:
            publisher = RedisPublisher(facility="lost-reply", broadcast=True)
            proxy.arm()
            with pytest.raises(BrokerUnavailable):
                publisher.publish_message(RedisMessage("exactly once"))
            assert proxy.cuts == 1
            assert publisher.publish_message(RedisMessage("and the next one")) == 1  # a new connection
        finally:
            close_connection_pools()
    assert received(listener, 2) == [("broadcast:lost-reply", b"exactly once"),
                                     ("broadcast:lost-reply", b"and the next one")]
