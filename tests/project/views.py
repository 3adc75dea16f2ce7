"""Views and server hooks of the test project, used by the server integration tests.

``allowed_channels`` is configured as WS4REDIS_ALLOWED_CHANNELS (as a dotted
path in one test site, as the callable itself in another) and
``process_request`` as WS4REDIS_PROCESS_REQUEST.
"""

from __future__ import annotations

from types import SimpleNamespace

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse

from ws4redis.session import attach_session_and_user

FORBIDDEN_FACILITY = "forbidden"
READ_ONLY_FACILITY = "readonly"
HOOKED_USER_HEADER = "HTTP_X_TEST_USER"


def ping(request: HttpRequest) -> HttpResponse:
    """A plain Django view, to show that HTTP requests still reach Django."""
    return HttpResponse("pong", content_type="text/plain")


def publish(request: HttpRequest) -> HttpResponse:
    """Publish ``?message=`` to the broadcast facility ``?facility=``, as a project's view would."""
    from ws4redis.publisher import RedisPublisher

    publisher = RedisPublisher(facility=request.GET.get("facility", "news"), broadcast=True)
    receivers = publisher.publish_message(request.GET.get("message", ""))
    return HttpResponse(f"{receivers} receivers", content_type="text/plain")


def allowed_channels(request: HttpRequest, channels: list[str]) -> list[str]:
    """Refuse the facility 'forbidden' outright; on 'readonly' drop every publish channel."""
    facility = request.path_info.rstrip("/").rsplit("/", 1)[-1]
    if facility == FORBIDDEN_FACILITY:
        raise PermissionDenied("the facility 'forbidden' is closed to websockets")
    if facility == READ_ONLY_FACILITY:
        return [channel for channel in channels if channel.startswith("subscribe-")]
    return channels


def broken_allowed_channels(request: HttpRequest, channels: list[str]) -> list[str]:
    """A WS4REDIS_ALLOWED_CHANNELS with a bug, as a project might have one."""
    raise RuntimeError("bug in the project's allowed-channels hook")


def process_request(request: HttpRequest) -> None:
    """Session and user as usual, unless an X-Test-User header names a user (no database)."""
    attach_session_and_user(request)
    username = request.META.get(HOOKED_USER_HEADER)
    if username:
        request.user = SimpleNamespace(is_authenticated=True, get_username=lambda: username)
