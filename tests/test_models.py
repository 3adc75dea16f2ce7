"""ws4redis.models: logging in stores the user's group names in the (Redis-backed) session."""

from __future__ import annotations

from importlib import import_module

import pytest
from django.conf import settings
from django.contrib.auth import authenticate, login
from django.contrib.auth.models import AnonymousUser, Group, User
from django.test import Client, RequestFactory

from ws4redis.models import store_groups_in_session
from ws4redis.redis_store import SESSION_GROUPS_KEY

pytestmark = pytest.mark.django_db


def session_in_redis(session_key):
    """The session as a websocket server loads it: by key, from the cache backend."""
    return import_module(settings.SESSION_ENGINE).SessionStore(session_key=session_key)


def test_login_stores_the_group_names_in_the_session(redis_client):
    user = User.objects.create_user("alice", password="secret")
    for name in ("zeta", "alpha"):
        user.groups.add(Group.objects.create(name=name))
    request = RequestFactory().get("/")
    request.user = AnonymousUser()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore()
    login(request, authenticate(request, username="alice", password="secret"))
    request.session.save()
    assert session_in_redis(request.session.session_key)[SESSION_GROUPS_KEY] == ["alpha", "zeta"]
    assert any(key.endswith(request.session.session_key.encode()) for key in redis_client.keys("*"))


def test_a_user_without_groups_gets_an_empty_list(redis_client):
    User.objects.create_user("bob", password="secret")
    client = Client()
    assert client.login(username="bob", password="secret")
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert session_in_redis(session_key)[SESSION_GROUPS_KEY] == []


def test_groups_are_read_at_login_time_only(redis_client):
    user = User.objects.create_user("carol", password="secret")
    user.groups.add(Group.objects.create(name="first"))
    client = Client()
    client.login(username="carol", password="secret")
    user.groups.add(Group.objects.create(name="later"))
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert session_in_redis(session_key)[SESSION_GROUPS_KEY] == ["first"]
    client.login(username="carol", password="secret")
    session_key = client.cookies[settings.SESSION_COOKIE_NAME].value
    assert session_in_redis(session_key)[SESSION_GROUPS_KEY] == ["first", "later"]


def test_requests_without_session_and_users_without_groups_are_left_alone():
    request = RequestFactory().get("/")
    store_groups_in_session(sender=User, user=User(username="x"), request=request)
    assert not hasattr(request, "session")

    class Groupless:
        pass

    request.session = {}
    store_groups_in_session(sender=Groupless, user=Groupless(), request=request)
    assert request.session == {}
