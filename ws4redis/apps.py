"""Django application config: checks the settings at start-up and connects the login receiver."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.core import checks
from django.core.exceptions import ImproperlyConfigured


class Ws4RedisConfig(AppConfig):
    """Bad settings fail when Django starts, not at the first websocket."""

    name = "ws4redis"
    verbose_name = "Websockets for Redis"
    default = True

    def ready(self) -> None:
        """Connect the login receiver, validate the settings and register them with ``manage.py check``."""
        from ws4redis import models  # noqa: F401 - connects the user_logged_in receiver
        from ws4redis.settings import validate_settings

        validate_settings()
        checks.register(check_settings, "ws4redis")


def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``manage.py check`` view of ``validate_settings`` (settings may change after start-up in tests)."""
    from ws4redis.settings import validate_settings

    try:
        validate_settings()
    except ImproperlyConfigured as exc:
        return [checks.Error(str(exc), id="ws4redis.E001")]
    return []
