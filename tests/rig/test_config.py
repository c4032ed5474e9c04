"""The rig config file: a good one loads; every mistake is reported with the entry at fault."""

from __future__ import annotations

from pathlib import Path

import pytest

from shaping.rig.config import load_config, parse_pin_map
from shaping.rig.errors import ConfigError, PinMapError
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
