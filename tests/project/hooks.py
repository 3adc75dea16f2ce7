"""The test project's WS4REDIS_ALLOWED_CHANNELS, in a module that imports models at the top.

Many projects keep their hooks in a views.py that imports models. A server
that imports the hooks named in the settings before ``django.setup()`` fails
here with AppRegistryNotReady, as it would in such a project.
"""

from __future__ import annotations

import gevent
from django.contrib.auth.models import Group
from django.db import connection, transaction
from django.http import HttpRequest, HttpResponse

from tests.project import views


def allowed_channels(request: HttpRequest, channels: list[str]) -> list[str]:
    """The rules of ``views.allowed_channels``."""
    return views.allowed_channels(request, channels)


def overlap(request: HttpRequest) -> HttpResponse:
    """Hold a transaction open while yielding to other greenlets; say whether it began inside another.

    "inherited" means another request's transaction was open on this request's database
    connection when it began: the greenlets of the process share one connection.
    """
    inherited = connection.in_atomic_block
    with transaction.atomic():
        Group.objects.exists()
        gevent.sleep(float(request.GET.get("hold", "0.5")))
    return HttpResponse("inherited" if inherited else "own", content_type="text/plain")
