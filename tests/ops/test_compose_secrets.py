"""docker-compose.yml holds no password (docs/security.md, "PostgreSQL"): each comes from the
untracked .env that `infra/postgres/postgres.sh compose-env` makes (0600, ignored by git), and
compose refuses to start without it."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.support.scripts import REPO

COMPOSE = REPO / "docker-compose.yml"
POSTGRES_SH = REPO / "infra" / "postgres" / "postgres.sh"
VARIABLES = {
    "SHAPING_PG_SUPERUSER_PASSWORD",
    "SHAPING_PG_PROJECTOR_PASSWORD",
    "SHAPING_PG_READER_PASSWORD",
}
REQUIRED = re.compile(r"\$\{(SHAPING_PG_[A-Z_]+_PASSWORD):\?[^}]+\}")


def services() -> dict[str, Any]:
    return dict(yaml.safe_load(COMPOSE.read_text())["services"])


def test_no_password_is_written_in_the_compose_file() -> None:
    text = COMPOSE.read_text()
    assert ":shaping@" not in text and "POSTGRES_PASSWORD: shaping" not in text
    found = services()
    secrets = {
        "postgres": [
            "POSTGRES_PASSWORD",
            "SHAPING_PG_PROJECTOR_PASSWORD",
            "SHAPING_PG_READER_PASSWORD",
        ],
        "grafana": ["POSTGRES_PASSWORD"],
    }
    for service, names in secrets.items():
        for name in names:
            value = found[service]["environment"][name]
            assert REQUIRED.fullmatch(value), (service, name, value)
    url = found["projector"]["environment"]["SHAPING_DB_URL"]
    assert url.startswith(
        "postgresql+psycopg://shaping_projector:${SHAPING_PG_PROJECTOR_PASSWORD:?"
    )
    assert set(REQUIRED.findall(text)) == VARIABLES
    # Grafana reads as the read-only role; PostgreSQL asks everyone for a password.
    assert found["grafana"]["environment"]["POSTGRES_USER"] == "shaping_reader"
    postgres = found["postgres"]["environment"]
    assert postgres["POSTGRES_HOST_AUTH_METHOD"] == "scram-sha-256"
    assert "--auth-local=scram-sha-256" in postgres["POSTGRES_INITDB_ARGS"]
    assert "./infra/postgres/roles.sql:/etc/shaping/roles.sql:ro" in found["postgres"]["volumes"]


def test_the_env_file_is_ignored_by_git() -> None:
    result = subprocess.run(
        ["git", "check-ignore", "-q", ".env"], cwd=REPO, check=False, capture_output=True
    )
    assert result.returncode == 0, "add .env to .gitignore"


def test_compose_env_makes_a_private_file_and_keeps_its_passwords(tmp_path: Path) -> None:
    target = tmp_path / ".env"

    def make() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTGRES_SH), "compose-env", str(target)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert make().returncode == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = dict(line.split("=", 1) for line in target.read_text().splitlines())
    assert set(first) == VARIABLES
    assert len(set(first.values())) == 3
    assert all(re.fullmatch(r"[0-9a-f]{48}", value) for value in first.values())
    assert make().returncode == 0
    assert dict(line.split("=", 1) for line in target.read_text().splitlines()) == first
    target.chmod(0o644)
    refused = make()
    assert refused.returncode != 0 and f"chmod 600 {target}" in refused.stderr
