"""ws4redis.settings: lazy lookup, defaults, derived values and validation of every setting."""

from __future__ import annotations

import pytest
from django.apps import apps
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from ws4redis import constants
from ws4redis import settings as private_settings
from ws4redis.apps import check_settings
from ws4redis.subscriber import RedisSubscriber

NOT_CALLABLE = 42


def allowed_channels(request, channels):
    return channels


def process_request(request):
    request.session = None


class NotASubscriber:
    """Lacks the channel lists a subscriber class must have."""


class CustomSubscriber(RedisSubscriber):
    pass


# Lazy lookup and defaults ----------------------------------------------------------------------


def test_values_come_from_django_settings_at_access_time():
    assert private_settings.WS4REDIS_EXPIRE == 3600
    with override_settings(WS4REDIS_EXPIRE=7, WS4REDIS_PREFIX="pfx"):
        assert private_settings.WS4REDIS_EXPIRE == 7
        assert private_settings.WS4REDIS_PREFIX == "pfx"
    assert private_settings.WS4REDIS_EXPIRE == 3600
    assert private_settings.WS4REDIS_PREFIX is None


def test_the_0_6_0_import_style_keeps_working():
    from ws4redis import settings

    with override_settings(WS4REDIS_HEARTBEAT="--beat--"):
        assert settings.WS4REDIS_HEARTBEAT == "--beat--"


@pytest.mark.parametrize(
    "name, default",
    [
        ("WEBSOCKET_URL", "/ws/"),
        ("WEBSOCKET_HOST", None),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "port": 6379, "db": 0, "password": None}),
        ("WS4REDIS_EXPIRE", 3600),
        ("WS4REDIS_PREFIX", None),
        ("WS4REDIS_SUBSCRIBER", "ws4redis.subscriber.RedisSubscriber"),
        ("WS4REDIS_HEARTBEAT", None),
        ("WS4REDIS_ALLOWED_CHANNELS", None),
        ("WS4REDIS_PROCESS_REQUEST", None),
        ("WS4REDIS_MAX_MESSAGE_SIZE", constants.DEFAULT_MAX_MESSAGE_SIZE),
        ("WS4REDIS_MAX_FRAGMENTS", None),
        ("WS4REDIS_ALLOWED_ORIGINS", None),
        ("WS4REDIS_PING_INTERVAL", 20),
        ("WS4REDIS_PING_TIMEOUT", 20),
        ("WS4REDIS_SEND_QUEUE_BYTES", 1 << 20),
        ("WS4REDIS_SEND_QUEUE_MESSAGES", 1000),
        ("WS4REDIS_HANDSHAKE_TIMEOUT", 10),
        ("WS4REDIS_SHUTDOWN_TIMEOUT", 5),
    ],
)
def test_defaults_apply_when_a_setting_is_absent(settings, name, default):
    if hasattr(settings, name):
        delattr(settings, name)
    assert getattr(private_settings, name) == default


def test_mutating_a_returned_default_does_not_change_it(settings):
    del settings.WS4REDIS_CONNECTION
    private_settings.WS4REDIS_CONNECTION["host"] = "elsewhere"
    assert private_settings.WS4REDIS_CONNECTION["host"] == "localhost"


def test_unknown_attributes_raise_attribute_error():
    with pytest.raises(AttributeError, match="WS4REDIS_NOPE"):
        private_settings.WS4REDIS_NOPE  # noqa: B018


def test_dir_lists_the_settings():
    assert {"WS4REDIS_EXPIRE", "WEBSOCKET_URL", "validate_settings"} <= set(dir(private_settings))


# Derived values --------------------------------------------------------------------------------


def test_max_fragments_is_derived_from_the_message_size_unless_set():
    with override_settings(WS4REDIS_MAX_MESSAGE_SIZE=1 << 24, WS4REDIS_MAX_FRAGMENTS=None):
        assert private_settings.max_fragments() == constants.default_max_fragments(1 << 24)
    with override_settings(WS4REDIS_MAX_FRAGMENTS=3):
        assert private_settings.max_fragments() == 3


def test_resolve_callable_accepts_callables_and_dotted_paths():
    with override_settings(WS4REDIS_ALLOWED_CHANNELS="tests.test_settings.allowed_channels"):
        assert private_settings.resolve_callable("WS4REDIS_ALLOWED_CHANNELS") is allowed_channels
    with override_settings(WS4REDIS_PROCESS_REQUEST=process_request):
        assert private_settings.resolve_callable("WS4REDIS_PROCESS_REQUEST") is process_request
    with override_settings(WS4REDIS_PROCESS_REQUEST=None):
        assert private_settings.resolve_callable("WS4REDIS_PROCESS_REQUEST") is None


def test_subscriber_class_resolves_dotted_paths_and_classes():
    assert private_settings.subscriber_class() is RedisSubscriber
    with override_settings(WS4REDIS_SUBSCRIBER="tests.test_settings.CustomSubscriber"):
        assert private_settings.subscriber_class() is CustomSubscriber
    with override_settings(WS4REDIS_SUBSCRIBER=CustomSubscriber):
        assert private_settings.subscriber_class() is CustomSubscriber


# Allowed origins -------------------------------------------------------------------------------


@override_settings(WS4REDIS_ALLOWED_ORIGINS=None, CSRF_TRUSTED_ORIGINS=[])
def test_by_default_only_the_request_s_own_origin_passes_as_in_django_s_csrf_check():
    own = "http://example.com:8000"
    assert private_settings.allowed_origins() == ()
    assert private_settings.origin_allowed("http://example.com:8000", own)
    assert private_settings.origin_allowed("HTTP://EXAMPLE.com:8000", own)
    assert not private_settings.origin_allowed("http://example.com:8089", own)  # another port
    assert not private_settings.origin_allowed("https://example.com:8000", own)  # another scheme
    assert not private_settings.origin_allowed("http://sub.example.com:8000", own)
    assert not private_settings.origin_allowed("https://evil.com", own)
    assert not private_settings.origin_allowed("null", own)
    assert not private_settings.origin_allowed("", own)
    assert not private_settings.origin_allowed("http://example.com:8000", None)  # a Host Django refused


@override_settings(WS4REDIS_ALLOWED_ORIGINS=None,
                   CSRF_TRUSTED_ORIGINS=["https://app.example.com", "https://*.example.org"])
def test_csrf_trusted_origins_pass_exactly_or_by_subdomain():
    own = "http://127.0.0.1:8000"
    assert private_settings.origin_allowed("https://app.example.com", own)
    assert not private_settings.origin_allowed("http://app.example.com", own)
    assert private_settings.origin_allowed("https://chat.example.org", own)
    assert private_settings.origin_allowed("https://a.b.example.org", own)
    assert not private_settings.origin_allowed("http://chat.example.org", own)
    assert not private_settings.origin_allowed("https://example.org.evil.com", own)


@override_settings(WS4REDIS_ALLOWED_ORIGINS=["example.com", ".example.org"])
def test_host_patterns_are_an_explicit_opt_in_for_any_scheme_and_port():
    assert private_settings.allowed_origins() == ("example.com", ".example.org")
    assert private_settings.origin_allowed("https://example.com")
    assert private_settings.origin_allowed("http://EXAMPLE.com:8080")
    assert private_settings.origin_allowed("https://sub.example.org")
    assert not private_settings.origin_allowed("https://evil.com")
    assert not private_settings.origin_allowed("https://example.com.evil.com")


def test_a_missing_origin_header_is_allowed():
    with override_settings(WS4REDIS_ALLOWED_ORIGINS=["example.com"]):
        assert private_settings.origin_allowed(None)


def test_star_allows_every_origin():
    with override_settings(WS4REDIS_ALLOWED_ORIGINS="*"):
        assert private_settings.allowed_origins() is None
        assert private_settings.origin_allowed("https://anything.example")
    with override_settings(WS4REDIS_ALLOWED_ORIGINS=None, ALLOWED_HOSTS=["*"]):
        assert not private_settings.origin_allowed("https://anything.example", "http://here.example")


@override_settings(WS4REDIS_ALLOWED_ORIGINS=["https://app.example.com", "https://other.example.com:8443/"])
def test_full_origins_must_match_scheme_host_and_port():
    assert private_settings.origin_allowed("https://app.example.com")
    assert private_settings.origin_allowed("https://other.example.com:8443")
    assert not private_settings.origin_allowed("http://app.example.com")
    assert not private_settings.origin_allowed("https://app.example.com:444")
    assert not private_settings.origin_allowed("https://other.example.com")


# Validation ------------------------------------------------------------------------------------


def test_the_test_project_settings_are_valid():
    private_settings.validate_settings()
    assert check_settings() == []


@pytest.mark.parametrize(
    "name, value",
    [
        ("WEBSOCKET_URL", "ws/"),
        ("WEBSOCKET_URL", "/ws"),
        ("WEBSOCKET_URL", None),
        ("WEBSOCKET_HOST", ""),
        ("WEBSOCKET_HOST", 8000),
        ("WS4REDIS_CONNECTION", "redis://localhost"),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "port": "6379"}),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "port": 70000}),
        ("WS4REDIS_CONNECTION", {"host": "", "port": 6379}),
        ("WS4REDIS_CONNECTION", {"db": -1}),
        ("WS4REDIS_CONNECTION", {"db": "0"}),
        ("WS4REDIS_CONNECTION", {"url": "http://localhost:6379"}),
        ("WS4REDIS_CONNECTION", {"url": "redis://localhost:6379/0?bogus_option=1"}),
        ("WS4REDIS_CONNECTION", {"unix_socket_path": ""}),
        ("WS4REDIS_CONNECTION", {"ssl": "yes"}),
        ("WS4REDIS_CONNECTION", {"ssl_ca_certs": "/etc/ssl/ca.pem"}),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "sockettimeout": 3}),
        ("WS4REDIS_CONNECTION", {"max_connections": 0}),
        ("WS4REDIS_EXPIRE", -1),
        ("WS4REDIS_EXPIRE", "3600"),
        ("WS4REDIS_EXPIRE", None),
        ("WS4REDIS_EXPIRE", 1.5),
        ("WS4REDIS_EXPIRE", True),
        ("WS4REDIS_PREFIX", 7),
        ("WS4REDIS_PREFIX", "my prefix"),
        ("WS4REDIS_SUBSCRIBER", "ws4redis.no_such_module.Subscriber"),
        ("WS4REDIS_SUBSCRIBER", "tests.test_settings.NotASubscriber"),
        ("WS4REDIS_SUBSCRIBER", "tests.test_settings.allowed_channels"),
        ("WS4REDIS_SUBSCRIBER", "nodots"),
        ("WS4REDIS_HEARTBEAT", ""),
        ("WS4REDIS_HEARTBEAT", b"--beat--"),
        ("WS4REDIS_ALLOWED_CHANNELS", "tests.test_settings.no_such_function"),
        ("WS4REDIS_ALLOWED_CHANNELS", "tests.test_settings.NOT_CALLABLE"),
        ("WS4REDIS_ALLOWED_CHANNELS", 12),
        ("WS4REDIS_PROCESS_REQUEST", "no.such.module.process"),
        ("WS4REDIS_PROCESS_REQUEST", ["tests.test_settings.process_request"]),
        ("WS4REDIS_MAX_MESSAGE_SIZE", 0),
        ("WS4REDIS_MAX_MESSAGE_SIZE", "1M"),
        ("WS4REDIS_MAX_MESSAGE_SIZE", None),
        ("WS4REDIS_MAX_FRAGMENTS", 0),
        ("WS4REDIS_MAX_FRAGMENTS", 2.5),
        ("WS4REDIS_ALLOWED_ORIGINS", "example.com"),
        ("WS4REDIS_ALLOWED_ORIGINS", ["example.com", ""]),
        ("WS4REDIS_ALLOWED_ORIGINS", ["ftp://example.com"]),
        ("WS4REDIS_ALLOWED_ORIGINS", ["https://example.com/path"]),
        ("WS4REDIS_ALLOWED_ORIGINS", [None]),
        ("WS4REDIS_PING_INTERVAL", 0),
        ("WS4REDIS_PING_INTERVAL", -5),
        ("WS4REDIS_PING_INTERVAL", "20"),
        ("WS4REDIS_PING_INTERVAL", float("nan")),
        ("WS4REDIS_PING_TIMEOUT", None),
        ("WS4REDIS_PING_TIMEOUT", 0),
        ("WS4REDIS_SEND_QUEUE_BYTES", 0),
        ("WS4REDIS_SEND_QUEUE_BYTES", 1.0),
        ("WS4REDIS_SEND_QUEUE_MESSAGES", -1),
        ("WS4REDIS_SEND_QUEUE_MESSAGES", None),
        ("WS4REDIS_HANDSHAKE_TIMEOUT", 0),
        ("WS4REDIS_HANDSHAKE_TIMEOUT", None),
        ("WS4REDIS_SHUTDOWN_TIMEOUT", -1),
        ("WS4REDIS_SHUTDOWN_TIMEOUT", "5"),
    ],
)
def test_every_bad_setting_is_rejected_with_its_name_and_value(name, value):
    with override_settings(**{name: value}):
        with pytest.raises(ImproperlyConfigured) as raised:
            private_settings.validate_settings()
        message = str(raised.value)
        assert name in message
        shown = list(value.values()) if isinstance(value, dict) else [value]
        assert any(repr(item) in message for item in shown), message
        errors = check_settings()
    assert [error.id for error in errors] == ["ws4redis.E001"]
    assert name in errors[0].msg


def test_passwords_are_not_shown_in_errors():
    with override_settings(WS4REDIS_CONNECTION={"host": "localhost", "password": 1234}):
        with pytest.raises(ImproperlyConfigured, match=r"WS4REDIS_CONNECTION\['password'\].*int") as raised:
            private_settings.validate_settings()
    assert "1234" not in str(raised.value)
    with override_settings(WS4REDIS_CONNECTION={"host": "localhost", "password": "s3cret", "bogus": 1}):
        with pytest.raises(ImproperlyConfigured) as raised:
            private_settings.validate_settings()
    assert "bogus" in str(raised.value)
    assert "s3cret" not in str(raised.value)
    with override_settings(WS4REDIS_CONNECTION={"url": "redis://user:s3cret@localhost:6379/0?bogus=1"}):
        with pytest.raises(ImproperlyConfigured) as raised:
            private_settings.validate_settings()
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    "name, value",
    [
        ("WEBSOCKET_URL", "/websocket/"),
        ("WEBSOCKET_HOST", "ws.example.com"),
        ("WS4REDIS_CONNECTION", {"url": "redis://:pw@localhost:6380/2"}),
        ("WS4REDIS_CONNECTION", {"url": "rediss://localhost:6380/0", "ssl_cert_reqs": "none"}),
        ("WS4REDIS_CONNECTION", {"url": "unix:///run/redis/redis.sock?db=1"}),
        ("WS4REDIS_CONNECTION", {"unix_socket_path": "/run/redis/redis.sock", "db": 1, "port": 6379}),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "ssl": True, "ssl_ca_certs": "/etc/ssl/ca.pem"}),
        ("WS4REDIS_CONNECTION", {"host": "localhost", "socket_timeout": 3, "max_connections": 10}),
        ("WS4REDIS_EXPIRE", 0),
        ("WS4REDIS_PREFIX", "site1"),
        ("WS4REDIS_SUBSCRIBER", "tests.test_settings.CustomSubscriber"),
        ("WS4REDIS_HEARTBEAT", "--heartbeat--"),
        ("WS4REDIS_ALLOWED_CHANNELS", "tests.test_settings.allowed_channels"),
        ("WS4REDIS_ALLOWED_CHANNELS", allowed_channels),
        ("WS4REDIS_PROCESS_REQUEST", "tests.test_settings.process_request"),
        ("WS4REDIS_MAX_FRAGMENTS", 16),
        ("WS4REDIS_ALLOWED_ORIGINS", "*"),
        ("WS4REDIS_ALLOWED_ORIGINS", ["example.com", "https://app.example.com", "[::1]"]),
        ("WS4REDIS_PING_INTERVAL", None),
        ("WS4REDIS_PING_INTERVAL", 0.5),
        ("WS4REDIS_SHUTDOWN_TIMEOUT", 0),
    ],
)
def test_good_values_pass_validation(name, value):
    with override_settings(**{name: value}):
        private_settings.validate_settings()
        assert getattr(private_settings, name) == value


def test_app_ready_validates_the_settings():
    config = apps.get_app_config("ws4redis")
    with override_settings(WS4REDIS_EXPIRE=-1):
        with pytest.raises(ImproperlyConfigured, match="WS4REDIS_EXPIRE"):
            config.ready()
    config.ready()
