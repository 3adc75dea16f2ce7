"""ws4redis.hub: one pub/sub connection per process, reference-counted channels, fan-out, reconnects.

The hub runs on gevent, so the scenarios run in a monkey-patched child
process exactly as in the server (``DRIVER`` below), against the suite's
real redis-server; listeners there are plain collectors of the frames the
hub hands out. The subscriber side (recording channels instead of opening a
pub/sub connection) needs no gevent and is tested in this process.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from django.test import override_settings

from tests.servers import ROOT, Site
from ws4redis.hub import HubRedis, SubscriptionRecorder, hub_subscriber_class
from ws4redis.publisher import RedisPublisher
from ws4redis.subscriber import RedisSubscriber

HEARTBEAT = "--heartbeat--"

DRIVER = r'''
from gevent import monkey

monkey.patch_all()

import json
import logging
import os
import sys
import time

import django

django.setup()

import gevent
import redis

from ws4redis.hub import Hub

records = []


class Capture(logging.Handler):
    def emit(self, record):
        records.append(record.getMessage())


logging.getLogger("ws4redis").addHandler(Capture())
logging.getLogger("ws4redis").setLevel(logging.INFO)
admin = redis.Redis.from_url(os.environ["WS4REDIS_TEST_REDIS_URL"])


class Collector:
    """A listener that keeps every frame and counts flushes."""

    deflation = None
    envelope = False
    lane = None  # no socket: every delivery comes through deliver()

    def __init__(self):
        self.frames = []
        self.payloads = []
        self.channels = []
        self.flushes = 0
        self.pending = False

    def deliver(self, frame, payload, channel, offset):
        self.frames.append(frame)
        self.payloads.append(payload)
        self.channels.append(channel)
        first, self.pending = not self.pending, True
        return first

    def flush(self):
        self.flushes += 1
        self.pending = False

    def spilled(self):
        raise AssertionError("a listener without a lane cannot spill")


def wait_for(predicate, limit=10.0):
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time: " + predicate.__doc__)
        gevent.sleep(0.01)


def numsub(*channels):
    return {name.decode(): count for name, count in admin.pubsub_numsub(*channels)}


def hub_clients(hub):
    return [c for c in admin.client_list() if c["name"] == hub.name]


def subscribed_clients():
    return [c for c in admin.client_list() if int(c["sub"]) or int(c["psub"])]


def scenario_refcount():
    hub = Hub()
    a, b = Collector(), Collector()
    confirmed = [hub.subscribe(a, ["ch1"]), hub.subscribe(b, ["ch1", "ch2"])]
    after_subscribe = numsub("ch1", "ch2")
    clients = [(c["name"], c["sub"]) for c in subscribed_clients()]
    hub.unsubscribe(a, ["ch1"])
    gevent.sleep(0.2)
    after_one_left = numsub("ch1", "ch2")
    hub.unsubscribe(b, ["ch1", "ch2"])

    def gone():
        "ch1 and ch2 unsubscribed"
        return not any(numsub("ch1", "ch2").values())

    wait_for(gone)
    hub.subscribe(a, ["ch1"])
    resubscribed = numsub("ch1")
    hub.close()
    return {"confirmed": confirmed, "after_subscribe": after_subscribe, "clients": clients,
            "name": hub.name, "after_one_left": after_one_left, "resubscribed": resubscribed}


def scenario_fanout():
    hub = Hub()
    listeners = [Collector() for _ in range(3)]
    for listener in listeners:
        hub.subscribe(listener, ["news"])
    admin.publish("news", "hello")
    admin.publish("news", b"\xff\xfe binary")
    admin.publish("news", "")
    admin.publish("news", os.environ["HEARTBEAT"])
    pipe = admin.pipeline(transaction=False)
    for i in range(300):
        pipe.publish("news", f"burst {i}")
    pipe.execute()

    def all_arrived():
        "302 messages at every listener"
        return all(len(listener.frames) >= 302 for listener in listeners)

    wait_for(all_arrived)
    gevent.sleep(0.2)
    first = listeners[0]
    hub.close()
    return {
        "counts": [len(listener.frames) for listener in listeners],
        "same_objects": all(
            all(frame is other for frame, other in zip(first.frames, listener.frames))
            for listener in listeners[1:]
        ),
        "frames": [frame.hex() for frame in first.frames[:2]],
        "payloads": [payload.decode("latin-1") for payload in first.payloads],
        "flushes": first.flushes,
    }


def scenario_patterns():
    hub = Hub()
    a = Collector()
    hub.subscribe(a, [], patterns=["room:*"])
    admin.publish("room:1", "one")
    admin.publish("other", "nope")
    admin.publish("room:2", "two")

    def arrived():
        "two pattern messages"
        return len(a.payloads) >= 2

    wait_for(arrived)
    psubscribed = [c["psub"] for c in subscribed_clients()]
    hub.unsubscribe(a, [], patterns=["room:*"])

    def released():
        "pattern unsubscribed"
        return not subscribed_clients()

    wait_for(released)
    hub.close()
    return {"payloads": [p.decode() for p in a.payloads], "psub": psubscribed, "channels": a.channels}


def scenario_reconnect():
    hub = Hub()
    a = Collector()
    hub.subscribe(a, ["feed"])
    admin.set("feed", "kept message")
    admin.publish("feed", "before")
    killed = admin.execute_command("CLIENT", "KILL", "TYPE", "pubsub")

    def resent():
        "persisted message re-sent after the reconnect"
        return b"kept message" in a.payloads

    wait_for(resent)
    admin.publish("feed", "after")

    def after():
        "live delivery resumed"
        return b"after" in a.payloads

    wait_for(after)
    link = hub.router.links[0]
    result = {"payloads": [p.decode() for p in a.payloads], "reconnects": link.reconnects,
              "hub_connections": len(hub_clients(hub)), "log": records, "killed": killed}
    hub.close()
    return result


def scenario_redis_down_at_start():
    """A hub whose Redis is unreachable keeps retrying; subscribe does not wait for it."""
    hub = Hub()
    a = Collector()
    hub.start()

    def unreachable():
        "the hub found Redis unreachable"
        return hub.unreachable

    wait_for(unreachable)
    confirmed = hub.subscribe(a, ["feed"])
    link = hub.router.links[0]
    result = {"confirmed": confirmed, "failing": link.failing, "log": records}
    hub.close()
    return result


print(json.dumps(globals()["scenario_" + sys.argv[1]]()))
'''


@pytest.fixture(scope="module")
def site(redis_server):
    site = Site(redis_server.url, {"WS4REDIS_HEARTBEAT": repr(HEARTBEAT)})
    yield site
    site.cleanup()


def run_scenario(site: Site, name: str, redis_url: str | None = None) -> dict:
    env = {**site.env, "HEARTBEAT": HEARTBEAT}
    if redis_url is not None:
        env["WS4REDIS_TEST_REDIS_URL"] = redis_url
    result = subprocess.run([sys.executable, "-c", DRIVER, name], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    if result.returncode != 0:
        pytest.fail(f"hub scenario {name} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_channels_are_reference_counted_on_one_named_connection(site, redis_client):
    result = run_scenario(site, "refcount")
    assert result["confirmed"] == [True, True]
    assert result["after_subscribe"] == {"ch1": 1, "ch2": 1}
    # Two listeners, two channels: still exactly one subscribed Redis client, the hub's.
    assert len(result["clients"]) == 1
    assert result["clients"][0][0] == result["name"]
    assert result["name"].startswith("ws4redis-hub:")
    assert result["clients"][0][1] == "2"
    assert result["after_one_left"] == {"ch1": 1, "ch2": 1}
    assert result["resubscribed"] == {"ch1": 1}


def test_each_message_is_framed_once_and_shared_in_order(site, redis_client):
    result = run_scenario(site, "fanout")
    # The empty message and the heartbeat are never forwarded (as in 0.6.0).
    assert result["counts"] == [302, 302, 302]
    assert result["same_objects"] is True
    assert result["payloads"][:2] == ["hello", "\xff\xfe binary"]
    assert result["payloads"][2:] == [f"burst {i}" for i in range(300)]
    text, binary = (bytes.fromhex(frame) for frame in result["frames"])
    assert text == bytes([0x81, 5]) + b"hello"
    assert binary[0] == 0x82  # not UTF-8: a binary frame
    # Buffered replies are drained before flushing: far fewer flushes than messages.
    assert 1 <= result["flushes"] < 300


def test_pattern_subscriptions_of_custom_subscribers_are_carried(site, redis_client):
    result = run_scenario(site, "patterns")
    assert result["payloads"] == ["one", "two"]
    assert result["channels"] == ["room:1", "room:2"]  # the channel published on, not the pattern
    assert result["psub"] == ["1"]


def test_a_lost_connection_is_replaced_resubscribed_and_persisted_messages_resent(site, redis_client):
    result = run_scenario(site, "reconnect")
    payloads = result["payloads"]
    assert payloads[0] == "before"
    assert "kept message" in payloads
    assert payloads[-1] == "after"
    assert result["reconnects"] == 1
    assert result["hub_connections"] == 1
    assert result["killed"] == 1
    log = "\n".join(result["log"])
    assert "lost the Redis pub/sub connection" in log
    assert "gap" in log and "1 persisted messages re-sent" in log


def test_an_unreachable_redis_does_not_block_subscribers(site, redis_server):
    result = run_scenario(site, "redis_down_at_start", redis_url="redis://127.0.0.1:1/0")
    assert result["confirmed"] is False
    assert result["failing"] is True
    assert any("cannot reach Redis" in line for line in result["log"])


# --- the subscriber side: channels recorded, not subscribed ------------------------------------


def test_the_hub_subscriber_records_channels_and_opens_no_connection(make_request, redis_client):
    subscriber_class = hub_subscriber_class(RedisSubscriber)
    subscriber = subscriber_class(HubRedis(connection_pool=redis_client.connection_pool))
    request = make_request("/ws/chat?subscribe-broadcast&subscribe-session&publish-broadcast")
    subscriber.set_pubsub_channels(request, ["subscribe-broadcast", "subscribe-session", "publish-broadcast"])
    recorder = subscriber._subscription
    assert isinstance(recorder, SubscriptionRecorder)
    session_channel = f"session:{request.session.session_key}:chat".encode()
    assert list(recorder.channels) == [b"broadcast:chat", session_channel]
    assert subscriber.publishers == {"broadcast:chat"}
    assert not [c for c in redis_client.client_list() if int(c["sub"])]
    RedisPublisher(facility="chat", broadcast=True).publish_message("persisted")
    assert subscriber.get_persisted_messages() == [b"persisted"]
    subscriber.release()
    assert subscriber._subscription is None


def test_a_060_style_subscriber_using_connection_pubsub_is_recorded_too(make_request, redis_client):
    class OldStyleSubscriber(RedisSubscriber):
        def set_pubsub_channels(self, request, channels):
            self._publishers = set()
            self._subscription = self._connection.pubsub()
            self._subscription.subscribe("custom:channel")
            self._subscription.psubscribe("custom:*")

    subscriber = OldStyleSubscriber(HubRedis(connection_pool=redis_client.connection_pool))
    subscriber.set_pubsub_channels(make_request(), [])
    assert dict(subscriber._subscription.channels) == {b"custom:channel": None}
    assert dict(subscriber._subscription.patterns) == {b"custom:*": None}
    with pytest.raises(RuntimeError, match="delivered by ws4redis.hub"):
        subscriber.parse_response()


@override_settings(WS4REDIS_HEARTBEAT=HEARTBEAT)
def test_recorder_rejects_message_handlers():
    with pytest.raises(TypeError, match="not supported"):
        SubscriptionRecorder().subscribe(channel=print)
