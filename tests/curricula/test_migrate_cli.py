"""`shaping migrate` sends one MigrateMouse command per mouse and reports each answer as an
intervention's is (no broker: the delivery is a fake; the Kafka path is
tests/curricula/test_publish_kafka.py, the processor's answer tests/curricula/test_versions.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shaping.schemas.commands import Command, MigrateMouse
from shaping.services import bootstrap
from shaping.services.cli import app
from shaping.services.operator import interventions
from shaping.services.operator.interventions import Delivery, DeliveryError, InterventionRefused
from tests.support.scripts import REPO
from tests.support.story import enrolled
from tests.support.wiring import embedded_runtime, sql_store

BASIC = (REPO / "curricula" / "basic-shaping.yaml").read_text()
MAJOR = (
    BASIC.replace("version: 0.1.0", "version: 1.0.0")
    .replace("s2_training", "s2_practice")
    .replace(
        "stages:\n  - name: s1_habituation",
        "migrations:\n  - from_version: '0'\n    stages: {s2_training: s2_practice}\n"
        "    description: s2 renamed\n\nstages:\n  - name: s1_habituation",
    )
)
MIGRATE = ["migrate", "--from", "basic-shaping@0.1.0", "--to", "basic-shaping@1.0.0"]


@pytest.fixture
def status_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """Mice A (s1_habituation) and B (s2_training) on basic-shaping 0.1.0; 1.0.0 in the lab's
    folder; no broker to read published versions from (none are)."""
    folder = tmp_path / "curricula"
    folder.mkdir()
    (folder / "basic-1.0.0.yaml").write_text(MAJOR)
    monkeypatch.setenv("SHAPING_CURRICULA_DIR", str(folder))
    monkeypatch.setattr(bootstrap, "published_catalog", lambda settings, codec, base: (base, []))
    db = f"sqlite:///{tmp_path / 'status.sqlite'}"
    store = sql_store(db)
    embedded_runtime(store).publish(
        [
            enrolled("A", curriculum_version="0.1.0"),
            enrolled("B", start_stage="s2_training", curriculum_version="0.1.0"),
        ]
    )
    store.close()
    return db


class FakeDelivery:
    """Stands in for :func:`interventions.deliver`: records each command, refuses the mice of
    ``refuse``, fails to deliver from the ``fail_at``-th command on."""

    def __init__(self, refuse: tuple[str, ...] = (), fail_at: int | None = None) -> None:
        self.refuse = refuse
        self.fail_at = fail_at
        self.sent: list[tuple[Command, str, float]] = []

    def __call__(
        self, settings: Any, command: Command, what: str, codec: Any, wait_s: float
    ) -> Delivery:
        if self.fail_at is not None and len(self.sent) >= self.fail_at:
            raise DeliveryError("no Kafka broker answered at 127.0.0.1:9092 within 10 s")
        self.sent.append((command, what, wait_s))
        event = command.answer()
        if command.mouse_id in self.refuse:
            raise InterventionRefused(
                f"the processor refused the {what} of {command.mouse_id}: "
                "the mouse is in a session",
                event,
                event,  # (the processor's EventRejected; only the message is printed)
            )
        where = f"shaping.commands[0]@{len(self.sent)}"
        return Delivery(event, what, where, None, wait_s, command)


def migrate(db: str, fake: FakeDelivery, monkeypatch: pytest.MonkeyPatch, *more: str) -> Any:
    monkeypatch.setattr(interventions, "deliver", fake)
    return CliRunner().invoke(app, [*MIGRATE, "--db-url", db, "--by", "ada", *more])


def test_migrate_sends_one_command_per_mouse_and_reports_each_answer(
    status_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDelivery()
    result = migrate(status_db, fake, monkeypatch, "--wait", "5")
    assert result.exit_code == 0, result.output
    commands = [command for command, _, _ in fake.sent]
    assert all(isinstance(c, MigrateMouse) for c in commands)
    assert [
        (c.mouse_id, c.from_version, c.to_version, c.from_stage, c.to_stage, c.requested_by)
        for c in commands
        if isinstance(c, MigrateMouse)
    ] == [
        ("A", "0.1.0", "1.0.0", "s1_habituation", "s1_habituation", "ada"),
        ("B", "0.1.0", "1.0.0", "s2_training", "s2_practice", "ada"),
    ]
    assert {(what, wait) for _, what, wait in fake.sent} == {("migration", 5.0)}
    for command in commands:
        assert (
            f"sent the migration of {command.mouse_id} (event {command.answer_id}, "
            in result.output
        )
    assert "no answer from the processor within 5 s yet" in result.output
    assert result.output.splitlines()[-1] == (
        "sent 2 MigrateMouse command(s) to shaping.commands; 0 refused; 0 mouse(s) cannot move"
    )


def test_a_refused_migration_is_reported_and_ends_with_status_1(
    status_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    result = migrate(status_db, FakeDelivery(refuse=("B",)), monkeypatch)
    assert result.exit_code == 1, result.output
    assert "sent the migration of A" in result.output
    assert (
        "error: the processor refused the migration of B: the mouse is in a session"
        in result.output
    )
    assert "; 1 refused; 0 mouse(s) cannot move" in result.output


def test_a_command_that_cannot_be_delivered_stops_the_migration(
    status_db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeDelivery(fail_at=1)
    result = migrate(status_db, fake, monkeypatch)
    assert result.exit_code == 2, result.output
    assert [command.mouse_id for command, _, _ in fake.sent] == ["A"]
    assert "error: no Kafka broker answered" in result.output
    assert "(1 of 2 migration(s) sent before)" in result.output
    assert "MigrateMouse command(s)" not in result.output
