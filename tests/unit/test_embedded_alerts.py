"""The alert rules in the embedded runtime (issue 15, items 3, 4, 7): the demo's held mouse raises
a weight alert on the log's alerts topic, in the ``alerts`` table, in the digest and in
``shaping alerts list --embedded``; the time is the log's, so the same seed gives the same
alerts; a resumed install takes the rules up without raising anything again."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.sim.lab import LabPlan
from shaping.schemas.alerts import AlertEvent, AlertRaised, AlertUpdated, alert_id
from shaping.schemas.commands import RecordWeight
from shaping.services.alerts.config import AlertRules, default_rules, parse_rules
from shaping.services.cli import app
from shaping.services.embedded.demo import render_report, run_demo
from shaping.services.embedded.log import InProcessLog
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.projector.alert_rows import alert_rows
from tests.support.digest_lab import DAY, small_lab
from tests.support.wiring import CODEC, embedded_runtime, sql_store

DAY_AT = datetime(DAY.year, DAY.month, DAY.day, tzinfo=UTC)

PLAN = LabPlan(n_mice=2, n_rigs=2, n_days=5, seed=7, husbandry=True)
"""M002 is the lean mouse: held on 2026-01-08 with this seed."""
WEIGHT_M002 = alert_id("weight", "mouse", "M002")


def alerts_on(log: InProcessLog, topic: str = "shaping.alerts") -> list[AlertEvent]:
    found = [CODEC.decode(record.value) for record in log.read(topic)]
    assert all(isinstance(e, AlertEvent) for e in found)
    return found  # type: ignore[return-value]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    return run_demo(tmp_path_factory.mktemp("demo") / "out", PLAN)


def test_the_held_mouse_raises_a_weight_alert_in_the_table_and_the_digest(demo) -> None:  # type: ignore[no-untyped-def]
    [row] = [r for r in demo.tables["alerts"] if r["alert_id"] == WEIGHT_M002]
    assert (row["rule"], row["scope"], row["mouse_id"], row["lab"]) == (
        "weight",
        "mouse",
        "M002",
        "lab",
    )
    assert row["resolved_at"] is None and row["episode"] == 1
    # raised at the weighing that held it (the log's time, not this machine's clock)
    assert row["raised_at"].startswith("2026-01-08T08:0")
    evidence = json.loads(row["evidence_json"])
    assert set(evidence) >= {"grams", "percent", "minimum_percent"}
    # on the log: raised critical at the hold (at or below the minimum), then updated
    log = InProcessLog.load_jsonl(demo.log_path)
    weight = [e for e in alerts_on(log) if e.alert_id == WEIGHT_M002]
    assert isinstance(weight[0], AlertRaised) and weight[0].severity == "critical"
    assert "at or below the minimum" in weight[0].message
    assert all(isinstance(e, AlertUpdated) for e in weight[1:])
    assert [e.revision for e in weight] == list(range(len(weight)))
    # the digest of the last day lists it under the mouse
    assert demo.digest is not None
    [m002] = [m for m in demo.digest.mice if m.mouse_id == "M002"]
    assert [(a.rule, a.message) for a in m002.alerts] == [("weight", row["message"])]
    text = render_report(demo)
    assert "Alerts: " in text and f"mouse M002  [open]  {row['message']}" in text
    assert f"  open alerts:\n    {row['severity'].upper()} weight: {row['message']}" in text


def test_same_seed_same_alerts(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    again = run_demo(tmp_path / "again", PLAN)
    assert again.log_path.read_bytes() == demo.log_path.read_bytes()
    assert again.tables["alerts"] == demo.tables["alerts"]


def test_shaping_alerts_list_on_the_embedded_install(demo) -> None:  # type: ignore[no-untyped-def]
    runner = CliRunner()
    shown = runner.invoke(app, ["alerts", "list", "--embedded", str(demo.out_dir)])
    assert shown.exit_code == 0, shown.output
    assert WEIGHT_M002 in shown.output and "[open]" in shown.output
    every = runner.invoke(app, ["alerts", "list", "--all", "--db-url", f"sqlite:///{demo.db_path}"])
    assert every.exit_code == 0, every.output
    assert len(every.output.splitlines()) == len(demo.tables["alerts"])
    assert "resolved 2026-01-" in every.output
    missing = runner.invoke(app, ["alerts", "list", "--embedded", str(demo.out_dir / "none")])
    assert missing.exit_code == 1 and "no status tables at" in missing.output
    both = runner.invoke(
        app, ["alerts", "list", "--embedded", str(demo.out_dir), "--db-url", "sqlite://"]
    )
    assert both.exit_code == 2 and "not both" in both.output


def test_a_resumed_install_raises_nothing_again_and_goes_on(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from shaping.services.curricula.catalog import default_catalog

    log = InProcessLog.load_jsonl(demo.log_path)
    before = len(log.read("shaping.alerts"))
    store = sql_store(f"sqlite:///{tmp_path / 'copy.sqlite'}")
    try:
        runtime = EmbeddedRuntime.resume(log, store, catalog=default_catalog(), codec=CODEC)
        assert runtime.alert_engine is not None  # the log holds alerts: the rules go on
        runtime.raise_alerts()
        assert len(runtime.log.read("shaping.alerts")) == before
        # M002 weighed well above its minimum the next morning: the weight alert resolves
        at = datetime(2026, 1, 10, 8, 0, tzinfo=UTC)
        runtime.send_commands(
            [
                RecordWeight(
                    command_id="w-extra",
                    mouse_id="M002",
                    requested_at=at,
                    requested_by="ada",
                    grams=30.0,
                    confirmed=True,
                )
            ]
        )
        new = alerts_on(runtime.log)[before:]
        resolved = [e for e in new if e.alert_id == WEIGHT_M002]
        assert [type(e).__name__ for e in resolved] == ["AlertResolved"]
        assert resolved[0].occurred_at == at  # the log's time
    finally:
        store.close()
    plain = EmbeddedRuntime.resume(InProcessLog(), None, catalog=default_catalog(), codec=CODEC)
    assert plain.alert_engine is None  # a log without alerts: no rules unless given


def test_the_runtime_raises_and_projects_alerts_with_given_rules(tmp_path: Path) -> None:
    from shaping.services.curricula.catalog import default_catalog
    from shaping.services.domain.welfare import DEFAULT_POLICY
    from shaping.services.operator.digest import build_digest

    rules = parse_rules("lab: lab-b\nrules:\n  weight: {attention: warning, warning: critical}\n")
    url = f"sqlite:///{tmp_path / 't.sqlite'}"
    store = sql_store(url)
    try:
        runtime = EmbeddedRuntime(store, catalog=default_catalog(), codec=CODEC, alerts=rules)
        small_lab(runtime)  # M3 weighed 19.0 g, 76 % of 25 g: at or below the minimum
        [raised] = alerts_on(runtime.log)
        assert isinstance(raised, AlertRaised) and raised.lab == "lab-b"
        assert (raised.scope_key, raised.severity) == ("M3", "critical")
        assert raised.occurred_at == raised.raised_at == DAY_AT.replace(hour=8, minute=30)
        [row] = alert_rows(store.engine) or []
        assert (row.mouse_id, row.rule, row.severity) == ("M3", "weight", "critical")
        digest = build_digest(store.engine, DAY, DEFAULT_POLICY)
        m1, _, m3 = digest.mice
        assert m1.alerts == () and [a.rule for a in m3.alerts] == ["weight"]
    finally:
        store.close()
    assert embedded_runtime().alert_engine is None  # off unless rules are given


def test_the_default_rules_are_the_documented_file() -> None:
    from shaping.services.alerts import config

    doc = config.default_rules.__doc__ or ""
    text = doc.split("As a file::", 1)[1]
    lines = [line[8:] for line in text.splitlines() if line.strip()]
    parsed = parse_rules("\n".join(lines))
    assert parsed == default_rules()
    assert isinstance(parsed, AlertRules) and parsed.rig_silent is None


def test_replay_of_the_demo_log_keeps_the_alerts(demo, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Replay recomputes the processor's outputs, not the alerts: it carries the alerts topic
    into the fresh tables as it stands, so an unchanged log changes nothing."""
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(demo.out_dir, copy)
    db_url = f"sqlite:///{copy / 'shaping.sqlite'}"
    args = ["replay", "--events-log", str(copy / "events.jsonl"), "--db-url", db_url]
    shown = CliRunner().invoke(app, args)
    assert shown.exit_code == 0, shown.output
    assert "no change" in shown.output and "table alerts" not in shown.output
    store = sql_store(db_url)
    try:
        assert store.snapshot()["alerts"] == demo.tables["alerts"]
    finally:
        store.close()
