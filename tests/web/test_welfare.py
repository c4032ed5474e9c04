"""The page's welfare side through Starlette's TestClient over an embedded lab: the overview's
weight %, today's water and gate (held and warning mice first), a mouse's weight and water
charts, and the forms to record a weight (a big jump only when confirmed), water, and to
release a hold with a reason; roles decide who may, and every record is a command on the log
asked for by ``web/<user>``."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from starlette.testclient import TestClient

from shaping.services.operator.husbandry import build_release
from shaping.services.operator.queries import open_database
from shaping.services.projector.tables import (
    alerts,
    husbandry_water,
    husbandry_weights,
    interventions,
    welfare_gate,
)
from shaping.services.web import charts
from shaping.services.web.queries import WaterDay, WeightChart, WeightPoint
from tests.web.conftest import Lab, husbandry, log_in, restrict


def _flash(html: str) -> list[str]:
    return re.findall(r'<p class="flash (?:ok|error)" role="status">(.*?)</p>', html, re.S)


def _events(lab: Lab, kind: str) -> list[dict[str, object]]:
    """The events of ``kind`` the processor appended (events or assignments topic)."""
    return [
        line["event"]
        for line in lab.events()
        if line["topic"] in ("shaping.events", "shaping.assignments")
        and isinstance(line["event"], dict)
        and line["event"].get("event_type") == kind
    ]


def _rows(lab: Lab, table) -> list[dict[str, object]]:  # type: ignore[no-untyped-def]
    engine = open_database(lab.db_url)
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(select(table)).mappings()]
    finally:
        engine.dispose()


def _cells(page: str, mouse: str) -> str:
    found = re.search(rf'<tr [^>]*data-mouse="{mouse}".*?</tr>', page, re.S)
    assert found, f"no row of {mouse}"
    return found.group(0)


# -- the overview ------------------------------------------------------------------------------


def test_the_overview_shows_weight_water_and_gate_held_and_warning_mice_first(
    client: TestClient, lab: Lab
) -> None:
    restrict(lab, "M004", 25.0, 24.0, 19.5)  # 78 %: at or below the minimum of 80 %: held
    restrict(lab, "M003", 25.0, 19.8)  # 79.2 %: held, then released: warning, cleared
    husbandry(lab, build_release("M003", "keeper", "vet checked"))
    restrict(lab, "M001", 25.0)  # restricted, not weighed today
    log_in(client, "alice")
    page = client.get("/").text
    shown = re.findall(r'data-mouse="([^"]+)" data-gate="([^"]*)" data-welfare="([^"]*)"', page)
    assert shown[:2] == [("M004", "held", "warning"), ("M003", "cleared", "warning")]
    assert ("M001", "not weighed", "not_weighed_today") in shown
    assert ("M002", "", "unrestricted") in shown
    assert "2 held" not in page and "1 held" in page
    held = _cells(page, "M004")
    assert "78.0 %" in held and "19.5 of 25.0 g" in held
    assert "19.5 g is 78.0 % of expected 25.0 g (minimum 80 %)" in held  # the hold's reason
    # 0.05 mL/g x 19.5 g = 0.975 mL, at least 1 mL; nothing given yet
    assert "0.00 / 1.00 mL" in held and "1.00 mL still due" in held
    assert "79.2 %" in _cells(page, "M003")
    assert "Alerts: the open ones" in page  # the tables have an alerts table


# -- the mouse's page --------------------------------------------------------------------------


def test_a_mouse_page_charts_weights_with_thresholds_and_water_per_day(
    client: TestClient, lab: Lab
) -> None:
    restrict(lab, "M002", 25.0, 24.0, 21.0)
    log_in(client, "hugo")
    token = log_in(client, "hugo")
    for ml, kind in (("0.4", "earned"), ("0,6", "supplement")):  # a decimal comma is fine
        response = client.post(
            "/mice/M002/water",
            data={"csrf": token, "ml": ml, "kind": kind, "water_type": "water"},
        )
        assert "water for M002 recorded" in _flash(response.text)[0]
    page = client.get("/mice/M002").text
    assert '<svg class="curve weight"' in page and '<svg class="curve water"' in page
    assert page.count('class="point weight"') == 2
    # expected 25 g; attention at 82 % = 20.5 g; warning at 80 % = 20 g
    assert "expected 25.0 g</text>" in page
    assert "attention (82 %) 20.5 g</text>" in page
    assert "warning (80 %) 20.0 g</text>" in page
    assert '<rect class="bar earned"' in page and '<rect class="bar supplement"' in page
    # 21 g is 84 %: ok; 0.04 mL/g x 21 g = 0.84 mL, at least 1 mL; 1 mL given
    assert "1.00 mL required</title>" in page
    assert "1.00 mL given of 1.00 mL required; 0.00 mL still due" in page
    assert 'id="gate"' in page and "Cleared</strong> to train today" in page
    records = re.search(r'<table id="husbandry-records">.*?</table>', page, re.S)
    assert records and "0.6 mL water (supplement)" in records.group(0)
    assert "web/hugo" in records.group(0) and "keeper" in records.group(0)


def test_a_weight_below_the_minimum_holds_the_mouse_and_a_trainer_releases_it(
    client: TestClient, lab: Lab
) -> None:
    restrict(lab, "M002", 25.0, 24.0)
    token = log_in(client, "hugo")
    page = client.get("/mice/M002").text
    assert 'id="weigh-form"' in page and 'id="water-form"' in page
    assert 'id="release-form"' not in page  # husbandry staff record, trainers release
    size = lab.log_path.stat().st_size

    # 19.5 g is 18.8 % below the last weight: refused here unless confirmed, nothing sent
    response = client.post("/mice/M002/weigh", data={"csrf": token, "grams": "19.5"})
    [message] = _flash(response.text)
    assert message.startswith("weigh: 19.5 g is 18.8 % below the last weight (24 g")
    assert "tick “confirm”" in message
    assert lab.log_path.stat().st_size == size
    response = client.post(
        "/mice/M002/weigh",
        data={"csrf": token, "grams": "19.5", "confirm": "yes", "scale": "scale-2"},
    )
    assert "weight of M002 recorded: 19.5 g (confirmed)" in _flash(response.text)[0]
    assert 'class="gate-state held"' in response.text
    assert "19.5 g is 78.0 % of expected 25.0 g (minimum 80 %)" in response.text
    [weighed] = [e for e in _events(lab, "WeightRecorded") if e["grams"] == 19.5]
    assert weighed["recorded_by"] == "web/hugo" and weighed["confirmed"] is True
    assert weighed["scale_id"] == "scale-2"
    [held] = _events(lab, "AssignmentHeld")
    assert held["mouse_id"] == "M002"
    [row] = [r for r in _rows(lab, husbandry_weights) if r["grams"] == 19.5]
    assert row["recorded_by"] == "web/hugo"
    [gate] = _rows(lab, welfare_gate)
    assert gate["held"] and gate["hold_reason"].startswith("19.5 g is 78.0 %")
    # the alert rules raise a critical weight alert; the page and the overview show it
    [alert] = [r for r in _rows(lab, alerts) if r["mouse_id"] == "M002"]
    assert (alert["rule"], alert["severity"], alert["resolved_at"]) == ("weight", "critical", None)
    shown = re.search(r'<ul class="alerts" id="alerts">.*?</ul>', response.text, re.S)
    assert shown and "M002 weighs 78.0 % of its expected weight" in shown.group(0)
    assert f"shaping alerts ack {alert['alert_id']}" in shown.group(0)
    assert '<span class="sev">critical</span> weight' in _cells(client.get("/").text, "M002")
    response = client.post("/mice/M002/release", data={"csrf": token, "reason": "r"})
    assert response.status_code == 403 and "may not" in response.text
    client.post("/logout", data={"csrf": token})

    token = log_in(client, "alice")  # a trainer: may release, may not weigh
    page = client.get("/mice/M002").text
    assert 'id="release-form"' in page and 'id="weigh-form"' not in page
    response = client.post("/mice/M002/weigh", data={"csrf": token, "grams": "22"})
    assert response.status_code == 403
    response = client.post("/mice/M002/release", data={"csrf": token, "reason": "  "})
    assert "give a reason" in _flash(response.text)[0]
    response = client.post(
        "/mice/M002/release", data={"csrf": token, "reason": "vet checked: bright, alert"}
    )
    assert "M002 released for today: vet checked: bright, alert" in _flash(response.text)[0]
    assert "Cleared</strong> to train today" in response.text
    assert 'id="release-form"' not in response.text  # cleared: nothing to release
    [released] = _events(lab, "HoldReleased")
    assert released["released_by"] == "web/alice"
    [audit] = [r for r in _rows(lab, interventions) if r["kind"] == "release"]
    assert audit["requested_by"] == "web/alice" and audit["assignment_id"]
    [gate] = _rows(lab, welfare_gate)
    assert not gate["held"] and gate["cleared_on"]
    timeline = re.search(r'<table class="timeline" id="timeline">.*?</table>', response.text, re.S)
    assert timeline and "release the welfare hold for today" in timeline.group(0)
    assert "vet checked: bright, alert" in timeline.group(0)

    # a mouse not on restriction has nothing to release: refused readably
    response = client.post("/mice/M001/release", data={"csrf": token, "reason": "why not"})
    [message] = _flash(response.text)
    assert "release: the processor refused the ReleaseHold of M001" in message
    assert "not on water restriction" in message


def test_bad_weights_and_water_are_refused_and_change_nothing(client: TestClient, lab: Lab) -> None:
    restrict(lab, "M002", 25.0, 24.0)
    token = log_in(client, "mia")  # a manager may do all
    size = lab.log_path.stat().st_size
    for path, data, expected in (
        ("weigh", {"grams": "heavy"}, "the weight must be a number of grams"),
        ("weigh", {"grams": "-3"}, "must be a positive number"),
        ("weigh", {"grams": "nan"}, "must be a positive number"),
        ("weigh", {"grams": "240", "confirm": "yes"}, "not a plausible weight"),
        ("water", {"ml": "", "kind": "supplement"}, "must be a number of mL"),
        ("water", {"ml": "1", "kind": "bucket"}, "kind"),
        ("water", {"ml": "1", "kind": "supplement", "water_type": "beer"}, "water_type"),
        ("water", {"ml": "50", "kind": "supplement"}, "more than policy default accepts"),
    ):
        response = client.post(f"/mice/M002/{path}", data={**data, "csrf": token})
        assert response.status_code == 200, (path, data)
        [message] = _flash(response.text)
        assert message.startswith(f"{path}: ") and expected in message, (data, message)
    assert lab.log_path.stat().st_size == size
    response = client.post(
        "/mice/M002/water", data={"csrf": token, "ml": "", "kind": "free_access"}
    )
    assert "(free access)" in _flash(response.text)[0]
    [given] = [r for r in _rows(lab, husbandry_water) if r["given_by"] == "web/mia"]
    assert given["kind"] == "free_access" and given["mouse_id"] == "M002"


def test_welfare_forms_need_the_csrf_token(client: TestClient, lab: Lab) -> None:
    restrict(lab, "M002", 25.0, 24.0)
    log_in(client, "mia")
    size = lab.log_path.stat().st_size
    for path, data in (
        ("weigh", {"grams": "23"}),
        ("water", {"ml": "1"}),
        ("release", {"reason": "r"}),
    ):
        response = client.post(f"/mice/M002/{path}", data=data)
        assert response.status_code == 403 and "CSRF" in response.text
    assert lab.log_path.stat().st_size == size


# -- the charts --------------------------------------------------------------------------------


def test_the_charts_say_when_there_is_nothing_and_escape_what_they_show() -> None:
    assert "not weighed yet" in charts.weight_chart(WeightChart(()))
    assert "no water recorded" in charts.water_chart(())
    at = datetime(2026, 3, 1, 8, tzinfo=UTC)
    svg = charts.weight_chart(WeightChart((WeightPoint(at, 22.5, by="<script>x</script>"),)))
    assert "<script>" not in svg and "&lt;script&gt;x&lt;/script&gt;" in svg
    day = at.date()
    svg = charts.water_chart(
        (
            WaterDay(day - timedelta(days=1), 0.5, 0.5, False, 1.0),
            WaterDay(day, 0.0, 0.0, True, None),
        )
    )
    assert svg.count('class="required"') == 1 and "free access" in svg


def test_lab_alerts_are_listed_above_the_mice_and_missing_tables_are_said(
    client: TestClient, lab: Lab
) -> None:
    from sqlalchemy import insert

    engine = open_database(lab.db_url)
    at = datetime(2026, 3, 1, 8, tzinfo=UTC)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(alerts).values(
                    alert_id="a-1",
                    rule="rig_silent",
                    severity="warning",
                    scope="rig",
                    scope_key="rig-9",
                    mouse_id=None,
                    lab="lab",
                    message="rig-9 silent for 45 minutes <b>",
                    evidence_json="{}",
                    raised_at=at,
                    updated_at=at,
                    episode=1,
                    revision=0,
                )
            )
    finally:
        engine.dispose()
    log_in(client, "alice")
    page = client.get("/").text
    section = re.search(r'<section class="lab-alerts" id="lab-alerts">.*?</section>', page, re.S)
    assert section and "rig:rig-9" in section.group(0)
    assert "rig-9 silent for 45 minutes &lt;b&gt;" in section.group(0)
    engine = open_database(lab.db_url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE alerts")
    finally:
        engine.dispose()
    page = client.get("/").text
    assert "these status tables have no alerts table" in page


def test_a_missing_time_read_by_pandas_is_none_and_shown_empty() -> None:
    """PostgreSQL through pandas gives NaT for a mouse with no decision yet: a datetime that
    has no time (the overview of a freshly enrolled mouse once failed on it)."""
    import pandas as pd

    from shaping.services.web.app import _time
    from shaping.services.web.queries import _plain

    assert _plain(pd.NaT) is None
    assert _time(pd.NaT) == ""
    assert _plain(pd.Timestamp("2026-03-01T08:00", tz="UTC")) == datetime(2026, 3, 1, 8, tzinfo=UTC)


def test_after_an_answer_the_page_waits_for_the_tables_only_for_what_it_causes(lab: Lab) -> None:
    """On Kafka the page waits until the projector wrote the answer (and, for a weight or a
    release of a restricted mouse, the assignment the gate re-issues); water re-issues
    nothing, so nothing more is waited for."""
    import time

    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.web.commands import Interventions
    from tests.web.conftest import embedded_sender

    restrict(lab, "M002", 25.0, 24.0)
    sender = embedded_sender(lab)
    sender.settle_s = 3.0  # as if the tables lagged behind the answers
    page = Interventions(lab.db_url, sender, default_catalog())
    try:
        started = time.monotonic()
        water = page.water("hugo", "M002", 1.0, "supplement", "water")
        weight = page.weigh("hugo", "M002", 23.5)
        assert time.monotonic() - started < 2.5
        assert "do not show it yet" not in water.report() + weight.report()
        assert page.settle(["no-such-event"]) is False  # waited 3 s, then says so
    finally:
        sender.close()
