"""``shaping rig run|status|calibrate|sync|import-reach``, driven as a person would, without a
terminal: a simulated mouse and a short session, answers fed on stdin."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.hardware.calibration import CalibrationPoint, dispense, fit_ml_per_ms, parse_grams
from shaping.rig.link.store import RigStore
from shaping.rig.task.clock import VirtualClock
from shaping.services.cli import app
from tests.support.anchors import REACH
from tests.support.rig import CODEC, PINS, START, assignment, config_in, seed_cache, write_config

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")
ANCHOR = REACH / "mouse001.json"
PARAMS = {
    "session_minutes": 10,
    "iti_min_s": 2.0,
    "iti_max_s": 3.0,
    "reward_volume_ul": 3.0,
    "difficulty": 0.3,  # another task's parameter
    "spout_position_mm": 2,  # not a reach-task name (the task has spout_position_left/right)
}


def invoke(*args: str, input: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(app, ["rig", *args], input=input)
    assert "Traceback" not in result.output
    return result.exit_code, result.output


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = write_config(tmp_path)
    seed_cache(config_in(tmp_path), assignment(parameters=PARAMS))
    return path


@pytest.mark.parametrize("command", ["run", "status", "calibrate", "sync", "import-reach"])
def test_every_rig_command_has_help(command: str) -> None:
    code, output = invoke(command, "--help")
    assert code == 0 and "Usage" in output


def test_run_shows_the_session_live_and_its_results(config_path: Path) -> None:
    code, output = invoke(
        "run", "--mouse", "M001", "--config", str(config_path), "--simulate", "--offline",
        "--start", START.isoformat(),
    )  # fmt: skip
    assert code == 0, output
    lines = output.splitlines()
    assert "offline mode: the broker is not contacted" in lines
    assert any(line.startswith("offline: using the cached assignment for M001") for line in lines)
    assert any(
        line.startswith("session M001-rig-1-20260302T090000 started: stage s1_habituation")
        for line in lines
    )
    [parameters] = [line for line in lines if line.startswith("parameters: ")]
    assert "reward_volume_ul=3" in parameters and "session_minutes=10" in parameters
    assert "not used by the reach task: difficulty, spout_position_mm" in lines
    trials = [line for line in lines if line.startswith("trial ")]
    assert trials and trials[0].startswith("trial    1 ")
    assert all(
        "accuracy" in line and " left | s1_habituation | cue " in line and "spouts L" in line
        for line in trials
    )
    left = [line.split("|")[3].split()[0].split(":") for line in trials]
    seconds = [int(m) * 60 + int(s) for m, s in left]
    assert seconds == sorted(seconds, reverse=True) and 0 <= seconds[-1] < seconds[0] < 600
    [ended] = [line for line in lines if line.startswith("session ended (time_limit)")]
    assert f"{len(trials)} trials" in ended
    assert any(line.startswith("reach results: d' ") for line in lines)
    assert any("events wait in the outbox" in line for line in lines)


def test_run_prints_every_nth_trial_without_a_terminal(config_path: Path) -> None:
    args = ["run", "--mouse", "M001", "--config", str(config_path), "--simulate", "--offline"]
    code, output = invoke(*args, "--every", "5", "--start", START.isoformat())
    assert code == 0, output
    shown = [int(line.split()[1]) for line in output.splitlines() if line.startswith("trial ")]
    assert shown and all(n % 5 == 1 for n in shown)


@pytest.mark.parametrize(
    ("args", "code", "words"),
    [
        (["--mouse", "M009"], 1, "error: mouse M009 is not on rig rig-1's list"),
        (["--mouse", "M001", "--start", "yesterday"], 2, "'yesterday' is not an ISO date"),
        (["--mouse", "M002"], 1, "no assignment known for M002"),
    ],
)
def test_run_mistakes_get_one_clear_line(
    config_path: Path, args: list[str], code: int, words: str
) -> None:
    got, output = invoke("run", "--config", str(config_path), "--simulate", "--offline", *args)
    assert got == code and words in output


def test_simulation_options_need_simulate(config_path: Path) -> None:
    got, output = invoke("run", "--mouse", "M001", "--config", str(config_path), "--speed", "5")
    assert got == 2 and "--start and --speed need --simulate" in output


def test_a_bad_or_missing_config_is_named(tmp_path: Path) -> None:
    bad = write_config(tmp_path, pins={**PINS, "cue_lft": 3})
    code, output = invoke("run", "--mouse", "M001", "--config", str(bad), "--simulate")
    assert code == 2 and "pins.cue_lft: unknown device; did you mean cue_left?" in output
    code, output = invoke("status", "--config", str(tmp_path / "none.toml"))
    assert code == 2 and "no rig config file" in output


def test_status_shows_cache_outbox_interrupted_session_and_an_unreachable_broker(
    config_path: Path,
) -> None:
    code, _ = invoke(
        "run", "--mouse", "M001", "--config", str(config_path), "--simulate", "--offline",
        "--start", START.isoformat(),
    )  # fmt: skip
    assert code == 0
    waiting = RigStore(config_path.parent / "state" / "rig.sqlite", codec=CODEC).unsent_count()
    code, output = invoke("status", "--config", str(config_path), "--timeout", "1")
    assert code == 0, output
    assert "broker 127.0.0.1:1: UNREACHABLE" in output
    assert f"outbox: {waiting} events waiting (oldest from 2026-03-02 09:00:00 UTC)" in output
    assert "assignment: session 1, stage s1_habituation (basic-shaping 0.1.0; enrolled)" in output
    assert "M002:\n    assignment: none cached" in output
    assert "last session M001-rig-1-20260302T090000: no decision received yet" in output
    assert "left: 0.0001 ml/ms (config file)" in output


def test_calibrate_guides_through_weighing_and_stores_ml_per_ms(config_path: Path) -> None:
    answers = "\n0.5\n\nabc\n1.02 g\ny\n"  # Enter, weight, Enter, a typo, weight, save
    code, output = invoke(
        "calibrate", "left", "--config", str(config_path), "--simulate",
        "--ms", "50", "--ms", "100", "--pulses", "100", input=answers,
    )  # fmt: skip
    assert code == 0, output
    assert "open the valve 100 times for 50 ms" in output
    assert "'abc' is not a weight; type grams" in output
    expected = fit_ml_per_ms([CalibrationPoint(50, 100, 0.5), CalibrationPoint(100, 100, 1.02)])
    assert f"left valve: {expected:.6g} ml/ms" in output
    stored = RigStore(config_path.parent / "state" / "rig.sqlite", codec=CODEC).calibrations()
    assert stored["left"].ml_per_ms == pytest.approx(expected)
    code, output = invoke("status", "--config", str(config_path), "--timeout", "1")
    assert f"left: {expected:.6g} ml/ms (calibrated " in output
    assert "right: 0.0001 ml/ms (config file)" in output


def test_calibrate_refuses_a_typo_and_stops_cleanly_without_answers(config_path: Path) -> None:
    code, output = invoke("calibrate", "lft", "--config", str(config_path), "--simulate")
    assert code == 2 and "no valve 'lft'; did you mean left?" in output
    code, output = invoke(
        "calibrate", "right", "--config", str(config_path), "--simulate", input=""
    )
    assert code == 1 and "calibration cancelled" in output
    assert (
        "right"
        not in RigStore(config_path.parent / "state" / "rig.sqlite", codec=CODEC).calibrations()
    )


def test_dispensing_opens_the_valve_the_asked_number_of_times() -> None:
    class FakeValve:
        def __init__(self) -> None:
            self.opened: list[float] = []
            self.is_open = False

        def open(self) -> None:
            self.is_open = True
            self.opened.append(clock.now())

        def close(self) -> None:
            self.is_open = False

    clock = VirtualClock(0.0)
    valve = FakeValve()
    dispense(valve, clock, open_ms=70, pulses=5, gap_ms=130)
    assert valve.opened == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8]) and not valve.is_open
    assert parse_grams(" 0,61 g ") == pytest.approx(0.61)
    with pytest.raises(ValueError, match="positive"):
        parse_grams("-1")


def test_import_reach_prints_reachs_results_and_writes_the_events(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl"
    code, output = invoke("import-reach", str(ANCHOR), "--out", str(out))
    assert code == 0, output
    rows = [line.split() for line in output.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 8
    assert rows[-1][1] == "2020-02-14" and rows[-1][-1] == "2.127"
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert {e["mouse_id"] for e in events} == {"mouse001"}
    assert sum(e["event_type"] == "SessionStarted" for e in events) == 8
    code, output = invoke("import-reach", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read" in output
    broken = tmp_path / "broken.json"
    broken.write_text('[{"date": "2020-02-07", "trials": [{"outcome": 1}]}]')
    code, output = invoke("import-reach", str(broken))
    assert code == 2 and "cannot read" in output and "KeyError" in output


def test_a_typo_in_a_rig_command_is_explained_in_a_real_process() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shaping.services.cli", "rig", "staus"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "No such command 'staus'" in result.stderr


def test_the_outbox_depth_is_served_to_prometheus(config_path: Path) -> None:
    import urllib.error
    import urllib.request

    from shaping.rig.metrics import OutboxDepthExporter

    code, _ = invoke(
        "run", "--mouse", "M001", "--config", str(config_path), "--simulate", "--offline",
        "--start", START.isoformat(),
    )  # fmt: skip
    assert code == 0
    store_path = config_path.parent / "state" / "rig.sqlite"
    waiting = RigStore(store_path, codec=CODEC).unsent_count()
    exporter = OutboxDepthExporter(store_path, 'rig "1"', 0, "127.0.0.1").start()
    try:
        url = f"http://127.0.0.1:{exporter.port}"
        with urllib.request.urlopen(f"{url}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert "# TYPE shaping_rig_outbox_depth gauge" in text
        assert f'shaping_rig_outbox_depth{{rig="rig \\"1\\""}} {waiting}\n' in text
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(f"{url}/other", timeout=10)
    finally:
        exporter.stop()
