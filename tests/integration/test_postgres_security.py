"""PostgreSQL with passwords and least privilege, as infra/postgres/postgres.sh makes it
(docs/security.md, "PostgreSQL"): every connection needs a password (scram-sha-256), the real
projector projects as ``shaping_projector`` from the settings' files, the operator's read
commands work as ``shaping_reader``, and PostgreSQL itself refuses whatever a role may not do
(SQLSTATE 42501). The cluster is a fresh one of this module, its roles exactly as the script
makes them (the session's cluster lets the projector create test databases)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from kafka import KafkaProducer
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.topics import TopicNames
from shaping.services import bootstrap
from shaping.services.cli import app
from shaping.services.projector.runner import run_projector
from tests.support.builders import Published
from tests.support.ops import free_port
from tests.support.postgres import (
    PROJECTOR_ROLE,
    READER_ROLE,
    SUPERUSER,
    PostgresServer,
    start_postgres,
)
from tests.support.projection_contract import CONSUMER, scenario
from tests.support.wiring import sql_store

pytestmark = pytest.mark.postgres

ROLES = (SUPERUSER, PROJECTOR_ROLE, READER_ROLE)
SERVICE_ROLES = (PROJECTOR_ROLE, READER_ROLE)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A cluster of this module, the roles as the script leaves them."""
    server = start_postgres(port=free_port(), test_databases=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tables(pg: PostgresServer) -> None:
    """The projector's tables, created by the projector role (empty)."""
    store = sql_store(pg.role_url(PROJECTOR_ROLE))
    store.close()


def connect(pg: PostgresServer, role: str, password: str | None, **options: Any) -> Any:
    """A psycopg connection (libpq), ``password`` None meaning none at all."""
    params: dict[str, Any] = {"host": "127.0.0.1", "port": pg.port, "dbname": "shaping"}
    params |= {"user": role, "connect_timeout": 10, **options}
    if password is not None:
        params["password"] = password
    return psycopg.connect(**params)


def no_libpq_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No password from this machine's environment or ~/.pgpass."""
    for name in ("PGPASSWORD", "PGPASSFILE", "PGSERVICE", "PGUSER"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "no-such-pgpass"))


@pytest.mark.parametrize("role", ROLES)
def test_a_connection_without_a_password_is_refused(
    pg: PostgresServer, role: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    no_libpq_defaults(monkeypatch, tmp_path)
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        connect(pg, role, None)
    # The Unix socket too: no "trust", no "peer" for anyone.
    sockets = pg.base_dir / f"pg-socket-{pg.port}"
    assert (sockets / f".s.PGSQL.{pg.port}").exists()
    with pytest.raises(psycopg.OperationalError, match="no password supplied"):
        connect(pg, role, None, host=str(sockets))


@pytest.mark.parametrize("role", ROLES)
def test_a_wrong_password_is_refused(pg: PostgresServer, role: str) -> None:
    wrong = pg.password(role)[::-1]
    with pytest.raises(psycopg.OperationalError) as refused:
        connect(pg, role, wrong)
    assert f'password authentication failed for user "{role}"' in str(refused.value)
    # Another role's password does not open this one.
    other = next(name for name in ROLES if name != role)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(pg, role, pg.password(other))


def test_only_scram_is_accepted_and_the_secrets_are_private(pg: PostgresServer) -> None:
    with connect(pg, SUPERUSER, pg.password(SUPERUSER)) as conn:
        methods = {row[0] for row in conn.execute("SELECT auth_method FROM pg_hba_file_rules")}
        assert methods == {"scram-sha-256"}
        assert conn.execute("SHOW password_encryption").fetchone() == ("scram-sha-256",)
        stored = conn.execute("SELECT rolname, rolpassword FROM pg_authid WHERE rolcanlogin")
        for name, verifier in stored:
            assert verifier.startswith("SCRAM-SHA-256$"), name
    secrets = pg.secrets_dir
    assert stat.S_IMODE(secrets.stat().st_mode) == 0o700
    files = sorted(path.name for path in secrets.iterdir())
    assert {f"{role}.password" for role in ROLES} | {"projector.env", "reader.env"} <= set(files)
    for path in secrets.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_no_role_a_service_uses_may_do_more_than_its_job(pg: PostgresServer) -> None:
    with connect(pg, SUPERUSER, pg.password(SUPERUSER)) as conn:
        rows = conn.execute(
            "SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls"
            " FROM pg_roles WHERE rolname = ANY(%s)",
            [list(SERVICE_ROLES)],
        ).fetchall()
        assert {row[0] for row in rows} == set(SERVICE_ROLES)
        for name, *powers in rows:
            assert not any(powers), (name, powers)
        # Only the bootstrap superuser is one, and no role is a member of another.
        supers = conn.execute("SELECT rolname FROM pg_roles WHERE rolsuper").fetchall()
        assert supers == [(SUPERUSER,)]
        members = conn.execute(
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
            " WHERE r.rolname = ANY(%s)",
            [list(SERVICE_ROLES)],
        ).fetchall()
        assert members == []


def insufficient_privilege(pg: PostgresServer, role: str, statement: str) -> str:
    """Runs ``statement`` as ``role``; returns PostgreSQL's message, which must be a refusal
    for lack of privilege (SQLSTATE 42501)."""
    with (
        connect(pg, role, pg.password(role), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(statement)
    assert refused.value.sqlstate == "42501", statement
    return str(refused.value)


READER_WRITES = [
    "INSERT INTO mouse_status (mouse_id) VALUES ('M999')",
    "UPDATE mouse_status SET stage = 'graduated'",
    "DELETE FROM decision_log",
    "TRUNCATE rejected_events",
    "DROP TABLE mouse_status",
    "ALTER TABLE mouse_status ADD COLUMN note text",
    "CREATE TABLE notes (body text)",
    "CREATE TEMPORARY TABLE notes (body text)",
    "CREATE SCHEMA mine",
]


@pytest.mark.parametrize("statement", READER_WRITES)
def test_postgres_refuses_every_write_of_the_read_only_role(
    pg: PostgresServer, tables: None, statement: str
) -> None:
    message = insufficient_privilege(pg, READER_ROLE, statement)
    assert "permission denied" in message or "must be owner" in message, message


PROJECTOR_ADMIN = [
    "CREATE ROLE mallory LOGIN",
    "CREATE ROLE mallory LOGIN SUPERUSER",
    "CREATE DATABASE other",
    "ALTER SYSTEM SET fsync = on",
    "SELECT rolpassword FROM pg_authid",
    "COPY mouse_status TO PROGRAM 'id'",
    "SELECT pg_read_file('pg_hba.conf')",
    "ALTER ROLE shaping_reader PASSWORD 'x'",
]


@pytest.mark.parametrize("statement", PROJECTOR_ADMIN)
def test_postgres_refuses_the_projector_role_anything_beyond_its_tables(
    pg: PostgresServer, tables: None, statement: str
) -> None:
    message = insufficient_privilege(pg, PROJECTOR_ROLE, statement)
    assert "permission denied" in message or "must be" in message, message


def credentials_env(pg: PostgresServer, name: str) -> dict[str, str]:
    """An environment with nothing of SHAPING_* but the role's env file named by
    SHAPING_CREDENTIALS_FILE (the password stays in its file)."""
    path = pg.secrets_dir / f"{name}.env"
    text = path.read_text()
    assert pg.password(PROJECTOR_ROLE) not in text and pg.password(READER_ROLE) not in text
    return {"SHAPING_CREDENTIALS_FILE": str(path)}


@pytest.fixture
def only(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SHAPING_* variable of the machine but the clock window the conftest sets."""
    for name in list(os.environ):
        if name.startswith("SHAPING_") and name != "SHAPING_CLOCK_MAX_BEHIND_DAYS":
            monkeypatch.delenv(name)
    return monkeypatch


def _publish(bootstrap_servers: str, topics: TopicNames, published: list[Published]) -> int:
    """The story on the projector's topics, as the processor would have written it."""
    topic_of = {
        "events": topics.accepted,
        "decisions": topics.decisions,
        "assignments": topics.assignments,
        "dead_letter": topics.dead_letter,
    }
    codec = default_codec()
    producer = KafkaProducer(bootstrap_servers=bootstrap_servers, acks="all", linger_ms=5)
    sent = 0
    try:
        for item in published:
            if item.event is not None:
                value = codec.encode(item.event)
                producer.send(topic_of[item.kind], key=encode_key(item.mouse_id), value=value)
                sent += 1
        producer.flush(timeout=30)
    finally:
        producer.close()
    return sent


@pytest.mark.kafka
def test_the_projector_role_projects_and_the_reader_role_reads_through_the_command_line(
    pg: PostgresServer,
    kafka_bootstrap: str,
    kafka_topics: TopicNames,
    only: pytest.MonkeyPatch,
) -> None:
    published = scenario()
    sent = _publish(kafka_bootstrap, kafka_topics, published)

    # The projector, as a service is started: its settings from the projector's env file.
    only.setenv(
        "SHAPING_CREDENTIALS_FILE", credentials_env(pg, "projector")["SHAPING_CREDENTIALS_FILE"]
    )
    settings = bootstrap.settings(bootstrap=kafka_bootstrap)
    assert settings.db_url.startswith(f"postgresql+psycopg://{PROJECTOR_ROLE}:")
    store = bootstrap.projection_store(settings, default_codec())
    try:
        consumed = run_projector(
            kafka_bootstrap, kafka_topics, store, default_codec(), consumer=CONSUMER, idle_exit_s=3
        )
        snapshot = store.snapshot()
    finally:
        store.close()
    assert consumed == sent
    mice = sorted(row["mouse_id"] for row in snapshot["mouse_status"])
    assert mice == ["M1", "M2", "M3"]
    engine = sa.create_engine(pg.role_url(SUPERUSER))
    try:
        with engine.connect() as conn:
            owners = conn.execute(
                sa.text("SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
            ).all()
    finally:
        engine.dispose()
    assert owners == [(PROJECTOR_ROLE,)]

    # The operator's read commands, as the reader, through the command line.
    only.delenv("SHAPING_CREDENTIALS_FILE")
    env = credentials_env(pg, "reader") | {"COLUMNS": "200"}
    status = CliRunner().invoke(app, ["status"], env=env)
    assert status.exit_code == 0, status.output
    for mouse in mice:
        assert any(
            line.split()[:1] == [mouse] or f" {mouse} " in line
            for line in status.output.splitlines()
        ), status.output
    history = CliRunner().invoke(app, ["history", "M2"], env=env)
    assert history.exit_code == 0, history.output
    assert "M2" in history.output

    # Hostile arguments are data, not SQL or paths: nothing breaks, nothing changes.
    hostile = [
        ["history", "M1'; DROP TABLE mouse_status; --"],
        ["history", "M1\x1b[2J\x07\r\nforged line"],
        ["history", "../../../../etc/passwd"],
        ["status", "--rig", "x' OR '1'='1"],
        ["status", "--stage", "'; DELETE FROM decision_log; --"],
        ["interventions", "--mouse", 'M1"; DROP SCHEMA public CASCADE; --'],
    ]
    for args in hostile:
        result = CliRunner().invoke(app, args, env=env)
        assert result.exit_code in (0, 1, 2), (args, result.output)
        assert result.exception is None or isinstance(result.exception, SystemExit), (
            args,
            result.exception,
        )
        assert "\x1b[2J" not in result.output and "\x07" not in result.output, args
    check = sql_store(pg.role_url(PROJECTOR_ROLE))
    try:
        assert check.snapshot() == snapshot
    finally:
        check.close()
