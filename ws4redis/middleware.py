"""``BrokerUnavailableMiddleware``: a view that publishes while Redis is away answers 503, not 500.

Add ``"ws4redis.middleware.BrokerUnavailableMiddleware"`` to MIDDLEWARE. A
view whose ``RedisPublisher.publish_message`` raises
:class:`ws4redis.redis_errors.BrokerUnavailable` then answers
``503 Service Unavailable`` with a plain-text body and ``Retry-After``, the
way the websocket servers answer a handshake while Redis is away; every
other exception is left to Django.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse

from ws4redis.constants import BROKER_UNREACHABLE_TEXT
from ws4redis.redis_errors import BrokerUnavailable

__all__ = ["BrokerUnavailableMiddleware"]

logger = logging.getLogger(__name__)
RETRY_AFTER_SECONDS = 1


class BrokerUnavailableMiddleware:
    """Turns :class:`BrokerUnavailable` raised by a view into a readable 503."""

    def __init__(self, get_response: Callable[[HttpRequest], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> Any:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, BrokerUnavailable):
            return None
        logger.warning("ws4redis: %s %s could not publish: %s", request.method, request.path, exception)
        response = HttpResponse(BROKER_UNREACHABLE_TEXT + "\n", status=503,
                                content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response
