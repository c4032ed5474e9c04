"""Start and stop a real throwaway PostgreSQL (infra/postgres/postgres.sh) for tests.

The test server listens on 127.0.0.1:55433 unless SHAPING_TEST_PG_PORT says
otherwise, and keeps its cluster in a fresh temporary directory that is removed
on stop (set SHAPING_TEST_KEEP_DATA=1 to keep it).

The cluster is the script's: every connection needs a password, and the roles are
``shaping_projector`` (writes) and ``shaping_reader`` (reads), their passwords in 0600 files of
the data dir's ``secrets`` (docs/security.md). ``server.url`` is the projector's URL with its
password. Many tests make a database (and some a role) of their own, so by default the test
cluster also lets the projector role create databases and roles (``CREATEDB CREATEROLE``, which
the script never grants); ``start_postgres(test_databases=False)`` leaves the roles exactly as
the script made them (tests/integration/test_postgres_security.py).
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from tests.support.scripts import (
    REPO,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    InfraStartError,
    describe_failure,
    env_port,
    make_temp_dir,
    port_in_use,
    remove_dir,
    run_script,
)

POSTGRES_SH = REPO / "infra" / "postgres" / "postgres.sh"
DEFAULT_TEST_PORT = 55433
PROJECTOR_ROLE = "shaping_projector"
READER_ROLE = "shaping_reader"
SUPERUSER = "postgres"


@dataclass
class PostgresServer:
    port: int
    base_dir: Path
    url: str = ""
    stopped: bool = field(default=False, init=False)

    @property
    def data_dir(self) -> Path:
        return self.base_dir / "pg-data"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "server.log"

    @property
    def secrets_dir(self) -> Path:
        """The roles' password files and env files, written by postgres.sh (mode 0700)."""
        return self.data_dir / "secrets"

    def password(self, role: str) -> str:
        return (self.secrets_dir / f"{role}.password").read_text().strip()

    def role_url(self, role: str, password: str | None = None, database: str = "shaping") -> str:
        """SQLAlchemy URL of ``role`` with its password (or ``password``; "" for none)."""
        secret = self.password(role) if password is None else password
        credentials = f"{role}:{quote(secret, safe='')}" if secret else role
        return f"postgresql+psycopg://{credentials}@127.0.0.1:{self.port}/{database}"

    def env(self) -> dict[str, str]:
        return {
            "SHAPING_PG_PORT": str(self.port),
            "SHAPING_PG_DATA": str(self.data_dir),
            # Safety net: the server goes away even if this process is killed.
            "SHAPING_OWNER_PID": str(os.getpid()),
        }

    def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        result = run_script(POSTGRES_SH, "down", self.env(), STOP_TIMEOUT_S)
        if result.returncode != 0:
            raise InfraStartError(describe_failure("stopping PostgreSQL", result))
        remove_dir(self.base_dir)


def start_postgres(port: int | None = None, test_databases: bool = True) -> PostgresServer:
    """Start a fresh cluster and return it once it is ready; raise InfraStartError if not.

    ``server.url`` is a SQLAlchemy URL (psycopg 3 driver) of the projector role, with its
    password, for database ``shaping``. ``test_databases``: let that role create databases
    and roles.
    """
    port = port or env_port("SHAPING_TEST_PG_PORT", DEFAULT_TEST_PORT)
    if port_in_use(port):
        raise InfraStartError(
            f"127.0.0.1:{port} is already in use, so the test PostgreSQL cannot start there. "
            "Stop whatever listens there (a leftover test server?) or choose another port "
            "with SHAPING_TEST_PG_PORT."
        )
    server = PostgresServer(port, make_temp_dir("shaping-test-pg-"))
    try:
        result = run_script(POSTGRES_SH, "up", server.env(), START_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        server.stop()
        raise InfraStartError(f"`postgres.sh up` took longer than {exc.timeout} s") from exc
    if result.returncode != 0:
        # Keep the data dir: its server.log explains the failure.
        run_script(POSTGRES_SH, "down", server.env(), STOP_TIMEOUT_S)
        server.stopped = True
        raise InfraStartError(
            describe_failure("starting PostgreSQL", result) + f"\n(server log: {server.log_file})"
        )
    url = run_script(POSTGRES_SH, "url", server.env(), STOP_TIMEOUT_S)
    if url.returncode != 0 or not url.stdout.strip():
        server.stop()
        raise InfraStartError(describe_failure("asking postgres.sh for the URL", url))
    # The script's URL has no password (it is in the role's file): put it in for the tests.
    if url.stdout.strip() != server.role_url(PROJECTOR_ROLE, password=""):
        server.stop()
        raise InfraStartError(f"postgres.sh url printed {url.stdout.strip()!r}")
    server.url = server.role_url(PROJECTOR_ROLE)
    if test_databases:
        _as_superuser(server, f"ALTER ROLE {PROJECTOR_ROLE} CREATEDB CREATEROLE")
    return server


def _as_superuser(server: PostgresServer, statement: str) -> None:
    """One statement as the bootstrap superuser (test set-up only; no service is one)."""
    import sqlalchemy as sa

    engine = sa.create_engine(
        server.role_url(SUPERUSER, database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        with engine.connect() as conn:
            conn.execute(sa.text(statement))
    finally:
        engine.dispose()
