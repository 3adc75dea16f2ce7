# cython: language_level=3
"""The fan-out loop in C, compiled twin of ws4redis.server.lanes.

A published message is framed once; delivering it to the thousand sockets of
a channel is then, per socket, a pointer and a length appended to that
socket's pending vector and one reference count, with no Python call or
object made. At the end of the hub's batch (or when a socket's vector reaches
the cork size) each socket gets one non-blocking ``sendmsg``: a burst of
messages to one socket costs one system call, and the system calls of a flush
run with the GIL released. A socket that cannot take everything "spills": its
unwritten frames go back to its Python owner, which queues them and watches the
socket; until it resumes, its deliveries go through the owner's own rules.
Same API, same results as the pure twin (tests/test_fanout_parity.py).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memmove, memset

from ws4redis import constants


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void *iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec *iov, int iovcnt)


cdef extern from "<sys/socket.h>" nogil:
    struct msghdr:
        void *msg_name
        unsigned int msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags
    ssize_t sendmsg(int fd, const msghdr *msg, int flags)
    int MSG_DONTWAIT
    int MSG_NOSIGNAL


cdef extern from "<errno.h>":
    int ENOTSOCK
    int EWOULDBLOCK


cdef enum:
    FREE = 0      # no socket
    SLOW = 1      # the owner writes: deliveries are handed to it
    FAST = 2      # written from here
    SPILLED = 3   # the socket did not take everything: the rest waits for take()

cdef enum:
    FIRST_CAPACITY = 4   # pending frames a lane has room for before it grows
    KEPT_CAPACITY = 64   # a lane that grew past this (a burst) shrinks back after writing


cdef struct Lane:
    int fd
    int state
    int dirty            # in the list of lanes to flush
    int error            # errno of a failed write (SPILLED), 0 otherwise
    unsigned int gen     # bumped at close: an audience built before no longer reaches the lane
    Py_ssize_t count     # pending frames
    Py_ssize_t capacity
    size_t pending       # bytes of the pending frames not yet written
    size_t head_offset   # bytes of the first pending frame already written (SPILLED only)
    iovec *iov
    PyObject **frames    # one strong reference per pending frame
    unsigned long long frames_out
    unsigned long long bytes_out
    ssize_t result       # of the last send, between the GIL-free loop of flush() and its bookkeeping
    int result_errno


cdef ssize_t send_lane(Lane *lane) noexcept nogil:
    """One non-blocking send of everything pending; the result, or -1 with errno set."""
    cdef msghdr message
    cdef ssize_t sent
    memset(&message, 0, sizeof(message))
    message.msg_iov = lane.iov
    message.msg_iovlen = <size_t>lane.count
    while True:
        sent = sendmsg(lane.fd, &message, MSG_DONTWAIT | MSG_NOSIGNAL)
        if sent < 0 and errno == ENOTSOCK:
            sent = writev(lane.fd, lane.iov, <int>lane.count)  # a pipe, say: blocking state is the fd's
        if sent >= 0 or errno != EINTR:
            return sent


cdef class Audience:
    """The lanes of one group of a channel's listeners, as captured when the group was built."""

    cdef Py_ssize_t size
    cdef int *ids
    cdef unsigned int *gens
    cdef readonly tuple others  # listeners with no lane: the hub delivers to them itself

    @property
    def lanes(self):
        """(lane number, its generation when the group was built) of each member."""
        return tuple((self.ids[k], self.gens[k]) for k in range(self.size))

    def __cinit__(self):
        self.size = 0
        self.ids = NULL
        self.gens = NULL

    def __dealloc__(self):
        free(self.ids)
        free(self.gens)

    def __len__(self):
        return self.size + len(self.others)


cdef class SendLanes:
    """The sockets of one process that the fan-out writes directly (see the module docstring).

    ``cork_bytes``/``cork_frames``: a lane holding this much is written at once, before the flush.
    """

    cdef Lane *lanes
    cdef Py_ssize_t allocated   # entries of lanes (and of dirty)
    cdef Py_ssize_t used        # lanes ever handed out
    cdef int *dirty
    cdef Py_ssize_t ndirty
    cdef list owners
    cdef list free_ids
    cdef readonly list spilled  # owners whose lane spilled, until pop_spilled()
    cdef readonly Py_ssize_t cork_bytes
    cdef readonly Py_ssize_t cork_frames
    cdef readonly unsigned long long delivered  # frames queued on lanes, ever
    cdef readonly unsigned long long sends      # system calls made for them, ever

    def __cinit__(self):
        self.lanes = NULL
        self.dirty = NULL
        self.allocated = 0
        self.used = 0
        self.ndirty = 0
        self.delivered = 0
        self.sends = 0

    def __init__(self, Py_ssize_t cork_bytes=constants.LANE_CORK_BYTES,
                 Py_ssize_t cork_frames=constants.LANE_CORK_FRAMES):
        if cork_bytes < 1 or not 1 <= cork_frames <= constants.LANE_MAX_FRAMES:
            raise ValueError(f"cork sizes out of range: {cork_bytes} bytes, {cork_frames} frames "
                             f"(at most {constants.LANE_MAX_FRAMES})")
        self.cork_bytes = cork_bytes
        self.cork_frames = cork_frames
        self.owners = []
        self.free_ids = []
        self.spilled = []

    def __dealloc__(self):
        cdef Py_ssize_t i
        if self.lanes != NULL:
            for i in range(self.used):
                self._drop(&self.lanes[i])
                free(self.lanes[i].iov)
                free(self.lanes[i].frames)
        free(self.lanes)
        free(self.dirty)

    # --- lanes ------------------------------------------------------------

    def open(self, int fd, object owner):
        """A new lane for socket ``fd`` (starts SLOW: :meth:`resume` makes it written from here)."""
        cdef Py_ssize_t i
        cdef Lane *lane
        if fd < 0:
            raise ValueError(f"not a file descriptor: {fd}")
        if self.free_ids:
            i = self.free_ids.pop()
            self.owners[i] = owner
        else:
            if self.used == self.allocated:
                self._grow()
            i = self.used
            self.used += 1
            memset(&self.lanes[i], 0, sizeof(Lane))
            self.owners.append(owner)
        lane = &self.lanes[i]
        lane.fd = fd
        lane.state = SLOW
        lane.error = 0
        lane.frames_out = 0
        lane.bytes_out = 0
        return i

    def close(self, Py_ssize_t lane_id):
        """Forget the lane (its pending frames are dropped); returns (frames, bytes) it wrote."""
        cdef Lane *lane = self._lane(lane_id)
        self._drop(lane)
        lane.state = FREE
        lane.fd = -1
        lane.gen += 1
        self.owners[lane_id] = None
        self.free_ids.append(lane_id)
        return lane.frames_out, lane.bytes_out

    def resume(self, Py_ssize_t lane_id):
        """Deliveries to the lane are written from here again; it must hold nothing."""
        cdef Lane *lane = self._lane(lane_id)
        if lane.count:
            raise ValueError("the lane still holds frames: take() them first")
        lane.state = FAST

    def take(self, Py_ssize_t lane_id):
        """Hand the lane's unwritten frames to its owner, which writes from now on.

        Returns ``(frames, offset, error)``: the frames in order, how many bytes of the first one
        the socket already took, and the errno of a failed write (0 when it only was full).
        """
        cdef Lane *lane = self._lane(lane_id)
        cdef Py_ssize_t k
        cdef list frames = [<object>lane.frames[k] for k in range(lane.count)]
        cdef size_t offset = lane.head_offset
        cdef int error = lane.error
        self._drop(lane)
        lane.state = SLOW
        return frames, offset, error

    def sent(self, Py_ssize_t lane_id):
        """(frames, bytes) written to the lane's socket from here."""
        cdef Lane *lane = self._lane(lane_id)
        return lane.frames_out, lane.bytes_out

    def is_fast(self, Py_ssize_t lane_id):
        return self._lane(lane_id).state == FAST

    def pop_spilled(self):
        """The owners whose lane spilled since the last call (each must :meth:`take` it)."""
        owners, self.spilled = self.spilled, []
        return owners

    def audience(self, lane_ids, others=()):
        """The lanes ``lane_ids`` (open now) as one group, plus ``others`` delivered by the caller."""
        cdef list ids = list(lane_ids)
        cdef Audience group = Audience.__new__(Audience)
        cdef Py_ssize_t k, n = len(ids)
        cdef Py_ssize_t i
        group.others = tuple(others)
        group.ids = <int *>malloc(max(n, 1) * sizeof(int))
        group.gens = <unsigned int *>malloc(max(n, 1) * sizeof(unsigned int))
        if group.ids == NULL or group.gens == NULL:
            raise MemoryError()
        for k in range(n):
            i = ids[k]
            group.ids[k] = <int>self._index(i)
            group.gens[k] = self.lanes[i].gen
        group.size = n
        return group

    # --- the fan-out --------------------------------------------------------

    def deliver(self, bytes frame not None, Audience group not None):
        """Queue ``frame`` on every lane of ``group``; returns the owners of the lanes not written
        from here (SLOW or SPILLED), which the caller delivers to itself, in ``group``'s order."""
        cdef Py_ssize_t k, i
        cdef Lane *lane
        cdef ssize_t sent
        cdef int error
        cdef list slow = None
        cdef char *data = PyBytes_AS_STRING(frame)
        cdef size_t size = <size_t>PyBytes_GET_SIZE(frame)
        cdef unsigned int *gens = group.gens
        cdef int *ids = group.ids
        for k in range(group.size):
            i = ids[k]
            lane = &self.lanes[i]
            if lane.gen != gens[k]:
                continue  # closed since the group was built (its listener unsubscribed)
            if lane.state != FAST:
                if slow is None:
                    slow = []
                slow.append(self.owners[i])
                continue
            if lane.count == lane.capacity:
                self._widen(lane)
            lane.iov[lane.count].iov_base = data
            lane.iov[lane.count].iov_len = size
            Py_INCREF(frame)
            lane.frames[lane.count] = <PyObject *>frame
            lane.count += 1
            lane.pending += size
            self.delivered += 1
            if not lane.dirty:
                lane.dirty = 1
                self.dirty[self.ndirty] = <int>i
                self.ndirty += 1
            if lane.count >= self.cork_frames or lane.pending >= <size_t>self.cork_bytes:
                sent = send_lane(lane)
                error = errno  # read after the send: C leaves the order of a call's arguments open
                self._settle(i, sent, error)
        return () if slow is None else slow

    def flush(self):
        """One send per lane holding frames, with the GIL released around the system calls."""
        cdef Py_ssize_t d, n = self.ndirty
        cdef Lane *lane
        cdef Lane *lanes = self.lanes
        cdef int *dirty = self.dirty
        if not n:
            return
        with nogil:
            for d in range(n):
                lane = &lanes[dirty[d]]
                if lane.state == FAST and lane.count:
                    lane.result = send_lane(lane)
                    lane.result_errno = errno
                else:
                    lane.result = -2  # nothing to send (taken, closed or written at the cork)
        self.ndirty = 0
        for d in range(n):
            lane = &lanes[dirty[d]]
            lane.dirty = 0
            if lane.result != -2:
                self._settle(dirty[d], lane.result, lane.result_errno)

    # --- internals ----------------------------------------------------------

    cdef Lane *_lane(self, Py_ssize_t lane_id) except NULL:
        cdef Lane *lane = &self.lanes[self._index(lane_id)]
        if lane.state == FREE:
            raise ValueError(f"lane {lane_id} is not open")
        return lane

    cdef Py_ssize_t _index(self, Py_ssize_t lane_id) except -1:
        if not 0 <= lane_id < self.used:
            raise ValueError(f"no lane {lane_id}")
        return lane_id

    cdef int _settle(self, Py_ssize_t i, ssize_t sent, int error) except -1:
        """Account for a send of lane ``i``: drop what went out, spill what did not."""
        cdef Lane *lane = &self.lanes[i]
        cdef Py_ssize_t done = 0
        cdef size_t rest
        self.sends += 1
        if sent < 0:
            if error != EAGAIN and error != EWOULDBLOCK:
                lane.error = error
            sent = 0
        lane.bytes_out += <unsigned long long>sent
        rest = <size_t>sent
        while done < lane.count and rest >= lane.iov[done].iov_len:
            rest -= lane.iov[done].iov_len
            Py_DECREF(<object>lane.frames[done])
            done += 1
        lane.frames_out += <unsigned long long>done
        lane.pending -= <size_t>sent
        if done:
            lane.count -= done
            memmove(lane.iov, lane.iov + done, lane.count * sizeof(iovec))
            memmove(lane.frames, lane.frames + done, lane.count * sizeof(PyObject *))
        if lane.count:
            # Kept whole, so that take() can give back the frames themselves; head_offset says
            # how much of the first the socket has.
            lane.head_offset = rest
            lane.state = SPILLED
            self.spilled.append(self.owners[i])
        elif lane.capacity > KEPT_CAPACITY:
            self._shrink(lane)
        return 0

    cdef void _drop(self, Lane *lane) noexcept:
        cdef Py_ssize_t k
        for k in range(lane.count):
            Py_DECREF(<object>lane.frames[k])
        lane.count = 0
        lane.pending = 0
        lane.head_offset = 0
        lane.error = 0

    cdef int _widen(self, Lane *lane) except -1:
        cdef Py_ssize_t capacity = lane.capacity * 2 if lane.capacity else FIRST_CAPACITY
        cdef iovec *iov = <iovec *>realloc(lane.iov, capacity * sizeof(iovec))
        if iov == NULL:
            raise MemoryError()
        lane.iov = iov
        cdef PyObject **frames = <PyObject **>realloc(lane.frames, capacity * sizeof(PyObject *))
        if frames == NULL:
            raise MemoryError()
        lane.frames = frames
        lane.capacity = capacity
        return 0

    cdef void _shrink(self, Lane *lane) noexcept:
        free(lane.iov)
        free(lane.frames)
        lane.iov = NULL
        lane.frames = NULL
        lane.capacity = 0

    cdef int _grow(self) except -1:
        cdef Py_ssize_t allocated = self.allocated * 2 if self.allocated else 64
        cdef Lane *lanes = <Lane *>realloc(self.lanes, allocated * sizeof(Lane))
        if lanes == NULL:
            raise MemoryError()
        self.lanes = lanes
        cdef int *dirty = <int *>realloc(self.dirty, allocated * sizeof(int))
        if dirty == NULL:
            raise MemoryError()
        self.dirty = dirty
        self.allocated = allocated
        return 0
