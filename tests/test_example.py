"""examples/run.py, the README's first command, run as a subprocess like a user would.

No Redis answers at the configured address, so run.py must start its own
redis-server; the tests then use the chat over real HTTP and websockets and
finally check that SIGTERM stops run.py together with the redis it started.
The tests share one run.py process and run in file order; the shutdown test
comes last.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from websockets.sync.client import connect

from ws4redis.embedded_redis import free_port, redis_answers, stop_process

ROOT = Path(__file__).resolve().parent.parent
RUN_PY = ROOT / "examples" / "run.py"
STARTUP_TIMEOUT = 120.0  # migrate and loaddata on a busy 2-core machine
TIMEOUT = 15.0
HEARTBEAT = "--heartbeat--"  # WS4REDIS_HEARTBEAT of the example settings


class RunPy:
    """examples/run.py as a child process, with its output collected line by line."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.redis_port = free_port()
        if redis_answers("127.0.0.1", self.redis_port):
            pytest.fail(f"something already answers on the free port {self.redis_port}", pytrace=False)
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)
        env["WS4REDIS_EXAMPLE_REDIS"] = f"127.0.0.1:{self.redis_port}"
        env["CHATSERVER_DB"] = str(tmp_path / "db.sqlite3")
        self.process = subprocess.Popen(
            [sys.executable, str(RUN_PY), "--port", str(self.port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float) -> re.Match:
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines:
                    match = re.search(pattern, line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.process.poll() is not None and self.process.stdout.closed):
                    pytest.fail(f"run.py never printed /{pattern}/:\n{self.output}", pytrace=False)
                self._changed.wait(min(remaining, 0.5))

    def stop(self) -> None:
        stop_process(self.process, TIMEOUT)


@pytest.fixture(scope="module")
def run_py(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("run_py")
    started = RunPy(tmp_path)
    try:
        started.wait_for_line(r"serving the chat at http://localhost:\d+/chat/", STARTUP_TIMEOUT)
        yield started
    finally:
        started.stop()


def base_url(run_py: RunPy) -> str:
    return f"http://127.0.0.1:{run_py.port}"


class Browser:
    """A cookie-keeping HTTP client, enough to log in through Django's login form."""

    def __init__(self, base: str):
        self.base = base
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.cookies))

    def get(self, path: str) -> tuple[int, str, str]:
        with self.opener.open(self.base + path, timeout=TIMEOUT) as response:
            return response.status, response.geturl(), response.read().decode()

    def post(self, path: str, fields: dict[str, str]) -> tuple[int, str, str]:
        data = urllib.parse.urlencode({**fields, "csrfmiddlewaretoken": self.cookie("csrftoken")}).encode()
        request = urllib.request.Request(self.base + path, data=data, headers={"Referer": self.base + path})
        try:
            with self.opener.open(request, timeout=TIMEOUT) as response:
                return response.status, response.geturl(), response.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.geturl(), error.read().decode()

    def cookie(self, name: str) -> str:
        for cookie in self.cookies:
            if cookie.name == name:
                return cookie.value
        raise AssertionError(f"no {name} cookie; have {[c.name for c in self.cookies]}")

    def login(self, username: str, password: str) -> str:
        self.get("/accounts/login/")
        return self.post("/accounts/login/", {"username": username, "password": password})


def receive_text(websocket, timeout: float = TIMEOUT) -> str:
    """The next message that is not a heartbeat."""
    deadline = time.monotonic() + timeout
    while True:
        message = websocket.recv(timeout=max(deadline - time.monotonic(), 0.01))
        if message != HEARTBEAT:
            return message


def receive_until(websocket, expected, timeout: float = TIMEOUT) -> list:
    """Read until ``expected(message)`` holds; return everything read. Fails after ``timeout``."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = receive_text(websocket, deadline - time.monotonic())
        except TimeoutError:
            break
        seen.append(message)
        if expected(message):
            return seen
    pytest.fail(f"the expected message did not arrive; received {seen!r}", pytrace=False)


def test_run_py_started_its_own_redis_server(run_py):
    match = run_py.wait_for_line(r"nothing answered at .*; started (\S+) \(pid (\d+)\)", TIMEOUT)
    client = redis.Redis(host="127.0.0.1", port=run_py.redis_port)
    try:
        info = client.info("server")
    finally:
        client.close()
    assert info["process_id"] == int(match.group(2))
    assert info["tcp_port"] == run_py.redis_port
    with open(f"/proc/{info['process_id']}/stat") as stat:
        parent_pid = int(stat.read().rsplit(")", 1)[1].split()[1])
    assert parent_pid == run_py.process.pid


def test_chat_page_names_the_websocket_uri(run_py):
    status, _, body = Browser(base_url(run_py)).get("/chat/")
    assert status == 200
    assert f"ws://127.0.0.1:{run_py.port}/ws/chat?subscribe-broadcast&publish-broadcast&echo" in body
    assert "/static/js/ws4redis.js" in body
    status, _, script = Browser(base_url(run_py)).get("/static/js/ws4redis.js")
    assert status == 200
    assert "function WS4Redis(options)" in script


def test_broadcast_reaches_another_websocket_client(run_py):
    uri = f"ws://127.0.0.1:{run_py.port}/ws/chat?subscribe-broadcast&publish-broadcast"
    text = f"hello from the test {uuid.uuid4().hex}"
    with connect(uri, open_timeout=TIMEOUT) as listener, connect(uri, open_timeout=TIMEOUT) as sender:
        sender.send(text)
        assert receive_until(listener, lambda message: message == text)[-1] == text


def test_login_and_messages_to_a_user_and_a_group(run_py):
    john = Browser(base_url(run_py))
    status, url, _ = john.login("john", "john")
    assert status == 200 and url.endswith("/userchat/"), url
    status, _, page = john.get("/userchat/")
    assert status == 200 and ">john</strong>" in page

    mary = Browser(base_url(run_py))
    status, _, body = mary.login("mary", "not her password")
    # One message, Django's, not a second one of the template's beside it.
    assert "Please enter a correct username and password" in body and body.count("error") == 1, body
    status, url, _ = mary.login("mary", "mary")
    assert url.endswith("/userchat/"), url

    uri = f"ws://127.0.0.1:{run_py.port}/ws/userchat?subscribe-user&subscribe-group"

    def open_socket(browser: Browser):
        cookie = f"sessionid={browser.cookie('sessionid')}"
        return connect(uri, additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT)

    with open_socket(john) as johns_socket, open_socket(mary) as marys_socket:
        sent = []
        for target in ("user:john", "group:friends"):
            text = f"to {target} {uuid.uuid4().hex}"
            status, _, answer = mary.post("/userchat/", {"to": target, "message": text})
            assert status == 200, answer
            sent.append(text)
            # the recipient gets it, and so does the sender's page
            for socket in (johns_socket, marys_socket):
                received = receive_until(socket, lambda message, text=text: text in message)
                assert json.loads(received[-1]) == {"from": "mary", "to": target, "text": text}
        # Nothing arrives twice: a duplicate would come before this last message.
        last = f"last {uuid.uuid4().hex}"
        assert mary.post("/userchat/", {"to": "user:john", "message": last})[0] == 200
        for socket in (johns_socket, marys_socket):
            before_last = receive_until(socket, lambda message: last in message)[:-1]
            assert not [message for message in before_last if any(text in message for text in sent)]

    status, _, answer = mary.post("/userchat/", {"to": "user:nobody", "message": "hi"})
    assert status == 400 and "no such recipient" in json.loads(answer)["error"]


def run_again(run_py: RunPy, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    """run.py once more, on the first one's Redis, until it exits (or is stopped after a while)."""
    env = dict(os.environ)
    env.pop("DJANGO_SETTINGS_MODULE", None)
    env["WS4REDIS_EXAMPLE_REDIS"] = f"127.0.0.1:{run_py.redis_port}"
    env["CHATSERVER_DB"] = str(tmp_path / "db.sqlite3")
    return subprocess.run([sys.executable, str(RUN_PY), *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=STARTUP_TIMEOUT)


def test_the_dashboard_feed_reaches_every_open_tab_from_one_publish(run_py):
    """run.py also starts the dashboard's publisher: every websocket on /ws/dashboard gets each update
    (the same sequence numbers, in order), and the updates count the websockets Redis sees."""
    status, _, page = Browser(base_url(run_py)).get("/dashboard/")
    assert status == 200
    assert f"ws://127.0.0.1:{run_py.port}/ws/dashboard?subscribe-broadcast" in page
    assert "/static/chatserver/dashboard.js" in page

    uri = f"ws://127.0.0.1:{run_py.port}/ws/dashboard?subscribe-broadcast"
    with contextlib.ExitStack() as stack:
        tabs = [stack.enter_context(connect(uri, open_timeout=TIMEOUT)) for _ in range(3)]
        # Once an update has counted all three, the next ones reach all three.
        counted = receive_until(tabs[0], lambda message: json.loads(message)["watching"] >= 3)
        first_seq = json.loads(counted[-1])["seq"]
        seen = []
        for number, tab in enumerate(tabs):
            read = (counted if number == 0 else []) + receive_until(
                tab, lambda message: json.loads(message)["seq"] >= first_seq + 3
            )
            updates = [json.loads(message) for message in read]
            sequence = [update["seq"] for update in updates if update["seq"] >= first_seq]
            assert sequence == sorted(set(sequence)), "updates arrived out of order or twice"
            seen.append(sequence[:4])
            assert all(update["watching"] >= 3 for update in updates if update["seq"] > first_seq)
            assert set(updates[-1]["quotes"]) == {"WSR", "DJG", "RDS", "GEV"}
        assert seen[0] == seen[1] == seen[2] == list(range(first_seq, first_seq + 4))


def test_a_second_run_on_a_taken_port_says_so_instead_of_serving(run_py, tmp_path):
    chat = redis.Redis(port=run_py.redis_port)
    try:
        chat.set("chatdemo:broadcast:chat", "kept by the first run")
        second = run_again(run_py, tmp_path, "--port", str(run_py.port))
        assert second.returncode == 1, second
        assert f"port {run_py.port} on 127.0.0.1 is already in use" in second.stderr, second
        assert "serving" not in second.stdout
        assert chat.get("chatdemo:broadcast:chat") == b"kept by the first run", "the first run is left alone"
    finally:
        chat.close()


def test_a_run_on_an_existing_redis_names_it_and_starts_without_old_messages(run_py, tmp_path):
    """Another run.py finds the first one's Redis: it says which database and keys it uses, and the
    chat messages kept there by the earlier run are gone, so a new page starts empty."""
    chat = redis.Redis(port=run_py.redis_port)
    try:
        chat.set("chatdemo:broadcast:chat", "stale")
        chat.set("other:key", "not the example's")
        process = subprocess.Popen(
            [sys.executable, str(RUN_PY), "--port", str(free_port())], cwd=tmp_path, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
            env={**{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
                 "WS4REDIS_EXAMPLE_REDIS": f"127.0.0.1:{run_py.redis_port}",
                 "CHATSERVER_DB": str(tmp_path / "db.sqlite3")},
        )
        try:
            lines = []
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while not any("serving the chat" in line for line in lines) and time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line:
                    break
                lines.append(line)
        finally:
            stop_process(process, TIMEOUT)
        output = "".join(lines)
        assert f"using the Redis at 127.0.0.1:{run_py.redis_port}/0 (database 0; the chat's keys start " \
               "with chatdemo:" in output, output
        removed = re.search(r"removed (\d+) chat message\(s\) an earlier run kept in Redis", output)
        assert removed and int(removed.group(1)) >= 1, output
        assert "serving the chat" in output, output
        assert chat.get("chatdemo:broadcast:chat") is None and chat.get("other:key") == b"not the example's"
    finally:
        chat.delete("other:key")
        chat.close()


def test_sigterm_stops_run_py_and_its_redis(run_py):
    match = run_py.wait_for_line(r"started \S+ \(pid (\d+)\)", TIMEOUT)
    redis_pid = int(match.group(1))
    assert Path(f"/proc/{redis_pid}").exists()
    run_py.process.send_signal(signal.SIGTERM)
    assert run_py.process.wait(TIMEOUT) == 0, run_py.output
    assert not Path(f"/proc/{redis_pid}").exists(), "the redis-server started by run.py is still running"
    assert not redis_answers("127.0.0.1", run_py.redis_port)
    with pytest.raises(OSError):
        urllib.request.urlopen(base_url(run_py) + "/chat/", timeout=2)
