"""``shaping rig calibrate`` checks a calibration against plausible bounds before it saves it,
refuses one outside the hard bounds, asks (default No) about one outside the plausible range,
and keeps every calibration with its time, who, the rig and the values (``--history``)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.config import CalibrationBounds, load_config
from shaping.rig.errors import ConfigError
from shaping.rig.hardware.calibration import CalibrationPoint, check_calibration, fit_ml_per_ms
from shaping.rig.link.store import RigStore
from shaping.services.cli import app
from tests.support.rig import CODEC, write_config

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["rig", *args], input=input, env={"SHAPING_OPERATOR": "alice"})
    assert "Traceback" not in result.output, result.output
    return result.exit_code, result.output


def calibrate(config: Path, *ms_and_answers: str, extra: tuple[str, ...] = ()) -> tuple[int, str]:
    """``calibrate left`` with one opening time and the typed answers (Enter, grams, ...)."""
    ms, *answers = ms_and_answers
    args = ["calibrate", "left", "--config", str(config), "--simulate", "--ms", ms]
    return invoke(
        *args, "--pulses", "100", "--gap-ms", "0", *extra, input="\n".join(answers) + "\n"
    )


def store_of(config: Path) -> RigStore:
    return RigStore(config.parent / "state" / "rig.sqlite", codec=CODEC)


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def test_defaults_and_the_check() -> None:
    bounds = CalibrationBounds()
    assert bounds.ul_per_opening == (0.5, 20.0) and bounds.ul_per_ms == (0.01, 0.5)
    assert bounds.hard_ul_per_opening == (0.1, 50.0) and bounds.hard_ul_per_ms == (0.002, 2.0)
    good = [CalibrationPoint(50, 100, 0.5), CalibrationPoint(100, 100, 1.02)]
    check = check_calibration(good, fit_ml_per_ms(good), bounds)
    assert check.ok and not check.refused and not check.warnings
    # the report that started it: 100 µL per opening of 2.1 ms
    flood = [CalibrationPoint(2.1, 100, 10.0)]
    check = check_calibration(flood, fit_ml_per_ms(flood), bounds)
    assert check.refused and any("100 µL per opening" in p for p in check.refused)
    # 25 µL per opening: possible, not plausible
    near = [CalibrationPoint(100, 100, 2.5)]
    check = check_calibration(near, fit_ml_per_ms(near), bounds)
    assert not check.refused and any("25 µL per opening" in w for w in check.warnings)
    # two measurements that disagree (a typo in one weight)
    apart = [CalibrationPoint(50, 100, 0.5), CalibrationPoint(100, 100, 0.3)]
    check = check_calibration(apart, fit_ml_per_ms(apart), bounds)
    assert any("disagree" in w for w in check.warnings)


def test_a_plausible_calibration_is_saved_by_default_and_kept_in_the_history(
    config: Path,
) -> None:
    code, out = calibrate(config, "70", "", "0.42", "")  # Enter, 0.42 g, Enter (= yes)
    assert code == 0, out
    assert "Save this calibration? [Y/n]" in out
    assert "saved in" in out
    [record] = store_of(config).calibration_history()
    assert record.outcome == "saved" and record.valve == "left"
    assert record.by == "alice" and record.rig_id == "rig-1" and record.in_force
    assert record.ml_per_ms == pytest.approx(0.42 / 100 / 70)
    assert record.points == [{"open_ms": 70.0, "pulses": 100, "grams": 0.42}]


def test_outside_the_hard_bounds_the_calibration_is_refused(config: Path) -> None:
    code, out = calibrate(config, "2.1", "", "10", "y")  # 100 µL per 2.1 ms opening
    assert code == 1, out
    assert "REFUSED" in out and "100 µL per opening" in out and "not saved" in out
    assert "Save this" not in out  # not even asked
    store = store_of(config)
    assert "left" not in store.calibrations()
    [record] = store.calibration_history()
    assert record.outcome == "refused" and not record.in_force and record.warnings


def test_near_the_bounds_it_warns_and_the_default_is_no(config: Path) -> None:
    code, out = calibrate(config, "100", "", "2.5", "")  # 25 µL per opening; Enter = No
    assert code == 1, out
    assert "WARNING" in out and "25 µL per opening" in out and "[y/N]" in out
    assert "not saved" in out
    assert "left" not in store_of(config).calibrations()
    assert [r.outcome for r in store_of(config).calibration_history()] == ["declined"]
    code, out = calibrate(config, "100", "", "2.5", "y")  # said yes on purpose
    assert code == 0, out
    records = store_of(config).calibration_history()
    assert [r.outcome for r in records] == ["declined", "saved"]
    assert records[-1].warnings and records[-1].in_force
    assert store_of(config).calibrations()["left"].ml_per_ms == pytest.approx(0.00025)


def test_yes_does_not_save_an_implausible_calibration(config: Path) -> None:
    code, out = calibrate(config, "100", "", "2.5", extra=("--yes",))
    assert code == 1 and "not saved" in out and "--yes" in out
    assert "left" not in store_of(config).calibrations()


def test_bounds_come_from_the_config(tmp_path: Path) -> None:
    extra = (
        "[valves.left]\n"
        "ml_per_ms = 0.0001\n"
        "ul_per_opening = [0.5, 30]\n"
        "hard_ul_per_opening = [0.1, 60]\n"
    )
    path = write_config(tmp_path, valves={"right": 1e-4})
    path.write_text(path.read_text() + extra)
    bounds = load_config(path).valve_bounds("left")
    assert bounds.ul_per_opening == (0.5, 30.0) and bounds.hard_ul_per_opening == (0.1, 60.0)
    assert bounds.ul_per_ms == CalibrationBounds().ul_per_ms  # the defaults for the rest
    code, out = calibrate(path, "100", "", "2.5", "")  # 25 µL: plausible on this rig
    assert code == 0 and "WARNING" not in out, out
    # a valve table with bounds only (no ml_per_ms) is fine too
    path.write_text(path.read_text().replace("ml_per_ms = 0.0001\nul_per", "ul_per"))
    assert "left" not in load_config(path).valves


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("ul_per_opening = [20, 0.5]", "ul_per_opening must be [low, high]"),
        ("ul_per_ms = 0.1", "ul_per_ms must be [low, high]"),
        ("ul_per_opening = [0.5, 80]", "within hard_ul_per_opening"),
        ("hard_ul_per_ms = [-1, 2]", "positive"),
        ("ul_per_openings = [1, 2]", "did you mean ul_per_opening"),
    ],
)
def test_bad_bounds_are_named(tmp_path: Path, entry: str, message: str) -> None:
    path = write_config(tmp_path, valves={})
    path.write_text(path.read_text() + f"[valves.left]\n{entry}\n")
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(path)


def test_history_lists_every_calibration_and_old_rows_stay_readable(config: Path) -> None:
    # a store written before the history existed: its calibrations table only
    state = config.parent / "state"
    state.mkdir()
    old = sqlite3.connect(state / "rig.sqlite")
    old.execute(
        "CREATE TABLE calibrations (id INTEGER PRIMARY KEY AUTOINCREMENT, valve TEXT NOT NULL,"
        " ml_per_ms REAL NOT NULL, calibrated_at TEXT NOT NULL, points TEXT NOT NULL)"
    )
    old.execute(
        "INSERT INTO calibrations (valve, ml_per_ms, calibrated_at, points) VALUES"
        " ('right', 0.00009, '2025-11-02T08:00:00.000+00:00', ?)",
        (json.dumps([{"open_ms": 50, "pulses": 100, "grams": 0.45}]),),
    )
    old.commit()
    old.close()
    assert store_of(config).calibrations()["right"].ml_per_ms == pytest.approx(0.00009)
    calibrate(config, "2.1", "", "10")  # refused
    calibrate(config, "70", "", "0.42", "y")  # saved
    code, out = invoke("calibrate", "--history", "--config", str(config))
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("20")]
    assert len(lines) == 3, out
    assert lines[0].startswith("2025-11-02 08:00 UTC  right") and "before the history" in out
    assert "refused" in lines[1] and "alice on rig-1" in lines[1]
    assert "saved, in force" in lines[2] and "0.42 g" in out
    code, out = invoke("calibrate", "right", "--history", "--config", str(config))
    assert code == 0 and "left" not in out.replace("calibrations of", "")
    code, out = invoke("calibrate", "--config", str(config))
    assert code == 2 and "name the valve" in out
