"""The stale assignment policy, an old rig facing a newer assignment, and the rig's clock skew,
without a broker (``test_rig_compat_kafka.py`` runs the same against Kafka).

An assignment is stale when the rig knows it is not the mouse's current one: the decision on
the mouse's previous session on this rig has not arrived, or the newest assignment on the
broker is written with a schema this rig cannot read. The rig then waits (bounded), and runs
the cached assignment or refuses, as its config says; either way it says so on screen, in its
log, in its metrics and (when it runs) in the SessionStarted it records.
"""

from __future__ import annotations

import logging
import re
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from shaping.rig.agent import RunOptions, StaleAssignmentRefusedError, clock_skew_warning
from shaping.rig.bootstrap import rig_agent
from shaping.rig.config import ConfigError, load_config
from shaping.rig.errors import NoAssignmentError
from shaping.rig.link.follow import AssignmentFollower
from shaping.rig.link.store import RigStore
from shaping.rig.metrics import read_metrics, render
from shaping.schemas.codec import default_codec
from shaping.schemas.events import SessionStarted
from shaping.services.cli import app
from tests.support.rig import (
    CODEC,
    START,
    FakeDisplay,
    assignment,
    encode_as,
    older_rig_codec,
    seed_cache,
    write_config,
)

pytestmark = pytest.mark.filterwarnings("ignore::gpiozero.exc.PinFactoryFallback")

PARAMS = {"session_minutes": 5, "iti_min_s": 2.0, "iti_max_s": 3.0}
REFUSE = '[stale_assignment]\npolicy = "refuse"\nmax_wait_s = 2.5\n'


def rig_with_cache(folder: Path, extra: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    path = write_config(folder, mice=["M001"], extra=extra)
    seed_cache(load_config(path), assignment(parameters=PARAMS))
    return path


def run(path: Path, display: FakeDisplay, hours: int = 0, **kwargs: Any) -> Any:
    config = load_config(path)
    return rig_agent(config, display, **kwargs).run(
        RunOptions(
            "M001", simulate=True, seed=2, start=START + timedelta(hours=hours), offline=True
        )
    )


def session_starts(path: Path) -> list[SessionStarted]:
    store = RigStore(load_config(path).store_path, codec=CODEC)
    return [
        e for e in store.mouse_events("M001", ["SessionStarted"]) if isinstance(e, SessionStarted)
    ]


# -- the config ---------------------------------------------------------------------------------


def test_the_policy_is_in_the_config_with_a_bounded_wait(tmp_path: Path) -> None:
    default = load_config(write_config(tmp_path))
    assert (default.stale_assignment.policy, default.stale_assignment.max_wait_s) == (
        "wait_then_run_cached",
        10.0,
    )
    refuse = load_config(write_config(tmp_path, extra=REFUSE))
    assert (refuse.stale_assignment.policy, refuse.stale_assignment.max_wait_s) == ("refuse", 2.5)
    assert "then refuse to run (stale_assignment.policy = refuse)" in (
        refuse.stale_assignment.describe()
    )


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('policy = "refuze"', "policy: 'refuze' is no policy; did you mean refuse?"),
        ("max_wait_s = -1", "stale_assignment.max_wait_s must be a number of seconds from 0 to"),
        ("max_wait_s = 86400", "from 0 to 3600"),
        ('max_wait_s = "10"', "stale_assignment.max_wait_s must be a number"),
        ("max_wait = 10", "stale_assignment.max_wait: unknown setting; did you mean max_wait_s?"),
    ],
)  # fmt: skip
def test_a_bad_policy_is_named(tmp_path: Path, table: str, words: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(words)):
        load_config(write_config(tmp_path, extra=f"[stale_assignment]\n{table}\n"))


# -- the policy ---------------------------------------------------------------------------------


def test_a_stale_assignment_runs_loudly_and_the_session_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rig_with_cache(tmp_path / "rig")
    first = run(path, FakeDisplay())
    assert first.started.assignment_stale is False
    assert first.started.assignment_wait_s == 0.0  # it did not wait: offline
    assert first.started.assignment_stale_reason is None

    display = FakeDisplay()
    with caplog.at_level(logging.WARNING, logger="shaping.rig.agent"):
        second = run(path, display, hours=2)  # no decision on the first session: stale
    started = second.started
    assert started.assignment_stale is True
    assert started.assignment_id == "assignment-M001-1"
    assert started.assignment_stale_reason is not None
    assert f"the decision on {first.session_id} has not arrived (offline" in (
        started.assignment_stale_reason
    )
    [shown] = [m for m in display.messages if m.startswith("STALE ASSIGNMENT for M001")]
    assert "Running the cached assignment (session 1, stage s1_habituation" in shown
    assert "assignment_stale = true" in shown
    assert any("STALE ASSIGNMENT for M001" in r.getMessage() for r in caplog.records)
    # On the wire (the outbox holds what is sent), v3, as recorded.
    assert session_starts(path) == [first.started, started]
    store = RigStore(load_config(path).store_path, codec=CODEC)
    assert store.stale_run_counts() == {"ran_cached": 1, "refused": 0}
    text = render("rig-1", read_metrics(store.path))
    assert 'shaping_rig_stale_assignments_total{rig="rig-1",action="ran_cached"} 1\n' in text
    assert 'shaping_rig_stale_assignments_total{rig="rig-1",action="refused"} 0\n' in text


def test_the_refuse_policy_runs_nothing_and_says_why(tmp_path: Path) -> None:
    path = rig_with_cache(tmp_path / "rig", extra=REFUSE)
    first = run(path, FakeDisplay())
    store = RigStore(load_config(path).store_path, codec=CODEC)
    before = store.unsent_count()
    with pytest.raises(StaleAssignmentRefusedError) as refused:
        run(path, FakeDisplay(), hours=2)
    message = str(refused.value)
    assert message.startswith("STALE ASSIGNMENT for M001: the decision on ")
    assert first.session_id in message
    assert "Refusing to run the cached assignment (session 1" in message
    assert "stale_assignment.policy = refuse" in message
    assert store.unsent_count() == before  # nothing recorded
    assert store.stale_run_counts() == {"ran_cached": 0, "refused": 1}
    stale = store.last_stale_run("M001")
    assert stale is not None and stale.action == "refused"
    # The command line: one red line, exit code 1.
    result = CliRunner().invoke(
        app,
        ["rig", "run", "--mouse", "M001", "--offline", "--simulate", "--config", str(path),
         "--start", (START + timedelta(hours=3)).isoformat()],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert "error: STALE ASSIGNMENT for M001" in result.output
    assert "Traceback" not in result.output


# -- an old rig facing a newer assignment -------------------------------------------------------


def record(offset: int, key: str, value: bytes, topic: str = "shaping.assignments") -> Any:
    return SimpleNamespace(topic=topic, offset=offset, key=key.encode(), value=value)


def follow(store: RigStore, codec: Any, *records: Any) -> int:
    """Feeds records to a follower as if they came from partition 0 of their topic."""
    follower = AssignmentFollower(
        store, "127.0.0.1:1", "shaping.assignments", "shaping.decisions", ("M001",), codec=codec
    )
    return sum(follower._keep(r.topic, 0, r.offset, r.key, r.value) for r in records)


def test_an_old_rig_says_it_cannot_read_a_newer_assignment_and_runs_the_cached_one_as_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rig_with_cache(tmp_path / "rig")
    config = load_config(path)
    store = RigStore(config.store_path, codec=CODEC)
    old = older_rig_codec("AssignmentIssued", 1)
    newer = assignment(parameters=PARAMS, session_number=2)
    with caplog.at_level(logging.WARNING, logger="shaping.rig.link.follow"):
        kept = follow(
            store,
            old,
            record(0, "M001", encode_as(assignment(parameters=PARAMS), 1)),
            record(1, "M001", default_codec().encode(newer)),  # v2: unknown to this rig
            record(
                2, "M999", default_codec().encode(newer.model_copy(update={"mouse_id": "M999"}))
            ),
        )
    assert kept == 2  # the stranger's record is not ours
    unreadable = store.undecodable("M001")
    assert unreadable is not None and unreadable.offset == 1
    assert "unknown writer schema fingerprint" in unreadable.error
    # only this logger's records: a thread left by an earlier test in the same run may log too
    [warning] = [r.getMessage() for r in caplog.records if r.name == "shaping.rig.link.follow"]
    assert "cannot read the assignment for M001 at shaping.assignments[0]@1" in warning
    assert "upgrade the rig software" in warning
    assert store.cached_assignment("M001").assignment.session_number == 1  # type: ignore[union-attr]
    assert read_metrics(store.path).undecodable == {"assignments": 1, "decisions": 0}

    display = FakeDisplay()
    report = rig_agent(config, display, store, codec=old).run(
        RunOptions("M001", simulate=True, seed=2, start=START, offline=True)
    )
    started = report.started
    assert started.assignment_stale is True and started.assignment_id == "assignment-M001-1"
    assert "the newest assignment for M001 cannot be read by this rig" in (
        started.assignment_stale_reason or ""
    )
    assert any(
        m.startswith("UNREADABLE: this rig cannot read its newest assignment")
        for m in display.messages
    )
    assert any(m.startswith("STALE ASSIGNMENT for M001") for m in display.messages)
    text = render("rig-1", read_metrics(store.path))
    assert 'shaping_rig_undecodable_assignments_total{rig="rig-1"} 1\n' in text

    # A readable assignment after it (the rig was upgraded, or the processor wrote an older
    # version again) ends it; the counter keeps counting what happened.
    assert follow(store, default_codec(), record(3, "M001", default_codec().encode(newer))) == 1
    assert store.undecodable("M001") is None
    assert read_metrics(store.path).undecodable == {"assignments": 1, "decisions": 0}


def test_an_old_rig_with_no_readable_assignment_refuses_with_the_reason(tmp_path: Path) -> None:
    folder = tmp_path / "rig"
    folder.mkdir()
    config = load_config(write_config(folder, mice=["M001"]))
    store = RigStore(config.store_path, codec=CODEC)
    old = older_rig_codec("AssignmentIssued", 1)
    follow(store, old, record(0, "M001", default_codec().encode(assignment(parameters=PARAMS))))
    with pytest.raises(NoAssignmentError, match=r"cannot be read by this rig .*upgrade the rig"):
        rig_agent(config, FakeDisplay(), store, codec=old).run(
            RunOptions("M001", simulate=True, seed=2, start=START, offline=True)
        )


def test_an_unreadable_decision_is_kept_and_counted(tmp_path: Path) -> None:
    folder = tmp_path / "rig"
    folder.mkdir()
    store = RigStore(load_config(write_config(folder, mice=["M001"])).store_path, codec=CODEC)
    old = older_rig_codec("StageTransitioned", 1)
    from tests.support.examples import example_events

    decision = example_events()["StageTransitioned"].model_copy(update={"mouse_id": "M001"})
    assert (
        follow(store, old, record(5, "M001", default_codec().encode(decision), "shaping.decisions"))
        == 1
    )
    kept = store.undecodable("M001", "decisions")
    assert kept is not None and kept.topic == "shaping.decisions"
    assert store.undecodable("M001") is None  # the assignment is not concerned
    assert read_metrics(store.path).undecodable == {"assignments": 0, "decisions": 1}


# -- clock skew and status ----------------------------------------------------------------------


def test_the_skew_is_kept_latest_and_smoothed_and_warned_beyond_a_minute(tmp_path: Path) -> None:
    store = RigStore(tmp_path / "rig.sqlite", codec=CODEC)
    assert store.clock_skew() is None and clock_skew_warning(None) is None
    first = store.record_clock_skew(100.0, 0.01)
    assert (first.latest_s, first.smoothed_s, first.samples) == (100.0, 100.0, 1)
    second = store.record_clock_skew(50.0, 0.02)
    assert (second.latest_s, second.smoothed_s, second.samples) == (50.0, 90.0, 2)
    assert store.clock_skew() == second
    assert clock_skew_warning(second) == (
        "WARNING: this rig's clock runs 90 s ahead of the broker's; configure NTP (event times "
        "and session dates come from this clock)"
    )
    behind = RigStore(tmp_path / "other.sqlite", codec=CODEC).record_clock_skew(-75.4, 0.01)
    assert "runs 75 s behind the broker's; configure NTP" in (clock_skew_warning(behind) or "")
    assert (
        clock_skew_warning(RigStore(tmp_path / "3.sqlite", codec=CODEC).record_clock_skew(59.0, 0))
        is None
    )
    text = render("rig-1", read_metrics(store.path))
    assert "# TYPE shaping_rig_clock_skew_seconds gauge\n" in text
    assert 'shaping_rig_clock_skew_seconds{rig="rig-1"} 90.0\n' in text
    assert "shaping_rig_clock_skew_seconds" not in render(
        "rig-1", read_metrics(RigStore(tmp_path / "none.sqlite", codec=CODEC).path)
    )


def test_every_rig_metric_passes_promtool(tmp_path: Path) -> None:
    import shutil
    import subprocess

    store = RigStore(tmp_path / "rig.sqlite", codec=CODEC)
    store.record_clock_skew(-1.25, 0.01)
    store.record_stale_run("M001", "a1", "ran_cached", "slow processor", 10.0)
    text = render('rig "1"', read_metrics(store.path))
    promtool = shutil.which("promtool")
    assert promtool, "promtool (Debian's prometheus package) is needed: make test installs it"
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr + text


def test_status_shows_the_clock_the_policy_and_what_the_rig_could_not_read(
    tmp_path: Path,
) -> None:
    path = rig_with_cache(tmp_path / "rig")
    store = RigStore(load_config(path).store_path, codec=CODEC)
    store.record_clock_skew(125.0, 0.004)
    store.save_undecodable(
        "assignments",
        "M001",
        "shaping.assignments",
        2,
        17,
        "unknown writer schema fingerprint 0102",
    )
    store.record_stale_run("M001", "assignment-M001-1", "ran_cached", "slow processor", 10.0)
    result = CliRunner().invoke(app, ["rig", "status", "--config", str(path), "--timeout", "0.5"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "clock: 125.00 s ahead of the broker's (smoothed over 1 sends; latest +125.00 s" in out
    assert "WARNING: this rig's clock runs 125 s ahead of the broker's; configure NTP" in out
    assert (
        "stale assignments: wait up to 10 s for the current assignment, then run the cached one "
        "(stale_assignment.policy = wait_then_run_cached)"
    ) in out
    assert (
        "    UNREADABLE: the newest assignment on the broker (shaping.assignments[2]@17: unknown "
        "writer schema fingerprint 0102); it was written with a schema version this rig does "
        "not know"
    ) in out
    assert (
        "    last stale assignment: " in out and "ran the cached assignment (slow processor)" in out
    )

    fresh = rig_with_cache(tmp_path / "fresh")
    result = CliRunner().invoke(app, ["rig", "status", "--config", str(fresh), "--timeout", "0.5"])
    assert "clock: skew not measured yet" in result.output
    assert "WARNING" not in result.output and "UNREADABLE" not in result.output


def test_run_warns_about_a_clock_far_off_the_brokers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = rig_with_cache(tmp_path / "rig")
    RigStore(load_config(path).store_path, codec=CODEC).record_clock_skew(-300.0, 0.01)
    display = FakeDisplay()
    with caplog.at_level(logging.WARNING, logger="shaping.rig.agent"):
        run(path, display)
    warning = "WARNING: this rig's clock runs 300 s behind the broker's; configure NTP"
    assert any(m.startswith(warning) for m in display.messages)
    assert any(r.getMessage().startswith(warning) for r in caplog.records)
