"""Protocol constants: the single place where opcodes, close codes and limits live.

The Cython modules in ``ext/`` read these values at import time instead of
restating them, so a change here reaches both implementations.
"""

from __future__ import annotations

# Opcodes (RFC 6455, section 5.2)
OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

DATA_OPCODES = frozenset({OP_CONTINUATION, OP_TEXT, OP_BINARY})
CONTROL_OPCODES = frozenset({OP_CLOSE, OP_PING, OP_PONG})

# Close codes (RFC 6455, section 7.4.1, and the IANA registry)
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_NO_STATUS = 1005  # never sent on the wire
CLOSE_ABNORMAL = 1006  # never sent on the wire
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_MANDATORY_EXTENSION = 1010
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013
CLOSE_BAD_GATEWAY = 1014
CLOSE_TLS_HANDSHAKE = 1015  # never sent on the wire

# Codes a peer may put in a close frame: the registered ones that are not
# reserved for local use, plus the ranges for libraries (3000-3999) and
# applications (4000-4999).
SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)
CLOSE_CODE_PRIVATE_MIN = 3000
CLOSE_CODE_PRIVATE_MAX = 4999


def is_valid_close_code(code: int) -> bool:
    """Whether ``code`` may appear in a close frame received from a peer."""
    return code in SENDABLE_CLOSE_CODES or CLOSE_CODE_PRIVATE_MIN <= code <= CLOSE_CODE_PRIVATE_MAX


# Frame header layout (RFC 6455, section 5.2): first byte FIN, RSV1-3 and the
# opcode; second byte the MASK bit and a 7-bit length, where 126 and 127 announce
# a 16-bit or a 64-bit extended length in network byte order.
FRAME_FIN = 0x80
FRAME_RSV1 = 0x40
FRAME_RSV2 = 0x20
FRAME_RSV3 = 0x10
FRAME_RSV_BITS = FRAME_RSV1 | FRAME_RSV2 | FRAME_RSV3
FRAME_OPCODE_BITS = 0x0F
FRAME_MASKED = 0x80
FRAME_LENGTH_BITS = 0x7F
FRAME_LENGTH_16 = 126
FRAME_LENGTH_64 = 127
MAX_LENGTH_16 = 0xFFFF  # longest payload the 16-bit extended length can announce
MAX_LENGTH_64 = (1 << 63) - 1  # the 64-bit form's most significant bit must be 0
KNOWN_OPCODES = DATA_OPCODES | CONTROL_OPCODES  # every other opcode is reserved

# Limits
MAX_CONTROL_PAYLOAD = 125
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20  # 1 MiB, as websockets, daphne and uWSGI
# permessage-deflate (WS4REDIS_COMPRESSION, ws4redis.deflate): messages shorter than this go out
# uncompressed (a deflate block costs more than it saves on a few bytes); zlib's level and memLevel.
DEFAULT_COMPRESSION_THRESHOLD = 128
DEFAULT_COMPRESSION_LEVEL = 6
DEFAULT_COMPRESSION_MEM_LEVEL = 8
# History (WS4REDIS_HISTORY, ws4redis.history): messages kept per channel, seconds a quiet channel
# keeps them; XADD trims with MAXLEN ~, which may keep up to a stream node (100 entries) more.
DEFAULT_HISTORY_SIZE = 100
DEFAULT_HISTORY_TTL = 300
HISTORY_TRIM_MARGIN = 100
HUB_REPLAY_LIMIT = 100_000  # entries a hub replays per channel after a reconnect to Redis, at most
MASK_KEY_LENGTH = 4  # RFC 6455, section 5.3
RECV_SIZE = 1 << 16  # bytes asked for per recv by the WebSocket adapter and the echo server


def default_max_fragments(max_message_size: int) -> int:
    """Fragments allowed per message: enough for any sane sender, bounded for floods."""
    return max(1024, max_message_size // 256)


# Handshake (RFC 6455, section 4)
WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
WEBSOCKET_VERSION = "13"
WEBSOCKET_KEY_BYTES = 16  # section 4.1: Sec-WebSocket-Key is a random 16-byte value, base64-encoded

# Query parameter of a websocket URL asking to receive one's own published messages back
# (the channel parameters, such as 'subscribe-broadcast', are named by the subscriber class).
ECHO_PARAMETER = "echo"
# Query parameters asking for messages in history envelopes, and for those missed since offsets.
HISTORY_PARAMETER = "history"
SINCE_PARAMETER = "since"
MAX_SINCE_LENGTH = 4096  # characters of the since parameter (one offset per channel)

# Limits of a raw HTTP request head (servers that parse HTTP themselves):
# beyond them the request is refused with 431 (or 414 for an endless request
# line) instead of being buffered.
MAX_REQUEST_HEAD_SIZE = 8192  # bytes, request line and headers included
MAX_REQUEST_HEADERS = 128


# Defaults of the server settings (ws4redis.settings reads them; see its docstrings)
DEFAULT_PING_INTERVAL = 20.0  # seconds between server pings; None in settings turns pings off
DEFAULT_PING_TIMEOUT = 20.0  # seconds to wait for the pong before the peer counts as gone
DEFAULT_SEND_QUEUE_BYTES = 1 << 20  # bytes queued for one slow client before it is dropped
DEFAULT_SEND_QUEUE_MESSAGES = 1000  # messages queued for one slow client before it is dropped
# The fan-out's send lanes (ws4redis.server.fanout): a socket's pending frames are written before the end of
# the batch once they reach either cork size; one send takes at most LANE_MAX_FRAMES (Linux's IOV_MAX).
LANE_CORK_BYTES = 16 * 1024
LANE_CORK_FRAMES = 256
LANE_MAX_FRAMES = 1024
DEFAULT_HANDSHAKE_TIMEOUT = 10.0  # seconds a client may take to send its upgrade request
DEFAULT_SHUTDOWN_TIMEOUT = 5.0  # seconds given to open websockets to close on shutdown
DEFAULT_EXPIRE = 3600  # seconds the last message of a channel stays in Redis
DEFAULT_REDIS_POOL_SIZE = 50  # publishing connections per process; callers wait when all are busy
DEFAULT_REDIS_POOL_TIMEOUT = 20.0  # seconds to wait for a free publishing connection


# Gevent server and its per-process pub/sub hub (ws4redis.gevent_server, ws4redis.hub)
# Seconds before the first attempt to reach Redis again, and the cap of the exponential backoff.
# Each delay is jittered down to half of itself. The cap is low on purpose: a publish that Redis
# accepts while the hub is still waiting to resubscribe is lost, so the hub is back within 0.2 s
# of Redis; an attempt on a Redis that is down costs one refused connection.
HUB_RECONNECT_MIN_DELAY = 0.02
HUB_RECONNECT_MAX_DELAY = 0.2
HUB_HEALTH_CHECK_INTERVAL = 15.0  # seconds between PINGs on the pub/sub connection; 2x silence = dead
HUB_SUBSCRIBE_TIMEOUT = 5.0  # seconds a new websocket waits for Redis to confirm its SUBSCRIBE
# Parsed bytes after which the hub's pub/sub parser drops them although unread bytes remain.
HUB_PARSER_COMPACT_AT = 256 * 1024
# Redis Cluster (ws4redis.shard_router): seconds the hub waits for a burst of moved channels
# before it re-reads the slot map, and the backoff while the map is unknown or a master is down.
CLUSTER_REFRESH_DEBOUNCE = 0.05
CLUSTER_REFRESH_MIN_DELAY = 0.1
CLUSTER_REFRESH_MAX_DELAY = 1.0
LEGACY_HEARTBEAT_INTERVAL = 4.0  # idle seconds between WS4REDIS_HEARTBEAT messages (0.6.0's select timeout)
# Bytes the gevent server reads from a websocket per wake-up. Smaller than RECV_SIZE on purpose:
# one server holds thousands of sockets, and a small read per wake-up keeps memory per connection low.
SERVER_READ_SIZE = 4096
SERVER_LISTEN_BACKLOG = 2048  # pending TCP connections the kernel queues for the server
WORKER_RESPAWN_DELAY = 1.0  # seconds before the supervisor replaces a worker that died
# The bodies of the 503 answers every server gives, and BrokerUnavailableMiddleware for Django views.
BROKER_UNREACHABLE_TEXT = "Service Unavailable: the message broker is unreachable"
SERVER_STOPPING_TEXT = "Service Unavailable: the server is stopping"
# Plain HTTP requests the gevent server serves on one kept-alive connection before it closes it.
MAX_REQUESTS_PER_CONNECTION = 100
SHUTDOWN_KILL_MARGIN = 0.5  # seconds of WS4REDIS_SHUTDOWN_TIMEOUT kept for dropping connections that hang
EXIT_CONFIG_ERROR = 3  # exit status of a server worker whose settings are wrong: not worth restarting

# Endpoints of WS4REDIS_MONITORING = True, and their paths.
MONITORING_PATHS = {"metrics": "/metrics", "healthz": "/healthz", "readyz": "/readyz"}
# Environment variable naming the directory where the workers of one server share metrics snapshots.
METRICS_DIR_ENVIRONMENT = "WS4REDIS_METRICS_DIR"
# Seconds a websocket token of ws4redis.tokens is accepted after it was issued.
DEFAULT_TOKEN_MAX_AGE = 300
# Query parameter carrying a websocket token of ws4redis.tokens (for clients that cannot set headers).
TOKEN_PARAMETER = "token"
# Seconds ws4redis waits for one sentinel's answer before asking the next one.
SENTINEL_SOCKET_TIMEOUT = 1.0
