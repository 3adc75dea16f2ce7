"""ws4redis.context_processors.default: the websocket URI and heartbeat for templates."""

from __future__ import annotations

from django.template import Context, RequestContext, Template
from django.test import RequestFactory, override_settings

from ws4redis.context_processors import default


def test_plain_http_pages_get_a_ws_uri():
    request = RequestFactory().get("/", HTTP_HOST="example.com:8000")
    with override_settings(ALLOWED_HOSTS=["example.com"], WS4REDIS_HEARTBEAT=None):
        context = default(request)
    assert context == {"WEBSOCKET_URI": "ws://example.com:8000/ws/", "WS4REDIS_HEARTBEAT": "null"}


def test_https_pages_get_a_wss_uri():
    request = RequestFactory().get("/", secure=True, HTTP_HOST="example.com")
    with override_settings(ALLOWED_HOSTS=["example.com"]):
        assert default(request)["WEBSOCKET_URI"] == "wss://example.com/ws/"


@override_settings(WEBSOCKET_URL="/websocket/", WEBSOCKET_HOST="ws.example.com")
def test_websocket_url_and_host_settings_are_used():
    request = RequestFactory().get("/", HTTP_HOST="testserver")
    assert default(request)["WEBSOCKET_URI"] == "ws://ws.example.com/websocket/"


@override_settings(WS4REDIS_HEARTBEAT="--heartbeat--")
def test_the_heartbeat_is_a_javascript_string_literal():
    context = default(RequestFactory().get("/"))
    assert context["WS4REDIS_HEARTBEAT"] == '"--heartbeat--"'
    rendered = Template("var hb = {{ WS4REDIS_HEARTBEAT }};").render(Context(context))
    assert rendered == 'var hb = "--heartbeat--";'


@override_settings(WS4REDIS_HEARTBEAT='</script>"beat')
def test_a_heartbeat_cannot_break_out_of_a_script_tag():
    literal = default(RequestFactory().get("/"))["WS4REDIS_HEARTBEAT"]
    assert "</script>" not in literal
    assert literal == '"\\u003c/script>\\"beat"'


def test_the_processor_is_wired_into_the_test_project_templates():
    request = RequestFactory().get("/", secure=True)
    rendered = Template("{{ WEBSOCKET_URI }}").render(RequestContext(request, {}))
    assert rendered == "wss://testserver/ws/"
