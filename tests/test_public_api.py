"""``ws4redis`` declares its public API; every name resolves to the object 0.6.0's modules hold."""

from __future__ import annotations

import subprocess
import sys
from importlib import import_module

import pytest

import ws4redis


@pytest.mark.parametrize("name", [name for name in ws4redis.__all__ if name != "__version__"])
def test_each_public_name_is_the_object_of_its_module(name):
    module = import_module(ws4redis._EXPORTS[name])
    assert getattr(ws4redis, name) is getattr(module, name)


def test_the_0_6_0_names_are_all_there():
    assert {"RedisPublisher", "RedisMessage", "SELF", "RedisSubscriber", "WebsocketWSGIServer"} <= set(
        ws4redis.__all__)
    assert sorted(dir(ws4redis)) == sorted(ws4redis.__all__)


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'RedisPublishr'"):
        ws4redis.RedisPublishr  # noqa: B018


def test_importing_the_package_loads_neither_redis_nor_django_settings():
    code = "import sys, ws4redis; print(sorted(m for m in ('redis', 'django.conf') if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
