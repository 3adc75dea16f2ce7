"""``{% load ws4redis %}``: ``{% websocket_token %}`` prints a fresh token for the page's user.

See :mod:`ws4redis.tokens`.
"""

from __future__ import annotations

from typing import Any

from django import template

from ws4redis.tokens import issue_token

register = template.Library()


@register.simple_tag(takes_context=True)
def websocket_token(context: dict[str, Any]) -> str:
    """A token for the logged-in user of the template's request; empty for anonymous users."""
    request = context.get("request")
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        return ""
    return issue_token(user)
