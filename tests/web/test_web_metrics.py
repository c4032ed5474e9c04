"""The page's Prometheus counters (``shaping web --metrics-port``) and its first manager."""

from __future__ import annotations

import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from starlette.testclient import TestClient

from shaping.services.web.metrics import ACTIONS, LOGINS, REQUESTS, WebMetrics
from shaping.services.web.users import UsersFile
from tests.web.conftest import Lab, csrf_of, log_in, started_client


@pytest.fixture
def counted(lab: Lab) -> Iterator[tuple[TestClient, WebMetrics]]:
    metrics = WebMetrics()
    with started_client(lab, metrics) as client:
        yield client, metrics


def test_requests_are_counted_by_route_never_by_what_was_asked(
    counted: tuple[TestClient, WebMetrics],
) -> None:
    client, metrics = counted
    log_in(client, "alice")
    for mouse in ("M001", "M002", "no-such-mouse", "x" * 300):
        client.get(f"/mice/{mouse}")
    client.get("/nowhere/at/all")
    client.get("/healthz")
    assert metrics.value(REQUESTS, route="/mice/{mouse_id}", method="GET", status="200") == 2
    assert metrics.value(REQUESTS, route="/mice/{mouse_id}", method="GET", status="404") == 2
    assert metrics.value(REQUESTS, route="other", method="GET", status="404") == 1
    assert metrics.value(REQUESTS, route="/healthz", method="GET", status="200") == 1
    assert metrics.value(REQUESTS, route="/login", method="POST", status="303") == 1
    # No series names a mouse, a path or a user: what is asked never grows the registry.
    exposition = generate_latest(metrics.registry).decode()
    assert "M001" not in exposition and "nowhere" not in exposition and "alice" not in exposition


def test_logins_and_actions_are_counted_by_outcome(
    counted: tuple[TestClient, WebMetrics], lab: Lab
) -> None:
    client, metrics = counted
    token = csrf_of(client.get("/login").text)
    client.post("/login", data={"name": "alice", "password": "wrong", "csrf": token})
    token = log_in(client, "alice")
    assert (metrics.value(LOGINS, outcome="failed"), metrics.value(LOGINS, outcome="ok")) == (1, 1)
    form = {"stage": "s2_training", "reason": "ready early", "from_stage": "", "csrf": token}
    client.post("/mice/M001/override", data=form)
    client.post("/mice/M001/override", data={**form, "reason": ""})  # no reason: refused
    client.post("/mice/M001/override", data={**form, "csrf": "forged"})
    client.post("/mice/M001/eject", data={**form, "confirm": "yes"})  # a trainer may not
    assert metrics.value(ACTIONS, action="override", outcome="sent") == 1
    assert metrics.value(ACTIONS, action="override", outcome="refused") == 1
    assert metrics.value(ACTIONS, action="override", outcome="forbidden") == 1
    assert metrics.value(ACTIONS, action="eject", outcome="forbidden") == 1


def test_the_first_manager_is_made_once_with_a_private_password(tmp_path: Path) -> None:
    users = UsersFile(tmp_path / "web" / "users.json")
    made = users.first_manager("manager")
    assert made == tmp_path / "web" / "manager.initial-password"
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    password = made.read_text().strip()
    assert len(password) >= 20
    user = users.authenticate("manager", password)
    assert user is not None and user.role == "manager"
    # Someone is in the file now: nothing is made or changed again.
    made.unlink()
    assert users.first_manager("manager") is None and not made.exists()
    assert users.first_manager("other") is None and users.get("other") is None
    assert users.authenticate("manager", password) is not None
