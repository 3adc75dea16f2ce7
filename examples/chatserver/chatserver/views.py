"""Views of the example: pages that open websockets, and a view that publishes through Redis."""

from __future__ import annotations

import json

from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.contrib.auth.models import Group
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_http_methods

from chatserver.dashboard import FACILITY as DASHBOARD_FACILITY
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage

BROADCAST_FACILITY = "chat"
USER_FACILITY = "userchat"
MAX_MESSAGE_LENGTH = 2000


def broadcast_chat(request: HttpRequest) -> HttpResponse:
    """Every browser on this page subscribes to and publishes on one broadcast channel."""
    return render(request, "chatserver/chat.html", {"facility": BROADCAST_FACILITY})


def dashboard(request: HttpRequest) -> HttpResponse:
    """Every open tab subscribes to one broadcast channel that ``manage.py dashboard_feed`` publishes to."""
    return render(request, "chatserver/dashboard.html", {"facility": DASHBOARD_FACILITY})


@login_required
@require_http_methods(["GET", "POST"])
def user_chat(request: HttpRequest) -> HttpResponse:
    """GET: the page, subscribed to its user's and groups' channels. POST: send to a user or a group.

    Messages go through this view instead of the websocket so that the sender
    is the authenticated user, not whatever a client claims.
    """
    if request.method == "POST":
        return _publish_to_user_or_group(request)
    users = get_user_model().objects.filter(is_active=True).order_by("username")
    return render(
        request,
        "chatserver/userchat.html",
        {"facility": USER_FACILITY, "users": users, "groups": Group.objects.order_by("name")},
    )


def _publish_to_user_or_group(request: HttpRequest) -> JsonResponse:
    text = request.POST.get("message", "").strip()
    target = request.POST.get("to", "")
    kind, _, name = target.partition(":")
    if not text:
        return JsonResponse({"error": "the message is empty"}, status=400)
    if len(text) > MAX_MESSAGE_LENGTH:
        error = f"the message is longer than {MAX_MESSAGE_LENGTH} characters"
        return JsonResponse({"error": error}, status=400)
    sender = request.user.get_username()
    # The sender's own pages show the message too: through the group when a
    # member of it, else through the sender's user channel (never both, or it
    # would arrive twice).
    if kind == "user" and get_user_model().objects.filter(username=name, is_active=True).exists():
        publisher = RedisPublisher(facility=USER_FACILITY, users=sorted({name, sender}))
    elif kind == "group" and Group.objects.filter(name=name).exists():
        also_sender = [] if request.user.groups.filter(name=name).exists() else [sender]
        publisher = RedisPublisher(facility=USER_FACILITY, groups=[name], users=also_sender)
    else:
        return JsonResponse({"error": f"no such recipient: {target!r}"}, status=400)
    payload = {"from": sender, "to": target, "text": text}
    publisher.publish_message(RedisMessage(json.dumps(payload)))
    return JsonResponse({"sent": True, "to": target})
