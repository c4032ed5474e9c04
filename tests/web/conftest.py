"""A small embedded lab for the web page's tests: the demo's runtime, on SQLite, with a log
saved as JSON Lines; three users (a trainer, a husbandry keeper, a lab manager)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from selenium.webdriver.remote.webdriver import WebDriver
from starlette.testclient import TestClient

from shaping.rig.sim.lab import LabPlan
from shaping.schemas.commands import Command
from shaping.services.alerts.config import default_rules
from shaping.services.curricula.catalog import default_catalog
from shaping.services.embedded.demo import run_demo
from shaping.services.embedded.log import InProcessLog
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.operator.husbandry import (
    EmbeddedLab,
    build_restriction_start,
    build_weight,
    submit,
)
from shaping.services.operator.queries import open_database
from shaping.services.web.app import WebConfig, create_app
from shaping.services.web.commands import EmbeddedSender, Interventions
from shaping.services.web.metrics import WebMetrics
from shaping.services.web.users import UsersFile, session_secret
from tests.support.wiring import CODEC, sql_store

PASSWORDS = {"alice": "alice-password", "hugo": "hugo-password", "mia": "mia-password"}
ROLES = {"alice": "trainer", "hugo": "husbandry", "mia": "manager"}
PLAN = LabPlan(n_mice=4, n_rigs=2, n_days=3, seed=11)


@dataclass(frozen=True)
class Lab:
    """An embedded lab's files: the status tables, the log, the users and the secret."""

    folder: Path
    db_path: Path
    log_path: Path
    users_path: Path
    secret_path: Path

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.db_path}"

    def events(self) -> list[dict[str, object]]:
        """The decoded events of the saved log, in order."""
        lines = self.log_path.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]


@pytest.fixture(scope="session")
def demo_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One simulated lab, made once; each test gets a copy (:func:`lab`)."""
    folder = tmp_path_factory.mktemp("web-demo")
    run_demo(folder, PLAN)
    return folder


@pytest.fixture
def lab(demo_template: Path, tmp_path: Path) -> Lab:
    """A copy of the simulated lab with the three users."""
    folder = tmp_path / "lab"
    shutil.copytree(demo_template, folder)
    users_path = tmp_path / "users.json"
    users = UsersFile(users_path)
    for name, role in ROLES.items():
        users.put(name, role, PASSWORDS[name])
    return Lab(
        folder, folder / "shaping.sqlite", folder / "events.jsonl", users_path, tmp_path / "key"
    )


def embedded_sender(lab: Lab) -> EmbeddedSender:
    """Commands into the lab's log through the embedded runtime (as ``--embedded-log``)."""
    catalog = default_catalog()

    def runtime(path: Path) -> EmbeddedRuntime:
        return EmbeddedRuntime.resume(
            InProcessLog.load_jsonl(path),
            sql_store(lab.db_url),
            catalog=catalog,
            codec=CODEC,
            alerts=default_rules(),  # as `shaping web --embedded-log` runs them
        )

    return EmbeddedSender(runtime, lab.log_path)


@contextmanager
def started_client(lab: Lab, metrics: WebMetrics | None = None) -> Iterator[TestClient]:
    """The application over the lab, as a test client (not logged in), sending its commands
    through the embedded runtime into the lab's log."""
    engine = open_database(lab.db_url)
    sender = embedded_sender(lab)
    catalog = default_catalog()
    config = WebConfig(
        engine=engine,
        users=UsersFile(lab.users_path),
        secret=session_secret(lab.secret_path),
        interventions=Interventions(lab.db_url, sender, catalog),
        catalog=catalog,
        where=sender.where,
        metrics=metrics,
    )
    try:
        with TestClient(create_app(config), base_url="http://testserver") as client:
            yield client
    finally:
        sender.close()
        engine.dispose()


@pytest.fixture
def client(lab: Lab) -> Iterator[TestClient]:
    """The application over the lab, as a test client (not logged in)."""
    with started_client(lab) as started:
        yield started


CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token a page's forms carry."""
    found = CSRF.search(html)
    assert found, "the page has no form with a CSRF token"
    return found.group(1)


def log_in(client: TestClient, name: str) -> str:
    """Logs ``name`` in; returns the CSRF token of the session."""
    page = client.get("/login")
    response = client.post(
        "/login",
        data={"name": name, "password": PASSWORDS[name], "csrf": csrf_of(page.text)},
        follow_redirects=False,
    )
    assert response.status_code == 303, response.text
    return csrf_of(client.get("/").text)


def husbandry(lab: Lab, *commands: Command) -> None:
    """Records husbandry in the lab's log before the page is used (a keeper at the command
    line, as ``shaping restrict start`` and ``weigh --embedded`` would)."""
    with EmbeddedLab(lab.folder, catalog=default_catalog(), codec=CODEC) as embedded:
        for command in commands:
            submit(command, embedded.sender(), embedded.known())


def restrict(lab: Lab, mouse: str, reference: float, *weights: float) -> None:
    """Puts ``mouse`` on water restriction at ``reference`` grams, then weighs it (each
    weight confirmed, a second apart, the last now), all by ``keeper``."""
    now = datetime.now(UTC)
    count = len(weights)
    husbandry(
        lab,
        build_restriction_start(
            mouse, reference, "keeper", requested_at=now - timedelta(seconds=count + 1)
        ),
        *(
            build_weight(
                mouse,
                grams,
                "keeper",
                confirmed=True,
                requested_at=now - timedelta(seconds=count - 1 - n),
            )
            for n, grams in enumerate(weights)
        ),
    )


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    """A headless Chromium driven through Selenium (:mod:`tests.web.browsing`)."""
    from tests.web.browsing import chrome

    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()
