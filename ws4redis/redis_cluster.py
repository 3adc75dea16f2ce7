"""Redis Cluster behind WS4REDIS_CONNECTION: the setting, the client, and publishing by hash slot.

``WS4REDIS_CONNECTION = {"cluster": ["redis://10.0.0.1:7000", ...], ...}`` names
some nodes of the cluster (any reachable one tells the others); the other
keys (password, ssl, timeouts) apply to every node. Messages are published
with SPUBLISH, which Redis delivers within the shard that owns the channel's
hash slot, instead of PUBLISH, which a cluster copies to every node; the hub
subscribes with SSUBSCRIBE (``ws4redis.shard_router``).

0.6.0's key layout is kept as it is, without hash tags: each channel name is
also the key of its last message, so both share a slot and a node, and the
channels of a site spread over every master by their own names. Tagging
them (``{facility}``) would put all audiences of a facility on one node, good
for multi-key commands ws4redis does not need, bad for balance.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import unquote, urlsplit

import redis
from django.core.exceptions import ImproperlyConfigured
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.exceptions import AskError, MovedError, RedisClusterException

__all__ = [
    "CLUSTER_NEEDS_HUB", "MAX_REDIRECTS", "build_cluster_client", "check_cluster_settings", "fetch_values",
    "is_cluster", "is_cluster_client", "key_slot", "node_options", "publish_on_cluster",
]

logger = logging.getLogger(__name__)

NAME = "WS4REDIS_CONNECTION"
# Keys that name one server, which the cluster form leaves to the cluster's own map.
ONE_SERVER_KEYS = ("host", "port", "url", "unix_socket_path", "sentinels", "master_name")
# Keys of WS4REDIS_CONNECTION that configure the client, not each node's connections (a
# cluster client keeps a plain pool per node, so pool_timeout has no meaning there).
CLIENT_KEYS = {"max_connections": "max_connections"}
IGNORED_KEYS = ("pool_timeout",)
CLUSTER_NEEDS_HUB = (
    "WS4REDIS_CONNECTION names a Redis Cluster, where websockets are served by the hub of the gevent "
    "server (python -m ws4redis serve, manage.py runwebsocket) or of uWSGI, which subscribe with SSUBSCRIBE; "
    "Django's runserver opens a subscription per websocket and cannot: point it at one Redis in development"
)
# How often one publish follows MOVED/ASK before it gives up (a slot moving twice at once).
MAX_REDIRECTS = 5

_ASKING = b"*1\r\n$6\r\nASKING\r\n"


def is_cluster(config: Mapping[str, Any]) -> bool:
    """Whether WS4REDIS_CONNECTION ``config`` describes a Redis Cluster."""
    return "cluster" in config


def is_cluster_client(client: Any) -> bool:
    return isinstance(client, RedisCluster)


def startup_nodes(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """(host, port) of each node the setting names."""
    nodes = []
    for entry in config["cluster"]:
        if isinstance(entry, str):
            parts = urlsplit(entry)
            nodes.append((parts.hostname or "", parts.port or 6379))
        else:
            nodes.append((str(entry[0]), int(entry[1])))
    return nodes


def node_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The connection options shared by every node: the setting's own keys, then a URL's credentials."""
    options = {key: value for key, value in config.items()
               if key not in ("cluster", "db", *CLIENT_KEYS, *IGNORED_KEYS)}
    first = next(iter(config["cluster"]), None)
    if isinstance(first, str):
        parts = urlsplit(first)
        if parts.scheme == "rediss":
            options.setdefault("ssl", True)
        if parts.username:
            options.setdefault("username", unquote(parts.username))
        if parts.password:
            options.setdefault("password", unquote(parts.password))
    return options


def check_cluster_settings(config: Mapping[str, Any]) -> None:
    """The cluster form: URLs or (host, port) pairs of some nodes, no server of its own, database 0."""
    nodes = config["cluster"]

    def valid(entry: Any) -> bool:
        if isinstance(entry, str):
            parts = urlsplit(entry)
            try:
                port = parts.port
            except ValueError:
                return False
            return parts.scheme in ("redis", "rediss") and bool(parts.hostname) and port is not None \
                and parts.path in ("", "/", "/0")
        return isinstance(entry, (list, tuple)) and len(entry) == 2 and isinstance(entry[0], str) \
            and bool(entry[0]) and isinstance(entry[1], int) and not isinstance(entry[1], bool) \
            and 0 < entry[1] < 65536

    if isinstance(nodes, (str, bytes)) or not isinstance(nodes, Sequence) or not nodes \
            or not all(valid(entry) for entry in nodes):
        raise ImproperlyConfigured(
            f"{NAME}['cluster'] must be a list of node addresses, as redis://host:port URLs or (host, "
            f"port) pairs, such as ['redis://10.0.0.1:7000', 'redis://10.0.0.2:7000'], got {nodes!r}"
        )
    clashing = sorted(key for key in ONE_SERVER_KEYS if key in config)
    if clashing:
        raise ImproperlyConfigured(
            f"{NAME} has 'cluster' and {', '.join(map(repr, clashing))}: a cluster's nodes are found "
            "through the addresses in 'cluster', so leave out the address of a single server"
        )
    if config.get("db", 0) != 0:
        raise ImproperlyConfigured(f"{NAME}['db'] must be 0 with 'cluster': Redis Cluster has database 0 "
                                   f"only, got {config['db']!r}")


def build_cluster_client(config: Mapping[str, Any], connection_class: type | None = None,
                         client_class: type[RedisCluster] = RedisCluster, **overrides: Any) -> RedisCluster:
    """A RedisCluster client for ``config``; it connects to a startup node and reads the slot map now.

    Raises a redis error (``RedisClusterException``, a ``ConnectionError``) when no node answers.
    """
    options = {**node_options(config), **overrides}
    for key, client_key in CLIENT_KEYS.items():
        if key in config:
            options[client_key] = config[key]
    nodes = [ClusterNode(host, port) for host, port in startup_nodes(config)]
    if connection_class is not None and not options.get("ssl"):
        # redis-py before 8.2 hands a node's options to Redis(), which takes no connection_class,
        # unless the client was named by a URL: then they go to the node's ConnectionPool, which
        # does. So the first node is given as a URL, the others as startup nodes.
        first = nodes.pop(0)
        host = f"[{first.host}]" if ":" in first.host else first.host
        return client_class(url=f"redis://{host}:{first.port}", startup_nodes=nodes,
                            connection_class=connection_class, **options)
    return client_class(startup_nodes=nodes, **options)


def fetch_values(client: Any, names: Sequence[str | bytes]) -> list[Any]:
    """GET of every name in one call: MGET on one server, one MGET per slot on a cluster."""
    if not names:
        return []
    if is_cluster_client(client):
        return client.mget_nonatomic(list(names))
    return client.mget(names)


def publish_on_cluster(client: RedisCluster, slots: Sequence[int], commands: Sequence[bytes],
                       counts: Sequence[bool]) -> int:
    """Send each packed command to the master of its slot; returns the receivers of those that count.

    Commands for one node go out in one write and their replies are read in order. A command
    answered MOVED or ASK was not executed, so it alone is sent again where Redis points (after
    re-reading the slot map for MOVED); once a command went out, a broken connection raises
    instead of sending it again, because Redis may have executed it and a retry would publish
    twice. A refused command (ResponseError) is raised after every reply is read.
    """
    pending = list(range(len(commands)))
    asking: dict[int, ClusterNode] = {}
    receivers = 0
    failure: redis.ResponseError | None = None
    for _ in range(MAX_REDIRECTS + 1):
        if not pending:
            break
        nodes = client.nodes_manager
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index in pending:
            node = asking.get(index) or nodes.get_node_from_slot(slots[index])
            by_node.setdefault(node.name, (node, []))[1].append(index)
        was_asking, pending, asking, moved = asking, [], {}, False
        for node, indices in by_node.values():
            try:
                replies = _send_to_node(client, node, [(commands[i], i in was_asking) for i in indices])
            except (redis.ConnectionError, redis.TimeoutError):
                _reread_slot_map(client)  # a master may have failed over: the next publish goes there
                raise
            for index, reply in zip(indices, replies, strict=True):
                if isinstance(reply, MovedError):
                    pending.append(index)
                    moved = True
                elif isinstance(reply, AskError):
                    pending.append(index)
                    asking[index] = client.nodes_manager.get_node(reply.host, reply.port) or \
                        ClusterNode(reply.host, reply.port)
                elif isinstance(reply, redis.ResponseError):
                    failure = failure or reply
                elif counts[index]:
                    receivers += reply
        if moved:
            client.nodes_manager.initialize()
    if pending:
        raise redis.ClusterError(f"{len(pending)} commands were still redirected after {MAX_REDIRECTS} tries")
    if failure is not None:
        raise failure
    return receivers


def _reread_slot_map(client: RedisCluster) -> None:
    try:
        client.nodes_manager.initialize()
    except (redis.RedisError, RedisClusterException) as exc:
        logger.info("ws4redis: could not re-read the cluster's slot map (%s)", exc)


def _send_to_node(client: RedisCluster, node: ClusterNode, commands: Iterable[tuple[bytes, bool]]) -> list:
    """Write ``commands`` (ASKING first where flagged) to ``node`` at once; its replies, errors as values."""
    if node.redis_connection is None:
        node = client.nodes_manager.get_node(node.host, node.port) or node
        if node.redis_connection is None:
            client.nodes_manager.create_redis_connections([node])
    pool = node.redis_connection.connection_pool
    connection = pool.get_connection()
    commands = list(commands)
    packed = b"".join((_ASKING + command) if ask else command for command, ask in commands)
    try:
        # Retried only while nothing was sent: a connection from the pool may have gone stale.
        connection.retry.call_with_retry(
            lambda: connection.send_packed_command((packed,)), lambda error: connection.disconnect()
        )
        replies = []
        for _, ask in commands:
            if ask:
                connection.read_response()  # +OK to ASKING
            try:
                replies.append(connection.read_response())
            except redis.ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        connection.disconnect()
        raise
    finally:
        pool.release(connection)
