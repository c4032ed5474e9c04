"""The rig config file: a good one loads; every mistake is reported with the entry at fault."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from shaping.rig.config import load_config, parse_pin_map
from shaping.rig.errors import ConfigError, PinMapError
from shaping.rig.link.connection import KafkaLink, KafkaSecurity, client_options
from tests.support.rig import PINS, write_config


def test_a_full_config_loads_with_every_device_and_calibration(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        pins={**PINS, "touch_right": {"pin": 15, "pull_up": True, "bounce_ms": 5}},
        valves={"left": 8.5e-5},
    )
    config = load_config(path)
    assert config.rig_id == "rig-1"
    assert config.mice == ("M001", "M002")
    assert config.bootstrap == "127.0.0.1:1"
    assert config.state_dir == tmp_path / "state"  # relative to the config file
    assert config.store_path == tmp_path / "state" / "rig.sqlite"
    assert config.pins["cue_left"].pin == 7
    touch = config.pins["touch_right"]
    assert (touch.pin, touch.pull_up, touch.bounce_ms) == (15, True, 5.0)
    assert set(config.valves) == {"left"}
    assert config.valves["left"].open_ms(4.0) == pytest.approx(4.0 / 1000 / 8.5e-5)


@pytest.mark.parametrize(
    ("pins", "words"),
    [
        ({**PINS, "cue_lft": 5}, ["pins.cue_lft", "unknown device", "did you mean cue_left"]),
        ({**PINS, "sync": 14}, ["pins.sync", "GPIO14", "already used by pins.touch_left"]),
        (
            {k: v for k, v in PINS.items() if k != "valve_right"},
            ["missing", "valve_right", "reward solenoid valve of the right spout"],
        ),
        ({**PINS, "cue_left": 40}, ["pins.cue_left", "40", "BCM"]),
        ({**PINS, "cue_left": "GPIO7"}, ["pins.cue_left", "'GPIO7'", "not a GPIO number"]),
        ({**PINS, "cue_left": {"pin": 7, "pull_up": True}}, ["pins.cue_left.pull_up"]),
        ({**PINS, "touch_left": {"pin": 14, "pull_up": "yes"}}, ["pins.touch_left.pull_up"]),
    ],
    ids=["unknown", "duplicate", "missing", "range", "type", "option", "flag"],
)
def test_a_bad_pin_map_fails_at_startup_naming_the_entry(
    tmp_path: Path, pins: dict[str, object], words: list[str]
) -> None:
    path = write_config(tmp_path, pins=pins)
    with pytest.raises(PinMapError) as caught:
        load_config(path)
    message = str(caught.value)
    for word in words:
        assert word in message, message
    assert str(path) in message


def test_an_empty_pin_map_lists_the_devices() -> None:
    with pytest.raises(PinMapError, match=r"cue_left = 7.*touch_left"):
        parse_pin_map({})


@pytest.mark.parametrize(
    ("extra", "mice", "valves", "words"),
    [
        ("colour = 'blue'", None, None, ["colour", "unknown setting"]),
        ("", [], None, ["mice must list"]),
        ("", ["M1", "M1"], None, ["M1 is listed twice"]),
        ("", None, {"middle": 1e-4}, ["valves.middle", "left and right"]),
        ("", None, {"left": -1.0}, ["valves.left.ml_per_ms", "positive"]),
    ],
    ids=["unknown", "no-mice", "twice", "valve-name", "valve-rate"],
)
def test_other_mistakes_are_named(
    tmp_path: Path,
    extra: str,
    mice: list[str] | None,
    valves: dict[str, float] | None,
    words: list[str],
) -> None:
    path = write_config(tmp_path, extra=extra, mice=mice, valves=valves)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    for word in words:
        assert word in str(caught.value)


def test_a_missing_or_broken_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no rig config file.*--config"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("rig_id = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


# --- the Kafka security settings of [broker] ---------------------------------------------


def _secured(tmp_path: Path, settings: str, password_mode: int = 0o600) -> Path:
    """A config whose [broker] table also holds ``settings``, with a password file
    (``secrets/rig-1.password``, mode ``password_mode``) and a CA file next to it."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    password = secrets / "rig-1.password"
    password.write_text("s3cret\n")
    password.chmod(password_mode)
    (secrets / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    path = write_config(tmp_path)
    text = path.read_text().replace("[broker]\n", "[broker]\n" + settings.strip() + "\n", 1)
    path.write_text(text)
    return path


SASL_SSL = """
security_protocol = "SASL_SSL"
sasl_username = "rig-1"
sasl_password_file = "secrets/rig-1.password"
ssl_cafile = "secrets/ca.crt"
"""


def test_a_plaintext_config_gives_the_same_client_options_as_before(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.kafka_security == KafkaSecurity()
    assert client_options(config.link) == {
        "bootstrap_servers": "127.0.0.1:1",
        "reconnect_backoff_max_ms": 2000,
    }
    assert client_options("h:1") == client_options(KafkaLink("h:1"))


def test_sasl_ssl_settings_load_relative_to_the_file_and_become_client_options(
    tmp_path: Path,
) -> None:
    config = load_config(_secured(tmp_path, SASL_SSL))
    security = config.kafka_security
    assert security.protocol == "SASL_SSL"
    assert security.sasl_mechanism == "SCRAM-SHA-512"  # the default mechanism
    assert security.sasl_password_file == tmp_path / "secrets" / "rig-1.password"
    assert security.ssl_cafile == tmp_path / "secrets" / "ca.crt"
    assert "s3cret" not in repr(config) and "s3cret" not in security.describe()
    assert client_options(config.link) == {
        "bootstrap_servers": "127.0.0.1:1",
        "reconnect_backoff_max_ms": 2000,
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "rig-1",
        "sasl_plain_password": "s3cret",
        "ssl_cafile": str(tmp_path / "secrets" / "ca.crt"),
    }
    # The password is read when a client is built: a rotated password is used next time.
    (tmp_path / "secrets" / "rig-1.password").write_text("rotated")
    assert client_options(config.link)["sasl_plain_password"] == "rotated"
    # --bootstrap (RigConfig.bootstrap replaced) keeps the credentials.
    moved = replace(config, bootstrap="elsewhere:9093")
    assert moved.link == KafkaLink("elsewhere:9093", security)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_password_file_open_to_others_is_refused_at_load(tmp_path: Path, mode: int) -> None:
    path = _secured(tmp_path, SASL_SSL, password_mode=mode)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    assert "broker.sasl_password_file" in message
    assert str(tmp_path / "secrets" / "rig-1.password") in message
    assert f"mode {mode:o}" in message and "chmod 600" in message


@pytest.mark.parametrize(
    ("settings", "words"),
    [
        ('security_protocol = "SASL_PLAINTEXT"', ["broker.security_protocol", "in clear"]),
        ('security_protocol = "SASL_SLL"', ["broker.security_protocol", "did you mean SASL_SSL"]),
        (
            SASL_SSL + 'sasl_mechanism = "PLAIN"',
            ["broker.sasl_mechanism", "'PLAIN'", "SCRAM-SHA-512 or SCRAM-SHA-256"],
        ),
        (
            'security_protocol = "SASL_SSL"\nsasl_username = "rig-1"',
            ["SASL_SSL", "needs sasl_password_file"],
        ),
        (
            'security_protocol = "SASL_SSL"\nsasl_password_file = "secrets/rig-1.password"',
            ["needs sasl_username"],
        ),
        (
            SASL_SSL.replace("secrets/rig-1.password", "secrets/nope"),
            ["broker.sasl_password_file", "secrets/nope", "No such file"],
        ),
        (
            SASL_SSL.replace("secrets/ca.crt", "secrets/nope.crt"),
            ["broker.ssl_cafile", "no CA file", "secrets/nope.crt"],
        ),
        ('sasl_username = "rig-1"', ["broker.sasl_username", 'needs security_protocol = "SASL']),
        (
            'security_protocol = "SSL"\nsasl_password_file = "secrets/rig-1.password"',
            ["broker.sasl_password_file", "security_protocol is SSL"],
        ),
        ('ssl_cafile = "secrets/ca.crt"', ["broker.ssl_cafile", "is PLAINTEXT"]),
        ('sasl_user = "rig-1"', ["broker.sasl_user", "did you mean sasl_username"]),
        (SASL_SSL.replace('"rig-1"', '""'), ["broker.sasl_username", "non-empty string"]),
    ],
    ids=[
        "sasl-plaintext",
        "protocol-typo",
        "mechanism",
        "no-password",
        "no-username",
        "missing-password-file",
        "missing-ca",
        "sasl-on-plaintext",
        "sasl-on-ssl",
        "ca-on-plaintext",
        "unknown-setting",
        "empty-username",
    ],
)
def test_bad_kafka_security_settings_are_named(
    tmp_path: Path, settings: str, words: list[str]
) -> None:
    path = _secured(tmp_path, settings)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message
    for word in words:
        assert word in message, message


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    path = _secured(tmp_path, SASL_SSL)
    (tmp_path / "secrets" / "rig-1.password").write_text("\n")
    with pytest.raises(ConfigError, match=r"broker.sasl_password_file: .*rig-1.password is empty"):
        load_config(path)


def test_tls_only_needs_no_credentials(tmp_path: Path) -> None:
    config = load_config(
        _secured(tmp_path, 'security_protocol = "SSL"\nssl_cafile = "secrets/ca.crt"')
    )
    assert client_options(config.link) == {
        "bootstrap_servers": "127.0.0.1:1",
        "reconnect_backoff_max_ms": 2000,
        "security_protocol": "SSL",
        "ssl_cafile": str(tmp_path / "secrets" / "ca.crt"),
    }
