"""The web page through Starlette's TestClient over an embedded lab: login required, roles
enforced on the server, CSRF refused, hostile input harmless and escaped, every action a
command on the log asked for by ``web/<user>``."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
from sqlalchemy import select
from starlette.testclient import TestClient
from typer.testing import CliRunner

from shaping.services.cli.main import app as shaping_app
from shaping.services.operator.queries import attention, open_database
from shaping.services.projector.tables import interventions, mouse_status
from shaping.services.web.users import UsersError, UsersFile, session_secret
from tests.web.conftest import Lab, csrf_of, log_in


def _stage(lab: Lab, mouse: str) -> str | None:
    engine = open_database(lab.db_url)
    try:
        with engine.connect() as conn:
            return conn.execute(
                select(mouse_status.c.stage).where(mouse_status.c.mouse_id == mouse)
            ).scalar_one()
    finally:
        engine.dispose()


def _answers(lab: Lab, kind: str) -> list[dict[str, object]]:
    """The answers of kind ``kind`` on the log's events topic."""
    return [
        line["event"]
        for line in lab.events()
        if line["topic"] == "shaping.events"
        and isinstance(line["event"], dict)
        and line["event"].get("event_type") == kind
    ]


def _flash(html: str) -> list[str]:
    return re.findall(r'<p class="flash (?:ok|error)" role="status">(.*?)</p>', html, re.S)


# -- login -----------------------------------------------------------------------------------


def test_every_page_needs_a_login(client: TestClient) -> None:
    for path in ("/", "/mice/M001"):
        response = client.get(path, follow_redirects=False)
        assert response.status_code == 303
        assert response.headers["location"] == "/login"
    response = client.post("/mice/M001/override", data={"stage": "x"}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"
    assert client.get("/healthz").text == "ok"


def test_a_wrong_password_or_an_unknown_name_is_refused_alike(client: TestClient) -> None:
    for name, password in (("alice", "not-her-password"), ("nobody", "whatever-it-is")):
        token = csrf_of(client.get("/login").text)
        response = client.post("/login", data={"name": name, "password": password, "csrf": token})
        assert response.status_code == 401
        assert "wrong name or password" in response.text
        assert client.get("/", follow_redirects=False).status_code == 303


def test_login_shows_the_lab_and_logout_ends_the_session(client: TestClient) -> None:
    token = log_in(client, "alice")
    page = client.get("/")
    assert page.status_code == 200
    assert 'id="whoami">alice' in page.text
    response = client.post("/logout", data={"csrf": token}, follow_redirects=False)
    assert response.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303


def test_a_removed_user_is_logged_out_at_once(client: TestClient, lab: Lab) -> None:
    log_in(client, "alice")
    UsersFile(lab.users_path).put("alice", "trainer", "another-password")  # still there
    assert client.get("/").status_code == 200
    lab.users_path.write_text('{"version": 1, "users": {}}\n')
    os.chmod(lab.users_path, 0o600)
    assert client.get("/", follow_redirects=False).status_code == 303


# -- CSRF --------------------------------------------------------------------------------------


def test_posts_without_the_csrf_token_are_refused_and_change_nothing(
    client: TestClient, lab: Lab
) -> None:
    token = log_in(client, "alice")
    size = lab.log_path.stat().st_size
    form = {"stage": "s2_training", "reason": "forged", "from_stage": ""}
    forged = token[:-1] + ("A" if token[-1] != "A" else "B")  # one character off, never equal
    for data in (form, {**form, "csrf": "x" * 43}, {**form, "csrf": forged}):
        response = client.post("/mice/M001/override", data=data)
        assert response.status_code == 403
        assert "CSRF" in response.text
    # the right token from another site's page is refused too
    response = client.post(
        "/mice/M001/override",
        data={**form, "csrf": token},
        headers={"origin": "http://evil.example"},
    )
    assert response.status_code == 403
    assert lab.log_path.stat().st_size == size
    assert _answers(lab, "StageOverridden") == []
    # the login form needs it as well
    client.post("/logout", data={"csrf": token})
    response = client.post("/login", data={"name": "alice", "password": "alice-password"})
    assert response.status_code == 403


def test_the_session_cookie_is_signed_strict_and_http_only(client: TestClient) -> None:
    client.get("/login")
    cookie = client.cookies.get("shaping_web")
    assert cookie
    page = client.get("/login")
    header = page.headers.get("set-cookie", "")
    assert "samesite=strict" in header.lower() and "httponly" in header.lower()
    assert "script-src" not in page.headers["content-security-policy"]  # no script at all
    assert "default-src 'none'" in page.headers["content-security-policy"]
    # a cookie signed with another key is no session
    client.cookies.set("shaping_web", cookie[:-2] + "xx")
    assert client.get("/", follow_redirects=False).status_code == 303


# -- the pages ---------------------------------------------------------------------------------


def test_the_overview_lists_every_mouse_those_needing_a_person_first(
    client: TestClient, lab: Lab
) -> None:
    log_in(client, "alice")
    page = client.get("/").text
    rows = re.findall(r'data-mouse="([^"]+)" data-gate="([^"]*)" data-welfare="([^"]*)"', page)
    shown = [mouse for mouse, _, _ in rows]
    assert sorted(shown) == ["M001", "M002", "M003", "M004"]
    engine = open_database(lab.db_url)
    try:
        needing = [item.mouse_id for item in attention(engine)]
    finally:
        engine.dispose()
    # held mice and those at or below their minimum weight first, then the training reasons
    urgent = [mouse for mouse, gate, status in rows if gate == "held" or status == "warning"]
    assert shown[: len(urgent)] == urgent
    training = [mouse for mouse in needing if mouse not in urgent]
    assert shown[len(urgent) : len(urgent) + len(training)] == training
    for column in ("weight %", "water today", "gate", "alerts"):  # the welfare columns
        assert column in page


def test_a_mouse_page_shows_the_curve_the_timeline_and_the_evidence(client: TestClient) -> None:
    log_in(client, "alice")
    page = client.get("/mice/M001").text
    assert '<svg class="curve"' in page
    assert "<circle" in page
    assert "starts at s1_habituation" in page  # the timeline
    assert "engaged_and_accurate" in page  # a rule of the evidence
    assert "accuracy(window=200)" in page
    assert 'id="override-form"' in page and 'id="adjust-form"' in page
    assert 'id="eject-form"' not in page  # a trainer may not eject


def test_an_unknown_or_hostile_mouse_id_is_a_readable_404(client: TestClient) -> None:
    log_in(client, "alice")
    response = client.get("/mice/M0001")
    assert response.status_code == 404
    assert "did you mean M001" in response.text
    response = client.get("/mice/%3Cscript%3Ealert(1)")
    assert response.status_code == 404
    assert "<script>" not in response.text
    assert "&lt;script&gt;" in response.text


# -- actions, as commands ----------------------------------------------------------------------


def test_a_trainer_overrides_a_stage_as_a_command_on_the_log(client: TestClient, lab: Lab) -> None:
    token = log_in(client, "alice")
    assert _stage(lab, "M001") == "s1_habituation"
    response = client.post(
        "/mice/M001/override",
        data={
            "csrf": token,
            "stage": "s2_training",
            "from_stage": "s1_habituation",
            "reason": "licks well",
        },
        follow_redirects=False,
    )
    assert response.status_code == 303 and response.headers["location"] == "/mice/M001"
    page = client.get("/mice/M001").text
    assert any("override of M001 honoured" in text for text in _flash(page)), _flash(page)
    assert _stage(lab, "M001") == "s2_training"
    [event] = _answers(lab, "StageOverridden")
    assert event["overridden_by"] == "web/alice"
    assert event["to_stage"] == "s2_training" and event["reason"] == "licks well"
    engine = open_database(lab.db_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(select(interventions)).mappings().one()
    finally:
        engine.dispose()
    assert row["requested_by"] == "web/alice" and row["kind"] == "override"
    assert "web/alice" in page and "licks well" in page  # the timeline shows who and why


def test_an_override_from_a_stale_page_is_refused_readably(client: TestClient, lab: Lab) -> None:
    token = log_in(client, "alice")
    response = client.post(
        "/mice/M001/override",
        data={
            "csrf": token,
            "stage": "s2_training",
            "from_stage": "s2_training",  # not where the mouse is
            "reason": "seen on an old page",
        },
    )
    [message] = _flash(response.text)
    assert message.startswith("override: the processor refused the override of M001")
    assert _stage(lab, "M001") == "s1_habituation"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"stage": "s2_trainng", "reason": "typo"}, "did you mean s2_training"),
        ({"stage": "s2_training", "reason": "   "}, "give a reason"),
        ({"stage": "../../etc", "reason": "x"}, "stage"),
        ({"stage": "s2_training", "reason": "x" * 2001}, "too long"),
    ],
)
def test_bad_override_input_is_an_error_that_changes_nothing(
    client: TestClient, lab: Lab, data: dict[str, str], expected: str
) -> None:
    token = log_in(client, "alice")
    size = lab.log_path.stat().st_size
    response = client.post("/mice/M001/override", data={**data, "csrf": token})
    assert response.status_code == 200
    [message] = _flash(response.text)
    assert expected in message
    assert lab.log_path.stat().st_size == size


def test_hostile_text_is_shown_escaped_never_run(client: TestClient, lab: Lab) -> None:
    token = log_in(client, "alice")
    hostile = '<script>alert("x")</script><img src=x onerror=alert(1)> \x1b[31m\u202e'
    client.post(
        "/mice/M003/override",
        data={"csrf": token, "stage": "s1_habituation", "reason": hostile, "from_stage": ""},
    )
    [event] = _answers(lab, "StageOverridden")
    assert event["reason"] == hostile.strip()  # kept as given on the log
    page = client.get("/mice/M003").text
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "\x1b" not in page and "\u202e" not in page
    assert "\\x1b[31m" in page and "\\u202e" in page


def test_roles_decide_who_may_do_what(client: TestClient, lab: Lab) -> None:
    token = log_in(client, "hugo")  # husbandry: looks, no training actions
    page = client.get("/mice/M001").text
    assert 'id="actions"' not in page
    for action, data in (
        ("override", {"stage": "s2_training", "reason": "r"}),
        ("adjust", {"set": "max_trials=300", "reason": "r"}),
        ("eject", {"reason": "r", "confirm": "yes"}),
    ):
        response = client.post(f"/mice/M001/{action}", data={**data, "csrf": token})
        assert response.status_code == 403, action
        assert "may not" in response.text
    client.post("/logout", data={"csrf": token})
    token = log_in(client, "alice")  # a trainer may not eject
    response = client.post(
        "/mice/M001/eject", data={"reason": "r", "confirm": "yes", "csrf": token}
    )
    assert response.status_code == 403
    assert _answers(lab, "MouseEjected") == []
    client.post("/logout", data={"csrf": token})
    token = log_in(client, "mia")  # a manager may, once confirmed
    response = client.post("/mice/M004/eject", data={"reason": "ill", "csrf": token})
    assert "tick the box" in _flash(response.text)[0]
    response = client.post(
        "/mice/M004/eject", data={"reason": "ill", "confirm": "yes", "csrf": token}
    )
    assert "ejection of M004 honoured" in _flash(response.text)[0]
    [event] = _answers(lab, "MouseEjected")
    assert event["ejected_by"] == "web/mia"
    overview = client.get("/").text
    assert re.findall(r'data-mouse="([^"]+)"', overview)[-1] == "M004"  # ejected: last


def test_an_adjustment_is_checked_against_the_curriculum(client: TestClient, lab: Lab) -> None:
    token = log_in(client, "alice")
    response = client.post(
        "/mice/M002/adjust", data={"set": "no_such_param=3", "reason": "r", "csrf": token}
    )
    [message] = _flash(response.text)
    assert message.startswith("adjust: ") and "no_such_param" in message
    assert _answers(lab, "ParametersAdjusted") == []


# -- users and the secret ----------------------------------------------------------------------


def test_the_users_file_is_private_hashed_and_refused_when_readable(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    users = UsersFile(path)
    assert users.put("ana", "trainer", "a-long-password") is True
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "a-long-password" not in path.read_text()
    assert "$argon2id$" in path.read_text()
    assert users.authenticate("ana", "a-long-password") is not None
    assert users.authenticate("ana", "a-wrong-password") is None
    with pytest.raises(UsersError, match="unknown role"):
        users.put("bob", "admin", "a-long-password")
    with pytest.raises(UsersError, match="at least 8"):
        users.put("bob", "trainer", "short")
    with pytest.raises(UsersError, match="user name"):
        users.put("../bob", "trainer", "a-long-password")
    os.chmod(path, 0o644)
    with pytest.raises(UsersError, match="chmod 600"):
        UsersFile(path).check()


def test_the_session_secret_is_made_once_private(tmp_path: Path) -> None:
    path = tmp_path / "key"
    first = session_secret(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(first) >= 32
    assert session_secret(path) == first
    os.chmod(path, 0o640)
    with pytest.raises(UsersError, match="chmod 600"):
        session_secret(path)


def test_add_user_prompts_for_the_password(tmp_path: Path) -> None:
    path = tmp_path / "users.json"
    runner = CliRunner()
    result = runner.invoke(
        shaping_app,
        ["web", "add-user", "zoe", "--role", "manager", "--users-file", str(path)],
        input="zoe-password\nzoe-password\n",
    )
    assert result.exit_code == 0, result.output
    assert "added zoe (manager)" in result.output
    assert UsersFile(path).authenticate("zoe", "zoe-password") is not None
    result = runner.invoke(
        shaping_app,
        ["web", "add-user", "zed", "--role", "boss", "--users-file", str(path)],
        input="zed-password\nzed-password\n",
    )
    assert result.exit_code == 2
    assert "unknown role 'boss'" in result.output


def test_serving_without_users_or_with_a_readable_users_file_is_refused(
    tmp_path: Path, lab: Lab
) -> None:
    runner = CliRunner()
    base = ["web", "--db-url", lab.db_url, "--secret-file", str(tmp_path / "key")]
    result = runner.invoke(shaping_app, [*base, "--users-file", str(tmp_path / "none.json")])
    assert result.exit_code == 2
    assert "no users in" in result.output and "shaping web add-user" in result.output
    os.chmod(lab.users_path, 0o644)
    result = runner.invoke(shaping_app, [*base, "--users-file", str(lab.users_path)])
    assert result.exit_code == 2
    assert "chmod 600" in result.output
