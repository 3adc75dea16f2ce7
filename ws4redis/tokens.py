"""Signed, expiring websocket tokens: a stand-in for the session cookie.

A mobile app, or a page served from another origin, does not carry the site's
session cookie. With ``WS4REDIS_AUTHENTICATE = "ws4redis.tokens.authenticate"``
such a client opens ``/ws/chat?subscribe-user&token=<token>`` (or sends
``Authorization: Bearer <token>``, where it can set headers) and gets the
channels of the user the token names, exactly as that user's session would.

A token is ``django.core.signing`` over the user's primary key and the hash
Django keeps for its sessions (``get_session_auth_hash``), signed with
SECRET_KEY and timestamped: it expires after WS4REDIS_TOKEN_MAX_AGE seconds
and dies with a password change, as the user's sessions do. Tokens in query
strings end up in access logs: keep them short-lived and fetch a fresh one
(:func:`issue_token`, the ``{% websocket_token %}`` tag of ``{% load ws4redis %}``,
or :func:`token_view`) right before connecting.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core import signing
from django.http import HttpRequest, JsonResponse
from django.utils.crypto import constant_time_compare

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.exceptions import AuthenticationFailed

__all__ = ["SALT", "authenticate", "issue_token", "token_view"]

SALT = "ws4redis.tokens"


def issue_token(user: Any) -> str:
    """A token naming ``user`` (a logged-in user), valid for WS4REDIS_TOKEN_MAX_AGE seconds."""
    if not getattr(user, "is_authenticated", False):
        raise ValueError("websocket tokens are issued to authenticated users only")
    return signing.dumps([str(user.pk), user.get_session_auth_hash()], salt=SALT, compress=True)


def _presented(request: HttpRequest) -> str | None:
    header = request.META.get("HTTP_AUTHORIZATION", "")
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return request.GET.get(constants.TOKEN_PARAMETER) or None


def authenticate(request: HttpRequest) -> Any:
    """WS4REDIS_AUTHENTICATE hook: the user of the request's token, None without one (the session decides).

    An expired, forged or stale token (its user gone, inactive, or with a changed password) is
    refused with 401 and the reason.
    """
    token = _presented(request)
    if token is None:
        return None
    try:
        max_age = private_settings.WS4REDIS_TOKEN_MAX_AGE
        primary_key, auth_hash = signing.loads(token, salt=SALT, max_age=max_age)
    except signing.SignatureExpired as exc:
        raise AuthenticationFailed("the token has expired: fetch a fresh one") from exc
    except (signing.BadSignature, ValueError, TypeError) as exc:
        raise AuthenticationFailed("the token is not valid") from exc
    model = get_user_model()
    try:
        user = model._default_manager.get(pk=primary_key)
    except (model.DoesNotExist, ValueError) as exc:
        raise AuthenticationFailed("the token's user does not exist") from exc
    if not getattr(user, "is_active", True):
        raise AuthenticationFailed("the token's user is inactive")
    if not constant_time_compare(auth_hash, user.get_session_auth_hash()):
        raise AuthenticationFailed("the token is no longer valid (the password changed)")
    return user


def token_view(request: HttpRequest) -> JsonResponse:
    """``{"token": ..., "expires_in": seconds}`` for the logged-in user of the request; 403 otherwise.

    Route it in urls.py (``path("ws-token", ws4redis.tokens.token_view)``) for clients that log in
    with the session and connect from elsewhere.
    """
    if not request.user.is_authenticated:
        return JsonResponse({"error": "log in first"}, status=403)
    max_age = private_settings.WS4REDIS_TOKEN_MAX_AGE
    response = JsonResponse({"token": issue_token(request.user), "expires_in": max_age})
    response["Cache-Control"] = "no-store"
    return response
