"""Operators known by their authenticated identity (issue 13, item 3).

On a secured connection (SASL) every command the ``shaping`` commands send names the principal
the broker authenticates, whatever ``--by`` or $SHAPING_OPERATOR say, and a ``--by`` naming
someone else is refused before anything is sent. On a plaintext connection ``--by`` stays a
free-text claim, as before. The audit trail (``shaping history``, ``shaping interventions``)
shows who asked, when, what, and the command each answer answered.

No broker here: the publishing is replaced by a recorder (the CLI reaches Kafka through
:func:`shaping.services.operator.interventions.send_command` only).
"""

from __future__ import annotations

import getpass
import re
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select
from typer.testing import CliRunner

from shaping.schemas.commands import (
    AdjustParameters,
    Command,
    EjectMouse,
    EnrolMouse,
    MigrateMouse,
    OverrideStage,
)
from shaping.services.adapters.settings import Settings
from shaping.services.cli import app
from shaping.services.operator import interventions as use_case
from shaping.services.operator.identity import IdentityError, Operator, operator_identity
from shaping.services.operator.interventions import Outcome
from shaping.services.operator.queries import intervention_log, open_database
from shaping.services.projector.tables import interventions as interventions_table
from tests.support.scripts import REPO
from tests.support.story import T0, enrolled
from tests.support.wiring import embedded_runtime, sql_store

SECURED: dict[str, str | None] = {
    "SHAPING_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
    "SHAPING_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "SHAPING_KAFKA_SASL_USERNAME": "alice",
    "SHAPING_KAFKA_SASL_PASSWORD": "not-a-real-password",
}
"""The settings of operator alice on a secured broker (nothing connects in these tests)."""

PLAIN: dict[str, str | None] = {
    "SHAPING_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT",
    "SHAPING_KAFKA_SASL_MECHANISM": None,  # unset
    "SHAPING_KAFKA_SASL_USERNAME": None,
    "SHAPING_KAFKA_SASL_PASSWORD": None,
}

HOSTILE = "bob\x1b[2J'; DROP TABLE interventions;--\u202e"
"""A --by with an escape sequence, SQL metacharacters and a bidirectional override."""


# -- who a command is from ------------------------------------------------------------------------


@pytest.fixture
def secured(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in SECURED.items():
        monkeypatch.setenv(key, str(value))
    monkeypatch.setenv("SHAPING_OPERATOR", "carol")
    return Settings(bootstrap="127.0.0.1:9")


@pytest.fixture
def plaintext(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in SECURED:
        monkeypatch.delenv(key, raising=False)
    return Settings(bootstrap="127.0.0.1:9")


def test_a_secured_connection_names_its_principal_whatever_the_defaults(secured: Settings) -> None:
    assert operator_identity(secured, None) == Operator("alice", authenticated=True)
    assert operator_identity(secured, "alice") == Operator("alice", authenticated=True)
    assert use_case.operator_name(None, secured) == "alice"  # $SHAPING_OPERATOR is ignored


@pytest.mark.parametrize("by", ["bob", "Alice", "alice ", "", HOSTILE])
def test_a_secured_connection_refuses_another_name(secured: Settings, by: str) -> None:
    with pytest.raises(IdentityError, match="authenticates you as 'alice'") as refused:
        operator_identity(secured, by)
    assert "\x1b" not in str(refused.value) and "\u202e" not in str(refused.value)
    with pytest.raises(use_case.InterventionError, match="is not who you are"):
        use_case.operator_name(by, secured)


def test_a_plaintext_connection_keeps_the_claimed_name(plaintext: Settings) -> None:
    assert operator_identity(plaintext, "bob") == Operator("bob", authenticated=False)
    assert operator_identity(plaintext, None, {"SHAPING_OPERATOR": "carol"}).name == "carol"
    assert operator_identity(plaintext, None, {}).name == getpass.getuser()
    assert operator_identity(None, HOSTILE) == Operator(HOSTILE, authenticated=False)


def test_every_answer_carries_who_asked() -> None:
    """The five commands' answers name ``requested_by`` in their ``*_by`` field."""
    common: dict[str, Any] = {"mouse_id": "M1", "requested_at": T0, "requested_by": "alice"}
    commands: list[Command] = [
        EnrolMouse(**common, curriculum_name="basic-shaping"),
        OverrideStage(**common, to_stage="s2_training", reason="r"),
        EjectMouse(**common, reason="r"),
        AdjustParameters(**common, adjustments={"max_trials": 300}, reason="r"),
        MigrateMouse(
            **common,
            curriculum_name="basic-shaping",
            from_version="0.1.0",
            to_version="0.1.1",
            from_stage="s1_habituation",
            to_stage="s1_habituation",
        ),
    ]
    fields = ("enrolled_by", "overridden_by", "ejected_by", "adjusted_by", "migrated_by")
    for command, field in zip(commands, fields, strict=True):
        answer = command.answer()
        assert getattr(answer, field) == "alice", command.command_type
        assert answer.causation_id == command.command_id


# -- the commands, on secured and plaintext settings ----------------------------------------------


@pytest.fixture(scope="module")
def status_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Status tables with M1 enrolled on basic-shaping."""
    url = f"sqlite:///{tmp_path_factory.mktemp('identity') / 'status.sqlite'}"
    store = sql_store(url)
    embedded_runtime(store).publish([enrolled("M1")])
    store.close()
    return url


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[Command]]:
    """The commands the CLI sends, recorded instead of published (no answer comes)."""
    recorded: list[Command] = []

    def record(settings: Settings, command: Command, *args: Any, **kwargs: Any) -> Outcome:
        recorded.append(command)
        return Outcome(0, len(recorded), None)

    monkeypatch.setattr(use_case, "send_command", record)
    yield recorded


def shaping(env: dict[str, str | None], *args: str) -> tuple[int, str]:
    """Runs ``shaping ARGS`` in-process with ``env`` on top of the environment (None unsets)."""
    full: dict[str, str | None] = {
        "COLUMNS": "250",
        "SHAPING_BOOTSTRAP": "127.0.0.1:9",
        "SHAPING_OPERATOR": "carol",
    }
    result = CliRunner().invoke(app, list(args), env={**full, **env})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


def senders(db: str) -> dict[str, list[str]]:
    """Every command that sends an operator's command, ready to run but for --by."""
    return {
        "enroll": ["enroll", "M2", "--curriculum", "basic-shaping", "--wait", "0"],
        "override": [
            "override",
            "M1",
            "--stage",
            "s3_full_task",
            "--reason",
            "fast learner",
            "--wait",
            "0",
            "--db-url",
            db,
        ],
        "eject": ["eject", "M1", "--reason", "sick", "--wait", "0", "--db-url", db],
        "adjust": [
            "adjust",
            "M1",
            "--set",
            "max_trials=300",
            "--reason",
            "tired",
            "--wait",
            "0",
            "--db-url",
            db,
        ],
    }


@pytest.mark.parametrize("command", ["enroll", "override", "eject", "adjust"])
def test_secured_commands_send_the_principal(
    status_db: str, sent: list[Command], command: str
) -> None:
    for by in ([], ["--by", "alice"]):
        code, out = shaping(SECURED, *senders(status_db)[command], *by)
        assert code == 0, out
        assert sent[-1].requested_by == "alice", out
    assert len(sent) == 2


@pytest.mark.parametrize("command", ["enroll", "override", "eject", "adjust"])
@pytest.mark.parametrize("by", ["bob", HOSTILE])
def test_secured_commands_refuse_another_name_and_send_nothing(
    status_db: str, sent: list[Command], command: str, by: str
) -> None:
    code, out = shaping(SECURED, *senders(status_db)[command], "--by", by)
    assert code == 2, out
    text = " ".join(out.split())
    assert "is not who you are: this deployment authenticates you as 'alice'" in text, out
    assert "\x1b" not in out and "\u202e" not in out
    assert "Traceback" not in out
    assert sent == []


def test_curriculum_commands_refuse_another_name_before_anything(
    sent: list[Command], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'none.sqlite'}"
    for args in (
        ["migrate", "--from", "basic-shaping@0.1.0", "--to", "basic-shaping@0.2.0"],
        ["curriculum", "publish", str(REPO / "curricula" / "basic-shaping.yaml")],
    ):
        code, out = shaping(SECURED, *args, "--db-url", db, "--by", "bob")
        assert code == 2, out
        assert "authenticates you as 'alice'" in " ".join(out.split()), out
    assert sent == []


@pytest.mark.parametrize("command", ["enroll", "override", "eject", "adjust"])
def test_plaintext_commands_keep_the_claimed_name(
    status_db: str, sent: list[Command], command: str
) -> None:
    code, out = shaping(PLAIN, *senders(status_db)[command], "--by", HOSTILE)
    assert code == 0, out
    assert sent[-1].requested_by == HOSTILE
    code, out = shaping(PLAIN, *senders(status_db)[command])
    assert code == 0, out
    assert sent[-1].requested_by == "carol"  # $SHAPING_OPERATOR, as before


# -- the audit trail ------------------------------------------------------------------------------


@pytest.fixture
def audited(tmp_path: Path) -> tuple[str, list[Command]]:
    """Status tables after alice's enrolment and override of M1, bob's refused override of
    M1 and a hostile name's ejection of M2, all through the embedded runtime's commands."""
    url = f"sqlite:///{tmp_path / 'status.sqlite'}"
    store = sql_store(url)
    runtime = embedded_runtime(store)

    def at(minutes: int) -> Any:
        return T0 + timedelta(minutes=minutes)

    commands: list[Command] = [
        EnrolMouse(
            mouse_id="M1", requested_at=at(0), requested_by="alice", curriculum_name="basic-shaping"
        ),
        EnrolMouse(
            mouse_id="M2", requested_at=at(1), requested_by="alice", curriculum_name="basic-shaping"
        ),
        OverrideStage(
            mouse_id="M1",
            requested_at=at(2),
            requested_by="alice",
            to_stage="s3_full_task",
            reason="fast learner",
        ),
        OverrideStage(
            mouse_id="M1", requested_at=at(3), requested_by="bob", to_stage="s9", reason="typo"
        ),
        EjectMouse(mouse_id="M2", requested_at=at(4), requested_by=HOSTILE, reason="sick"),
    ]
    runtime.send_commands(commands)
    store.close()
    return url, commands


def test_the_log_of_interventions_names_who_when_what_and_the_command(
    audited: tuple[str, list[Command]],
) -> None:
    url, commands = audited
    engine = open_database(url)
    try:
        rows = intervention_log(engine)
        only_m1 = intervention_log(engine, mouse_id="M1")
        by_bob = intervention_log(engine, by="bob")
    finally:
        engine.dispose()
    shown = [(r["mouse"], r["what"], r["by"], r["command"]) for r in rows]
    assert shown == [
        ("M1", "enrol", "alice", ""),
        ("M2", "enrol", "alice", ""),
        ("M1", "override -> s3_full_task", "alice", commands[2].command_id),
        ("M1", "override -> s9", "bob", commands[3].command_id),
        ("M2", "eject", HOSTILE, commands[4].command_id),
    ]
    assert [r["at"] for r in rows] == [c.requested_at for c in commands]
    assert rows[3]["outcome"].startswith("refused: ")
    assert [r["what"] for r in only_m1] == ["enrol", "override -> s3_full_task", "override -> s9"]
    assert [r["command"] for r in by_bob] == [commands[3].command_id]


def test_shaping_interventions_and_history_show_it(audited: tuple[str, list[Command]]) -> None:
    url, commands = audited
    code, out = shaping({}, "interventions", "--db-url", url, "--wide")
    assert code == 0, out
    assert "5 interventions, oldest first" in out
    for command in commands[2:]:
        assert command.command_id in out
    assert re.search(r"override -> s3_full_task .*alice", out), out
    # a hostile name is shown escaped, and the tables are intact
    assert "\x1b" not in out and "\u202e" not in out
    assert "bob\\x1b[2J'; DROP TABLE interventions;--\\u202e" in out
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(interventions_table)).scalar() == 3
    finally:
        engine.dispose()

    code, out = shaping({}, "interventions", "--db-url", url, "--by", "bob", "--mouse", "M1")
    assert code == 0 and "1 interventions" in out and commands[3].command_id in out, out
    code, out = shaping({}, "interventions", "--db-url", url, "--by", "nobody")
    assert code == 0 and "no interventions match" in out, out

    code, out = shaping({}, "history", "M1", "--db-url", url, "--wide")
    assert code == 0, out
    text = " ".join(out.split())
    for line in ("enrol", "override -> s3_full_task", "override -> s9"):
        assert line in text, out
    assert text.index("enrol") < text.index("override -> s3_full_task")
    assert commands[2].command_id in out and commands[3].command_id in out
    assert "alice" in out and "bob" in out


def test_shaping_interventions_without_tables_is_a_clear_error(tmp_path: Path) -> None:
    code, out = shaping({}, "interventions", "--db-url", f"sqlite:///{tmp_path / 'no.sqlite'}")
    assert code == 1 and "no status database" in out, out
