"""The fan-out's send lanes in pure Python, twin of ext/fanout.pyx (``ws4redis.server.fanout`` picks one).

A lane is one socket the fan-out writes directly: a delivery appends the
frame (framed once per message) to the lane's pending list, and
:meth:`SendLanes.flush` writes each lane that holds frames with one
non-blocking ``writev``. A lane whose socket does not take everything spills:
its owner takes the rest (:meth:`SendLanes.take`), writes from then on, and
gets the deliveries itself until it :meth:`SendLanes.resume`s the lane. Same
API and results as the compiled module; see its docstring for why.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterable, Sequence
from typing import Any

from ws4redis import constants

__all__ = ["Audience", "SendLanes", "whole_frames"]

FREE, SLOW, FAST, SPILLED = range(4)
_FULL = (errno.EAGAIN, errno.EWOULDBLOCK)


def whole_frames(frames: Iterable[bytes], written: int) -> tuple[int, int]:
    """How many of ``frames`` the first ``written`` bytes of their concatenation complete, and how
    many bytes of the next one they hold (the offset to go on from)."""
    done = 0
    for frame in frames:
        if written < len(frame):
            break
        written -= len(frame)
        done += 1
    return done, written


class _Lane:
    __slots__ = ("fd", "state", "gen", "frames", "pending", "head_offset", "error", "frames_out",
                 "bytes_out", "dirty")

    def __init__(self) -> None:
        self.fd = -1
        self.state = FREE
        self.gen = 0
        self.frames: list[bytes] = []
        self.pending = 0
        self.head_offset = 0
        self.error = 0
        self.frames_out = 0
        self.bytes_out = 0
        self.dirty = False


class Audience:
    """The lanes of one group of a channel's listeners, as captured when the group was built."""

    __slots__ = ("lanes", "others")

    def __init__(self, lanes: Sequence[tuple[int, int]], others: Iterable[Any]) -> None:
        self.lanes = tuple(lanes)  # (lane number, its generation when the group was built)
        self.others = tuple(others)

    def __len__(self) -> int:
        return len(self.lanes) + len(self.others)


class SendLanes:
    """The sockets of one process that the fan-out writes directly (see the module docstring)."""

    def __init__(self, cork_bytes: int = constants.LANE_CORK_BYTES,
                 cork_frames: int = constants.LANE_CORK_FRAMES) -> None:
        if cork_bytes < 1 or not 1 <= cork_frames <= constants.LANE_MAX_FRAMES:
            raise ValueError(f"cork sizes out of range: {cork_bytes} bytes, {cork_frames} frames "
                             f"(at most {constants.LANE_MAX_FRAMES})")
        self.cork_bytes = cork_bytes
        self.cork_frames = cork_frames
        self._lanes: list[_Lane] = []
        self._owners: list[Any] = []
        self._free: list[int] = []
        self._dirty: list[int] = []
        self.spilled: list[Any] = []
        self.delivered = 0  # frames queued on lanes, ever
        self.sends = 0  # system calls made for them, ever

    # --- lanes ------------------------------------------------------------

    def open(self, fd: int, owner: Any) -> int:
        """A new lane for socket ``fd`` (starts SLOW: :meth:`resume` makes it written from here)."""
        if fd < 0:
            raise ValueError(f"not a file descriptor: {fd}")
        if self._free:
            index = self._free.pop()
            self._owners[index] = owner
        else:
            index = len(self._lanes)
            self._lanes.append(_Lane())
            self._owners.append(owner)
        lane = self._lanes[index]
        lane.fd = fd
        lane.state = SLOW
        lane.error = lane.frames_out = lane.bytes_out = 0
        return index

    def close(self, lane_id: int) -> tuple[int, int]:
        """Forget the lane (its pending frames are dropped); returns (frames, bytes) it wrote."""
        lane = self._lane(lane_id)
        self._drop(lane)
        lane.state = FREE
        lane.fd = -1
        lane.gen += 1
        self._owners[lane_id] = None
        self._free.append(lane_id)
        return lane.frames_out, lane.bytes_out

    def resume(self, lane_id: int) -> None:
        """Deliveries to the lane are written from here again; it must hold nothing."""
        lane = self._lane(lane_id)
        if lane.frames:
            raise ValueError("the lane still holds frames: take() them first")
        lane.state = FAST

    def take(self, lane_id: int) -> tuple[list[bytes], int, int]:
        """Hand the lane's unwritten frames to its owner, which writes from now on.

        Returns ``(frames, offset, error)``: the frames in order, how many bytes of the first one
        the socket already took, and the errno of a failed write (0 when it only was full).
        """
        lane = self._lane(lane_id)
        taken = (lane.frames, lane.head_offset, lane.error)
        lane.frames = []
        self._drop(lane)
        lane.state = SLOW
        return taken

    def sent(self, lane_id: int) -> tuple[int, int]:
        """(frames, bytes) written to the lane's socket from here."""
        lane = self._lane(lane_id)
        return lane.frames_out, lane.bytes_out

    def is_fast(self, lane_id: int) -> bool:
        return self._lane(lane_id).state == FAST

    def pop_spilled(self) -> list[Any]:
        """The owners whose lane spilled since the last call (each must :meth:`take` it)."""
        owners, self.spilled = self.spilled, []
        return owners

    def audience(self, lane_ids: Iterable[int], others: Iterable[Any] = ()) -> Audience:
        """The lanes ``lane_ids`` (open now) as one group, plus ``others`` delivered by the caller."""
        return Audience([(index, self._lanes[self._index(index)].gen) for index in lane_ids], others)

    # --- the fan-out --------------------------------------------------------

    def deliver(self, frame: bytes, group: Audience) -> Sequence[Any]:
        """Queue ``frame`` on every lane of ``group``; returns the owners of the lanes not written
        from here (SLOW or SPILLED), which the caller delivers to itself, in ``group``'s order."""
        if type(frame) is not bytes:
            raise TypeError(f"a frame is bytes, not {type(frame).__name__}")
        if type(group) is not Audience:
            raise TypeError(f"an Audience is needed, not {type(group).__name__}")
        lanes = self._lanes
        slow: list[Any] = []
        for index, gen in group.lanes:
            lane = lanes[index]
            if lane.gen != gen:
                continue  # closed since the group was built (its listener unsubscribed)
            if lane.state != FAST:
                slow.append(self._owners[index])
                continue
            lane.frames.append(frame)
            lane.pending += len(frame)
            self.delivered += 1
            if not lane.dirty:
                lane.dirty = True
                self._dirty.append(index)
            if len(lane.frames) >= self.cork_frames or lane.pending >= self.cork_bytes:
                self._send(index)
        return slow or ()

    def flush(self) -> None:
        """One send per lane holding frames."""
        dirty, self._dirty = self._dirty, []
        for index in dirty:
            lane = self._lanes[index]
            lane.dirty = False
            if lane.state == FAST and lane.frames:
                self._send(index)

    # --- internals ----------------------------------------------------------

    def _lane(self, lane_id: int) -> _Lane:
        lane = self._lanes[self._index(lane_id)]
        if lane.state == FREE:
            raise ValueError(f"lane {lane_id} is not open")
        return lane

    def _index(self, lane_id: int) -> int:
        if not 0 <= lane_id < len(self._lanes):
            raise ValueError(f"no lane {lane_id}")
        return lane_id

    def _send(self, index: int) -> None:
        """One non-blocking send of the lane's frames; what the socket did not take spills."""
        lane = self._lanes[index]
        frames = lane.frames
        self.sends += 1
        try:
            sent = os.writev(lane.fd, frames)
        except OSError as exc:
            if exc.errno not in _FULL:
                lane.error = exc.errno or errno.EIO
            sent = 0
        lane.bytes_out += sent
        lane.pending -= sent
        done, offset = whole_frames(frames, sent)
        lane.frames_out += done
        if done:
            del frames[:done]
        if frames:
            lane.head_offset = offset
            lane.state = SPILLED
            self.spilled.append(self._owners[index])

    @staticmethod
    def _drop(lane: _Lane) -> None:
        lane.frames = []
        lane.pending = lane.head_offset = lane.error = 0
