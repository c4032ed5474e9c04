"""Validated settings (services/adapters/settings.py) and the one wiring place
(services/bootstrap.py): the environment's names and defaults, the rules, the one-line errors
the command line prints, and collaborators handed down rather than built inside."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.schemas.codec import EventCodec
from shaping.services import bootstrap
from shaping.services.adapters.kafka import KafkaConnection
from shaping.services.adapters.settings import Settings, SettingsError
from shaping.services.cli import app

ENV = {
    "SHAPING_BOOTSTRAP": "kafka-1:9093,kafka-2:9093",
    "SHAPING_TOPIC_PREFIX": "lab",
    "SHAPING_PARTITIONS": "8",
    "SHAPING_PROCESSOR_ID": "lab-processor",
    "SHAPING_PROJECTOR_ID": "lab-projector",
    "SHAPING_DB_URL": "sqlite:///lab.sqlite",
    "SHAPING_DATA_DIR": "/var/lib/shaping",
    "SHAPING_CLOCK_MAX_AHEAD_S": "60",
    "SHAPING_CLOCK_MAX_BEHIND_DAYS": "30.5",
    "SHAPING_PROCESSOR_DEFER_S": "0",
    "SHAPING_PROCESSOR_FETCH_WAIT_MS": "75",
}


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No SHAPING_* variable from the machine running the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("SHAPING_"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_the_defaults_are_a_laptops(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    assert settings.model_dump() == {
        "bootstrap": "127.0.0.1:9092",
        "topic_prefix": "shaping",
        "partitions": 4,
        "processor_id": "shaping-processor",
        "projector_id": "projector",
        "db_url": "sqlite:///shaping.sqlite",
        "data_dir": ".shaping",
        "clock_max_ahead_s": 900.0,
        "clock_max_behind_days": 366.0,
        "command_max_age_s": 3600.0,
        "processor_defer_s": 1.0,
        "processor_fetch_wait_ms": 20,
        "welfare_policy": None,
    }
    assert settings.topics.events == "shaping.events"
    assert settings.kafka == KafkaConnection(SHAPING_BOOTSTRAP="127.0.0.1:9092")  # type: ignore[call-arg]


def test_every_field_comes_from_its_variable_and_options_go_on_top(
    clean_env: pytest.MonkeyPatch,
) -> None:
    for name, value in ENV.items():
        clean_env.setenv(name, value)
    settings = Settings.load()
    assert (settings.bootstrap, settings.topic_prefix, settings.partitions) == (
        "kafka-1:9093,kafka-2:9093",
        "lab",
        8,
    )
    assert (settings.processor_id, settings.projector_id) == ("lab-processor", "lab-projector")
    assert (settings.db_url, settings.data_dir) == ("sqlite:///lab.sqlite", "/var/lib/shaping")
    assert (settings.clock_max_ahead_s, settings.clock_max_behind_days) == (60.0, 30.5)
    assert settings.processor_defer_s == 0.0
    assert settings.processor_fetch_wait_ms == 75
    given = Settings.load(bootstrap="other:9092", topic_prefix=None, partitions=2)
    assert (given.bootstrap, given.topic_prefix, given.partitions) == ("other:9092", "lab", 2)


def test_the_kafka_connection_is_composed_from_the_same_settings(
    clean_env: pytest.MonkeyPatch,
) -> None:
    clean_env.setenv("SHAPING_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("SHAPING_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    clean_env.setenv("SHAPING_KAFKA_SASL_USERNAME", "processor")
    clean_env.setenv("SHAPING_KAFKA_SASL_PASSWORD", "s3cret")
    settings = Settings.load(bootstrap="broker:9094")
    options = settings.kafka.client_options()
    assert options["bootstrap_servers"] == "broker:9094"
    assert (options["security_protocol"], options["sasl_plain_username"]) == (
        "SASL_SSL",
        "processor",
    )
    # A derived copy follows its own brokers and keeps the security settings.
    moved = settings.updated(bootstrap="elsewhere:9094")
    assert moved.kafka.bootstrap == "elsewhere:9094"
    assert moved.kafka.sasl_username == "processor"


def test_settings_are_frozen_and_a_copy_is_validated(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings.load()
    with pytest.raises(ValueError, match="frozen"):
        settings.partitions = 2  # type: ignore[misc]
    assert settings.updated(topic_prefix="lab", db_url=None).topic_prefix == "lab"
    with pytest.raises(SettingsError, match=r"^--partitions: .*greater than or equal to 1"):
        settings.updated(partitions=0)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SHAPING_PARTITIONS", "0", r"greater than or equal to 1 \(got '0'\)"),
        ("SHAPING_PARTITIONS", "four", r"valid integer"),
        ("SHAPING_TOPIC_PREFIX", "my lab", r"letters, digits, '\.', '_' or '-'"),
        ("SHAPING_TOPIC_PREFIX", "", r"letters, digits"),
        ("SHAPING_TOPIC_PREFIX", "x" * 240, r"at most 237 characters"),
        ("SHAPING_PROCESSOR_ID", "", r"letters, digits"),
        ("SHAPING_PROJECTOR_ID", "  ", r"must not be empty"),
        ("SHAPING_DB_URL", "", r"must not be empty"),
        ("SHAPING_CLOCK_MAX_AHEAD_S", "-5", r"greater than 0"),
        ("SHAPING_CLOCK_MAX_BEHIND_DAYS", "0", r"greater than 0"),
        ("SHAPING_CLOCK_MAX_BEHIND_DAYS", "inf", r"finite"),
        ("SHAPING_PROCESSOR_DEFER_S", "-1", r"greater than or equal to 0"),
        ("SHAPING_PROCESSOR_DEFER_S", "3600", r"less than or equal to 60"),
        ("SHAPING_PROCESSOR_DEFER_S", "nan", r"finite"),
        ("SHAPING_PROCESSOR_FETCH_WAIT_MS", "0", r"greater than or equal to 1"),
        ("SHAPING_PROCESSOR_FETCH_WAIT_MS", "1501", r"less than or equal to 1500"),
        ("SHAPING_PROCESSOR_FETCH_WAIT_MS", "0.5", r"valid integer"),
        ("SHAPING_BOOTSTRAP", "broker:port", r"'broker:port' is not host:port"),
        ("SHAPING_KAFKA_SECURITY_PROTOCOL", "TLS", r"'PLAINTEXT', 'SSL'"),
    ],
)
def test_a_bad_value_is_refused_in_one_line_naming_its_variable(
    clean_env: pytest.MonkeyPatch, name: str, value: str, message: str
) -> None:
    clean_env.setenv(name, value)
    with pytest.raises(SettingsError) as refused:
        Settings.load()
    text = str(refused.value)
    assert text.startswith(f"{name}: ") and "\n" not in text, text
    assert refused.value.problem in text
    import re

    assert re.search(message, text), text


def test_a_password_is_never_shown(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("SHAPING_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    clean_env.setenv("SHAPING_KAFKA_SASL_PASSWORD", "hunter2")
    with pytest.raises(SettingsError) as refused:
        Settings.load()
    assert str(refused.value).startswith("Kafka connection: SASL_SSL needs")
    assert "hunter2" not in str(refused.value)


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["topics", "create"], {"SHAPING_PARTITIONS": "0"}, "error: SHAPING_PARTITIONS: "),
        (["topics", "create", "--partitions", "0"], {}, "error: --partitions: "),
        (["projector", "--prefix", "a/b"], {}, "error: --prefix: must be letters"),
        (["events", "show"], {"SHAPING_TOPIC_PREFIX": "a b"}, "error: SHAPING_TOPIC_PREFIX: "),
        (
            ["enroll", "M1", "--curriculum", "basic-shaping"],
            {"SHAPING_BOOTSTRAP": ":"},
            "error: SHAPING_BOOTSTRAP: ",
        ),
    ],
)
def test_the_command_line_prints_a_bad_setting_and_exits_2(
    clean_env: pytest.MonkeyPatch, args: list[str], env: dict[str, str], expected: str
) -> None:
    for name, value in env.items():
        clean_env.setenv(name, value)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert result.output.startswith(expected), result.output
    assert result.output.count("\n") == 1, result.output
    assert "Traceback" not in result.output


def test_the_processor_module_prints_a_bad_setting_and_exits_2(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shaping.services.processor"],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "SHAPING_CLOCK_MAX_AHEAD_S": "soon"},
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: SHAPING_CLOCK_MAX_AHEAD_S: "), result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("module", "env", "expected"),
    [
        ("shaping.services.alerts", {"SHAPING_ALERTS_METRICS_PORT": "90x"}, "SHAPING_ALERTS_"),
        ("shaping.services.alerts", {"SHAPING_ALERT_RULES": "missing.yaml"}, "missing.yaml"),
        ("shaping.services.alerts", {"SHAPING_WELFARE_POLICY": "nope.yaml"}, "nope.yaml"),
        ("shaping.services.notifier", {}, "SHAPING_ALERT_ROUTING"),
        ("shaping.services.ingress", {"SHAPING_INGRESS_METRICS_PORT": "70000"}, "SHAPING_ING"),
    ],
)
def test_the_service_modules_print_a_bad_setting_or_file_and_exit_2(
    tmp_path: Path, module: str, env: dict[str, str], expected: str
) -> None:
    """``python -m`` of the alerts service, the notifier and the gate stop before anything
    starts, with one readable error naming what is wrong (no Kafka is asked)."""
    result = subprocess.run(
        [sys.executable, "-m", module],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=tmp_path,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


class _Codec(EventCodec):
    """A codec a test hands down, to see it arrive."""


def test_bootstrap_hands_down_the_collaborators_it_is_given(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    settings = Settings.load(db_url=f"sqlite:///{tmp_path / 'status.sqlite'}")
    codec = _Codec()
    store = bootstrap.projection_store(settings, codec)
    try:
        assert store._codec is codec
    finally:
        store.close()
    metrics = bootstrap.service_metrics("projector")
    assert metrics.registry is not bootstrap.service_metrics("projector").registry
    assert "basic-shaping" in bootstrap.catalog().names()


def test_the_kafka_clients_use_the_settings_connection(
    clean_env: pytest.MonkeyPatch,
) -> None:
    import shaping.services.adapters.kafka as kafka

    built: list[tuple[str, object, str]] = []
    for kind in ("producer", "consumer", "admin"):
        clean_env.setattr(
            kafka,
            kind,
            lambda connection, client_id, _kind=kind, **_: built.append(
                (_kind, connection, client_id)
            ),
        )
    settings = Settings.load(bootstrap="broker:9092")
    bootstrap.publisher(settings, "p")
    bootstrap.reader(settings, "r")
    bootstrap.admin(settings, "a")
    assert built == [
        ("producer", settings.kafka, "p"),
        ("consumer", settings.kafka, "r"),
        ("admin", settings.kafka, "a"),
    ]


def test_the_welfare_policy_is_read_and_checked_with_the_line_at_fault(
    clean_env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from shaping.services import bootstrap as wiring
    from shaping.services.adapters.settings import SettingsError
    from shaping.services.domain.welfare import DEFAULT_POLICY

    assert wiring.welfare_policy(Settings.load()) == DEFAULT_POLICY
    bad = tmp_path / "policy.yaml"
    bad.write_text("policy: lab\nexpected_weight:\n  method: magic\n")
    clean_env.setenv("SHAPING_WELFARE_POLICY", str(bad))
    with pytest.raises(SettingsError) as refused:
        wiring.welfare_policy(Settings.load())
    message = str(refused.value)
    assert message.startswith("SHAPING_WELFARE_POLICY: ")
    assert f"{bad}:3" in message and "magic" in message
    shipped = Path(__file__).parents[2] / "policies" / "lab-85.yaml"
    clean_env.setenv("SHAPING_WELFARE_POLICY", str(shipped))
    assert wiring.welfare_policy(Settings.load()) != DEFAULT_POLICY
