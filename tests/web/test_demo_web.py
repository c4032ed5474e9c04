"""``shaping demo --web`` (issue 15, item 7): the demo, then the page served on its SQLite
tables and log, with a demo login whose one-time password is printed."""

from __future__ import annotations

import re
import stat
import time
from pathlib import Path

import httpx

from shaping.services.web.users import UsersFile
from tests.support.processes import shaping_process
from tests.web.browsing import free_port, wait_up

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _printed_password(log: Path, timeout_s: float = 120.0) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = re.search(r"one-time password (\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.3)
    raise AssertionError(f"no demo password printed:\n{log.read_text(errors='replace')}")


def test_the_demo_serves_the_page_with_a_one_time_demo_login(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    port = free_port()
    log = tmp_path / "demo.log"
    args = ["demo", "--out", str(out), "--mice", "2", "--rigs", "1", "--days", "2"]
    with shaping_process([*args, "--web", "--web-port", str(port)], log):
        password = _printed_password(log)
        url = f"http://127.0.0.1:{port}"
        wait_up(url, log, 120.0)
        printed = log.read_text()
        assert "DEMO ONLY: log in as demo (a lab manager)" in printed
        assert f"commands go to the embedded log {out / 'events.jsonl'}" in printed
        users = out / "web-users.json"
        assert stat.S_IMODE(users.stat().st_mode) == 0o600
        assert password not in users.read_text()  # only its hash
        assert UsersFile(users).get("demo") is not None

        with httpx.Client(base_url=url, follow_redirects=True) as client:
            token = CSRF.findall(client.get("/login").text)[0]
            refused = client.post(
                "/login", data={"name": "demo", "password": "not-it-at-all", "csrf": token}
            )
            assert refused.status_code == 401
            page = client.post("/login", data={"name": "demo", "password": password, "csrf": token})
            assert page.status_code == 200 and 'id="whoami">demo' in page.text
            mice = re.findall(r'data-mouse="([^"]+)"', page.text)
            assert sorted(mice) == ["M001", "M002"]
            mouse = client.get("/mice/M001").text
            assert '<svg class="curve weight"' in mouse and 'id="weigh-form"' in mouse
