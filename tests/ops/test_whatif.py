"""``shaping whatif`` on a real Kafka event log: recorded sessions replayed open-loop through
another curriculum, with nothing produced to any topic; and on an embedded demo log."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import matplotlib.image
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from typer.testing import CliRunner

from shaping.rig.sim.lab import LabPlan, run_lab
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.topics import ensure_topics
from shaping.services.cli import app
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.loader import load_curriculum
from shaping.services.embedded.demo import run_demo
from shaping.services.operator.replay import kafka_offsets, read_jsonl
from shaping.services.operator.whatif import CSV_COLUMNS, run_whatif
from tests.support.curricula import major_version
from tests.support.scripts import REPO
from tests.support.wiring import CODEC, embedded_runtime

PLAN = LabPlan(n_mice=4, n_rigs=4, n_days=5, seed=7)
SHIPPED = REPO / "curricula" / "basic-shaping.yaml"
S1_RULE = "accuracy(window=200) >= 0.65 and session_trials >= 100\n"


def slower_curriculum(folder: Path) -> Path:
    """basic-shaping 0.2.0: a mouse leaves s1_habituation after 4 sessions there at the
    earliest (the shipped version lets it go after any good session)."""
    folder.mkdir(parents=True, exist_ok=True)
    content = SHIPPED.read_text()
    assert S1_RULE in content and "version: 0.1.0\n" in content
    path = folder / "slower.yaml"
    path.write_text(
        content.replace(
            S1_RULE,
            "accuracy(window=200) >= 0.65 and session_trials >= 100 and sessions_at_stage >= 4\n",
        ).replace("version: 0.1.0\n", "version: 0.2.0\n")
    )
    return path


def invoke(args: list[str]) -> Any:
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


@dataclass
class Recorded:
    bootstrap: str
    topics: TopicNames
    prefix: str

    def args(self) -> list[str]:
        return ["whatif", "--bootstrap", self.bootstrap, "--prefix", self.prefix]

    def ends(self) -> dict[tuple[str, int], tuple[int, int]]:
        return kafka_offsets(self.bootstrap, self.topics.all())


@pytest.fixture(scope="module")
def recorded(kafka_bootstrap: str) -> Iterator[Recorded]:
    """The plan's sessions on a real events topic, as rigs would have published them (the lab
    runs on the embedded runtime; its input messages are copied to Kafka byte for byte)."""
    prefix = f"w{uuid4().hex[:6]}"
    topics = TopicNames.with_prefix(prefix)
    ensure_topics(kafka_bootstrap, topics, partitions=4)
    runtime = embedded_runtime()
    run_lab(PLAN, runtime)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    try:
        for record in runtime.log.read(runtime.topics.events):
            producer.send(topics.events, key=record.key, value=record.value)
        producer.flush()
    finally:
        producer.close()
    yield Recorded(kafka_bootstrap, topics, prefix)


def groups(bootstrap: str) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="whatif-tests")
    try:
        return {str(g[0] if isinstance(g, tuple) else g) for g in admin.list_groups()}
    finally:
        admin.close()


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_whatif_produces_nothing_and_a_stricter_curriculum_delays_the_fast_mice(
    recorded: Recorded, tmp_path: Path
) -> None:
    ends, known_groups = recorded.ends(), groups(recorded.bootstrap)
    out_csv, out_png = tmp_path / "whatif.csv", tmp_path / "whatif.png"
    slower = slower_curriculum(tmp_path)
    result = invoke(
        [
            *recorded.args(),
            "--curriculum",
            str(slower),
            "--out-csv",
            str(out_csv),
            "--plot",
            str(out_png),
        ]
    )
    assert result.exit_code == 0, result.output
    # Read with a throwaway consumer: no record produced anywhere, no consumer group made.
    assert recorded.ends() == ends
    assert groups(recorded.bootstrap) == known_groups

    table = rows(out_csv)
    assert tuple(table[0]) == CSV_COLUMNS
    assert len(table) == PLAN.n_mice * PLAN.n_days
    by_mouse: dict[str, list[dict[str, str]]] = {}
    for row in table:
        by_mouse.setdefault(row["mouse_id"], []).append(row)
    # Live, a mouse left s1 after its first good session; the fast ones (before 4 sessions)
    # are held back under 0.2.0, the others' paths are unchanged.
    fast = set()
    for mouse, sessions in by_mouse.items():
        left = [
            int(r["session"])
            for r in sessions
            if r["stage_live"] == "s1_habituation" and r["next_stage_live"] == "s2_training"
        ]
        if left and left[0] < 4:
            fast.add(mouse)
    assert fast and fast != set(by_mouse)
    differing = {
        m for m, sessions in by_mouse.items() if any(r["differs"] == "True" for r in sessions)
    }
    assert differing == fast
    for mouse in fast:
        sessions = by_mouse[mouse]
        left_live = next(
            int(r["session"]) for r in sessions if r["next_stage_live"] == "s2_training"
        )
        left_new = [
            int(r["session"])
            for r in sessions
            if r["stage_new"] == "s1_habituation" and r["next_stage_new"] == "s2_training"
        ]
        assert not left_new or left_new[0] >= 4 > left_live
        assert all(r["curriculum_new"] == "basic-shaping@0.2.0" for r in sessions)
    for mouse in fast:
        assert mouse in result.stdout
    image = matplotlib.image.imread(out_png)
    assert image.shape[0] > 100 and image.shape[1] > 100


def test_the_same_curriculum_changes_nothing(recorded: Recorded, tmp_path: Path) -> None:
    for spec in ("basic-shaping@0.1.0", str(SHIPPED)):
        out_csv = tmp_path / "same.csv"
        result = invoke([*recorded.args(), "--curriculum", spec, "--out-csv", str(out_csv)])
        assert result.exit_code == 0, result.output
        table = rows(out_csv)
        assert len(table) == PLAN.n_mice * PLAN.n_days
        assert all(r["differs"] == "False" for r in table)
        assert all(
            (r["stage_live"], r["decision_live"]) == (r["stage_new"], r["decision_new"])
            for r in table
        )
        assert "session 1" not in result.stdout and result.stdout.count("none") >= PLAN.n_mice


def test_since_and_mice_options(recorded: Recorded, tmp_path: Path) -> None:
    slower = slower_curriculum(tmp_path)
    out_csv = tmp_path / "since.csv"
    # Switched on the day of session 4 the fast mice are already on s2 and stay there.
    result = invoke(
        [
            *recorded.args(),
            "--curriculum",
            str(slower),
            "--since",
            "2026-01-08",
            "--mice",
            "M001,M004",
            "--out-csv",
            str(out_csv),
        ]
    )
    assert result.exit_code == 0, result.output
    table = rows(out_csv)
    assert {r["mouse_id"] for r in table} == {"M001", "M004"}
    assert all(r["differs"] == "False" for r in table)

    unknown = invoke([*recorded.args(), "--curriculum", str(slower), "--mice", "M0001"])
    assert unknown.exit_code == 2
    assert "M0001" in unknown.stderr and "did you mean" in unknown.stderr
    bad_date = invoke([*recorded.args(), "--curriculum", str(slower), "--since", "yesterday"])
    assert bad_date.exit_code == 2 and "not a date" in bad_date.stderr
    missing = invoke([*recorded.args(), "--curriculum", "basic-shapin@0.1.0"])
    assert missing.exit_code == 2 and "did you mean basic-shaping@0.1.0" in missing.stderr
    assert "Traceback" not in unknown.output + bad_date.output + missing.output


def test_a_new_major_version_in_the_folder_leaves_the_live_versions(
    recorded: Recorded, tmp_path: Path
) -> None:
    """The enrolments named no version, and basic-shaping 2.0.0 (a major version that renames
    a stage) is now in the lab's folder: the live path stays on the version each mouse was
    enrolled on, with every recorded session (the events topic alone says which: the sessions
    name their version)."""
    env = {"COLUMNS": "200", "SHAPING_CURRICULA_DIR": str(major_version(tmp_path / "major"))}
    out_csv = tmp_path / "major.csv"
    result = CliRunner().invoke(
        app,
        [*recorded.args(), "--curriculum", "basic-shaping@2.0.0", "--out-csv", str(out_csv)],
        env=env,
    )
    assert result.exit_code == 0, result.output
    table = rows(out_csv)
    assert len(table) == PLAN.n_mice * PLAN.n_days
    assert {r["curriculum_live"] for r in table} == {"basic-shaping@0.1.0"}
    assert {r["curriculum_new"] for r in table} == {"basic-shaping@2.0.0"}
    assert "basic-shaping@0.1.0" in result.stdout


def test_whatif_on_a_demo_log_uses_the_core_session_metrics(tmp_path: Path) -> None:
    demo = run_demo(tmp_path / "demo", PLAN)
    slower = slower_curriculum(tmp_path)
    result = invoke(["whatif", "--events-log", str(demo.log_path), "--curriculum", str(slower)])
    assert result.exit_code == 0, result.output
    # The library call gives the same decisions as the processor on the recorded log.
    whatif = run_whatif(
        read_jsonl(demo.log_path),
        "shaping.events",
        default_catalog(),
        load_curriculum(SHIPPED),
        codec=CODEC,
    )
    decided = {
        (row["mouse_id"], row["session_total"]): (row["from_stage"], row["decision"])
        for row in demo.tables["decision_log"]
    }
    for mouse in whatif.mice:
        assert mouse.first_difference is None
        for row in mouse.rows:
            assert decided[(mouse.mouse_id, row.session)] == (row.new.stage, row.new.decision)
