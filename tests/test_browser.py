"""Headless Chromium drives the example chat and ws4redis.js.

The chat test serves the example project with ``manage.py runserver`` against
the suite's redis-server, opens /chat/ in two windows, checks that a message
typed in one shows up in both, kills and restarts the server on the same port
and checks that ws4redis.js reconnects by itself. The client tests run
ws4redis.js in the browser against a scripted websockets server to check
heartbeats, binary frames, close() and the backoff arithmetic.
"""

from __future__ import annotations

import collections
import importlib.util
import threading
import uuid
from http import HTTPStatus
from pathlib import Path

import pytest

from tests.chromium import WAIT, browser_driver, wait_until
from ws4redis.embedded_redis import free_port

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "examples" / "run.py"
WS4REDIS_JS = ROOT / "ws4redis" / "static" / "js" / "ws4redis.js"
pytestmark = pytest.mark.browser


def load_example_runner():
    """examples/run.py as a module: the test starts the project exactly as the README's command does."""
    spec = importlib.util.spec_from_file_location("ws4redis_example_run", RUN_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def browser():
    with browser_driver() as driver:
        yield driver


class ExampleServer:
    """The example project under ``manage.py runserver``, restartable on the same port."""

    def __init__(self, redis_server, workdir: Path):
        self.runner = load_example_runner()
        address = self.runner.RedisAddress(redis_server.host, redis_server.port, 0)
        self.env = self.runner.project_env(address)
        self.env["CHATSERVER_DB"] = str(workdir / "db.sqlite3")
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process = None
        self.feed = None

    def start(self) -> None:
        self.process = self.runner.start_runserver("127.0.0.1", self.port, self.env)
        self.runner.wait_for_port(self.process, "127.0.0.1", self.port)
        if self.feed is None:
            self.feed = self.runner.start_dashboard_feed(self.env)

    def stop(self) -> None:
        if self.process is not None:
            self.runner.stop_process_group(self.process)
            self.process = None

    def stop_feed(self) -> None:
        if self.feed is not None:
            self.runner.stop_process_group(self.feed)
            self.feed = None


@pytest.fixture(scope="module")
def example_server(redis_server, tmp_path_factory):
    server = ExampleServer(redis_server, tmp_path_factory.mktemp("example"))
    server.runner.prepare_database(server.env)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        server.stop_feed()


class ChatWindow:
    """One browser window showing /chat/; every call first brings that window forward."""

    def __init__(self, driver, handle: str):
        self.driver = driver
        self.handle = handle

    def _js(self, script: str, *args):
        self.driver.switch_to.window(self.handle)
        return self.driver.execute_script(script, *args)

    def connections(self) -> int:
        """How many times ws4redis.js reported `connected`, counted by the page (0 while down)."""
        return self._js(
            "var b = document.getElementById('ws-status');"
            "return b.dataset.state === 'connected' ? Number(b.dataset.connections) : 0;"
        )

    def messages(self) -> list[str]:
        return self._js("return Array.from(document.querySelectorAll('#messages li'), li => li.textContent);")

    def wait_connected(self, times: int) -> None:
        wait_until(
            self.driver,
            lambda _: self.connections() == times,
            f"the chat page did not report connection number {times}",
        )

    def wait_message(self, text: str) -> None:
        wait_until(self.driver, lambda _: text in self.messages(), f"{text!r} did not appear in the page")

    def type_message(self, text: str) -> None:
        from selenium.webdriver.common.by import By

        self.driver.switch_to.window(self.handle)
        field = self.driver.find_element(By.ID, "text_message")
        field.send_keys(text)
        self.driver.find_element(By.ID, "send_message").click()
        wait_until(self.driver, lambda _: field.get_attribute("value") == "", "the message was not sent")


def test_chat_in_two_windows_and_reconnect_after_server_restart(browser, example_server):
    url = f"{example_server.base_url}/chat/"
    browser.get(url)
    first = ChatWindow(browser, browser.current_window_handle)
    browser.switch_to.new_window("window")
    browser.get(url)
    second = ChatWindow(browser, browser.current_window_handle)
    first.wait_connected(1)
    second.wait_connected(1)

    before = f"before restart {uuid.uuid4().hex[:8]}"
    first.type_message(before)
    first.wait_message(before)
    second.wait_message(before)

    example_server.stop()
    wait_until(browser, lambda _: first.connections() == 0 and second.connections() == 0,
               "the pages did not notice that the server went away")
    example_server.start()
    first.wait_connected(2)
    second.wait_connected(2)

    after = f"after restart {uuid.uuid4().hex[:8]}"
    second.type_message(after)
    second.wait_message(after)
    first.wait_message(after)
    assert first.messages().count(after) == 1
    assert second.messages().count(after) == 1

    browser.close()
    browser.switch_to.window(first.handle)


def test_the_user_chat_says_why_a_message_was_not_sent(browser, example_server):
    """The server's own refusal, a lost login and an unreachable server each read as what they are,
    the badge counts down to the next attempt, and no promise is left rejected in the console."""
    from selenium.webdriver.common.by import By

    browser.get(f"{example_server.base_url}/accounts/login/")
    browser.find_element(By.NAME, "username").send_keys("john")
    browser.find_element(By.NAME, "password").send_keys("john")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_until(browser, lambda driver: driver.current_url.endswith("/userchat/"), "john was not logged in")
    page = ChatWindow(browser, browser.current_window_handle)
    page.wait_connected(1)
    browser.get_log("browser")  # what came before is not this test's

    def send(text: str) -> None:
        field = browser.find_element(By.ID, "text_message")
        field.clear()
        field.send_keys(text)
        browser.find_element(By.ID, "send_message").click()

    def shown(expected: str) -> None:
        wait_until(browser, lambda driver: expected in driver.find_element(By.ID, "send-error").text,
                   f"the page did not say {expected!r}")

    def badge() -> tuple[str, str]:
        element = browser.find_element(By.ID, "ws-status")
        return element.get_attribute("data-state"), element.text

    browser.execute_script(
        "var option = new Option('nobody', 'user:nobody'), select = document.getElementById('recipient');"
        "select.add(option); select.value = 'user:nobody';"
    )
    send("to nobody")
    shown("Not sent: no such recipient: 'user:nobody'")
    assert badge()[0] == "connected"

    browser.delete_cookie("sessionid")
    send("after the session is gone")
    shown("You were logged out: reload the page to log in again.")

    example_server.stop()
    try:
        wait_until(browser, lambda _: badge()[1].startswith("disconnected, reconnecting in "),
                   "the badge did not count down to the next attempt")
        send("while the server is away")
        shown("Cannot reach the server: the message was not sent.")
    finally:
        example_server.start()
    uncaught = [entry["message"] for entry in browser.get_log("browser") if "Uncaught" in entry["message"]]
    assert not uncaught, uncaught


def test_the_dashboard_updates_every_tab_and_counts_them(browser, example_server):
    """The live dashboard in two windows: both draw the same stream of updates, count two tabs,
    draw the ticker with its sparklines, and leave nothing in the console."""
    url = f"{example_server.base_url}/dashboard/"
    browser.get(url)
    browser.get_log("browser")  # only what this test's pages log counts
    windows = [browser.current_window_handle]
    browser.switch_to.new_window("window")
    browser.get(url)
    windows.append(browser.current_window_handle)

    def state(handle: str) -> dict:
        browser.switch_to.window(handle)
        return browser.execute_script(
            "return {seq: Number(document.body.dataset.seq || 0),"
            " watching: Number(document.getElementById('watching').textContent),"
            " rows: document.querySelectorAll('#ticker tbody tr').length,"
            " sparks: document.querySelectorAll('#ticker svg polyline').length,"
            " received: Number(document.getElementById('received').textContent)};"
        )

    for handle in windows:
        wait_until(browser, lambda _, handle=handle: state(handle)["watching"] >= 2,
                   "a dashboard tab never counted two tabs watching")
    start = {handle: state(handle) for handle in windows}
    for handle in windows:
        wait_until(browser, lambda _, handle=handle: state(handle)["seq"] >= start[handle]["seq"] + 3,
                   "a dashboard tab stopped getting updates")
        now = state(handle)
        assert now["rows"] == 4 and now["sparks"] == 4, now
        assert now["received"] >= start[handle]["received"] + 3, now
    severe = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]
    assert severe == []

    browser.close()
    browser.switch_to.window(windows[0])


def test_example_server_answers_heartbeats(browser, example_server):
    """ws4redis.js and the real server agree on WS4REDIS_HEARTBEAT: replies keep the socket, none is shown."""
    browser.get(f"{example_server.base_url}/chat/")
    uri = f"ws://127.0.0.1:{example_server.port}/ws/heartbeat-check?subscribe-broadcast"
    log = browser.execute_async_script(
        """
        var uri = arguments[0], done = arguments[arguments.length - 1], log = [];
        var client = WS4Redis({
            uri: uri, heartbeat_msg: '--heartbeat--', heartbeat_interval: 100, max_missed_heartbeats: 5,
            connecting: function (n) { log.push(['connecting', n]); },
            connected: function () { log.push(['connected']); },
            disconnected: function (evt) { log.push(['disconnected', evt.code, evt.reason]); },
            receive_message: function (msg) { log.push(['message', msg]); }
        });
        // twenty heartbeats; an unanswered sixth would have dropped the connection
        setTimeout(function () { client.close(); done(log); }, 2000);
        """,
        uri,
    )
    assert log == [["connecting", 1], ["connected"]]


class ScriptedWebsocketServer:
    """A websockets server on 127.0.0.1 whose behaviour is chosen by the request path.

    /echo sends every message back, /silent never answers, /binary sends one
    binary frame after the handshake, /unavailable refuses its first
    REFUSALS handshakes with the 503 ws4redis answers while Redis or the
    session store is unreachable, then echoes. Each path records what it received.
    Plain HTTP GETs of /page and /ws4redis.js serve a page that loads the
    client with a <script> tag: Chromium refuses websockets to 127.0.0.1 from
    pages of other origins (local network access checks).
    """

    PAGE = '<!DOCTYPE html><title>ws4redis.js</title><script src="/ws4redis.js"></script>'

    BINARY_PAYLOAD = bytes([0, 1, 127, 128, 255])
    REFUSALS = 2

    def __init__(self):
        from websockets.sync.server import serve

        self.connections: collections.Counter[str] = collections.Counter()
        self.received: dict[str, list] = collections.defaultdict(list)
        self.refused = 0
        self._lock = threading.Lock()
        self._server = serve(
            self._handle,
            "127.0.0.1",
            0,
            compression=None,
            ping_interval=None,
            process_request=self._serve_page,
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def uri(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    @property
    def page_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/page"

    def _serve_page(self, connection, request):
        files = {
            "/page": (self.PAGE, "text/html; charset=utf-8"),
            "/ws4redis.js": (WS4REDIS_JS.read_text(), "text/javascript; charset=utf-8"),
        }
        if request.path == "/unavailable" and self.refused < self.REFUSALS:
            from ws4redis.constants import BROKER_UNREACHABLE_TEXT

            with self._lock:
                self.refused += 1
            return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, BROKER_UNREACHABLE_TEXT + "\n")
        if request.path not in files:
            return None
        body, content_type = files[request.path]
        response = connection.respond(HTTPStatus.OK, body)
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = content_type
        return response

    def _handle(self, connection) -> None:
        from websockets.exceptions import ConnectionClosed

        path = connection.request.path
        with self._lock:
            self.connections[path] += 1
        if path == "/binary":
            connection.send(self.BINARY_PAYLOAD)
        tokened = [seen for seen in self.connections if seen.startswith("/tokened?")]
        if path.startswith("/tokened?") and len(tokened) == 1:
            connection.close(1012, "service restart")  # the first one goes: the client must reconnect
            return
        try:
            for message in connection:
                with self._lock:
                    self.received[path].append(message)
                if path in ("/echo", "/unavailable"):
                    connection.send(message)
        except ConnectionClosed:
            return

    def __enter__(self) -> ScriptedWebsocketServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._server.shutdown()
        self._thread.join(WAIT)


@pytest.fixture
def scripted_server():
    with ScriptedWebsocketServer() as server:
        yield server


@pytest.fixture
def client_page(browser, scripted_server):
    """A page that loads ws4redis.js by <script>, with a `log` array that the client's callbacks fill."""
    browser.get(scripted_server.page_url)
    assert browser.execute_script("return typeof WS4Redis;") == "function"
    browser.execute_script(
        """
        window.log = [];
        window.callbacks = {
            connecting: function (n) { log.push(['connecting', n]); },
            connected: function () { log.push(['connected']); },
            disconnected: function (evt) { log.push(['disconnected', evt.code, evt.reason]); },
            receive_message: function (msg) {
                if (typeof msg === 'string') {
                    log.push(['text', msg]);
                } else if (msg instanceof ArrayBuffer) {
                    log.push(['arraybuffer', Array.from(new Uint8Array(msg))]);
                } else {
                    log.push(['other', Object.prototype.toString.call(msg), msg.size]);
                }
            }
        };
        window.start = function (options) {
            window.client = WS4Redis(Object.assign({}, callbacks, options));
        };
        """
    )
    yield browser
    browser.execute_script("if (window.client) { window.client.close(); }")


def client_log(driver) -> list[list]:
    return driver.execute_script("return window.log;")


def wait_for_entry(driver, entry: list, message: str) -> None:
    wait_until(driver, lambda d: entry in client_log(d), message)


def test_missing_heartbeat_replies_drop_and_reconnect(client_page, scripted_server):
    client_page.execute_script(
        "start({uri: arguments[0], heartbeat_msg: '--hb--', heartbeat_interval: 100,"
        " max_missed_heartbeats: 2, reconnect_base_delay: 50});",
        scripted_server.uri("/silent"),
    )
    wait_for_entry(client_page, ["connecting", 2], "the client did not reconnect after unanswered heartbeats")
    wait_for_entry(client_page, ["disconnected", 1006, "missed heartbeats"], "no disconnect was reported")
    log = client_log(client_page)
    assert log[:3] == [["connecting", 1], ["connected"], ["disconnected", 1006, "missed heartbeats"]]
    assert scripted_server.received["/silent"][:2] == ["--hb--", "--hb--"]
    wait_until(client_page, lambda _: scripted_server.connections["/silent"] >= 2, "no reconnect arrived")


def test_answered_heartbeats_keep_the_connection_and_stay_hidden(client_page, scripted_server):
    client_page.execute_script(
        "start({uri: arguments[0], heartbeat_msg: '--hb--', heartbeat_interval: 100,"
        " max_missed_heartbeats: 5});",
        scripted_server.uri("/echo"),
    )
    wait_until(
        client_page,
        lambda _: scripted_server.received["/echo"].count("--hb--") >= 8,
        "the client did not keep sending heartbeats",
    )
    assert client_page.execute_script("return client.send_message('hello');") is True
    wait_for_entry(client_page, ["text", "hello"], "an ordinary message was not delivered")
    log = client_log(client_page)
    assert log == [["connecting", 1], ["connected"], ["text", "hello"]]
    assert scripted_server.connections["/echo"] == 1


def test_binary_frames_arrive_as_arraybuffer_or_blob(client_page, scripted_server):
    payload = list(ScriptedWebsocketServer.BINARY_PAYLOAD)
    client_page.execute_script("start({uri: arguments[0]});", scripted_server.uri("/binary"))
    wait_for_entry(client_page, ["arraybuffer", payload], "the binary frame did not arrive as an ArrayBuffer")
    client_page.execute_script(
        "client.close(); log.length = 0; start({uri: arguments[0], binary_type: 'blob'});",
        scripted_server.uri("/binary"),
    )
    wait_for_entry(client_page, ["other", "[object Blob]", len(payload)], "the binary frame was no Blob")


def test_close_stops_reconnecting_and_sending(client_page, scripted_server):
    client_page.execute_script(
        "start({uri: arguments[0], reconnect_base_delay: 20});", scripted_server.uri("/echo")
    )
    wait_for_entry(client_page, ["connected"], "the client did not connect")
    client_page.execute_script("client.close();")
    wait_for_entry(client_page, ["disconnected", 1000, ""], "close() did not close the socket normally")
    assert client_page.execute_script("return client.send_message('late');") is False
    assert client_page.execute_script("return client.get_state();") == 3
    # Ten times the first backoff: a scheduled reconnect would have happened by now.
    client_page.execute_async_script("setTimeout(arguments[arguments.length - 1], 200);")
    assert [entry for entry in client_log(client_page) if entry[0] == "connecting"] == [["connecting", 1]]
    assert scripted_server.connections["/echo"] == 1


def test_a_503_refusal_is_retried_until_the_server_accepts(client_page, scripted_server):
    """While Redis or the session store is away, ws4redis servers answer 503: the client keeps trying."""
    client_page.execute_script(
        "start({uri: arguments[0], reconnect_base_delay: 50});", scripted_server.uri("/unavailable")
    )
    wait_for_entry(client_page, ["connected"], "the client did not connect after the 503s")
    assert scripted_server.refused == ScriptedWebsocketServer.REFUSALS
    attempts = [entry for entry in client_log(client_page) if entry[0] == "connecting"]
    assert len(attempts) == ScriptedWebsocketServer.REFUSALS + 1
    client_page.execute_script("client.send_message('through');")
    wait_for_entry(client_page, ["text", "through"], "the connection after the 503s does not carry messages")
    assert scripted_server.connections["/unavailable"] == 1


def test_a_fresh_token_is_asked_for_before_every_attempt(client_page, scripted_server):
    client_page.execute_script(
        """
        window.issued = 0;
        start({uri: arguments[0], reconnect_base_delay: 50, token: function () {
            issued += 1;
            if (issued === 2) { return Promise.reject(new Error('token service down')); }
            return new Promise(function (resolve) { setTimeout(resolve, 10, 'tok/' + issued); });
        }});
        """,
        scripted_server.uri("/tokened?subscribe-user"),
    )
    wait_for_entry(client_page, ["connected"], "the client did not connect with a token")
    wait_until(client_page, lambda driver: [entry[0] for entry in client_log(driver)].count("connected") == 2,
               "the client did not reconnect after the server closed the first connection")
    # tok/1 was closed by the server, the second token failed (an attempt with backoff), tok/3 holds.
    assert list(scripted_server.connections) == ["/tokened?subscribe-user&token=tok%2F1",
                                                 "/tokened?subscribe-user&token=tok%2F3"]
    disconnects = [entry for entry in client_log(client_page) if entry[0] == "disconnected"]
    assert disconnects[:2] == [["disconnected", 1012, "service restart"], ["disconnected", 1006, "no token"]]
    client_page.execute_script("client.send_message('with a token');")
    wait_until(client_page, lambda driver: scripted_server.received["/tokened?subscribe-user&token=tok%2F3"],
               "the connection opened with the third token does not carry messages")


def test_send_while_disconnected_reports_false(client_page):
    port = free_port()
    client_page.execute_script(
        "start({uri: arguments[0], reconnect_base_delay: 20, reconnect_max_delay: 40});", f"ws://127.0.0.1:{port}/"
    )
    wait_for_entry(client_page, ["connecting", 3], "the client did not keep retrying a closed port")
    assert client_page.execute_script("return client.send_message('lost?');") is False
    assert ["connected"] not in client_log(client_page)


def test_backoff_doubles_up_to_the_cap_with_jitter(client_page):
    low, high = client_page.execute_script(
        """
        var low = [], high = [];
        for (var attempt = 1; attempt <= 12; attempt++) {
            low.push(WS4Redis.reconnect_delay(attempt, 500, 30000, function () { return 0; }));
            high.push(WS4Redis.reconnect_delay(attempt, 500, 30000, function () { return 0.999999; }));
        }
        return [low, high];
        """
    )
    expected = [min(30000, 500 * 2 ** (attempt - 1)) for attempt in range(1, 13)]
    assert low == [delay / 2 for delay in expected]
    assert [round(value) for value in high] == expected
    assert max(high) <= 30000


def test_bad_options_fail_loudly(client_page):
    errors = client_page.execute_script(
        """
        function error(options) { try { WS4Redis(options); return null; } catch (e) { return e.message; } }
        return [error({}), error({uri: 'ws://127.0.0.1:1/', binary_type: 'text'}),
                error({uri: 'ws://127.0.0.1:1/', token: 'a string'})];
        """
    )
    assert "uri" in errors[0]
    assert "binary_type" in errors[1]
    assert "token must be a function" in errors[2]
