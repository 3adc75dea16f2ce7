"""Token authentication (WS4REDIS_AUTHENTICATE with ws4redis.tokens) on every server path.

A client without the session cookie, holding a token, gets exactly the user
and group channels of the token's user; an expired, forged or stale token is
refused with 401 and a body saying why; without a token the session cookie
still decides, as in 0.6.0.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from websockets.exceptions import InvalidStatus

from tests import servers
from tests.servers import Site, serving
from tests.servers import ws_connect as ws
from ws4redis.publisher import RedisPublisher
from ws4redis.redis_store import RedisMessage

KINDS = [pytest.param(kind, marks=[pytest.mark.uwsgi] if kind == "uwsgi" else [])
         for kind in ("gevent", "uwsgi", "runserver")]


@pytest.fixture(scope="module")
def site(redis_server) -> Iterator[Site]:
    site = Site(redis_server.url, {
        "WS4REDIS_AUTHENTICATE": "'ws4redis.tokens.authenticate'",
        "WS4REDIS_TOKEN_MAX_AGE": "600",
    }).migrate()
    site.accounts = site.sessions([{"username": "alice", "groups": ["team"]}, {"username": "bob"},
                                   {"username": "carol"}])
    yield site
    site.cleanup()


def issued_tokens(site: Site, username: str) -> dict[str, str]:
    return json.loads(site.run("-m", "tests.servers", "tokens", username).strip().splitlines()[-1])


@pytest.fixture(scope="module")
def tokens(site) -> dict:
    return issued_tokens(site, "alice")


@pytest.fixture(scope="module", params=KINDS)
def server(request, site) -> Iterator[servers.ServerProcess]:
    with serving(servers.STARTERS[request.param](site)) as server:
        yield server


def refusal(server: servers.ServerProcess, path: str, **options) -> InvalidStatus:
    with pytest.raises(InvalidStatus) as refused:
        with ws(server, path, **options):
            pass
    return refused.value


def publish_to_everyone(facility: str) -> None:
    for audience in ({"users": ["alice"]}, {"users": ["bob"]}, {"groups": ["team"]}):
        target = next(iter(audience.values()))[0]
        RedisPublisher(facility=facility, **audience).publish_message(RedisMessage(f"for {target}"))


@pytest.mark.parametrize("issued_by", ["issued", "view", "tag"])
def test_a_token_in_the_query_string_gives_exactly_its_users_channels(server, tokens, issued_by):
    facility = f"tok-{server.name}-{issued_by}"
    with ws(server, f"/ws/{facility}?subscribe-user&subscribe-group&token={tokens[issued_by]}") as alice:
        publish_to_everyone(facility)
        received = {alice.recv(timeout=10), alice.recv(timeout=10)}
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0.5)
    assert received == {"for alice", "for team"}


def test_a_bearer_token_in_the_authorization_header_works_as_well(server, tokens):
    facility = f"bearer-{server.name}"
    headers = {"Authorization": f"Bearer {tokens['issued']}"}
    with ws(server, f"/ws/{facility}?subscribe-user", additional_headers=headers) as alice:
        publish_to_everyone(facility)
        assert alice.recv(timeout=10) == "for alice"


def test_without_a_token_the_session_cookie_decides(server, site):
    facility = f"cookie-{server.name}"
    with ws(server, f"/ws/{facility}?subscribe-user", session=site.accounts["users"]["bob"]) as bob:
        publish_to_everyone(facility)
        assert bob.recv(timeout=10) == "for bob"


@pytest.mark.parametrize(("token", "reason"), [
    ("expired", b"Unauthorized: the token has expired: fetch a fresh one"),
    ("forged", b"Unauthorized: the token is not valid"),
    ("garbage", b"Unauthorized: the token is not valid"),
])
def test_expired_and_forged_tokens_are_refused_with_401_and_the_reason(server, tokens, token, reason):
    presented = {
        "expired": tokens["expired"],
        "forged": tokens["issued"][:-3] + ("AAA" if not tokens["issued"].endswith("AAA") else "BBB"),
        "garbage": "not-a-token",
    }[token]
    response = refusal(server, f"/ws/refused?subscribe-user&token={presented}").response
    assert response.status_code == 401
    assert response.body.strip() == reason
    assert response.headers["WWW-Authenticate"] == 'Bearer realm="websocket"'


def test_a_token_dies_with_a_password_change(redis_server):
    site = Site(redis_server.url, {"WS4REDIS_AUTHENTICATE": "'ws4redis.tokens.authenticate'"}).migrate()
    try:
        site.sessions([{"username": "dave"}])
        token = issued_tokens(site, "dave")["issued"]
        with serving(servers.gevent_server(site)) as server:
            with ws(server, f"/ws/stale?subscribe-user&token={token}"):
                pass
            site.run("-m", "tests.servers", "password", "dave")
            response = refusal(server, f"/ws/stale?subscribe-user&token={token}").response
        assert response.status_code == 401
        assert b"the password changed" in response.body
    finally:
        site.cleanup()


def test_a_bad_authenticate_setting_stops_the_server_naming_it(redis_server):
    site = Site(redis_server.url, {"WS4REDIS_AUTHENTICATE": "'no.such.hook'"})
    try:
        with pytest.raises(pytest.fail.Exception) as failed:
            with serving(servers.gevent_server(site)):
                pass
    finally:
        site.cleanup()
    assert "WS4REDIS_AUTHENTICATE" in str(failed.value)
