"""Shared fixtures: a real redis-server started by the suite on a free port."""

from __future__ import annotations

import os
import shutil
import sys

import pytest

from ws4redis.embedded_redis import EmbeddedRedis, RedisUnavailable

_suite_redis: dict = {}


def pytest_configure(config):
    """Start the suite's redis-server before test modules import, and point Django at it.

    pytest-django imports the settings before this file runs, so the Redis
    settings of the test project are re-pointed here; server subprocesses get
    the URL through WS4REDIS_TEST_REDIS_URL.
    """
    try:
        server = EmbeddedRedis().start()
    except RedisUnavailable as exc:
        _suite_redis["error"] = exc
        return
    _suite_redis["server"] = server
    os.environ["WS4REDIS_TEST_REDIS_URL"] = server.url
    from django.conf import settings

    if settings.configured:
        from tests.project.settings import redis_settings

        for name, value in redis_settings(server.url).items():
            setattr(settings, name, value)


def pytest_unconfigure(config):
    server = _suite_redis.pop("server", None)
    if server is not None:
        server.stop()
    project_settings = sys.modules.get("tests.project.settings")
    if project_settings is not None and project_settings.DB_DIR_CREATED:
        shutil.rmtree(project_settings.DB_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server():
    """A real redis-server for the whole session; fails loudly when none can be started."""
    if "server" not in _suite_redis:
        pytest.fail(f"the test suite needs a redis-server: {_suite_redis.get('error')}", pytrace=False)
    server = _suite_redis["server"]
    os.environ["WS4REDIS_TEST_REDIS_URL"] = server.url
    return server


@pytest.fixture(scope="session")
def compiled():
    """The compiled modules (``.mask``, ``.utf8``, ``.frames``), imported directly (tests/compiled.py)."""
    from tests.compiled import require_compiled

    return require_compiled()


@pytest.fixture
def redis_client(redis_server):
    """A client of the suite's own redis-server, emptied before each test."""
    import redis

    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    client.flushall()
    yield client
    client.close()


@pytest.fixture
def listener(redis_client):
    """A pub/sub connection of its own to the suite's Redis, closed after the test."""
    pubsub = redis_client.pubsub()
    yield pubsub
    pubsub.close()


@pytest.fixture
def alice(db):
    """A saved user in the groups "blue" and "green"."""
    from django.contrib.auth.models import Group, User

    user = User.objects.create_user("alice", password="secret")
    for name in ("blue", "green"):
        user.groups.add(Group.objects.create(name=name))
    return user


@pytest.fixture
def make_request(redis_client):
    """Build requests as the websocket servers see them: a real session in the Redis cache, a real user.

    With ``user``, the user is logged in with ``django.contrib.auth.login``
    (which fires ``user_logged_in``); the session is then reloaded from Redis
    by its key alone, as a server does from the cookie. Tests passing a user
    need the ``django_db`` mark.
    """
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import login
    from django.contrib.auth.models import AnonymousUser
    from django.test import RequestFactory

    def build(path="/ws/foo", user=None, session=True, secure=False, **headers):
        request = RequestFactory().get(path, secure=secure, headers=headers)
        request.user = AnonymousUser()
        request.session = None
        if session:
            store_class = import_module(settings.SESSION_ENGINE).SessionStore
            request.session = store_class()
            if user is not None:
                login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            request.session.save()
            request.session = store_class(session_key=request.session.session_key)
        elif user is not None:
            request.user = user
        return request

    return build
