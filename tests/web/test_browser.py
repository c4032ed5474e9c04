"""The trainers' page as a person uses it: `shaping web` served by uvicorn in its own process
over an embedded lab (the demo's runtime, SQLite), driven by a real headless Chromium through
Selenium (Debian's chromium and chromium-driver, installed by infra/chromium/chromium.sh).

Log in, see the lab, open a mouse, override its stage with a reason, see the change on the
page, in the status tables and as a StageOverridden on the log, log out. A trainer's morning
(:func:`test_a_trainers_morning_weigh_hold_release`): a keeper weighs a restricted mouse below
its minimum (a big jump, confirmed), sees it held, gives water; a trainer releases it with a
reason and sees it cleared; the events are on the log and the rows in the tables. A
screenshot of each page is saved under .cache/screenshots/web/ (the paths are printed).
The same morning against Kafka and PostgreSQL is in ``test_browser_kafka.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import Select
from sqlalchemy import select

from shaping.schemas.alerts import alert_id
from shaping.services.operator.queries import open_database
from shaping.services.projector.tables import (
    alerts,
    husbandry_weights,
    interventions,
    welfare_gate,
)
from tests.web.browsing import embedded_args, go, morning, serving, shot
from tests.web.conftest import PASSWORDS, Lab, restrict


@pytest.fixture
def served(lab: Lab, tmp_path: Path) -> Iterator[str]:
    """`shaping web` over the lab, with the embedded write path; its base URL."""
    with serving(embedded_args(lab), tmp_path / "web.log") as url:
        yield url


def test_a_trainer_logs_in_overrides_a_stage_and_logs_out(
    served: str, browser: WebDriver, lab: Lab
) -> None:
    driver = browser
    driver.get(served + "/")
    assert driver.current_url.endswith("/login")
    shot(driver, "1-login")
    driver.find_element(By.ID, "name").send_keys("alice")
    driver.find_element(By.ID, "password").send_keys(PASSWORDS["alice"])
    go(driver, By.ID, "login")

    # the lab at a glance
    assert driver.find_element(By.ID, "whoami").text.startswith("alice")
    rows = driver.find_elements(By.CSS_SELECTOR, "#mice tbody tr")
    assert sorted(r.get_attribute("data-mouse") for r in rows) == ["M001", "M002", "M003", "M004"]
    assert "4 mice" in driver.find_element(By.ID, "summary").text
    shot(driver, "2-overview")

    # a mouse's page
    go(driver, By.LINK_TEXT, "M001")
    assert driver.find_element(By.ID, "mouse-title").text == "M001"
    assert driver.find_element(By.ID, "stage").text == "s1_habituation"
    assert driver.find_elements(By.CSS_SELECTOR, "svg.curve circle.point")
    shot(driver, "3-mouse")

    # override its stage with a reason
    Select(driver.find_element(By.ID, "override-stage")).select_by_value("s2_training")
    driver.find_element(By.ID, "override-reason").send_keys("licks reliably; <b>ready</b>")
    go(driver, By.ID, "override-submit")
    flash = driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    assert "override of M001 honoured" in flash and "stage s2_training" in flash
    assert driver.find_element(By.ID, "stage").text == "s2_training"
    timeline = driver.find_element(By.ID, "timeline").text
    assert "override s1_habituation -> s2_training" in timeline
    assert "web/alice" in timeline and "licks reliably; <b>ready</b>" in timeline
    shot(driver, "4-overridden")

    # on the log: the StageOverridden the processor appended, asked for by web/alice
    overridden = [
        line["event"]
        for line in lab.events()
        if line["topic"] == "shaping.events"
        and isinstance(line["event"], dict)
        and line["event"].get("event_type") == "StageOverridden"
    ]
    assert len(overridden) == 1
    assert overridden[0]["mouse_id"] == "M001"
    assert overridden[0]["overridden_by"] == "web/alice"
    assert overridden[0]["to_stage"] == "s2_training"

    # log out
    go(driver, By.ID, "logout")
    assert driver.current_url.endswith("/login")
    assert "logged out" in driver.find_element(By.CSS_SELECTOR, ".flash.ok").text
    driver.get(served + "/mice/M001")
    assert driver.current_url.endswith("/login")
    shot(driver, "5-logged-out")


# -- a trainer's morning: weigh, held, release ------------------------------------------------


WEIGHT_ALERT = alert_id("weight", "mouse", "M002")


def test_a_trainers_morning_weigh_hold_release(
    lab: Lab, browser: WebDriver, tmp_path: Path
) -> None:
    restrict(lab, "M002", 25.0, 24.0)
    with serving(embedded_args(lab), tmp_path / "web.log") as url:
        morning(browser, url, "M002", "morning")

    def answers(kind: str) -> list[dict[str, object]]:
        return [
            line["event"]
            for line in lab.events()
            if line["topic"] in ("shaping.events", "shaping.assignments")
            and isinstance(line["event"], dict)
            and line["event"].get("event_type") == kind
            and line["event"].get("mouse_id") == "M002"
        ]

    weights = [e for e in answers("WeightRecorded") if e["recorded_by"] == "web/hugo"]
    assert [(e["grams"], e["confirmed"]) for e in weights] == [(19.5, True)]
    [held] = answers("AssignmentHeld")
    assert str(held["reason"]).startswith("19.5 g is 78.0 % of expected 25.0 g")
    [water] = [e for e in answers("WaterGiven") if e["given_by"] == "web/hugo"]
    assert (water["ml"], water["kind"]) == (1.0, "supplement")
    [released] = answers("HoldReleased")
    assert released["released_by"] == "web/alice"
    assert released["reason"] == "vet checked: bright and active"
    assert [a["reason"] for a in answers("AssignmentIssued")][-2:] == ["held", "released"]

    engine = open_database(lab.db_url)
    try:
        with engine.connect() as conn:
            gate = (
                conn.execute(select(welfare_gate).where(welfare_gate.c.mouse_id == "M002"))
                .mappings()
                .one()
            )
            audit = (
                conn.execute(select(interventions).where(interventions.c.kind == "release"))
                .mappings()
                .one()
            )
            weighed = (
                conn.execute(
                    select(husbandry_weights).where(husbandry_weights.c.recorded_by == "web/hugo")
                )
                .mappings()
                .one()
            )
            alert = (
                conn.execute(select(alerts).where(alerts.c.alert_id == WEIGHT_ALERT))
                .mappings()
                .one()
            )
    finally:
        engine.dispose()
    assert gate["restricted"] and not gate["held"] and gate["cleared_on"]
    assert (audit["requested_by"], audit["reason"]) == (
        "web/alice",
        "vet checked: bright and active",
    )
    assert weighed["grams"] == 19.5 and weighed["confirmed"]
    # the alert rules of the embedded runtime: a critical weight alert, on the log and open
    raised = [
        line["event"]
        for line in lab.events()
        if line["topic"] == "shaping.alerts"
        and isinstance(line["event"], dict)
        and line["event"].get("event_type") == "AlertRaised"
        and line["event"].get("alert_id") == WEIGHT_ALERT
    ]
    assert [(e["severity"], e["scope_key"]) for e in raised] == [("critical", "M002")]
    assert alert["severity"] == "critical" and alert["resolved_at"] is None
