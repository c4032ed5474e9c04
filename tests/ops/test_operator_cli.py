"""The operator's read-only commands (status, history, export, plot) over real status tables,
written by the same projector the Kafka services use (embedded mode, SQLite), and enroll
against the real Kafka broker."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest
from typer.testing import CliRunner

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.commands import EnrolMouse
from shaping.schemas.topics import TopicNames
from shaping.services.cli import app
from shaping.services.operator.queries import DECISION_COLUMNS, SESSION_COLUMNS, STATUS_COLUMNS
from tests.support.kafka_io import TopicReader
from tests.support.scripts import REPO
from tests.support.wiring import embedded_runtime, sql_store

PLAN = LabPlan(n_mice=3, n_rigs=2, n_days=4, seed=5)
WIDE = {"COLUMNS": "200"}  # rich tables: no cell truncated in the captured output


@pytest.fixture(scope="module")
def lab_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A status database after 3 mice trained 4 days, plus one undecodable message."""
    path = tmp_path_factory.mktemp("operator") / "lab.sqlite"
    url = f"sqlite:///{path}"
    store = sql_store(url)
    runtime = embedded_runtime(store)
    run_lab(PLAN, runtime)
    runtime.publish_raw(b"M001", b"not an event")
    store.close()
    return url


def invoke(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(app, list(args), env=WIDE)
    # Only a clean exit (typer.Exit / a usage error), never an escaped exception.
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def snapshot(url: str) -> dict[str, list[dict[str, object]]]:
    store = sql_store(url)
    try:
        return store.snapshot()
    finally:
        store.close()


def test_status_lists_every_mouse_with_its_stage(lab_db: str) -> None:
    code, out = invoke("status", "--db-url", lab_db)
    assert code == 0, out
    rows = {row["mouse_id"]: row for row in snapshot(lab_db)["mouse_status"]}
    assert "3 mice" in out
    for mouse, row in rows.items():
        line = next(line for line in out.splitlines() if mouse in line)
        assert str(row["stage"]) in line
        assert str(row["last_decision"]) in line


def test_status_filters_by_stage_and_by_rig(lab_db: str) -> None:
    rows = snapshot(lab_db)["mouse_status"]
    stage = str(rows[0]["stage"])
    expected = {str(r["mouse_id"]) for r in rows if r["stage"] == stage}
    code, out = invoke("status", "--stage", stage, "--db-url", lab_db)
    assert code == 0, out
    assert {m for m, _ in PLAN.mice() if m in out} == expected
    code, out = invoke("status", "--rig", "rig-2", "--db-url", lab_db)
    assert code == 0, out
    assert {m for m, _ in PLAN.mice() if m in out} == {m for m, r in PLAN.mice() if r == "rig-2"}


def test_status_suggests_a_stage_for_a_typo(lab_db: str) -> None:
    stage = str(snapshot(lab_db)["mouse_status"][0]["stage"])
    code, out = invoke("status", "--stage", stage[:-1] + "x", "--db-url", lab_db)
    assert code == 2
    assert f"did you mean {stage}" in out


def test_history_shows_every_session_and_the_evidence_of_each_decision(lab_db: str) -> None:
    code, out = invoke("history", "M002", "--db-url", lab_db)
    assert code == 0, out
    assert f"M002: {PLAN.n_days} sessions" in out
    decisions = [r for r in snapshot(lab_db)["decision_log"] if r["mouse_id"] == "M002"]
    assert len(decisions) == PLAN.n_days
    for row in decisions:
        assert f"{row['from_stage']} -> {row['to_stage']}: {row['decision']}" in out
    # each evaluated rule appears with its observed values and a verdict
    assert re.search(r"-> \w+ \w+: (fired|not met) \(.+=[\d.n/a]+ [<>=]+ [\d.]+ \[(ok|no)\]", out)


def test_history_of_an_unknown_mouse_suggests_known_ones(lab_db: str) -> None:
    code, out = invoke("history", "M0002", "--db-url", lab_db)
    assert code == 2
    assert "no mouse 'M0002'" in out and "did you mean M002" in out


def test_a_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    code, out = invoke("status", "--db-url", f"sqlite:///{tmp_path / 'nowhere.sqlite'}")
    assert code == 1
    assert "no status database" in out
    assert not (tmp_path / "nowhere.sqlite").exists()  # read-only: nothing created
    code, out = invoke("status", "--db-url", "postgresql+psycopg://x@127.0.0.1:9/none")
    assert code == 1 and "cannot reach the database" in out


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_export_writes_the_documented_frames(lab_db: str, tmp_path: Path, fmt: str) -> None:
    code, out = invoke("export", "--format", fmt, "--out", str(tmp_path), "--db-url", lab_db)
    assert code == 0, out
    read = pd.read_csv if fmt == "csv" else pd.read_parquet
    tables = snapshot(lab_db)
    expected = {
        "sessions": (SESSION_COLUMNS, len(tables["session_summaries"])),
        "decisions": (DECISION_COLUMNS, len(tables["decision_log"])),
        "status": (STATUS_COLUMNS, len(tables["mouse_status"])),
    }
    for name, (columns, rows) in expected.items():
        frame = read(tmp_path / f"{name}.{fmt}")
        assert list(frame.columns) == list(columns)
        assert len(frame) == rows == int(re.search(rf"{name}\.{fmt}[\s│]+(\d+)", out).group(1))
    sessions = pd.read_parquet(tmp_path / "sessions.parquet") if fmt == "parquet" else None
    if sessions is not None:
        dtype = sessions["started_at"].dtype
        assert isinstance(dtype, pd.DatetimeTZDtype) and str(dtype.tz) == "UTC"
        assert sessions["accuracy"].between(0, 1).all()
    assert len(tables["session_summaries"]) == PLAN.n_mice * PLAN.n_days


def test_an_unknown_export_format_is_refused(lab_db: str, tmp_path: Path) -> None:
    code, out = invoke("export", "--format", "xlsx", "--out", str(tmp_path), "--db-url", lab_db)
    assert code == 2
    assert "csv" in out and "parquet" in out
    assert not list(tmp_path.iterdir())


def test_the_readme_documents_every_exported_column() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Exported data") :]
    section = section[: section.index("\n## ")]
    for name, columns in (
        ("sessions", SESSION_COLUMNS),
        ("decisions", DECISION_COLUMNS),
        ("status", STATUS_COLUMNS),
    ):
        lines = section[section.index(f"`{name}.csv`") :].splitlines()[2:]
        table = "\n".join(line for line in lines[: lines.index("")] if line.startswith("|"))
        documented = re.findall(r"^\| `(\w+)` \|", table, flags=re.MULTILINE)
        assert documented == list(columns), name


def test_plot_writes_a_png_of_the_learning_curve(lab_db: str, tmp_path: Path) -> None:
    target = tmp_path / "plots" / "m1.png"
    code, out = invoke("plot", "M001", "--out", str(target), "--db-url", lab_db)
    assert code == 0, out
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(target)
    assert image.shape[0] > 400 and image.shape[1] > 600
    assert image[..., :3].std() > 0.05  # something is drawn, not a blank canvas


def test_plot_refuses_unknown_mice_and_other_formats(lab_db: str, tmp_path: Path) -> None:
    code, out = invoke("plot", "M009", "--out", str(tmp_path / "x.png"), "--db-url", lab_db)
    assert code == 2 and "no mouse 'M009'" in out
    code, out = invoke("plot", "M001", "--out", str(tmp_path / "x.pdf"), "--db-url", lab_db)
    assert code == 2 and "PNG" in out
    assert not list(tmp_path.iterdir())


@pytest.mark.kafka
def test_enroll_sends_an_enrol_mouse_command_keyed_by_mouse(
    kafka_bootstrap: str, kafka_topics: TopicNames
) -> None:
    """No processor runs here: the command is on the commands topic, and with --wait 0 the
    command says it did not wait for the answer."""
    prefix = kafka_topics.events.rsplit(".", 1)[0]
    args = ["enroll", "M042", "--curriculum", "basic-shaping", "--by", "ops-test"]
    args += ["--notes", "cage 7", "--bootstrap", kafka_bootstrap, "--prefix", prefix]
    code, out = invoke(*args, "--wait", "0")
    assert code == 0, out
    assert "sent the enrolment of M042 on basic-shaping" in out
    with TopicReader(kafka_bootstrap, [kafka_topics.commands]) as reader:
        records = reader.wait_for(lambda rs: rs, what="the enrolment")
    [record] = records
    assert record.key == b"M042"
    command = reader.codec.decode_command(record.value)
    assert isinstance(command, EnrolMouse)
    assert (command.mouse_id, command.curriculum_name) == ("M042", "basic-shaping")
    assert (command.requested_by, command.notes) == ("ops-test", "cage 7")
    assert command.command_id in out
    assert f"{kafka_topics.commands}[{record.partition}]@{record.offset}" in out


def test_enroll_explains_a_broker_that_is_not_there() -> None:
    code, out = invoke(
        "enroll", "M1", "--curriculum", "basic-shaping", "--bootstrap", "127.0.0.1:9"
    )
    assert code == 1
    assert "no Kafka broker answered at 127.0.0.1:9" in out


def test_enroll_refuses_an_empty_mouse_id() -> None:
    for blank in ("", " "):
        code, out = invoke("enroll", blank, "--curriculum", "basic-shaping")
        text = " ".join(out.replace("│", " ").split())
        assert code == 2 and "mouse id" in text, out
        assert "must not be empty" in text or "is not allowed" in text, out


def test_enroll_suggests_a_curriculum_for_a_typo() -> None:
    code, out = invoke("enroll", "M1", "--curriculum", "basic-shapin", "--bootstrap", "127.0.0.1:9")
    assert code == 2
    assert "unknown curriculum 'basic-shapin'; did you mean basic-shaping?" in out
