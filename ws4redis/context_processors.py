"""Template context for the ws4redis JavaScript client."""

from __future__ import annotations

import json
from typing import Any

from django.utils.safestring import SafeString, mark_safe

from ws4redis import settings as private_settings


def default(request: Any) -> dict[str, str | SafeString]:
    """``WEBSOCKET_URI`` (ws:// or wss:// as the page) and ``WS4REDIS_HEARTBEAT`` as a JS literal."""
    host = private_settings.WEBSOCKET_HOST or request.get_host()
    scheme = "wss://" if request.is_secure() else "ws://"
    heartbeat = private_settings.WS4REDIS_HEARTBEAT
    # json.dumps gives a JavaScript string literal; '<' is escaped so it cannot close a <script>.
    literal = json.dumps(heartbeat).replace("<", "\\u003c") if heartbeat else "null"
    return {
        "WEBSOCKET_URI": f"{scheme}{host}{private_settings.WEBSOCKET_URL}",
        "WS4REDIS_HEARTBEAT": mark_safe(literal),
    }
