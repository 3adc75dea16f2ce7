"""ws4redis.subscriber against a real Redis: channel setup, draining bursts, persisted messages, release."""

from __future__ import annotations

import logging
import select
import time

import pytest
import redis
from django.contrib.auth.models import Group, User
from django.test import override_settings

from tests.polling import wait_until
from ws4redis.connection import get_redis_connection
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage
from ws4redis.subscriber import RedisSubscriber

ALL_CHANNELS = RedisSubscriber.subscription_channels + RedisSubscriber.publish_channels


class RecordingWebsocket:
    """Stands in for the server's websocket object: ``send_persisted_messages`` only calls ``send``."""

    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


@pytest.fixture
def subscribers():
    """Subscribers made by a test, released at the end even when the test fails."""
    made = []

    def make(connection=None):
        subscriber = RedisSubscriber(connection)
        made.append(subscriber)
        return subscriber

    yield make
    for subscriber in made:
        subscriber.release()


@pytest.fixture
def alice(db):
    user = User.objects.create_user("alice", password="secret")
    user.groups.add(Group.objects.create(name="staff"))
    return user


def wait_readable(subscriber, limit=5.0):
    fd = subscriber.get_file_descriptor()
    readable, _, _ = select.select([fd], [], [], limit)
    assert readable, "nothing arrived from Redis"


def collect(subscriber, count, limit=5.0):
    """``get_messages`` after each readable wake-up until ``count`` messages came (bounded)."""
    messages = []
    deadline = time.monotonic() + limit
    while len(messages) < count and time.monotonic() < deadline:
        if select.select([subscriber.get_file_descriptor()], [], [], 0.1)[0]:
            messages += subscriber.get_messages()
    return messages


def numsub(redis_client, *channels):
    return dict((name.decode(), count) for name, count in redis_client.pubsub_numsub(*channels))


def wait_numsub_zero(redis_client, *channels, limit=5.0):
    """Redis drops subscriptions when it processes the disconnect: poll until it has (bounded)."""
    deadline = time.monotonic() + limit
    while any(numsub(redis_client, *channels).values()) and time.monotonic() < deadline:
        time.sleep(0.01)
    return numsub(redis_client, *channels)


def kill_pubsub_connection(redis_client, subscriber):
    """Make Redis drop this subscriber's connection (and no one else's, other tests share the server)."""
    host, port = subscriber._subscription.connection._sock.getsockname()[:2]
    assert redis_client.client_kill(f"{host}:{port}")


# Channel setup ---------------------------------------------------------------------------------


def test_a_logged_in_user_gets_every_audience(subscribers, make_request, alice, redis_client):
    request = make_request("/ws/chat?subscribe-user", user=alice)
    key = request.session.session_key
    subscriber = subscribers()
    subscriber.set_pubsub_channels(request, ALL_CHANNELS)
    expected = {"broadcast:chat", "group:staff:chat", "user:alice:chat", f"session:{key}:chat"}
    assert subscriber.facility == "chat"
    assert set(subscriber.subscribed_channels) == expected
    assert subscriber.publishers == expected
    assert numsub(redis_client, *expected) == dict.fromkeys(expected, 1)


def test_only_the_requested_channels_are_used(subscribers, make_request, alice):
    request = make_request("/ws/news", user=alice)
    subscriber = subscribers()
    subscriber.set_pubsub_channels(request, ["subscribe-broadcast", "publish-user"])
    assert subscriber.subscribed_channels == ["broadcast:news"]
    assert subscriber.publishers == {"user:alice:news"}


@override_settings(WS4REDIS_PREFIX="site1", WEBSOCKET_URL="/websocket/")
def test_prefix_and_websocket_url_shape_the_names(subscribers, make_request):
    request = make_request("/websocket/feed")
    subscriber = subscribers()
    subscriber.set_pubsub_channels(request, ["subscribe-broadcast", "publish-broadcast"])
    assert subscriber.subscribed_channels == ["site1:broadcast:feed"]
    assert subscriber.publishers == {"site1:broadcast:feed"}


@pytest.mark.parametrize("channel", ["subscribe-user", "publish-user", "subscribe-group", "publish-group"])
def test_anonymous_clients_asking_for_user_or_group_channels_are_logged(subscribers, make_request, caplog,
                                                                        channel):
    request = make_request("/ws/chat")
    subscriber = subscribers()
    with caplog.at_level(logging.WARNING, logger="ws4redis"):
        subscriber.set_pubsub_channels(request, [channel, "subscribe-broadcast"])
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert any("anonymous" in message and channel in message and "'chat'" in message for message in warnings)
    assert subscriber.subscribed_channels == ["broadcast:chat"]
    assert subscriber.publishers == set()
    assert not any("SELF" in name or "None" in name for name in subscriber.subscribed_channels)


def test_a_client_without_session_asking_for_session_channels_is_logged(subscribers, make_request, caplog):
    request = make_request("/ws/chat", session=False)
    subscriber = subscribers()
    with caplog.at_level(logging.WARNING, logger="ws4redis"):
        subscriber.set_pubsub_channels(request, ["subscribe-session", "publish-session"])
    assert sum("subscribe-session" in r.getMessage() or "publish-session" in r.getMessage()
               for r in caplog.records) == 2
    assert subscriber.subscribed_channels == []
    assert subscriber.publishers == set()
    assert subscriber.get_file_descriptor() is None


def test_an_anonymous_client_with_a_session_gets_its_session_channel(subscribers, make_request):
    request = make_request("/ws/chat")
    subscriber = subscribers()
    subscriber.set_pubsub_channels(request, ["subscribe-session"])
    assert subscriber.subscribed_channels == [f"session:{request.session.session_key}:chat"]


# Receiving -------------------------------------------------------------------------------------


def test_a_burst_of_five_is_returned_by_one_drain_call(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/burst"), ["subscribe-broadcast"])
    wait_readable(subscriber)
    assert subscriber.get_messages() == []  # only the subscribe confirmation was there
    pipe = redis_client.pipeline(transaction=False)
    for index in range(5):
        pipe.publish("broadcast:burst", f"message {index}")
    assert pipe.execute() == [1] * 5
    wait_readable(subscriber)
    assert subscriber.get_messages() == [f"message {index}".encode() for index in range(5)]
    assert subscriber.get_messages() == []


def test_parse_response_alone_leaves_a_burst_where_select_cannot_see_it(subscribers, make_request,
                                                                         redis_client):
    """What 0.6.0 did: one reply per wake-up. The rest is buffered and the fd is no longer readable."""
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/burst"), ["subscribe-broadcast"])
    wait_readable(subscriber)
    assert RedisMessage(subscriber.parse_response()) is None  # the subscribe confirmation
    pipe = redis_client.pipeline(transaction=False)
    for index in range(5):
        pipe.publish("broadcast:burst", f"message {index}")
    pipe.execute()
    wait_readable(subscriber)
    assert RedisMessage(subscriber.parse_response()) == b"message 0"
    assert select.select([subscriber.get_file_descriptor()], [], [], 0)[0] == []
    assert subscriber.get_messages() == [f"message {index}".encode() for index in range(1, 5)]


def test_messages_published_one_by_one_all_arrive_in_order(subscribers, make_request):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/seq"), ["subscribe-broadcast"])
    publisher = RedisPublisher(facility="seq", broadcast=True)
    for index in range(20):
        publisher.publish_message(RedisMessage(f"n{index}"), expire=0)
    assert collect(subscriber, 20) == [f"n{index}".encode() for index in range(20)]


def test_drain_returns_raw_replies_and_messages_skip_confirmations(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/raw"), ["subscribe-broadcast"])
    wait_readable(subscriber)
    redis_client.publish("broadcast:raw", "payload")
    replies = []
    deadline = time.monotonic() + 5
    while len(replies) < 2 and time.monotonic() < deadline:
        select.select([subscriber.get_file_descriptor()], [], [], 0.1)
        replies += subscriber.parse_responses()
    assert replies == [[b"subscribe", b"broadcast:raw", 1], [b"message", b"broadcast:raw", b"payload"]]


@override_settings(WS4REDIS_HEARTBEAT="--heartbeat--")
def test_heartbeats_from_redis_are_left_out(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/hb"), ["subscribe-broadcast"])
    for text in ("--heartbeat--", "real", "--heartbeat--", "also real"):
        redis_client.publish("broadcast:hb", text)
    assert collect(subscriber, 2) == [b"real", b"also real"]


def test_a_lost_redis_connection_is_reported_not_hidden(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/lost"), ["subscribe-broadcast"])
    wait_readable(subscriber)
    assert subscriber.get_messages() == []
    kill_pubsub_connection(redis_client, subscriber)
    wait_readable(subscriber)
    with pytest.raises(redis.ConnectionError):
        subscriber.get_messages()


def test_reading_before_subscribing_is_an_error():
    subscriber = RedisSubscriber()
    with pytest.raises(RuntimeError, match="set_pubsub_channels"):
        subscriber.get_messages()
    with pytest.raises(RuntimeError, match="set_pubsub_channels"):
        subscriber.parse_response()
    assert subscriber.get_file_descriptor() is None


# Publishing and persisted messages -------------------------------------------------------------


def test_messages_from_the_websocket_reach_its_publish_channels(subscribers, make_request, alice,
                                                                redis_client):
    listener = redis_client.pubsub()
    listener.subscribe("user:alice:chat", "broadcast:chat")
    for _ in range(2):  # wait for Redis to confirm, so the publications below cannot be missed
        assert listener.get_message(timeout=5)["type"] == "subscribe"
    subscriber = subscribers()
    request = make_request("/ws/chat", user=alice)
    subscriber.set_pubsub_channels(request, ["publish-user", "publish-broadcast"])
    try:
        assert subscriber.publish_message(RedisMessage("from the browser")) == 2
        received = []
        deadline = time.monotonic() + 5
        while len(received) < 2 and time.monotonic() < deadline:
            reply = listener.get_message(ignore_subscribe_messages=True, timeout=0.1)
            if reply:
                received.append(reply["channel"])
        assert sorted(received) == [b"broadcast:chat", b"user:alice:chat"]
        assert redis_client.get("user:alice:chat") == b"from the browser"
    finally:
        listener.close()


def test_persisted_messages_are_sent_when_a_websocket_opens(subscribers, make_request, alice, redis_client):
    RedisPublisher(facility="news", broadcast=True).publish_message(RedisMessage("for everyone"))
    RedisPublisher(facility="news", users=["alice"]).publish_message(RedisMessage("for alice"))
    RedisPublisher(facility="news", users=["bob"]).publish_message(RedisMessage("for bob"))
    RedisPublisher(facility="news", groups=["staff"]).publish_message(RedisMessage("for staff"), expire=0)
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/news", user=alice), ALL_CHANNELS)
    assert sorted(subscriber.get_persisted_messages()) == [b"for alice", b"for everyone"]
    websocket = RecordingWebsocket()
    subscriber.send_persisted_messages(websocket)
    assert sorted(websocket.sent) == [b"for alice", b"for everyone"]
    assert all(isinstance(message, RedisMessage) for message in websocket.sent)
    legacy = RecordingWebsocket()
    with pytest.deprecated_call():
        subscriber.send_persited_messages(legacy)
    assert sorted(legacy.sent) == sorted(websocket.sent)


def test_no_channels_means_no_persisted_messages(subscribers, make_request):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/none"), [])
    assert subscriber.get_persisted_messages() == []


# Release ---------------------------------------------------------------------------------------


def test_release_unsubscribes_and_closes_the_connection(subscribers, make_request, alice, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/rel", user=alice), ALL_CHANNELS)
    channels = subscriber.subscribed_channels
    assert len(channels) == 4
    assert set(numsub(redis_client, *channels).values()) == {1}
    host, port = subscriber._subscription.connection._sock.getsockname()[:2]
    address = f"{host}:{port}"

    def connected():
        return any(client["addr"] == address for client in redis_client.client_list())

    assert connected()
    subscriber.release()
    assert wait_numsub_zero(redis_client, *channels) == dict.fromkeys(channels, 0)
    assert subscriber.get_file_descriptor() is None
    wait_until(lambda: not connected(), limit=5.0, what="the released subscriber's Redis connection closed")
    subscriber.release()  # twice is harmless


def test_release_after_redis_dropped_the_connection_still_cleans_up(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/drop"), ["subscribe-broadcast"])
    kill_pubsub_connection(redis_client, subscriber)
    subscriber.release()
    assert subscriber.get_file_descriptor() is None
    assert wait_numsub_zero(redis_client, "broadcast:drop") == {"broadcast:drop": 0}


def test_resubscribing_releases_the_previous_subscription(subscribers, make_request, redis_client):
    subscriber = subscribers()
    subscriber.set_pubsub_channels(make_request("/ws/one"), ["subscribe-broadcast"])
    subscriber.set_pubsub_channels(make_request("/ws/two"), ["subscribe-broadcast"])
    assert subscriber.subscribed_channels == ["broadcast:two"]
    assert wait_numsub_zero(redis_client, "broadcast:one") == {"broadcast:one": 0}
    assert numsub(redis_client, "broadcast:two") == {"broadcast:two": 1}


def test_many_subscribers_are_not_limited_by_the_shared_pool(subscribers, make_request, redis_server,
                                                             redis_client):
    with override_settings(WS4REDIS_CONNECTION={"url": redis_server.url, "max_connections": 2}):
        shared = get_redis_connection()
        assert shared.connection_pool.max_connections == 2
        made = [subscribers(shared) for _ in range(25)]
        for subscriber in made:
            subscriber.set_pubsub_channels(make_request("/ws/crowd"), ["subscribe-broadcast"])
        assert numsub(redis_client, "broadcast:crowd") == {"broadcast:crowd": 25}
        assert RedisPublisher(facility="crowd", broadcast=True).publish_message(RedisMessage("all")) == 25
        for subscriber in made:
            assert collect(subscriber, 1) == [b"all"]
        for subscriber in made:
            subscriber.release()
        assert wait_numsub_zero(redis_client, "broadcast:crowd") == {"broadcast:crowd": 0}


class ChannelRecorder:
    """A PubSub stand-in of the kind a server that multiplexes Redis itself hands to subscribers."""

    connection = None

    def __init__(self):
        self.channels = {}

    @property
    def subscribed(self):
        return bool(self.channels)

    def subscribe(self, *names):
        self.channels.update(dict.fromkeys(name.encode() for name in names))

    def close(self):
        self.channels.clear()


def test_a_server_may_supply_its_own_subscription(subscribers, make_request, redis_client):
    RedisPublisher(facility="own", broadcast=True).publish_message(RedisMessage("kept"))
    subscriber = subscribers()
    subscriber.create_subscription = ChannelRecorder
    subscriber.set_pubsub_channels(make_request("/ws/own"), ["subscribe-broadcast"])
    assert subscriber.subscribed_channels == ["broadcast:own"]
    assert subscriber.get_file_descriptor() is None
    assert subscriber.get_persisted_messages() == [b"kept"]
    assert numsub(redis_client, "broadcast:own") == {"broadcast:own": 0}
    subscriber.release()
    assert subscriber.subscribed_channels == []


def test_subscription_targets_name_what_a_server_routes_to_the_subscriber(subscribers, make_request,
                                                                          redis_client):
    from ws4redis.hub import hub_subscriber_class

    request = make_request("/ws/targets")
    plain = subscribers()
    assert plain.subscription_targets() == ((), ())
    plain.set_pubsub_channels(request, ["subscribe-broadcast", "publish-broadcast"])
    assert plain.subscription_targets() == ((b"broadcast:targets",), ())
    assert plain.publishes_through(plain._connection)
    assert not plain.publishes_through(redis_client)
    recorded = hub_subscriber_class(RedisSubscriber)(redis_client)
    recorded.set_pubsub_channels(request, ["subscribe-broadcast"])
    assert recorded.subscription_targets() == ((b"broadcast:targets",), ())
    assert recorded.get_file_descriptor() is None
    recorded.release()
    assert recorded.subscription_targets() == ((), ())
