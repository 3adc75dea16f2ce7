"""The phases of one benchmark run: connect, warm up, publish or echo, drain, close.

Each phase is bounded in time. The result is a plain dict (what ``--json``
prints), built only from what was measured.
"""

from __future__ import annotations

import asyncio
import math
import random
from dataclasses import dataclass
from time import monotonic, monotonic_ns, process_time
from typing import Any

import redis.asyncio as aioredis

from ws4redis.bench.client import (
    KIND_DATA,
    KIND_WARMUP,
    PUBLISHER_SOURCE,
    BenchClient,
    HandshakeFailed,
    Target,
    message,
    padding,
    tag,
)
from ws4redis.bench.procstat import ProcessGone, ProcessTree
from ws4redis.bench.stats import Stats
from ws4redis.history import PUBLISH_SCRIPT, stream_key

PUBLISH_BATCH = 256  # PUBLISH commands per pipeline round trip
HISTORY_SIZE, HISTORY_TTL = 1000, 300  # the stream of --history: about as long as a run's messages
WARMUP_INTERVALS = (0.02, 0.05, 0.1, 0.2)  # seconds between warm-up messages, then the last repeats
CLOSE_GRACE = 2.0  # seconds the servers get to answer our close frames
ENVELOPE_FIELD = "{message}"


@dataclass
class Options:
    """Everything a run needs; ``cli`` builds it from the command line."""

    url: str
    clients: int = 100
    messages: int = 1000
    size: int = 100
    mode: str = "publish"
    redis_url: str | None = None
    # "redis": redis_url is one server; "cluster": redis_url is a node of a Redis Cluster
    # (SPUBLISH to the channel's master); "sentinel": the master the sentinels name.
    broker: str = "redis"
    sentinels: tuple[tuple[str, int], ...] = ()
    master_name: str | None = None
    channel: str | None = None
    rate: float = 0.0
    window: int = 0
    concurrency: int = 100
    connect_rate: float = 0.0
    duration: float = 60.0
    timeout: float = 10.0
    server_pid: int | None = None
    headers: tuple[str, ...] = ()
    envelope: str | None = None
    # Offer permessage-deflate as browsers do and inflate what comes compressed.
    compression: bool = False
    payload: str = "dots"  # what fills each message after its header: "dots" or "json"
    # Publish as ws4redis does on a facility with WS4REDIS_HISTORY (the stream entry and the
    # publication in one script), and have the clients ask for history envelopes.
    history: bool = False
    ca_file: str | None = None  # wss://: the CA certificates to check the server's with
    insecure: bool = False  # wss://: check no certificate

    def effective_window(self) -> int:
        """Messages the publisher may have in flight; 0 means unlimited.

        Flat out, the publisher keeps about 20,000 deliveries in flight (at
        least 2 messages, at most 256) so the server always has work queued
        while its per-connection send queues stay far from their limits.
        """
        if self.window or self.rate:
            return self.window
        return max(2, min(256, 20_000 // max(1, self.clients)))


def split_envelope(envelope: str | None) -> tuple[bytes, bytes]:
    """The bytes published before and after each message.

    An envelope wraps every published message for servers that expect a
    structure on the Redis channel, e.g. Django Channels' pub/sub layer with
    ``serializer_format="json"``: ``{"type": "bench.message", "text": "{message}"}``.
    The message itself is plain ASCII, so it needs no escaping inside JSON.
    """
    if envelope is None:
        return b"", b""
    if envelope.count(ENVELOPE_FIELD) != 1:
        raise ValueError(f"--envelope must contain {ENVELOPE_FIELD} exactly once, got {envelope!r}")
    before, after = envelope.split(ENVELOPE_FIELD)
    return before.encode(), after.encode()


def broker_client(options: Options) -> Any:
    """The asyncio client that publishes: one Redis, a Redis Cluster, or the master of the sentinels."""
    if options.broker == "cluster":
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(options.redis_url)
    if options.broker == "sentinel":
        from redis.asyncio.sentinel import Sentinel

        sentinel = Sentinel(list(options.sentinels), socket_timeout=options.timeout)
        return sentinel.master_for(options.master_name)
    return aioredis.from_url(options.redis_url)


def check_options(options: Options) -> None:
    """Raise ValueError (or ProcessGone) for options that cannot work, before any connection is made."""
    Target(options.url, ca_file=options.ca_file, insecure=options.insecure)
    split_envelope(options.envelope)
    padding(options.size, options.payload)
    if options.server_pid:
        ProcessTree(options.server_pid)


class Progress:
    """What the progress bar shows; the runner updates it, ``cli`` draws it."""

    def __init__(self) -> None:
        self.phase = "start"
        self.done = 0
        self.total = 0
        self.stats: Stats | None = None  # open sockets, deliveries
        self.clients: list[BenchClient] = []

    def connected(self) -> int:
        return self.stats.open_clients if self.stats is not None else 0

    def lost(self) -> int:
        """Messages a client never got although it got a later one: lost, since Redis and a websocket
        deliver in order (messages still on their way do not count)."""
        return sum(client.skipped() for client in self.clients)


class Run:
    """One benchmark run; :meth:`execute` goes through every phase and returns the report."""

    def __init__(self, options: Options, progress: Progress | None = None) -> None:
        self.options = options
        self.stats = Stats()
        self.clients: list[BenchClient] = []
        self.progress = progress or Progress()
        self.progress.stats = self.stats
        self.progress.clients = self.clients
        self.target = Target(options.url, list(options.headers), compression=options.compression,
                             history=options.history, ca_file=options.ca_file, insecure=options.insecure)
        self.padding = padding(options.size, options.payload)
        self.server = ProcessTree(options.server_pid) if options.server_pid else None
        self.envelope = split_envelope(options.envelope)
        self.run_id = random.getrandbits(32)
        self.connect_seconds = 0.0

    async def execute(self) -> dict:
        opts = self.options
        stats = self.stats
        rss_before = self.server.rss_bytes() if self.server else 0
        await self._connect()
        if not self.clients:
            return self._summary(published=0, elapsed=0.0)
        redis = None
        try:
            if opts.mode == "publish":
                redis = broker_client(opts)
                await self._warm_up(redis)
            rss_after = self.server.rss_bytes() if self.server else 0
            cpu_before = self.server.cpu_seconds() if self.server else 0.0
            wire_before = stats.wire_bytes
            started_ns = monotonic_ns()
            client_cpu = process_time()
            if opts.mode == "publish":
                published = await self._publish(redis)
            else:
                published = await self._echo()
            await self._drain(self._expected(published))
            # From the first PUBLISH (or echo) to the last delivery.
            elapsed = ((stats.last_delivery_ns if stats.delivered else monotonic_ns()) - started_ns) / 1e9
            cpu_after = self.server.cpu_seconds() if self.server else 0.0
            client_cpu = process_time() - client_cpu
            wire_bytes = stats.wire_bytes - wire_before
        except ProcessGone as exc:
            stats.error(str(exc))
            self.server = None
            return self._summary(published=0, elapsed=0.0)
        finally:
            if redis is not None:
                await redis.aclose()
            await self._close()
        summary = self._summary(published=published, elapsed=elapsed)
        summary["timeline"] = stats.timeline(started_ns)
        summary["client"] = {"cpu_seconds": client_cpu}
        # Bytes read by the clients over the publish/echo phase: what compression is about.
        summary["wire_bytes"] = wire_bytes
        summary["wire_bytes_per_delivery"] = wire_bytes / stats.delivered if stats.delivered else None
        if self.server:
            connected = len(self.clients)
            summary["server"] = {
                "pid": self.server.pid,
                "processes": self.server.process_count(),
                "rss_before_bytes": rss_before,
                "rss_after_connect_bytes": rss_after,
                "rss_per_connection_bytes": (rss_after - rss_before) / connected,
                "cpu_seconds": cpu_after - cpu_before,
                "cpu_per_delivered_message_us": (
                    (cpu_after - cpu_before) / stats.delivered * 1e6 if stats.delivered else None
                ),
            }
        return summary

    # phases

    async def _open(self, loop: asyncio.AbstractEventLoop, client: BenchClient) -> None:
        target = self.target
        await loop.create_connection(lambda: client, target.host, target.port, ssl=target.ssl,
                                     server_hostname=target.host if target.ssl else None)
        await client.handshake

    async def _connect(self) -> None:
        opts = self.options
        loop = asyncio.get_running_loop()
        limit = asyncio.Semaphore(opts.concurrency)
        self.progress.phase, self.progress.total = "connect", opts.clients

        async def connect(index: int) -> None:
            sender = tag(KIND_DATA, self.run_id, PUBLISHER_SOURCE if opts.mode == "publish" else index + 1)
            client = BenchClient(index, self.target, self.stats, opts.messages, sender)
            async with limit:
                try:
                    await asyncio.wait_for(self._open(loop, client), opts.timeout)
                except asyncio.TimeoutError:
                    self.stats.error("connect: timed out")
                    client.abort()
                    return
                except HandshakeFailed as exc:
                    self.stats.error(f"handshake: {exc}")
                    return
                except OSError as exc:
                    self.stats.error(f"connect: {exc.strerror or exc}")
                    return
            self.clients.append(client)
            self.progress.done += 1

        started = monotonic()
        tasks = []
        for index in range(opts.clients):
            if opts.connect_rate:
                delay = started + index / opts.connect_rate - monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(connect(index)))
        await asyncio.gather(*tasks)
        self.connect_seconds = monotonic() - started

    async def _warm_up(self, redis: aioredis.Redis) -> None:
        """Publish marker messages until every client got one, so no subscription is still pending.

        Servers subscribe to Redis after the upgrade answer, so a message
        published right after the handshake could miss a client. Warm-up
        messages are recognised and never counted.
        """
        opts = self.options
        channel = self.channel
        padding = self.padding
        self.progress.phase, self.progress.total = "warm-up", len(self.clients)
        deadline = monotonic() + opts.timeout
        sender = tag(KIND_WARMUP, self.run_id, PUBLISHER_SOURCE)
        attempt = 0
        while True:
            waiting = [client for client in self.clients if not client.warmed and client.open]
            self.progress.done = len(self.clients) - len(waiting)
            if not waiting:
                return
            if monotonic() > deadline:
                self.stats.error(f"warm-up: {len(waiting)} clients got no message within {opts.timeout} s")
                return
            marker = message(sender, attempt, padding)
            wrapped = self.envelope[0] + marker + self.envelope[1]
            await redis.execute_command(*self.publish_args(channel, wrapped))
            await asyncio.sleep(WARMUP_INTERVALS[min(attempt, len(WARMUP_INTERVALS) - 1)])
            attempt += 1

    def publish_args(self, channel: str, message: bytes) -> tuple:
        """The command that publishes ``message``: (S)PUBLISH, or the history script's EVAL."""
        if not self.options.history:
            return self.publish_command, channel, message
        return ("EVAL", PUBLISH_SCRIPT, 2, stream_key(channel), channel, self.publish_command,
                HISTORY_SIZE, HISTORY_TTL, 0, "t", message)

    @property
    def publish_command(self) -> str:
        """SPUBLISH on a cluster (delivered within the channel's shard, as ws4redis publishes there)."""
        return "SPUBLISH" if self.options.broker == "cluster" else "PUBLISH"

    @property
    def channel(self) -> str:
        opts = self.options
        if opts.channel:
            return opts.channel
        facility = self.target.path.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]
        return f"broadcast:{facility}"

    async def _publish(self, redis: aioredis.Redis) -> int:
        opts = self.options
        stats = self.stats
        channel = self.channel
        padding = self.padding
        before, after = self.envelope
        sender = tag(KIND_DATA, self.run_id, PUBLISHER_SOURCE)
        window = opts.effective_window()
        subscribers = len(self.clients)
        self.progress.phase, self.progress.total = "publish", subscribers * opts.messages
        published = 0
        started = monotonic()
        deadline = started + opts.duration
        while published < opts.messages:
            now = monotonic()
            if now >= deadline:
                break
            count = opts.messages - published
            if opts.rate:
                due = min(opts.messages, math.floor((now - started) * opts.rate) + 1)
                if due <= published:
                    await asyncio.sleep(started + published / opts.rate - now)
                    continue
                count = due - published
            if window:
                alive = stats.open_clients or 1
                room = window - (published - stats.delivered // alive)
                if room <= 0:
                    stats.wake_at = (published - window + 1) * alive
                    stats.wake.clear()
                    if stats.delivered < stats.wake_at:
                        try:
                            await asyncio.wait_for(stats.wake.wait(), opts.timeout)
                        except asyncio.TimeoutError:
                            stats.error(f"publish: deliveries stalled for {opts.timeout} s")
                            break
                    continue
                count = min(count, room)
            count = min(count, PUBLISH_BATCH)
            pipe = redis.pipeline(transaction=False) if opts.broker != "cluster" else redis.pipeline()
            for seq in range(published, published + count):
                wrapped = before + message(sender, seq, padding) + after
                pipe.execute_command(*self.publish_args(channel, wrapped))
            receivers = await pipe.execute()
            if not receivers[0]:
                stats.error(f"publish: no subscriber on Redis channel {channel!r}")
            published += count
            self.progress.done = stats.delivered
        return published

    async def _echo(self) -> int:
        opts = self.options
        padding = self.padding
        interval = len(self.clients) / opts.rate if opts.rate else 0.0
        self.progress.phase, self.progress.total = "echo", len(self.clients) * opts.messages
        deadline = monotonic() + opts.duration
        sent = 0

        async def round_trips(client: BenchClient) -> None:
            nonlocal sent
            started = monotonic() + (interval * client.index / len(self.clients))
            for seq in range(opts.messages):
                if interval:
                    delay = started + seq * interval - monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                if monotonic() >= deadline or not client.open or client.closing:
                    return
                reply = client.expect(seq)
                client.send_message(message(client.sender, seq, padding))
                sent += 1
                try:
                    await asyncio.wait_for(reply, opts.timeout)
                except asyncio.TimeoutError:
                    self.stats.error(f"echo: no reply within {opts.timeout} s")
                    return
                except ConnectionError:
                    return
                self.progress.done = self.stats.delivered

        await asyncio.gather(*(round_trips(client) for client in self.clients))
        return sent

    def _expected(self, published: int) -> int:
        """Deliveries due: every client gets every published message; every sent echo comes back.

        An echo client that gave up (timeout, closed connection) sends no more,
        and its error is reported instead.
        """
        if self.options.mode == "publish":
            return published * len(self.clients)
        return published

    async def _drain(self, expected: int) -> None:
        """Wait for outstanding deliveries until all arrived or none came for ``timeout`` seconds."""
        stats = self.stats
        self.progress.phase, self.progress.total = "drain", expected
        last, idle_since = stats.delivered, monotonic()
        while stats.delivered < expected and stats.open_clients:
            stats.wake_at = expected
            stats.wake.clear()
            try:
                await asyncio.wait_for(stats.wake.wait(), 0.25)
            except asyncio.TimeoutError:
                pass  # a periodic check for progress
            self.progress.done = stats.delivered
            if stats.delivered != last:
                last, idle_since = stats.delivered, monotonic()
            elif monotonic() - idle_since > self.options.timeout:
                return

    async def _close(self) -> None:
        self.progress.phase = "close"
        for client in self.clients:
            client.close()
        pending = [client.finished for client in self.clients if not client.finished.done()]
        if pending:
            _, late = await asyncio.wait(pending, timeout=CLOSE_GRACE)
            if late:
                for client in self.clients:
                    if not client.finished.done():
                        client.abort()

    def _summary(self, published: int, elapsed: float) -> dict:
        opts = self.options
        stats = self.stats
        connected = len(self.clients)
        expected = self._expected(published) if connected else 0
        connect_seconds = self.connect_seconds
        return {
            "mode": opts.mode,
            "url": opts.url,
            "channel": self.channel if opts.mode == "publish" else None,
            "clients": opts.clients,
            "connected": connected,
            "connect_seconds": connect_seconds,
            "connections_per_second": connected / connect_seconds if connect_seconds else 0.0,
            "messages": opts.messages,
            "published": published,
            "size": opts.size,
            "payload": opts.payload,
            "compression": {"offered": opts.compression, "negotiated_clients": stats.compressed_clients},
            "history": opts.history,
            "rate": opts.rate,
            "window": opts.effective_window() if opts.mode == "publish" else None,
            "expected": expected,
            "delivered": stats.delivered,
            "lost": expected - stats.delivered,
            "duplicates": stats.duplicates,
            "foreign": stats.foreign,
            "seconds": elapsed,
            "delivered_per_second": stats.delivered / elapsed if elapsed > 0 else 0.0,
            "latency_ms": stats.latency_summary(),
            "errors": sum(stats.errors.values()),
            "error_kinds": dict(stats.errors),
        }
