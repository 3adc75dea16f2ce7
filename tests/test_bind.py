"""The ``--bind`` option shared by ``python -m ws4redis serve`` and ``python -m ws4redis.echo``."""

from __future__ import annotations

import socket

import pytest

from ws4redis.bind import address_family, parse_bind


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8001", ("127.0.0.1", 8001)),
        ("example.com:80", ("example.com", 80)),
        ("[::1]:8001", ("::1", 8001)),
        (":8001", ("0.0.0.0", 8001)),  # all interfaces, as gunicorn and uWSGI read it
        ("8001", ("127.0.0.1", 8001)),
        ("0.0.0.0:65535", ("0.0.0.0", 65535)),
    ],
)
def test_server_bind_addresses(value, expected):
    assert parse_bind(value) == expected


@pytest.mark.parametrize(
    "value", ["127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:http", "127.0.0.1:", "", "host:-1"]
)
def test_server_bind_refuses_ports_clients_cannot_use(value):
    with pytest.raises(ValueError, match="between 1 and 65535"):
        parse_bind(value)


def test_echo_bind_takes_any_free_port_on_the_loopback_by_default():
    assert parse_bind("127.0.0.1:0", empty_host="127.0.0.1", any_port=True) == ("127.0.0.1", 0)
    assert parse_bind(":0", empty_host="127.0.0.1", any_port=True) == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="between 0 and 65535"):
        parse_bind("127.0.0.1:70000", empty_host="127.0.0.1", any_port=True)


def test_address_family_follows_the_host():
    assert address_family("::1") is socket.AF_INET6
    assert address_family("127.0.0.1") is socket.AF_INET
    assert address_family("localhost") is socket.AF_INET
