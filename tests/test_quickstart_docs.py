"""docs/quickstart.md's "Your first project", done as a new user does it, block by block.

``django-admin startproject``, the settings appended as printed, the template and urls.py as
printed, ``migrate``, ``runserver``, the page in headless Chromium, and the publishing command
run in a shell as printed. Changed: the Redis port (the suite's own Redis, not 6379),
runserver's address (a free port), and ``python`` is this virtualenv's. The ``pip install`` line
is not run: the suite runs in the environment it installed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from tests.chromium import browser_driver, wait_until
from ws4redis.embedded_redis import free_port, stop_process

pytestmark = [pytest.mark.browser, pytest.mark.once]

ROOT = Path(__file__).resolve().parent.parent
QUICKSTART = ROOT / "docs" / "quickstart.md"
TIMEOUT = 120.0


def blocks() -> list[tuple[str, str]]:
    """(language, code) of each fenced block of the "Your first project" section, in order."""
    page = QUICKSTART.read_text()
    section = page[page.index("## Your first project"):page.index("## The example project")]
    return re.findall(r"```(\w+)\n(.*?)```", section, re.DOTALL)


def shell(command: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(["bash", "-euc", command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=TIMEOUT)
    assert result.returncode == 0, f"{command!r} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_the_quickstart_project_shows_a_published_message_in_the_browser(redis_server, tmp_path):
    assert [language for language, _ in blocks()] == ["bash", "python", "html", "python", "bash", "bash"]
    create, settings, template, urls, run, publish = [code for _, code in blocks()]
    env = {
        **{k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"},
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",  # `python`, `django-admin`
        "PYTHONPATH": str(ROOT),  # this checkout's ws4redis, as the editable install has it
    }

    # Create it: everything but `pip install`.
    creating = [line for line in create.splitlines() if line and not line.startswith("pip install")]
    assert creating == ["django-admin startproject mysite", "cd mysite"]
    shell(creating[0], tmp_path, env)
    project = tmp_path / "mysite"

    # Configure Django: the block appended to settings.py, pointed at the suite's Redis.
    port = str(redis_server.port)
    assert settings.count("6379") == 2
    with open(project / "mysite" / "settings.py", "a") as file:
        file.write("\n" + settings.replace("6379", port))
    (project / "templates").mkdir()
    (project / "templates" / "news.html").write_text(template)
    (project / "mysite" / "urls.py").write_text(urls)

    # Run it: migrate as printed, runserver on a free port.
    commands = run.strip().splitlines()
    assert commands == ["python manage.py migrate", "python manage.py runserver"]
    shell(commands[0], project, env)
    http_port = free_port()
    server = subprocess.Popen(
        ["bash", "-c", f"exec {commands[1]} 127.0.0.1:{http_port} --noreload"], cwd=project, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
    )
    client = redis.Redis(host=redis_server.host, port=redis_server.port)
    try:
        with browser_driver() as browser:
            wait_until(browser, lambda _: _listening(http_port) or server.poll() is not None,
                       "runserver did not start")
            assert server.poll() is None, server.stdout.read().decode(errors="replace")
            browser.get(f"http://127.0.0.1:{http_port}/news/")
            assert browser.find_element("id", "news").text == "waiting for news…"
            wait_until(browser, lambda _: dict(client.pubsub_numsub("mysite:broadcast:news"))
                       .get(b"mysite:broadcast:news", 0) >= 1, "the page never subscribed")

            shell(publish, project, env)

            wait_until(browser, lambda _: browser.find_element("id", "news").text == "Hello, browsers",
                       "the published message never reached the page")
            errors = [entry for entry in browser.get_log("browser") if entry["level"] == "SEVERE"
                      and "favicon.ico" not in entry["message"]]  # the page has no icon: a 404, no fault
            assert errors == []
    finally:
        client.close()
        stop_process(server, 10)


def _listening(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True
