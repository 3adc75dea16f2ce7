"""Listening addresses as the command lines take them (``--bind``), shared by the server and the echo tool."""

from __future__ import annotations

import socket

__all__ = ["address_family", "parse_bind"]


def parse_bind(value: str, *, empty_host: str = "0.0.0.0", any_port: bool = False) -> tuple[str, int]:
    """``host:port``, ``[v6]:port``, ``:port`` or ``port`` -> (host, port); ValueError when malformed.

    ``:port`` listens on ``empty_host`` (all interfaces unless the caller says
    otherwise), a bare ``port`` on 127.0.0.1. Port 0 (the kernel picks a free
    one) is allowed only with ``any_port``: a production server needs a port
    its clients know.
    """
    host, sep, port = value.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", value
    host = host.strip("[]") or empty_host
    lowest = 0 if any_port else 1
    if not port.isdigit() or not lowest <= int(port) <= 65535:
        raise ValueError(f"--bind wants host:port with a port between {lowest} and 65535, got {value!r}")
    return host, int(port)


def address_family(host: str) -> socket.AddressFamily:
    """IPv6 for a host that is an IPv6 literal (it has a colon), IPv4 otherwise."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET
