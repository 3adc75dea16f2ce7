"""The deployment page's nginx configuration works as printed: a real nginx, configured with the
block of docs/deployment.md ("Behind nginx"), carries TLS websockets to the gevent server and
plain requests to Django.

Only what a reader must change is changed: the upstream ports (free ones here), the listen
address, the certificate lines a real site adds next to ``listen 443 ssl`` (a test CA's, from
trustme) and the static directory. nginx runs in the foreground from a scratch directory.
"""

from __future__ import annotations

import re
import shutil
import ssl
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
from websockets.sync.client import connect

from tests.polling import wait_until
from tests.servers import STARTERS, Site, serving
from ws4redis.embedded_redis import free_port, stop_process

pytestmark = pytest.mark.once  # the same in both suite runs: tests/run.py runs it once

ROOT = Path(__file__).resolve().parent.parent
DEPLOYMENT = ROOT / "docs" / "deployment.md"
TIMEOUT = 15.0


def documented_block() -> str:
    """The nginx block under "### Behind nginx" in docs/deployment.md, as printed."""
    page = DEPLOYMENT.read_text()
    section = page[page.index("### Behind nginx"):]
    return re.search(r"```nginx\n(.*?)```", section, re.DOTALL).group(1)


def adapted(block: str, *, app_port: int, listen_port: int, cert: Path, key: Path, static: Path) -> str:
    """The block with the reader's own values filled in; each replacement must find its line."""
    replacements = [
        ("server 127.0.0.1:8001;", f"server 127.0.0.1:{app_port};"),  # the websocket server
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{app_port};"),  # Django (the same process here)
        ("listen 443 ssl;", f"listen 127.0.0.1:{listen_port} ssl;\n    ssl_certificate {cert};\n"
                            f"    ssl_certificate_key {key};"),
        ("alias /srv/myproject/static/;", f"alias {static}/;"),
    ]
    for documented, local in replacements:
        assert documented in block, f"docs/deployment.md no longer has {documented!r}: update this test"
        block = block.replace(documented, local)
    return block


@pytest.fixture
def nginx_in_front(redis_server, tmp_path):
    nginx = shutil.which("nginx") or next(
        (path for path in ("/usr/sbin/nginx", "/sbin/nginx") if Path(path).exists()), None
    )
    if nginx is None:
        pytest.fail("this test needs nginx (apt-get install nginx; tests/run.py installs it)", pytrace=False)
    import trustme

    ca = trustme.CA()
    certificate = ca.issue_cert("127.0.0.1", "localhost")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    certificate.private_key_pem.write_to_path(key)
    certificate.cert_chain_pems[0].write_to_path(cert)
    static = tmp_path / "static"
    static.mkdir()
    (static / "hello.txt").write_text("static hello\n")

    site = Site(redis_server.url)
    with serving(STARTERS["gevent"](site)) as app:
        port = free_port()
        config = tmp_path / "nginx.conf"
        config.write_text(
            f"daemon off;\nmaster_process off;\npid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
            "events {}\n"
            f"http {{\n  access_log {tmp_path}/access.log;\n  client_body_temp_path {tmp_path}/body;\n"
            f"  proxy_temp_path {tmp_path}/proxy;\n"
            + adapted(documented_block(), app_port=app.port, listen_port=port, cert=cert, key=key,
                      static=static)
            + "\n}\n"
        )
        process = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(config)],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            context = ssl.create_default_context()
            ca.configure_trust(context)
            base = f"https://127.0.0.1:{port}"

            def answers() -> bool:
                if process.poll() is not None:
                    log = tmp_path / "error.log"
                    pytest.fail(f"nginx exited: {process.stdout.read().decode(errors='replace')}\n"
                                f"{log.read_text() if log.exists() else ''}", pytrace=False)
                try:
                    urllib.request.urlopen(f"{base}/static/hello.txt", context=context, timeout=2).close()
                except OSError:
                    return False
                return True

            wait_until(answers, TIMEOUT, "nginx did not answer")
            yield base, f"wss://127.0.0.1:{port}", context
        finally:
            stop_process(process, TIMEOUT)
    site.cleanup()


def test_the_documented_nginx_block_carries_websockets_django_and_static_files(nginx_in_front):
    base, wss, context = nginx_in_front
    with urllib.request.urlopen(f"{base}/static/hello.txt", context=context, timeout=TIMEOUT) as answer:
        assert answer.read() == b"static hello\n"
    with urllib.request.urlopen(f"{base}/ping", context=context, timeout=TIMEOUT) as answer:
        assert answer.read() == b"pong"

    facility = f"deploy-{uuid.uuid4().hex[:8]}"
    with connect(f"{wss}/ws/{facility}?subscribe-broadcast", ssl=context, open_timeout=TIMEOUT) as websocket:
        text = f"through nginx {uuid.uuid4().hex}"
        deadline = time.monotonic() + TIMEOUT
        # Django's view publishes (reached through nginx's "location /"), the websocket gets it
        # through "location /ws/".
        while True:
            url = f"{base}/publish?facility={facility}&message={urllib.request.quote(text)}"
            with urllib.request.urlopen(url, context=context, timeout=TIMEOUT) as answer:
                if answer.read().startswith(b"1 receivers"):
                    break
            assert time.monotonic() < deadline, "the websocket's subscription never reached Redis"
            time.sleep(0.05)
        assert websocket.recv(timeout=TIMEOUT) == text
