"""Redis Cluster behind WS4REDIS_CONNECTION, on a real 3-master cluster with a replica per master.

The cluster (tests/cluster.py) is six redis-server processes joined with ``redis-cli --cluster
create``, one for the whole module. RedisPublisher publishes with SPUBLISH to the master of each
channel's slot and keeps the message there (SET EX); each server process's hub subscribes with
SSUBSCRIBE over one connection per master. Slots are moved while websockets listen
(``redis-cli --cluster reshard``), and a master is killed so its replica takes over: the hubs
follow by themselves, and the websockets receive every later message exactly once.
"""

from __future__ import annotations

import selectors
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from tests import servers
from tests.cluster import RedisClusterSet
from tests.polling import wait_until
from tests.servers import Site, raw_upgrade
from ws4redis.connection import close_connection_pools, get_redis_connection
from ws4redis.protocol import Message, WebSocketProtocol
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_config import check_connection_settings
from ws4redis.redis_store import RedisMessage

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi")]


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterSet]:
    with RedisClusterSet() as started:
        yield started


@pytest.fixture
def on_cluster(cluster) -> Iterator[RedisClusterSet]:
    """This process's WS4REDIS_CONNECTION pointed at the cluster (RedisPublisher publishes there)."""
    close_connection_pools()
    with override_settings(WS4REDIS_CONNECTION=cluster.connection):
        yield cluster
    close_connection_pools()


def broadcast_channel(facility: str) -> str:
    return f"broadcast:{facility}"


def publish(facility: str, message: str) -> None:
    RedisPublisher(facility=facility, broadcast=True).publish_message(RedisMessage(message))


class Audience:
    """Raw websockets listening to broadcast facilities, read together without a thread each."""

    def __init__(self, hosts: list[servers.ServerProcess], facilities: list[str], per_facility: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.listeners: list[tuple[str, list[str]]] = []
        for index in range(len(facilities) * per_facility):
            facility = facilities[index // per_facility]
            # Consecutive listeners go to different servers: every facility is heard by each of them.
            sock, rest = raw_upgrade(hosts[index % len(hosts)], f"/ws/{facility}?subscribe-broadcast")
            sock.setblocking(False)
            received: list[str] = []
            protocol = WebSocketProtocol(client=True, max_message_size=1 << 20)
            self.selector.register(sock, selectors.EVENT_READ, (protocol, received))
            self.listeners.append((facility, received))
            if rest:
                self._take(protocol, received, rest)

    @staticmethod
    def _take(protocol: WebSocketProtocol, received: list[str], data: bytes) -> None:
        for event in protocol.receive_data(data):
            if isinstance(event, Message):
                received.append(event.data if isinstance(event.data, str) else event.data.decode())

    def read(self, until, limit: float = 30.0, linger: float = 0.5) -> None:
        """Read until ``until()`` holds (then ``linger`` seconds more, for duplicates) or ``limit`` passes."""
        deadline = time.monotonic() + limit
        settled_at: float | None = None
        while time.monotonic() < deadline:
            if settled_at is None and until():
                settled_at = time.monotonic()
            if settled_at is not None and time.monotonic() - settled_at >= linger:
                return
            for key, _ in self.selector.select(timeout=0.05):
                protocol, received = key.data
                try:
                    data = key.fileobj.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    self.selector.unregister(key.fileobj)
                    raise AssertionError("a server closed a listening websocket")
                self._take(protocol, received, data)

    def clear(self) -> None:
        for _, received in self.listeners:
            received.clear()

    def close(self) -> None:
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()
        self.selector.close()


def subscribers_on_owner(cluster: RedisClusterSet, channel: str) -> int:
    try:
        reply = cluster.client(cluster.master_of(channel)).execute_command("PUBSUB SHARDNUMSUB", channel)
        return int(reply[0][1])
    except (redis.RedisError, AssertionError):
        return -1


def all_subscribed(cluster: RedisClusterSet, channels: list[str], hubs: int):
    return lambda: all(subscribers_on_owner(cluster, channel) == hubs for channel in channels)


def hub_connections(cluster: RedisClusterSet) -> dict[int, list[dict]]:
    """Master port -> its pub/sub clients (CLIENT LIST TYPE pubsub)."""
    return {port: cluster.client(port).client_list(_type="pubsub") for port in cluster.master_ports()}


@pytest.mark.parametrize(("connection", "message"), [
    ({"cluster": []}, "['cluster'] must be a list of node addresses"),
    ({"cluster": "redis://127.0.0.1:7000"}, "['cluster'] must be a list of node addresses"),
    ({"cluster": [("127.0.0.1", "7000")]}, "['cluster'] must be a list of node addresses"),
    ({"cluster": ["http://127.0.0.1:7000"]}, "['cluster'] must be a list of node addresses"),
    ({"cluster": ["redis://127.0.0.1:7000/3"]}, "['cluster'] must be a list of node addresses"),
    ({"cluster": ["redis://127.0.0.1:7000"], "host": "10.0.0.1"}, "leave out the address"),
    ({"cluster": ["redis://127.0.0.1:7000"], "sentinels": [("h", 1)], "master_name": "m"},
     "leave out the address"),
    ({"cluster": [("127.0.0.1", 7000)], "db": 2}, "['db'] must be 0 with 'cluster'"),
    ({"cluster": [("127.0.0.1", 7000)], "no_such_option": 1}, "not usable by redis-py"),
])
def test_a_bad_cluster_setting_names_what_is_wrong(connection, message):
    with pytest.raises(ImproperlyConfigured) as error:
        check_connection_settings(connection)
    assert "WS4REDIS_CONNECTION" in str(error.value) and message in str(error.value)


def test_a_good_cluster_setting_passes():
    check_connection_settings({"cluster": ["redis://127.0.0.1:7000", ("127.0.0.1", 7001)], "password": None})
    check_connection_settings({"cluster": ["rediss://user:secret@10.0.0.1:7000"], "ssl_cert_reqs": "none"})


def test_a_cluster_client_with_gevent_sockets_uses_them_for_every_node(cluster):
    """uWSGI without an early patch gives the hub's cluster client gevent connections; every node's
    pool must use them (redis-py before 8.2 took no connection_class outside a URL-made client)."""
    from ws4redis.gevent_redis import GeventConnection
    from ws4redis.redis_cluster import build_cluster_client

    client = build_cluster_client(cluster.connection, connection_class=GeventConnection)
    try:
        assert client.ping()
        nodes = client.get_nodes()
        assert len(nodes) >= 3
        pools = {node.redis_connection.connection_pool for node in nodes}
        assert {pool.connection_class for pool in pools} == {GeventConnection}
    finally:
        client.close()


def test_publisher_spublishes_on_the_slot_master_and_keeps_the_message_there(on_cluster):
    cluster = on_cluster
    facilities = [f"pub-{uuid.uuid4().hex[:8]}-{index}" for index in range(12)]
    owners = {cluster.master_of(broadcast_channel(facility)) for facility in facilities}
    assert len(owners) > 1, "twelve random channels should spread over more than one master"
    listeners = {}
    for facility in facilities:
        channel = broadcast_channel(facility)
        pubsub = redis.Redis(port=cluster.master_of(channel)).pubsub()
        pubsub.ssubscribe(channel)
        assert pubsub.get_sharded_message(timeout=5)["type"] == "ssubscribe"
        listeners[facility] = pubsub
    try:
        for facility in facilities:
            publish(facility, f"hello {facility}")
        for facility, pubsub in listeners.items():
            message = pubsub.get_sharded_message(timeout=5)
            assert message is not None and message["type"] == "smessage", message
            assert message["data"] == f"hello {facility}".encode()
            channel = broadcast_channel(facility)
            assert cluster.client(cluster.master_of(channel)).get(channel) == f"hello {facility}".encode()
            assert 0 < cluster.client(cluster.master_of(channel)).ttl(channel) <= 3600
        # Read back through the cluster, one GET per slot's master.
        assert RedisPublisher().fetch_message(None, facilities[0], "broadcast") == \
            f"hello {facilities[0]}".encode()
    finally:
        for pubsub in listeners.values():
            pubsub.close()


def test_publishing_follows_a_slot_that_moved(on_cluster):
    """The publisher's slot map goes stale when a slot moves: MOVED sends the message to the new master."""
    cluster = on_cluster
    facility = f"moving-{uuid.uuid4().hex[:8]}"
    channel = broadcast_channel(facility)
    publish(facility, "first")
    slot = cluster.client(cluster.master_of(channel)).cluster("keyslot", channel)
    source = cluster.owner_of_slot(slot)
    target = next(port for port in cluster.master_ports() if port != source)
    cluster.move_slot(slot, target)
    pubsub = redis.Redis(port=target).pubsub()
    pubsub.ssubscribe(channel)
    assert pubsub.get_sharded_message(timeout=5)["type"] == "ssubscribe"
    try:
        publish(facility, "second")  # the client still believes the source owns the slot
        message = pubsub.get_sharded_message(timeout=5)
        assert message is not None and message["data"] == b"second"
        assert cluster.client(target).get(channel) == b"second"
    finally:
        pubsub.close()


def test_runserver_paths_refuse_a_cluster_with_a_reason(on_cluster):
    """Only a hub can subscribe on a cluster: a PubSub of its own per websocket is refused by name."""
    from ws4redis.connection import create_pubsub

    with pytest.raises(ImproperlyConfigured, match="SSUBSCRIBE"):
        create_pubsub()
    assert isinstance(get_redis_connection(), redis.RedisCluster)


@pytest.mark.parametrize("kind", KINDS)
def test_two_servers_deliver_everything_once_while_2000_slots_move(cluster, redis_server, kind):
    """300 websockets over 100 facilities on two server processes: nothing lost, nothing twice.

    Before and after 2,000 slots move between masters, every websocket receives exactly the
    message published on its facility through RedisPublisher; the hubs subscribed with SSUBSCRIBE
    only, with at most one pub/sub connection per server process per master.
    """
    site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(cluster.connection)})
    facilities = [f"f{index}-{uuid.uuid4().hex[:6]}" for index in range(100)]
    channels = [broadcast_channel(facility) for facility in facilities]
    close_connection_pools()
    try:
        with servers.serving(servers.STARTERS[kind](site)) as first, \
                servers.serving(servers.STARTERS[kind](site)) as second, \
                override_settings(WS4REDIS_CONNECTION=cluster.connection):
            audience = Audience([first, second], facilities, per_facility=3)
            try:
                wait_until(all_subscribed(cluster, channels, hubs=2), what="both hubs subscribed")
                for phase in ("before", "after"):
                    audience.clear()
                    for facility in facilities:
                        publish(facility, f"{phase}:{facility}")
                    audience.read(lambda: all(received for _, received in audience.listeners))
                    wrong = [(facility, received) for facility, received in audience.listeners
                             if received != [f"{phase}:{facility}"]]
                    assert not wrong, f"{len(wrong)} websockets {phase} the move, e.g. {wrong[:3]}"
                    if phase == "after":
                        break
                    shards = cluster.shards()
                    sizes = {port: sum(last - first + 1 for first, last in ranges)
                             for port, ranges in shards.items()}
                    source, target = max(sizes, key=sizes.get), min(sizes, key=sizes.get)
                    took = cluster.reshard(source, target, 2000)
                    moved_at = time.monotonic()
                    wait_until(all_subscribed(cluster, channels, hubs=2), limit=30,
                               what="both hubs subscribed every channel on its new master")
                    print(f"{kind}: 2000 slots moved in {took:.1f} s; the hubs were subscribed on the new "
                          f"masters {time.monotonic() - moved_at:.2f} s after the move ended")
                pubsub_clients = hub_connections(cluster)
                hubs = [client for clients in pubsub_clients.values() for client in clients
                        if client.get("name", "").startswith("ws4redis-hub:")]
                assert hubs and all(client["sub"] == "0" and client["psub"] == "0" for client in hubs), hubs
                assert sum(int(client["ssub"]) for client in hubs) == 2 * len(channels), hubs
                for port, clients in pubsub_clients.items():
                    names = [client["name"] for client in clients
                             if client.get("name", "").startswith("ws4redis")]
                    assert len(names) == len(set(names)) <= 2, (port, names)
            finally:
                audience.close()
            tracebacks = first.tracebacks() + second.tracebacks()
            assert not tracebacks, tracebacks
    finally:
        close_connection_pools()
        site.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_delivery_resumes_after_a_master_fails_over_to_its_replica(cluster, redis_server, kind):
    """A master is killed; once its replica is promoted, the hubs subscribe there and deliver again."""
    site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(cluster.connection)})
    facilities = [f"fo{index}-{uuid.uuid4().hex[:6]}" for index in range(30)]
    channels = [broadcast_channel(facility) for facility in facilities]
    close_connection_pools()
    victim = None
    try:
        with servers.serving(servers.STARTERS[kind](site)) as first, \
                servers.serving(servers.STARTERS[kind](site)) as second, \
                override_settings(WS4REDIS_CONNECTION=cluster.connection):
            audience = Audience([first, second], facilities, per_facility=2)
            try:
                wait_until(all_subscribed(cluster, channels, hubs=2), what="both hubs subscribed")
                victim = cluster.master_of(channels[0])
                on_victim = [facility for facility in facilities
                             if cluster.master_of(broadcast_channel(facility)) == victim]
                probe = on_victim[0]
                killed_at = time.monotonic()
                cluster.node(victim).stop()
                heard = [received for facility, received in audience.listeners if facility == probe]
                sent = 0
                resumed_at = None
                while time.monotonic() - killed_at < 60:
                    try:
                        publish(probe, f"probe {sent}")
                        sent += 1
                    except redis.RedisError:
                        pass  # the slot has no master yet
                    audience.read(lambda: all(any(m.startswith("probe") for m in r) for r in heard),
                                  limit=0.2, linger=0)
                    if all(any(message.startswith("probe") for message in received) for received in heard):
                        resumed_at = time.monotonic()
                        break
                assert resumed_at is not None, "no probe reached the websockets within 60 s of the kill"
                cluster.wait_until(lambda: victim not in cluster.master_ports() and cluster.healthy(),
                                   "the replica to take over")
                wait_until(all_subscribed(cluster, channels, hubs=2), limit=30,
                           what="both hubs subscribed every channel after the failover")
                print(f"{kind}: delivery resumed {resumed_at - killed_at:.1f} s after the master was killed "
                      f"({sent} probes published once the slot had a master)")
                audience.read(lambda: False, limit=1.0)  # re-sent persisted messages, late probes
                audience.clear()
                for facility in facilities:
                    publish(facility, f"after:{facility}")
                audience.read(lambda: all(received for _, received in audience.listeners))
                wrong = [(facility, received) for facility, received in audience.listeners
                         if received != [f"after:{facility}"]]
                assert not wrong, f"{len(wrong)} websockets after the failover, e.g. {wrong[:3]}"
            finally:
                audience.close()
            tracebacks = first.tracebacks() + second.tracebacks()
            assert not tracebacks, tracebacks
    finally:
        if victim is not None:
            cluster.restore(victim)
        close_connection_pools()
        site.cleanup()


def test_runserver_refuses_websockets_on_a_cluster_saying_why(cluster, redis_server):
    """runserver opens a subscription per websocket, which a cluster cannot carry: 500 naming the reason."""
    site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(cluster.connection)})
    try:
        with servers.serving(servers.runserver(site)) as server:
            status, _, body = servers.http_request(server.port, "GET", "/ws/anything?subscribe-broadcast", {
                "Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
                "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
            assert status == 500 and b"names a Redis Cluster" in body and b"SSUBSCRIBE" in body, body
            assert "names a Redis Cluster" in server.output()
    finally:
        site.cleanup()


def test_a_hub_on_a_cluster_refuses_patterns_before_registering_anything(on_cluster):
    from ws4redis.hub import Hub

    class Listener:
        deflation = None
        envelope = False
        lane = None

        def deliver(self, frame, payload, channel, offset):
            return False

        def flush(self):
            return None

    hub = Hub(name="ws4redis-hub:patterns-test")
    try:
        with pytest.raises(ValueError, match="no pattern subscriptions"):
            hub.subscribe(Listener(), ["broadcast:plain"], ["broadcast:*"])
        assert hub.subscribe(Listener(), ["broadcast:plain"]) is True
        assert subscribers_on_owner(on_cluster, "broadcast:plain") == 1
    finally:
        hub.close()


def test_a_hub_without_a_reachable_node_says_which_setting(redis_server):
    from ws4redis.hub import Hub
    from ws4redis.redis_errors import BrokerUnavailable

    dead = {"cluster": [f"redis://127.0.0.1:{servers.free_port()}"]}
    with override_settings(WS4REDIS_CONNECTION=dead), \
            pytest.raises(BrokerUnavailable, match="no node of the Redis Cluster of WS4REDIS_CONNECTION"):
        Hub()


def test_the_bench_tool_measures_fan_out_on_a_cluster(cluster, redis_server):
    """ws4redis-bench --redis-cluster SPUBLISHes to the channel's master; every client gets everything."""
    from tests.test_bench_tool import bench

    site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(cluster.connection)})
    try:
        with servers.serving(servers.gevent_server(site)) as server:
            facility = f"bench-{uuid.uuid4().hex[:6]}"
            report, _ = bench(f"ws://127.0.0.1:{server.port}/ws/{facility}?subscribe-broadcast",
                              "--redis-cluster", cluster.urls[1], "-n", "20", "-m", "200", "--quiet")
            assert report["delivered"] == report["expected"] == 20 * 200, report
            assert report["lost"] == report["duplicates"] == 0 and not report["errors"], report
    finally:
        site.cleanup()


@pytest.mark.parametrize("kind", KINDS)
def test_history_on_a_cluster_lives_beside_each_channel_and_recovers_what_was_missed(cluster, redis_server,
                                                                                      kind):
    """WS4REDIS_HISTORY on a cluster: each publish's script runs on the channel's master (the
    stream shares the channel's slot), and a client cut off from facilities spread over the
    masters gets exactly what it missed on each."""
    from redis.crc import key_slot

    from tests.test_recovery import come_back, texts
    from ws4redis.history import stream_key

    history = {"size": 500, "ttl": 60}
    site = Site(redis_server.url, {"WS4REDIS_CONNECTION": repr(cluster.connection),
                                   "WS4REDIS_HISTORY": repr(history)})
    facilities = [f"h{index}-{uuid.uuid4().hex[:6]}" for index in range(6)]
    close_connection_pools()
    try:
        with servers.serving(servers.STARTERS[kind](site)) as server, \
                override_settings(WS4REDIS_CONNECTION=cluster.connection, WS4REDIS_HISTORY=history):
            for facility in facilities:
                away = [f"away {index}" for index in range(20)]
                missed, recovery, back = come_back(server, facility, *away)
                assert texts(missed) == [f"away {index}" for index in range(20)], facility
                assert recovery["recovered"] is True
                publish(facility, "live")
                assert texts([back.event()]) == ["live"]
                back.cut()
    finally:
        site.cleanup()
        close_connection_pools()
    masters = set()
    for facility in facilities:
        channel = broadcast_channel(facility).encode()
        owner = cluster.owner_of_slot(key_slot(channel))
        masters.add(owner)
        assert cluster.client(owner).xlen(stream_key(channel)) == 22
    assert len(masters) > 1, "the facilities spread over more than one master"
