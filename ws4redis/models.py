"""Keeps a user's group names in the session, so websockets never query the database.

The websocket loop resolves ``groups=[SELF]`` from the session key
``ws4redis:memberof``; this receiver fills it when the user logs in. Group
changes take effect at the next login.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.signals import user_logged_in
from django.dispatch import receiver

from ws4redis.redis_store import SESSION_GROUPS_KEY


@receiver(user_logged_in, dispatch_uid="ws4redis.store_groups_in_session")
def store_groups_in_session(sender: Any, user: Any, request: Any, **kwargs: Any) -> None:
    """Store the names of ``user``'s groups in ``request.session`` (users without groups: [])."""
    session = getattr(request, "session", None)
    if session is None or not hasattr(user, "groups"):
        return
    session[SESSION_GROUPS_KEY] = sorted(user.groups.values_list("name", flat=True))
