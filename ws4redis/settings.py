"""The ws4redis settings, read lazily from ``django.conf.settings``.

``from ws4redis import settings as private_settings`` followed by
``private_settings.WS4REDIS_EXPIRE`` works as in django-websocket-redis 0.6.0,
but every attribute is looked up in Django's settings at access time (module
``__getattr__``), so ``override_settings`` and settings changed after import
are honoured.

``validate_settings()`` checks every value and raises ``ImproperlyConfigured``
naming the setting and the bad value; ``ws4redis.apps`` runs it at start-up
and the servers run it again before they accept connections.
"""

from __future__ import annotations

import copy
import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings as django_settings
from django.core.exceptions import ImproperlyConfigured
from django.http.request import validate_host
from django.utils.http import is_same_domain
from django.utils.module_loading import import_string

from ws4redis import constants
from ws4redis.deflate import CompressionSettings
from ws4redis.history import HistorySettings
from ws4redis.redis_config import check_connection_settings

_SERVERS = "every server"
_EVENTED = "gevent server, uWSGI"


@dataclass(frozen=True)
class Setting:
    """One ``WS4REDIS_*`` setting as users read about it; the settings reference is built from these."""

    name: str
    default: Any
    kind: str  # what a valid value is, as the validation message says it
    read_by: str  # which parts of ws4redis read it
    doc: str


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "WEBSOCKET_URL", "/ws/",
        kind="a path starting and ending with `/`",
        read_by=f"{_SERVERS}, context processor",
        doc="URL prefix served as websockets; the rest of the path is the facility.",
    ),
    Setting(
        "WEBSOCKET_HOST", None,
        kind="a host name, or None",
        read_by="context processor",
        doc="Host put into `WEBSOCKET_URI`; `None` uses the request's own host.",
    ),
    Setting(
        "WS4REDIS_CONNECTION", {"host": "localhost", "port": 6379, "db": 0, "password": None},
        kind="a dict of redis-py options",
        read_by=f"{_SERVERS}, RedisPublisher",
        doc="redis-py options: `host`/`port`/`db`/`password`, `unix_socket_path`, `ssl` with `ssl_*`, or a "
        "`url` (`redis://`, `rediss://`, `unix://`); other keys go to redis-py as they are. "
        "`max_connections` and `pool_timeout` size the shared publishing pool. `sentinels` + "
        "`master_name` find the master through [Redis Sentinel](deployment.md#redis-sentinel); "
        "`cluster` (node URLs) names a [Redis Cluster](deployment.md#redis-cluster).",
    ),
    Setting(
        "WS4REDIS_EXPIRE", constants.DEFAULT_EXPIRE,
        kind="an integer >= 0 (seconds)",
        read_by=f"{_SERVERS}, RedisPublisher",
        doc="Seconds the last message of each channel is kept in Redis for clients that connect later; "
        "`0` keeps nothing.",
    ),
    Setting(
        "WS4REDIS_PREFIX", None,
        kind="a string without whitespace, or None",
        read_by=f"{_SERVERS}, RedisPublisher",
        doc="Prefix of every Redis key and channel, to share a Redis database with other services.",
    ),
    Setting(
        "WS4REDIS_SUBSCRIBER", "ws4redis.subscriber.RedisSubscriber",
        kind="a dotted path of a RedisSubscriber subclass",
        read_by=_SERVERS,
        doc="The class that decides a websocket's channels and publishes its messages.",
    ),
    Setting(
        "WS4REDIS_HEARTBEAT", None,
        kind="a non-empty string, or None",
        read_by=f"{_SERVERS}, context processor",
        doc="Magic message answered by the server and never published; when set the server also sends it "
        "to idle clients, and `ws4redis.js` uses it to detect dead connections.",
    ),
    Setting(
        "WS4REDIS_ALLOWED_CHANNELS", None,
        kind="a callable or dotted path, or None",
        read_by=_SERVERS,
        doc="`f(request, channels)` returning the channels a websocket may use; raising `PermissionDenied` "
        "answers 403.",
    ),
    Setting(
        "WS4REDIS_PROCESS_REQUEST", None,
        kind="a callable or dotted path, or None",
        read_by=_SERVERS,
        doc="`f(request)` replacing the session/user lookup of the handshake.",
    ),
    Setting(
        "WS4REDIS_AUTHENTICATE", None,
        kind="a callable or dotted path, or None",
        read_by=_SERVERS,
        doc="`f(request)` returning the user of credentials other than the session cookie (tokens), or "
        "`None` to leave it to the cookie; raising `AuthenticationFailed` answers 401 "
        "([Authentication](security.md#authentication-without-the-session-cookie)).",
    ),
    Setting(
        "WS4REDIS_TOKEN_MAX_AGE", constants.DEFAULT_TOKEN_MAX_AGE,
        kind="a number of seconds > 0",
        read_by="ws4redis.tokens",
        doc="Seconds a token of `ws4redis.tokens` is accepted after it was issued.",
    ),
    Setting(
        "WS4REDIS_MAX_MESSAGE_SIZE", constants.DEFAULT_MAX_MESSAGE_SIZE,
        kind="an integer >= 1 (bytes)",
        read_by=_SERVERS,
        doc="Largest message accepted from a client, after reassembling fragments and inflating; larger: "
        "close 1009.",
    ),
    Setting(
        "WS4REDIS_MAX_FRAGMENTS", None,
        kind="an integer >= 1, or None",
        read_by=_SERVERS,
        doc="Fragments allowed per message; `None` means `max(1024, WS4REDIS_MAX_MESSAGE_SIZE // 256)`; "
        "more: close 1009.",
    ),
    Setting(
        "WS4REDIS_COMPRESSION", None,
        kind="True, or a dict of options, or None",
        read_by=_SERVERS,
        doc="permessage-deflate (RFC 7692) for clients that offer it: `True` or a dict of `threshold` "
        f"({constants.DEFAULT_COMPRESSION_THRESHOLD}, bytes under which messages go uncompressed), "
        f"`level` ({constants.DEFAULT_COMPRESSION_LEVEL}), `mem_level` "
        f"({constants.DEFAULT_COMPRESSION_MEM_LEVEL}), `client_no_context_takeover` (`True`) "
        "([Compression](compression.md)).",
    ),
    Setting(
        "WS4REDIS_HISTORY", None,
        kind="True, or a dict of options, or None",
        read_by=f"{_SERVERS}, RedisPublisher",
        doc="Per-channel history in Redis Streams: `True` or a dict of `size` "
        f"({constants.DEFAULT_HISTORY_SIZE}, messages kept), `ttl` ({constants.DEFAULT_HISTORY_TTL}, "
        "seconds a quiet channel keeps them) and "
        "`facilities` (only these, each with its own overrides) ([History](history.md)).",
    ),
    Setting(
        "WS4REDIS_ALLOWED_ORIGINS", None,
        kind="`'*'`, a list of host patterns or origins, or None",
        read_by=_SERVERS,
        doc="Origins allowed besides Django's CSRF rule (the request's own origin and "
        "`CSRF_TRUSTED_ORIGINS`): `'*'`, full origins (`'https://example.com'`), or host patterns as in "
        "`ALLOWED_HOSTS` (any scheme and port of those hosts). Other origins get 403 "
        "([Security](security.md#origins)).",
    ),
    Setting(
        "WS4REDIS_PING_INTERVAL", constants.DEFAULT_PING_INTERVAL,
        kind="a number of seconds > 0, or None",
        read_by=_SERVERS,
        doc="Seconds between protocol pings to a silent client; `None`: no pings.",
    ),
    Setting(
        "WS4REDIS_PING_TIMEOUT", constants.DEFAULT_PING_TIMEOUT,
        kind="a number of seconds > 0",
        read_by=_SERVERS,
        doc="Seconds to wait for the pong (and for the peer's close) before the client counts as gone "
        "(close 1011).",
    ),
    Setting(
        "WS4REDIS_SEND_QUEUE_BYTES", constants.DEFAULT_SEND_QUEUE_BYTES,
        kind="an integer >= 1 (bytes)",
        read_by=_EVENTED,
        doc="Bytes queued for one client before it is closed as too slow (1008); runserver writes blocking.",
    ),
    Setting(
        "WS4REDIS_SEND_QUEUE_MESSAGES", constants.DEFAULT_SEND_QUEUE_MESSAGES,
        kind="an integer >= 1",
        read_by=_EVENTED,
        doc="Messages queued for one client before it is closed as too slow (1008).",
    ),
    Setting(
        "WS4REDIS_HANDSHAKE_TIMEOUT", constants.DEFAULT_HANDSHAKE_TIMEOUT,
        kind="a number of seconds > 0",
        read_by="gevent server",
        doc="Seconds a client may take to send a whole request head (408 after); uWSGI reads "
        "heads itself.",
    ),
    Setting(
        "WS4REDIS_SHUTDOWN_TIMEOUT", constants.DEFAULT_SHUTDOWN_TIMEOUT,
        kind="a number of seconds >= 0",
        read_by=_EVENTED,
        doc="Seconds open websockets get to close (1001) when the server stops, reloads or recycles a "
        "worker.",
    ),
    Setting(
        "WS4REDIS_MONITORING", None,
        kind="True, or a dict of endpoints to paths, or None",
        read_by=_EVENTED,
        doc="`True` serves `/metrics`, `/healthz` and `/readyz`; a dict moves "
        "(`{'metrics': '/ws/_metrics'}`) or leaves out (`None`) some ([Monitoring](monitoring.md)).",
    ),
)

DEFAULTS: dict[str, Any] = {setting.name: setting.default for setting in SETTINGS}

__all__ = [*DEFAULTS, "SETTINGS", "Setting", "allowed_origins", "compression", "heartbeat_bytes", "history",
           "max_fragments", "monitoring_paths", "origin_allowed", "resolve_callable", "subscriber_class",
           "validate_settings"]


def __getattr__(name: str) -> Any:
    """Look ``name`` up in Django's settings at every access, falling back to its default."""
    if name in DEFAULTS:
        # A copy, so that callers mutating a default dict cannot change it for everyone.
        return getattr(django_settings, name, copy.copy(DEFAULTS[name]))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(DEFAULTS))


def get(name: str) -> Any:
    """The current value of the ws4redis setting ``name``."""
    return __getattr__(name)


# Derived values ---------------------------------------------------------------------------------


def heartbeat_bytes() -> bytes | None:
    """WS4REDIS_HEARTBEAT as it travels in frames and through Redis (None: no heartbeat)."""
    heartbeat = get("WS4REDIS_HEARTBEAT")
    return heartbeat.encode() if heartbeat else None


def _read(name: str, parse: Callable[[Any], Any]) -> Any:
    """``parse`` of the setting ``name``; its ValueError becomes ImproperlyConfigured naming it."""
    try:
        return parse(get(name))
    except (ValueError, TypeError) as exc:
        separator = "" if str(exc).startswith("[") else " "
        raise ImproperlyConfigured(f"{name}{separator}{exc}") from None


def compression() -> CompressionSettings | None:
    """WS4REDIS_COMPRESSION as ws4redis.deflate reads it; None when off."""
    return _read("WS4REDIS_COMPRESSION", CompressionSettings.from_setting)


def history() -> HistorySettings | None:
    """WS4REDIS_HISTORY as ws4redis.history reads it; None when off."""
    return _read("WS4REDIS_HISTORY", HistorySettings.from_setting)


def max_fragments() -> int:
    """WS4REDIS_MAX_FRAGMENTS, or the bound derived from WS4REDIS_MAX_MESSAGE_SIZE."""
    value = get("WS4REDIS_MAX_FRAGMENTS")
    if value is None:
        return constants.default_max_fragments(get("WS4REDIS_MAX_MESSAGE_SIZE"))
    return value


def _monitoring_endpoints(value: Any) -> dict[str, str]:
    """``{endpoint: path}`` of a WS4REDIS_MONITORING value: the defaults, moved or left out by a dict."""
    if not value:
        return {}
    chosen = {**constants.MONITORING_PATHS, **(value if isinstance(value, dict) else {})}
    return {endpoint: path for endpoint, path in chosen.items() if path is not None}


def monitoring_paths() -> dict[str, str]:
    """WS4REDIS_MONITORING as ``{path: endpoint}`` (endpoints: ``metrics``, ``healthz``, ``readyz``)."""
    return {path: endpoint for endpoint, path in _monitoring_endpoints(get("WS4REDIS_MONITORING")).items()}


def allowed_origins() -> tuple[str, ...] | None:
    """The origin patterns of WS4REDIS_ALLOWED_ORIGINS; ``None`` for ``'*'`` (every origin).

    Unset (the default) gives ``()``: only Django's own CSRF rule applies (see
    :func:`origin_allowed`).
    """
    value = get("WS4REDIS_ALLOWED_ORIGINS")
    if value is None:
        return ()
    if value == "*" or "*" in value:
        return None
    return tuple(pattern.lower().rstrip("/") for pattern in value)


def origin_allowed(origin: str | None, own_origin: str | None = None) -> bool:
    """Whether a handshake carrying this ``Origin`` header may proceed.

    Django's CSRF origin rule decides by default, so a page that may POST to
    the site may open its websockets and no other: the request's own origin
    (``own_origin``, ``scheme://host[:port]`` as the request names it), and
    the origins of CSRF_TRUSTED_ORIGINS (exact, or ``https://*.example.com``
    for subdomains). Another port or scheme of the same host is another
    origin: a page there gets the user's cookies but not their channels.
    WS4REDIS_ALLOWED_ORIGINS adds origins: ``'*'`` (every one), full origins
    (matched exactly), or host patterns like ALLOWED_HOSTS entries (any scheme
    and port of those hosts, 0.6.0's looser rule, as an explicit opt-in).

    A missing ``Origin`` (non-browser clients do not send one) is allowed: the
    check exists to stop foreign web pages from riding on a user's cookies, and
    only browsers do that.
    """
    if origin is None:
        return True
    origin = origin.strip().lower()
    if own_origin is not None and origin == own_origin.lower():
        return True
    try:
        parsed = urlsplit(origin)
    except ValueError:
        return False
    if not parsed.scheme or not parsed.hostname:
        return False
    if _csrf_trusted(origin, parsed.scheme, parsed.netloc):
        return True
    patterns = allowed_origins()
    if patterns is None or origin in patterns:
        return True
    host = f"[{parsed.hostname}]" if ":" in parsed.hostname else parsed.hostname  # IPv6 as in ALLOWED_HOSTS
    return validate_host(host, [pattern for pattern in patterns if "://" not in pattern])


def _csrf_trusted(origin: str, scheme: str, netloc: str) -> bool:
    """CSRF_TRUSTED_ORIGINS as Django's CsrfViewMiddleware reads it."""
    for trusted in getattr(django_settings, "CSRF_TRUSTED_ORIGINS", []):
        trusted = trusted.lower().rstrip("/")
        if "*" not in trusted:
            if origin == trusted:
                return True
            continue
        parts = urlsplit(trusted)
        if parts.scheme == scheme and is_same_domain(netloc, parts.netloc.lstrip("*")):
            return True
    return False


def resolve_callable(name: str) -> Callable[..., Any] | None:
    """The callable configured by setting ``name`` (a callable or a dotted path), or None."""
    configured = get(name)
    if configured is None:
        return None
    value = _import(name, configured) if isinstance(configured, str) else configured
    if not callable(value):
        found = f" (it names {value!r})" if value is not configured else ""
        raise ImproperlyConfigured(
            f"{name} must be a callable or the dotted path of one, got {configured!r}{found}"
        )
    return value


def subscriber_class() -> type:
    """The class named by WS4REDIS_SUBSCRIBER."""
    value = get("WS4REDIS_SUBSCRIBER")
    cls = _import("WS4REDIS_SUBSCRIBER", value) if isinstance(value, str) else value
    if not isinstance(cls, type):
        raise ImproperlyConfigured(f"WS4REDIS_SUBSCRIBER must name a class, got {value!r}")
    for attribute in ("subscription_channels", "publish_channels", "set_pubsub_channels", "release"):
        if not hasattr(cls, attribute):
            raise ImproperlyConfigured(
                f"WS4REDIS_SUBSCRIBER {value!r} lacks {attribute!r}; "
                "subclass ws4redis.subscriber.RedisSubscriber"
            )
    return cls


def _import(name: str, dotted_path: str) -> Any:
    try:
        return import_string(dotted_path)
    except ImportError as exc:
        raise ImproperlyConfigured(f"{name} = {dotted_path!r} cannot be imported: {exc}") from exc


# Validation -------------------------------------------------------------------------------------


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _fail(name: str, value: Any, expected: str) -> ImproperlyConfigured:
    return ImproperlyConfigured(f"{name} must be {expected}, got {value!r}")


def _check_int(name: str, minimum: int, allow_none: bool = False) -> None:
    value = get(name)
    if value is None and allow_none:
        return
    if not _is_int(value) or value < minimum:
        expected = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise _fail(name, value, expected)


def _check_seconds(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
    value = get(name)
    if value is None and allow_none:
        return
    if not _is_number(value) or value < 0 or (value == 0 and not allow_zero) or value != value:
        expected = ("a number of seconds >= 0" if allow_zero else "a number of seconds > 0") + (
            " or None" if allow_none else ""
        )
        raise _fail(name, value, expected)


def _check_optional_str(name: str) -> None:
    value = get(name)
    if value is not None and (not isinstance(value, str) or not value):
        raise _fail(name, value, "a non-empty string or None")


def _check_callable(name: str) -> None:
    value = get(name)
    if value is not None and not isinstance(value, str) and not callable(value):
        raise _fail(name, value, "a callable, the dotted path of one, or None")
    resolve_callable(name)


def _check_websocket_url() -> None:
    value = get("WEBSOCKET_URL")
    if not isinstance(value, str) or not value.startswith("/") or not value.endswith("/"):
        raise _fail("WEBSOCKET_URL", value, "a path starting and ending with '/', such as '/ws/'")


def _check_prefix() -> None:
    value = get("WS4REDIS_PREFIX")
    if value is not None and (not isinstance(value, str) or any(ch.isspace() for ch in value)):
        raise _fail("WS4REDIS_PREFIX", value, "a string without whitespace or None")


def _check_allowed_origins() -> None:
    value = get("WS4REDIS_ALLOWED_ORIGINS")
    if value is None or value == "*":
        return
    if not isinstance(value, (list, tuple)) or not all(isinstance(item, str) and item for item in value):
        raise _fail("WS4REDIS_ALLOWED_ORIGINS", value, "'*', None or a list of non-empty strings")
    for item in value:
        if "://" in item:
            parts = urlsplit(item)
            if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/"):
                raise _fail(
                    "WS4REDIS_ALLOWED_ORIGINS", value,
                    f"a list of host patterns or origins like 'https://example.com' ({item!r} is neither)",
                )


def _check_monitoring() -> None:
    value = get("WS4REDIS_MONITORING")
    if value is None or isinstance(value, bool):
        return
    expected = (f"None, True or a dict of {sorted(constants.MONITORING_PATHS)} to paths "
                "starting with '/' (or None to leave one out)")
    if not isinstance(value, dict) or not set(value) <= set(constants.MONITORING_PATHS):
        raise _fail("WS4REDIS_MONITORING", value, expected)
    paths = list(_monitoring_endpoints(value).values())
    if not all(isinstance(path, str) and path.startswith("/") and "?" not in path for path in paths):
        raise _fail("WS4REDIS_MONITORING", value, expected)
    if len(paths) != len(set(paths)):
        raise _fail("WS4REDIS_MONITORING", value, "a dict giving each endpoint its own path")


def _check_connection() -> None:
    check_connection_settings(get("WS4REDIS_CONNECTION"))


def validate_settings() -> None:
    """Check every ws4redis setting; raise ImproperlyConfigured naming the first bad one."""
    _check_websocket_url()
    _check_optional_str("WEBSOCKET_HOST")
    _check_connection()
    _check_int("WS4REDIS_EXPIRE", 0)
    _check_prefix()
    subscriber_class()
    _check_optional_str("WS4REDIS_HEARTBEAT")
    _check_callable("WS4REDIS_ALLOWED_CHANNELS")
    _check_callable("WS4REDIS_PROCESS_REQUEST")
    _check_callable("WS4REDIS_AUTHENTICATE")
    _check_seconds("WS4REDIS_TOKEN_MAX_AGE")
    _check_int("WS4REDIS_MAX_MESSAGE_SIZE", 1)
    _check_int("WS4REDIS_MAX_FRAGMENTS", 1, allow_none=True)
    _check_allowed_origins()
    _check_seconds("WS4REDIS_PING_INTERVAL", allow_none=True)
    _check_seconds("WS4REDIS_PING_TIMEOUT")
    _check_int("WS4REDIS_SEND_QUEUE_BYTES", 1)
    _check_int("WS4REDIS_SEND_QUEUE_MESSAGES", 1)
    _check_seconds("WS4REDIS_HANDSHAKE_TIMEOUT")
    _check_seconds("WS4REDIS_SHUTDOWN_TIMEOUT", allow_zero=True)
    _check_monitoring()
    compression()
    history()
