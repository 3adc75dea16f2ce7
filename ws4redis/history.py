"""Per-channel history in Redis Streams (WS4REDIS_HISTORY): offsets, envelopes, recovery.

Redis pub/sub is at most once: a browser away for a few seconds misses what
was published meanwhile. With WS4REDIS_HISTORY on for a facility, every
publish on its channels also appends the message to a Redis Stream, in one
server-side script (:data:`PUBLISH_SCRIPT`), so the live message and its
history entry exist together or not at all:

* ``XADD <stream> MAXLEN ~ size * t <type> d <data>``: the entry's ID is the
  message's **offset** (``<milliseconds>-<sequence>``, ordered);
* ``EXPIRE <stream> ttl``: a channel quiet for ``ttl`` seconds forgets it;
* ``SET <channel> <data> EX WS4REDIS_EXPIRE`` as before (the persisted message);
* ``PUBLISH <channel> <envelope>`` (SPUBLISH on a cluster), where the
  envelope carries the offset and the type: ``\\x00w4h`` + ``t`` or ``b`` +
  offset + ``\\x00`` + data. The servers unwrap it; clients that did not ask
  for history get the bare data, now with its type (text or binary) kept.

Key layout: the stream of channel ``C`` is ``{C}:history``. The braces are a
Redis Cluster hash tag, so the stream lives in the slot of its channel and the
script touches one slot. (A channel name that already has a hash tag keeps it:
``C:history``.)

A client opts in with ``history`` in the query string and then receives JSON
envelopes (:func:`message_event`) naming each message's channel and offset.
Reconnecting with ``since={"broadcast": "<offset>"}`` it first receives what
it missed, then :func:`recovery_event`: ``recovered`` is true when the stream
still held the offset the client had, so nothing between it and now is gone.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from ws4redis import constants
from ws4redis.speedups import validate_utf8

__all__ = [
    "MAGIC", "PUBLISH_SCRIPT", "ChannelHistory", "HistoryPolicy", "HistorySettings", "Missed", "Seam",
    "channel_labels", "for_subscriber", "message_event", "offset_order", "parse_since", "position_event",
    "read_missed", "read_newest", "read_positions", "recovery_event", "stream_key", "unwrap", "wrap",
]

MAGIC = b"\x00w4h"  # first bytes of a published message that carries its offset and type
TEXT, BINARY = b"t", b"b"
_OFFSET = re.compile(r"\d{1,20}-\d{1,20}")
_KEYS = {"size", "ttl", "facilities"}
_POLICY_KEYS = {"size", "ttl"}

# KEYS: stream, channel. ARGV: PUBLISH or SPUBLISH, MAXLEN, stream TTL, WS4REDIS_EXPIRE, type, data.
PUBLISH_SCRIPT = b"""\
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 't', ARGV[5], 'd', ARGV[6])
redis.call('EXPIRE', KEYS[1], ARGV[3])
if tonumber(ARGV[4]) > 0 then redis.call('SET', KEYS[2], ARGV[6], 'EX', ARGV[4]) end
return redis.call(ARGV[1], KEYS[2], '\\0w4h' .. ARGV[5] .. id .. '\\0' .. ARGV[6])
"""


@dataclass(frozen=True, slots=True)
class HistoryPolicy:
    """How much history one facility keeps: the last ``size`` messages, for ``ttl`` quiet seconds."""

    size: int = constants.DEFAULT_HISTORY_SIZE
    ttl: int = constants.DEFAULT_HISTORY_TTL

    def replay_limit(self) -> int:
        """Entries read for one recovery at most: the stream holds ``size`` and a trimming margin."""
        return self.size + constants.HISTORY_TRIM_MARGIN


@dataclass(frozen=True, slots=True)
class HistorySettings:
    """WS4REDIS_HISTORY, read once: a policy for every facility, or for the listed ones only."""

    default: HistoryPolicy | None
    facilities: Mapping[str, HistoryPolicy]

    @classmethod
    def from_setting(cls, value: Any) -> HistorySettings | None:
        """None when history is off (the default); ValueError naming what is wrong otherwise."""
        if value is None or value is False:
            return None
        if value is True:
            return cls(HistoryPolicy(), {})
        if not isinstance(value, Mapping):
            raise ValueError(f"must be None, True or a dict of size, ttl and facilities, got {value!r}")
        unknown = sorted(set(value) - _KEYS)
        if unknown:
            raise ValueError(f"has unknown keys {unknown}: the keys are size, ttl and facilities")
        default = _policy(value, HistoryPolicy(), "")
        listed = value.get("facilities")
        if listed is None:
            return cls(default, {})
        if not isinstance(listed, Mapping) or not all(isinstance(name, str) for name in listed):
            raise ValueError(f"['facilities'] must be a dict of facility names, got {listed!r}")
        facilities = {}
        for name, overrides in listed.items():
            if overrides is None:
                continue
            if not isinstance(overrides, Mapping):
                raise ValueError(f"['facilities'][{name!r}] must be a dict of size and ttl (or None), "
                                 f"got {overrides!r}")
            facilities[name] = _policy(overrides, default, f"['facilities'][{name!r}]")
        return cls(None, facilities)

    def for_facility(self, facility: str) -> HistoryPolicy | None:
        """The policy of ``facility``; None when its channels keep no history."""
        return self.facilities.get(facility, self.default)


def _policy(value: Mapping[str, Any], base: HistoryPolicy, where: str) -> HistoryPolicy:
    unknown = sorted(set(value) - _POLICY_KEYS - ({"facilities"} if not where else set()))
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}: the keys are size and ttl")
    numbers = {}
    for name in ("size", "ttl"):
        number = value.get(name, getattr(base, name))
        if not isinstance(number, int) or isinstance(number, bool) or number < 1:
            raise ValueError(f"{where}[{name!r}] must be an integer >= 1, got {number!r}")
        numbers[name] = number
    return HistoryPolicy(**numbers)


@dataclass(frozen=True, slots=True)
class ChannelHistory:
    """The history side of one websocket whose facility keeps one (made by :func:`for_subscriber`)."""

    policy: HistoryPolicy
    labels: Mapping[bytes, str]  # channel -> the name envelopes give it
    envelope: bool  # the client asked for history envelopes
    since: Mapping[str, str] | None  # the offsets it resumes from, per label
    # A client that does not resume gets each channel's newest entry (as WS4REDIS_EXPIRE > 0 would).
    newest: bool = True

    @property
    def streams(self) -> dict[str, bytes]:
        """label -> stream key of every channel."""
        return {label: stream_key(channel) for channel, label in self.labels.items()}

    def replay(self, client: Any) -> tuple[list[tuple[str, bytes, bool, bytes]], bytes, dict[str, str]]:
        """What to send before live messages: the entries, the event that follows them, the offsets.

        Resuming (``since``): every missed entry, then :func:`recovery_event`. Otherwise the
        newest entry of each channel (the persisted message, with its offset), then
        :func:`position_event`.
        """
        if self.since is not None:
            missed = read_missed(client, self.streams, self.since, self.policy.replay_limit())
            return (missed.entries, recovery_event(missed.recovered, len(missed.entries), missed.offsets),
                    missed.offsets)
        entries, offsets = read_newest(client, self.streams)
        return (entries if self.newest else []), position_event(offsets), offsets


class Seam:
    """Where a replay ends and live messages begin, per channel: no message is sent twice there.

    Live messages still on their way from Redis when the history was read (in the server's
    socket buffer, say) were replayed already; each channel drops live messages up to the
    last offset the replay had, and stops looking at the first newer one (offsets only rise).
    """

    __slots__ = ("_floors",)

    def __init__(self, labels: Mapping[bytes, str], offsets: Mapping[str, str]) -> None:
        self._floors: dict[str, tuple[int, int]] = {
            channel.decode("utf-8", "replace"): offset_order(offsets[label])
            for channel, label in labels.items() if label in offsets
        }

    @property
    def open(self) -> bool:
        """Whether some channel has not yet passed its replay."""
        return bool(self._floors)

    def replayed(self, channel: str, offset: bytes | None) -> bool:
        """Whether the replay had the live message at ``offset`` on ``channel``."""
        floor = self._floors.get(channel)
        if floor is None or offset is None:
            return False
        if offset_order(offset) <= floor:
            return True
        del self._floors[channel]
        return False


def for_subscriber(policy: HistoryPolicy | None, channels: Iterable[str | bytes], prefix: str,
                   facility: str, envelope: bool, since: Mapping[str, str] | None,
                   newest: bool = True) -> ChannelHistory | None:
    """The :class:`ChannelHistory` of a websocket, None when its facility keeps no history.

    Raises ValueError, for the client to read, when it asked for history on a facility without.
    """
    if policy is None:
        if envelope:
            raise ValueError(f"facility {facility!r} keeps no history (WS4REDIS_HISTORY)")
        return None
    return ChannelHistory(policy, channel_labels(channels, prefix, facility), envelope, since, newest)


# --- keys and the envelope in Redis ------------------------------------------------------------


def _hash_tag(name: bytes) -> bytes | None:
    """The Redis Cluster hash tag of ``name`` (what the slot is computed from), None when it has none."""
    start = name.find(b"{")
    if start < 0:
        return None
    end = name.find(b"}", start + 1)
    if end <= start + 1:
        return None
    return name[start + 1:end]


def stream_key(channel: str | bytes) -> bytes:
    """The stream holding ``channel``'s history, in the same Redis Cluster slot as the channel.

    Raises ValueError for the rare name that no key can share a slot with (a ``}`` without a
    hash tag before it, as in ``a}b`` or ``a{}b``).
    """
    name = channel.encode() if isinstance(channel, str) else bytes(channel)
    if _hash_tag(name) is not None:
        return name + b":history"
    if b"}" in name:
        raise ValueError(f"channel {name!r} cannot have a history: a '}}' without a hash tag before it")
    return b"{" + name + b"}:history"


def wrap(offset: bytes, binary: bool, data: bytes) -> bytes:
    """What :data:`PUBLISH_SCRIPT` publishes for ``data`` stored under ``offset``."""
    return b"".join((MAGIC, BINARY if binary else TEXT, offset, b"\x00", data))


def unwrap(payload: bytes) -> tuple[bytes | None, bool | None, bytes]:
    """(offset, binary, data) of a published message; (None, None, payload) when it carries none.

    A message published past ws4redis (``redis-cli PUBLISH``, a server of another version)
    comes bare; it is delivered as it is, without an offset.
    """
    if payload[:4] != MAGIC or len(payload) < 6:
        return None, None, payload
    end = payload.find(b"\x00", 5)
    kind = payload[4:5]
    if end < 0 or kind not in (TEXT, BINARY):
        return None, None, payload
    return payload[5:end], kind == BINARY, payload[end + 1:]


# --- what clients that asked for history receive -----------------------------------------------


def _data_field(data: bytes, binary: bool) -> str:
    return base64.b64encode(data).decode("ascii") if binary else data.decode("utf-8")


def message_event(label: str, offset: bytes | None, binary: bool | None, data: bytes) -> bytes:
    """One message as a history client receives it (a text frame's payload).

    ``binary`` None (a message that did not declare its type): binary unless it is UTF-8.
    """
    if binary is None:
        binary = not validate_utf8(data)
    event = {"event": "message", "channel": label, "offset": offset.decode("ascii") if offset else None,
             "binary": binary, "data": _data_field(data, binary)}
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def position_event(offsets: Mapping[str, str]) -> bytes:
    """Where each channel's history stands as the websocket opens: the offsets to resume from."""
    return json.dumps({"event": "position", "offsets": dict(offsets)}, separators=(",", ":")).encode()


def recovery_event(recovered: bool, missed: int, offsets: Mapping[str, str]) -> bytes:
    """After the replay: whether nothing is missing (``recovered``), how many came, where each stands."""
    event = {"event": "recovery", "recovered": recovered, "missed": missed, "offsets": dict(offsets)}
    return json.dumps(event, separators=(",", ":")).encode()


def offset_order(offset: str | bytes) -> tuple[int, int]:
    """A stream ID as a sortable pair (IDs do not sort as strings: ``9-0`` < ``10-0``)."""
    text = offset.decode("ascii") if isinstance(offset, bytes) else offset
    milliseconds, _, sequence = text.partition("-")
    return int(milliseconds), int(sequence)


def parse_since(value: str) -> dict[str, str]:
    """The ``since`` query parameter: a JSON object of channel label -> offset; ValueError if not."""
    if len(value) > constants.MAX_SINCE_LENGTH:
        raise ValueError(f"since is longer than {constants.MAX_SINCE_LENGTH} characters")
    try:
        offsets = json.loads(value)
    except ValueError:
        raise ValueError("since must be a JSON object of channel -> offset") from None
    if not isinstance(offsets, dict):
        raise ValueError("since must be a JSON object of channel -> offset")
    for label, offset in offsets.items():
        if not isinstance(offset, str) or not _OFFSET.fullmatch(offset):
            raise ValueError(f"since[{label!r}] must be an offset such as '1733449200000-0', got {offset!r}")
    return offsets


def channel_labels(channels: Iterable[str | bytes], prefix: str, facility: str) -> dict[bytes, str]:
    """The name each channel goes by in envelopes: ``broadcast``, ``user``, ``session``, ``group:<name>``.

    A user's and a session's channel are the client's own; their names (a session key above
    all, which the session cookie hides from scripts) never reach the page.
    """
    labels = {}
    suffix = f":{facility}"
    for channel in channels:
        name = channel.decode("utf-8", "replace") if isinstance(channel, bytes) else channel
        core = name[len(prefix):] if prefix and name.startswith(prefix) else name
        if core.endswith(suffix):
            core = core[:-len(suffix)]
        kind, _, rest = core.partition(":")
        label = kind if kind in ("broadcast", "user", "session") else f"{kind}:{rest}" if rest else kind
        labels[name.encode("utf-8") if isinstance(channel, str) else bytes(channel)] = label
    return labels


# --- reading the streams -----------------------------------------------------------------------


@dataclass(slots=True)
class Missed:
    """What one recovery read: the missed entries in order per channel, and whether that is all."""

    entries: list[tuple[str, bytes, bool, bytes]]  # (label, offset, binary, data)
    recovered: bool
    offsets: dict[str, str]  # where each channel stands after the replay


def _entry(entry: Any) -> tuple[bytes, bool, bytes]:
    offset, fields = entry
    values = dict(zip(fields[::2], fields[1::2], strict=True)) if isinstance(fields, list) else fields
    return bytes(offset), values.get(b"t") == BINARY, bytes(values.get(b"d", b""))


def read_missed(client: Any, streams: Mapping[str, bytes], since: Mapping[str, str],
                limit: int) -> Missed:
    """The entries after ``since[label]`` in each label's stream, oldest first, at most ``limit`` each.

    Recovered means every stream still held the offset the client had (trimming removes the
    oldest entries, never one in the middle, so all that followed it is there) and no channel
    missed more than ``limit``; over it, the newest ``limit`` come. A channel the client had no
    offset for (new to it) starts from where its stream stands now.
    """
    entries: list[tuple[str, bytes, bool, bytes]] = []
    recovered = True
    offsets = read_positions(client, {label: key for label, key in streams.items() if label not in since})
    for label, key in streams.items():
        start = since.get(label)
        if start is None:
            continue
        recovered = recovered and _still_holds(client, key, start)
        newest = client.xrevrange(key, max="+", min=f"({start}", count=limit + 1)
        if len(newest) > limit:
            newest = newest[:limit]
            recovered = False
        rows = [_entry(entry) for entry in reversed(newest)]
        entries.extend((label, offset, binary, data) for offset, binary, data in rows)
        offsets[label] = rows[-1][0].decode("ascii") if rows else start
    return Missed(entries, recovered, offsets)


def _still_holds(client: Any, key: bytes, offset: str) -> bool:
    """Whether everything after ``offset`` is still in the stream.

    ``0-0`` is where a client stands on a channel that had no history yet: then nothing may
    have been trimmed since the stream began (a stream that does not exist had nothing).
    """
    if offset != "0-0":
        return bool(client.xrange(key, min=offset, max=offset, count=1))
    if not client.exists(key):
        return True
    info = {(name.decode() if isinstance(name, bytes) else name): value
            for name, value in client.xinfo_stream(key).items()}
    # Redis 7 counts every entry ever added: equal to the length, nothing was trimmed. Before 7
    # it cannot be told, and "not recovered" makes the page fetch its state again.
    return info.get("entries-added") == info["length"]


def read_positions(client: Any, streams: Mapping[str, bytes]) -> dict[str, str]:
    """The newest offset of each stream (``0-0`` for an empty or expired one)."""
    return read_newest(client, streams)[1]


def read_newest(client: Any, streams: Mapping[str, bytes]) -> tuple[list[tuple[str, bytes, bool, bytes]],
                                                                    dict[str, str]]:
    """The newest entry of each stream (none for an empty one) and each stream's offset (``0-0``)."""
    entries = []
    positions = {}
    for label, key in streams.items():
        newest = client.xrevrange(key, max="+", min="-", count=1)
        if newest:
            offset, binary, data = _entry(newest[0])
            entries.append((label, offset, binary, data))
            positions[label] = offset.decode("ascii")
        else:
            positions[label] = "0-0"
    return entries, positions
