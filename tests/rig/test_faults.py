"""The crash-test fault plan: its text form, a pause held by a gate file, and real SIGKILLs.

A plan reaches a rig process only through ``--fault-plan`` on the command line (or the
``faults`` argument of :class:`RigAgent` and :class:`OutboxDrainer`); the environment plays no
part. The kills are checked in child processes, since they end the process that runs them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shaping.rig.agent import RunOptions
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import load_config
from shaping.rig.faults import FaultPlan, FaultPlanError
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.store import RigStore
from shaping.services.cli import app
from tests.support.processes import wait_until
from tests.support.rig import (
    CODEC,
    START,
    FakeDisplay,
    assignment,
    config_in,
    seed_cache,
    write_config,
)
from tests.support.scripts import REPO

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

PARAMS = {"session_minutes": 5, "iti_min_s": 2.0, "iti_max_s": 3.0, "reward_volume_ul": 3.0}
WAIT_S = 60.0


# -- the text form ------------------------------------------------------------------------------


def test_no_text_is_no_fault() -> None:
    assert FaultPlan.parse("") == FaultPlan.none() == FaultPlan()
    assert FaultPlan.parse("   ") == FaultPlan.none()
    assert FaultPlan.none().is_empty
    assert str(FaultPlan.none()) == ""


def test_every_fault_of_the_old_variable_parses() -> None:
    assert FaultPlan.parse("kill-after-event:60") == FaultPlan(kill_after_event=60)
    assert FaultPlan.parse("kill-after-ack:25") == FaultPlan(kill_after_ack=25)
    assert FaultPlan.parse("pause-after-event:80:/tmp/gate") == FaultPlan(
        pause_after_event=80, pause_gate=Path("/tmp/gate")
    )


def test_faults_combine_separated_by_commas() -> None:
    plan = FaultPlan.parse(" pause-after-event:3:/tmp/a:b , kill-after-event:9,kill-after-ack:2 ")
    assert plan == FaultPlan(
        kill_after_event=9,
        pause_after_event=3,
        pause_gate=Path("/tmp/a:b"),  # the gate's path is the rest of the entry, colons and all
        kill_after_ack=2,
    )
    assert not plan.is_empty
    assert FaultPlan.parse(str(plan)) == plan  # the text form goes both ways


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("kill-after-evnt:5", "unknown fault 'kill-after-evnt' (did you mean kill-after-event?)"),
        ("explode:1", "unknown fault 'explode'"),
        ("kill-after-event", "needs a count"),
        ("kill-after-event:", "a count of at least 1"),
        ("kill-after-event:x", "a count of at least 1, not 'x'"),
        ("kill-after-event:-3", "a count of at least 1, not '-3'"),
        ("kill-after-event:0", "a count of at least 1, not '0'"),
        ("kill-after-event:2.5", "a count of at least 1, not '2.5'"),
        ("kill-after-event:²", "a count of at least 1"),
        ("kill-after-ack:3:extra", "takes only a count"),
        ("pause-after-event:4", "needs the path of its gate file"),
        ("pause-after-event:4:", "needs the path of its gate file"),
        ("kill-after-event:1,kill-after-event:2", "kill-after-event is given twice"),
        ("kill-after-event:1,,kill-after-ack:2", "an empty entry"),
    ],
)
def test_a_bad_plan_is_refused_with_the_reason(text: str, says: str) -> None:
    with pytest.raises(FaultPlanError) as caught:
        FaultPlan.parse(text)
    assert says in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_a_plan_built_in_code_is_checked_too() -> None:
    with pytest.raises(FaultPlanError, match="at least 1"):
        FaultPlan(kill_after_ack=0)
    with pytest.raises(FaultPlanError, match="together"):
        FaultPlan(pause_after_event=3)
    with pytest.raises(FaultPlanError, match="together"):
        FaultPlan(pause_gate=Path("gate"))


# -- pausing ------------------------------------------------------------------------------------


def test_a_pause_waits_for_its_gate_file_and_kills_nothing(tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    plan = FaultPlan.parse(f"pause-after-event:2:{gate}")
    reached = tmp_path / "gate.reached"
    assert plan.pause_reached == reached
    plan.after_store(1)  # not yet
    assert not reached.exists()

    done = threading.Event()

    def store_the_second() -> None:
        plan.after_store(2)
        done.set()

    worker = threading.Thread(target=store_the_second, daemon=True)
    worker.start()
    try:
        wait_until(reached.exists, WAIT_S, "the pause to say it was reached", 0.02)
        assert not done.wait(0.3)  # held while the gate is missing
        gate.touch()
        assert done.wait(WAIT_S), "the pause did not end when its gate appeared"
    finally:
        gate.touch()
        worker.join(WAIT_S)
    gate.unlink()
    plan.after_store(3)  # the pause comes once: no gate needed after it
    plan.after_ack(1_000)  # and a pause plan kills nothing


def test_a_rig_agent_pauses_where_its_plan_says(tmp_path: Path) -> None:
    config = config_in(tmp_path, mice=["M001"])
    seed_cache(config, assignment(parameters=PARAMS))
    gate = tmp_path / "gate"
    agent = rig_agent(config, FakeDisplay(), faults=FaultPlan.parse(f"pause-after-event:7:{gate}"))
    options = RunOptions("M001", simulate=True, seed=3, start=START, offline=True)
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(agent.run(options)), daemon=True)
    worker.start()
    try:
        wait_until(Path(f"{gate}.reached").exists, WAIT_S, "the agent to pause", 0.02)
        assert RigStore(config.store_path, codec=CODEC).unsent_count() == 7
        assert worker.is_alive()
    finally:
        gate.touch()
        worker.join(WAIT_S)
    assert len(outcome) == 1, "the session did not finish after the gate opened"
    assert RigStore(config.store_path, codec=CODEC).unsent_count() > 7


def test_without_a_plan_nothing_is_injected(tmp_path: Path) -> None:
    config = config_in(tmp_path, mice=["M001"])
    assert rig_agent(config, FakeDisplay()).faults == FaultPlan.none()
    store = RigStore(config.store_path, codec=CODEC)
    assert OutboxDrainer(store, "127.0.0.1:1", codec=CODEC).faults == FaultPlan.none()
    plan = FaultPlan(kill_after_ack=4)
    assert OutboxDrainer(store, "127.0.0.1:1", faults=plan, codec=CODEC).faults is plan


# -- killing (in child processes) ---------------------------------------------------------------


def _run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=WAIT_S,
    )


@pytest.mark.parametrize(
    ("text", "step"), [("kill-after-event:3", "after_store"), ("kill-after-ack:3", "after_ack")]
)
def test_a_kill_plan_sigkills_its_process_at_the_count(text: str, step: str) -> None:
    result = _run_python(
        f"""
        from shaping.rig.faults import FaultPlan

        plan = FaultPlan.parse({text!r})
        for count in range(1, 6):
            print("reached", count)
            plan.{step}(count)
        print("survived")
        """
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    assert result.stdout.split("\n")[:-1] == ["reached 1", "reached 2", "reached 3"]


def test_rig_run_takes_its_fault_plan_from_the_command_line_only(tmp_path: Path) -> None:
    path = write_config(tmp_path, mice=["M001"])
    config = load_config(path)
    seed_cache(config, assignment(parameters=PARAMS))
    # The old environment variable is ignored: only --fault-plan counts.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SHAPING_RIG_FAULT": "kill-after-event:1"}
    run = [
        "rig", "run", "--mouse", "M001", "--config", str(path), "--simulate", "--offline",
        "--start", START.isoformat(), "--fault-plan", "kill-after-event:5",
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "shaping.services.cli", *run],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
    )
    assert result.returncode == -signal.SIGKILL, result.stdout + result.stderr
    store = RigStore(config.store_path, codec=CODEC)
    assert store.unsent_count() == 5
    assert store.open_session("M001") is not None


@pytest.mark.parametrize("command", ["run", "sync"])
@pytest.mark.parametrize(
    ("text", "says"),
    [("kill-after-evnt:5", "unknown fault"), ("kill-after-event:many", "at least 1")],
)
def test_a_bad_fault_plan_is_a_usage_error(
    tmp_path: Path, command: str, text: str, says: str
) -> None:
    path = write_config(tmp_path, mice=["M001"])
    args = ["rig", command, "--config", str(path), "--fault-plan", text]
    if command == "run":
        args += ["--mouse", "M001", "--simulate", "--offline"]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "--fault-plan" in result.output and says in result.output
    assert "Traceback" not in result.output


def test_the_fault_plan_option_is_hidden() -> None:
    for command in ("run", "sync"):
        result = CliRunner().invoke(app, ["rig", command, "--help"])
        assert result.exit_code == 0 and "--fault-plan" not in result.output
