"""From a WSGI environ to what a websocket may do: handshake, request, session, user, channels.

Every websocket server of ws4redis (the development server, uWSGI, gevent)
runs the same steps before its own loop starts, so they live here, apart
from any loop:

1. :func:`check_handshake`: the upgrade request is valid and the page that
   opens it comes from an allowed origin (HandshakeError 400/403/405/426
   otherwise, with a readable message).
2. :func:`negotiate`: the request is built as Django views see it (session
   from the session cookie through SESSION_ENGINE, a lazy ``request.user``,
   or whatever WS4REDIS_PROCESS_REQUEST makes of it), the channels asked for
   in the query string (``?subscribe-broadcast&publish-user&echo``) are read
   and passed through WS4REDIS_ALLOWED_CHANNELS, which may raise
   PermissionDenied (403).
3. The server subscribes (``set_pubsub_channels``), which may look the user
   up, then calls :func:`release_database_connections`: a websocket lives
   for hours and must not hold a database connection all that time.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import DisallowedHost
from django.core.handlers.wsgi import WSGIRequest
from django.db import connections
from django.utils.functional import SimpleLazyObject

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.exceptions import HandshakeError
from ws4redis.handshake import Handshake, headers_from_environ, validate_upgrade
from ws4redis.history import parse_since
from ws4redis.models import store_groups_in_session

logger = logging.getLogger(__name__)

__all__ = [
    "Negotiation",
    "attach_session_and_user",
    "build_request",
    "check_handshake",
    "negotiate",
    "own_origin",
    "release_database_connections",
    "requested_channels",
    "requested_history",
]


@dataclass
class Negotiation:
    """What one websocket was granted: the request it came with and its channels."""

    request: WSGIRequest
    channels: list[str]
    echo: bool
    subprotocol: str | None
    history: bool = False  # the client asked for history envelopes (``history`` in the query)
    since: dict[str, str] | None = None  # the offsets it resumes from (``since``), per channel label


def check_handshake(environ: Mapping[str, Any]) -> Handshake:
    """Validate the upgrade request and its Origin; HandshakeError tells the client why not."""
    handshake = validate_upgrade(str(environ.get("REQUEST_METHOD", "")), headers_from_environ(environ))
    origin = environ.get("HTTP_ORIGIN")
    if origin is not None and not private_settings.origin_allowed(origin, own_origin(environ)):
        raise HandshakeError(
            f"Forbidden: origin {origin!r} may not open websockets here (Django's CSRF origin rule: "
            "this site's own origin or CSRF_TRUSTED_ORIGINS; see also WS4REDIS_ALLOWED_ORIGINS)", 403
        )
    return handshake


def own_origin(environ: Mapping[str, Any]) -> str | None:
    """``scheme://host[:port]`` of the request, as Django's CSRF check forms it; None for a bad Host."""
    request = WSGIRequest({**environ, "wsgi.input": io.BytesIO()})  # the body is never read here
    try:
        return f"{'https' if request.is_secure() else 'http'}://{request.get_host()}"
    except DisallowedHost:
        return None


def attach_session_and_user(request: WSGIRequest) -> None:
    """Give ``request`` the session and user that Django's middleware would give it.

    The session is loaded from the session cookie through SESSION_ENGINE
    (without a cookie it is an empty session whose key is None); the user is
    looked up lazily, so websockets that only need broadcast channels never
    touch the database. Without django.contrib.sessions (or .auth) installed,
    ``request.session`` (or ``request.user``) is None, as in 0.6.0.

    Session engines turn a store that fails into an empty session (Django's
    cache engine does, django-redis-sessions too): the websocket of a logged-in
    user would then be accepted as anonymous, without its user and group
    channels, while the page shows it connected. So a cookie whose session
    loads empty is asked about once more with ``exists()``, which does raise;
    a store that fails answers 503 (:func:`_check_session_store`), and the
    client retries until its channels really work.
    """
    request.session = None
    request.user = None
    if not apps.is_installed("django.contrib.sessions"):
        return
    engine = import_module(settings.SESSION_ENGINE)
    key = request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    request.session = engine.SessionStore(key)
    if key:
        _check_session_store(request.session, key)
    if apps.is_installed("django.contrib.auth"):
        from django.contrib.auth import get_user

        request.user = SimpleLazyObject(lambda: get_user(request))


def _check_session_store(session: Any, key: str) -> None:
    """HandshakeError 503 when the store behind ``session`` failed instead of answering."""
    try:
        if not dict(session.items()):
            session.exists(key)  # an unknown or expired key: False, a failing store: an exception
    except Exception as exc:  # any store (cache, Redis, database) fails its own way: all mean "retry"
        logger.warning("ws4redis: the session store failed while reading a websocket's session: %r", exc)
        raise HandshakeError("Service Unavailable: the session store is unreachable", 503) from exc


def build_request(environ: dict[str, Any]) -> WSGIRequest:
    """The Django request of a websocket handshake, processed by WS4REDIS_PROCESS_REQUEST if set.

    As in 0.6.0, a WS4REDIS_PROCESS_REQUEST callable replaces the default
    session and user lookup (it may call :func:`attach_session_and_user`).
    Then WS4REDIS_AUTHENTICATE, when set, may name the user from other
    credentials (a token in a header, the query string or a subprotocol):
    the user it returns replaces the session's, None leaves it, and
    ``AuthenticationFailed`` or ``PermissionDenied`` refuse the websocket
    (401, 403).
    """
    request = WSGIRequest(environ)
    process_request = private_settings.resolve_callable("WS4REDIS_PROCESS_REQUEST")
    if process_request is not None:
        process_request(request)
    else:
        attach_session_and_user(request)
    authenticate = private_settings.resolve_callable("WS4REDIS_AUTHENTICATE")
    if authenticate is not None:
        user = authenticate(request)
        if user is not None:
            _log_in(request, user)
    return request


def _log_in(request: WSGIRequest, user: Any) -> None:
    """Make ``user`` the request's user as a login would, in a session of its own that is never saved.

    The group channels come from the group names a login keeps in the session (``ws4redis.models``);
    a cookie's session, of whoever it was, must not lend the websocket its session channel.
    """
    request.user = user
    if not apps.is_installed("django.contrib.sessions"):
        return
    request.session = import_module(settings.SESSION_ENGINE).SessionStore()
    store_groups_in_session(sender=type(user), user=user, request=request)


def requested_channels(request: WSGIRequest, possible: list[str]) -> tuple[list[str], bool]:
    """The channel names of ``possible`` found in the query string, and whether ``echo`` was asked for.

    Parameters are matched case-insensitively and ignoring surrounding
    blanks; unknown ones are ignored, as in 0.6.0.
    """
    channels: list[str] = []
    echo = False
    for parameter in request.GET:
        name = parameter.strip().lower()
        if name in possible and name not in channels:
            channels.append(name)
        elif name == constants.ECHO_PARAMETER:
            echo = True
    return channels, echo


def requested_history(request: WSGIRequest) -> tuple[bool, dict[str, str] | None]:
    """Whether ``history`` was asked for, and the offsets of ``since``; HandshakeError 400 for a bad one."""
    asked = False
    since = None
    for parameter, values in request.GET.lists():
        name = parameter.strip().lower()
        if name == constants.HISTORY_PARAMETER:
            asked = True
        elif name == constants.SINCE_PARAMETER:
            try:
                since = parse_since(values[-1])
            except ValueError as exc:
                raise HandshakeError(f"Bad Request: {exc}", 400) from None
    if since is not None and not asked:
        raise HandshakeError(f"Bad Request: '{constants.SINCE_PARAMETER}' needs "
                             f"'{constants.HISTORY_PARAMETER}' (history envelopes) in the query", 400)
    return asked, since


def negotiate(environ: dict[str, Any], handshake: Handshake, subscriber_class: type) -> Negotiation:
    """Build the request and settle its channels; PermissionDenied from WS4REDIS_ALLOWED_CHANNELS passes.

    The first subprotocol the client offered is the one agreed on (0.6.0
    answered with the first one too).
    """
    request = build_request(environ)
    possible = list(subscriber_class.subscription_channels) + list(subscriber_class.publish_channels)
    channels, echo = requested_channels(request, possible)
    allowed_channels = private_settings.resolve_callable("WS4REDIS_ALLOWED_CHANNELS")
    if allowed_channels is not None:
        channels = list(allowed_channels(request, channels))
    subprotocol = handshake.subprotocols[0] if handshake.subprotocols else None
    history, since = requested_history(request)
    return Negotiation(request=request, channels=channels, echo=echo, subprotocol=subprotocol,
                       history=history, since=since)


def release_database_connections() -> None:
    """Close this thread's (or greenlet's) database connections once the setup is done."""
    connections.close_all()
