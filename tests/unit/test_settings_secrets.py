"""Secrets in the settings (services/adapters/settings.py): the database password from a
private file (SHAPING_DB_PASSWORD_FILE), a credentials file of SHAPING_* variables
(SHAPING_CREDENTIALS_FILE) under the environment, and files others may read refused with an
error that says how to fix them and never shows a secret."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.services.adapters.settings import Settings, SettingsError, credentials_file
from shaping.services.cli import app

PG = "postgresql+psycopg://shaping_reader@127.0.0.1:55432/shaping"


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SHAPING_* variable from the machine running the tests."""
    for name in list(os.environ):
        if name.startswith("SHAPING_"):
            monkeypatch.delenv(name)
    return monkeypatch


def private(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    path.chmod(mode)
    return path


def test_the_database_password_comes_from_a_private_file(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    secret = private(tmp_path / "reader.password", "s3cr3tHex\n")
    clean_env.setenv("SHAPING_DB_URL", PG)
    clean_env.setenv("SHAPING_DB_PASSWORD_FILE", str(secret))
    settings = Settings.load()
    assert settings.db_url == PG.replace("shaping_reader@", "shaping_reader:s3cr3tHex@")
    assert "s3cr3tHex" not in repr(settings) and "s3cr3tHex" not in settings.db_url_shown
    assert settings.db_url_shown == PG.replace("shaping_reader@", "shaping_reader:***@")
    # An option's URL gets it too; a URL with its own password keeps it; SQLite needs none.
    other = "postgresql+psycopg://shaping_reader@db.lab:5432/shaping"
    assert Settings.load(db_url=other).db_url.endswith(":s3cr3tHex@db.lab:5432/shaping")
    own = "postgresql+psycopg://u:mine@db.lab/shaping"
    assert Settings.load(db_url=own).db_url == own
    assert Settings.load(db_url="sqlite:///x.sqlite").db_url == "sqlite:///x.sqlite"
    # A derived copy keeps working (and does not put the password in twice).
    assert settings.updated(partitions=2).db_url == settings.db_url


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_password_file_others_may_read_is_refused_saying_how_to_fix_it(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, mode: int
) -> None:
    secret = private(tmp_path / "pw", "hunter22\n", mode)
    clean_env.setenv("SHAPING_DB_URL", PG)
    clean_env.setenv("SHAPING_DB_PASSWORD_FILE", str(secret))
    with pytest.raises(SettingsError) as refused:
        Settings.load()
    text = str(refused.value)
    assert text.startswith("SHAPING_DB_PASSWORD_FILE: ") and f"chmod 600 {secret}" in text
    assert f"mode {mode:o}" in text and "hunter22" not in text


def test_a_missing_or_empty_password_file_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    clean_env.setenv("SHAPING_DB_URL", PG)
    clean_env.setenv("SHAPING_DB_PASSWORD_FILE", str(tmp_path / "nowhere"))
    with pytest.raises(SettingsError, match=r"^SHAPING_DB_PASSWORD_FILE: cannot read .*nowhere"):
        Settings.load()
    clean_env.setenv("SHAPING_DB_PASSWORD_FILE", str(private(tmp_path / "empty", "\n")))
    with pytest.raises(SettingsError, match=r"^SHAPING_DB_PASSWORD_FILE: .*empty is empty"):
        Settings.load()
    clean_env.setenv("SHAPING_DB_PASSWORD_FILE", str(tmp_path))
    with pytest.raises(SettingsError, match="not a regular file"):
        Settings.load()


def test_a_credentials_file_gives_the_database_and_kafka_settings(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db_password = private(tmp_path / "shaping_reader.password", "dbpass01\n")
    kafka_password = private(tmp_path / "operator.password", "kafkapass\n")
    credentials = private(
        tmp_path / "operator.env",
        "# the operator's credentials\n"
        "\n"
        "SHAPING_BOOTSTRAP='127.0.0.1:19092'\n"
        "export SHAPING_KAFKA_SECURITY_PROTOCOL=SASL_SSL\n"
        'SHAPING_KAFKA_SASL_MECHANISM="SCRAM-SHA-512"\n'
        "SHAPING_KAFKA_SASL_USERNAME='operator'\n"
        f"SHAPING_KAFKA_SASL_PASSWORD_FILE='{kafka_password}'\n"
        f"SHAPING_KAFKA_SSL_CAFILE='{tmp_path / 'ca.crt'}'\n"
        f"SHAPING_DB_URL='{PG}'\n"
        f"SHAPING_DB_PASSWORD_FILE='{db_password}'\n",
    )
    clean_env.setenv("SHAPING_CREDENTIALS_FILE", str(credentials))
    settings = Settings.load()
    assert settings.bootstrap == "127.0.0.1:19092"
    assert settings.db_url == PG.replace("shaping_reader@", "shaping_reader:dbpass01@")
    options = settings.kafka.client_options()
    assert options["bootstrap_servers"] == "127.0.0.1:19092"
    assert (options["security_protocol"], options["sasl_mechanism"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
    )
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == (
        "operator",
        "kafkapass",
    )
    assert options["ssl_cafile"] == str(tmp_path / "ca.crt")

    # The environment wins over the file, variable by variable.
    clean_env.setenv("SHAPING_BOOTSTRAP", "127.0.0.1:29092")
    clean_env.setenv("SHAPING_KAFKA_SASL_USERNAME", "alice")
    clean_env.setenv("SHAPING_DB_URL", "sqlite:///mine.sqlite")
    settings = Settings.load()
    assert settings.bootstrap == "127.0.0.1:29092" and settings.db_url == "sqlite:///mine.sqlite"
    assert settings.kafka.sasl_username == "alice"
    # ... and a command's option over both.
    assert Settings.load(bootstrap="b:1").kafka.bootstrap == "b:1"


def test_a_kafka_password_file_named_by_the_credentials_file_must_be_private(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    kafka_password = private(tmp_path / "operator.password", "kafkapass\n", 0o644)
    credentials = private(
        tmp_path / "operator.env",
        "SHAPING_KAFKA_SECURITY_PROTOCOL=SASL_SSL\nSHAPING_KAFKA_SASL_MECHANISM=SCRAM-SHA-512\n"
        f"SHAPING_KAFKA_SASL_USERNAME=operator\nSHAPING_KAFKA_SASL_PASSWORD_FILE={kafka_password}\n",
    )
    clean_env.setenv("SHAPING_CREDENTIALS_FILE", str(credentials))
    with pytest.raises(SettingsError) as refused:
        Settings.load()
    assert str(refused.value).startswith("SHAPING_KAFKA_SASL_PASSWORD_FILE: ")
    assert f"chmod 600 {kafka_password}" in str(refused.value)
    assert "kafkapass" not in str(refused.value)


@pytest.mark.parametrize(
    "line",
    [
        "SHAPING_DB_URL=$HOME/x",
        'SHAPING_DB_URL="a`id`"',
        "SHAPING_DB_URL=two words",
        "SHAPING_DB_URL='unterminated",
        "PATH=/tmp/evil",
        "shaping_db_url=lower",
        "SHAPING_DB_URL=a;rm -rf /",
        "SHAPING_CREDENTIALS_FILE=/elsewhere",
        "just text",
    ],
)
def test_a_credentials_file_line_it_cannot_read_as_the_shell_would_is_refused(
    clean_env: pytest.MonkeyPatch, tmp_path: Path, line: str
) -> None:
    credentials = private(tmp_path / "c.env", f"# ok\nSHAPING_PARTITIONS=2\n{line}\n")
    clean_env.setenv("SHAPING_CREDENTIALS_FILE", str(credentials))
    with pytest.raises(SettingsError) as refused:
        credentials_file()
    text = str(refused.value)
    assert text.startswith("SHAPING_CREDENTIALS_FILE: ") and "line 3" in text, text
    assert line.partition("=")[2] not in text or not line.partition("=")[2], text


def test_a_credentials_file_others_may_read_is_refused_by_the_command_line(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    credentials = private(tmp_path / "operator.env", f"SHAPING_DB_URL='{PG}'\n", 0o644)
    clean_env.setenv("SHAPING_CREDENTIALS_FILE", str(credentials))
    result = CliRunner().invoke(app, ["topics", "create"])
    assert result.exit_code == 2, result.output
    assert "error: SHAPING_CREDENTIALS_FILE: " in result.output
    assert f"chmod 600 {credentials}" in result.output
