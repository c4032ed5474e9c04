"""reach interop: its fixture mouse, imported as events, gives reach's own per-session results.

The anchors are reach's own files, kept in tests/data/anchors/reach (GPLv3 data, see its README):
``mouse001.json`` is reach's test fixture (8 sessions) and ``expected_results.json`` holds what
reach's ``Mouse.get_results`` computes at HEAD, plus the values reach's own tests assert.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from shaping.rig.reach import import_reach_sessions, load_reach_file, reach_results
from shaping.schemas.codec import default_codec
from shaping.schemas.events import MovementDetected, SessionEnded, SessionStarted, TrialCompleted
from tests.support.anchors import REACH

ANCHORS = REACH
COUNTS = [
    "trials",
    "correct_l",
    "correct_r",
    "incorrect_l",
    "incorrect_r",
    "missed_l",
    "missed_r",
    "resets",
    "resets_l",
    "resets_r",
    "spontaneous_reaches",
    "spontaneous_reaches_l",
    "spontaneous_reaches_r",
]


@pytest.fixture(scope="module")
def expected() -> dict[str, Any]:
    return json.loads((ANCHORS / "expected_results.json").read_text())


@pytest.fixture(scope="module")
def imported() -> list[list[Any]]:
    return import_reach_sessions(load_reach_file(ANCHORS / "mouse001.json"), "mouse001")


def test_every_session_gives_reachs_counts_times_and_d_prime(
    imported: list[list[Any]], expected: dict[str, Any]
) -> None:
    rows = expected["derived_by_running_HEAD_Mouse.get_results"]
    assert (
        len(imported)
        == len(rows)
        == expected["upstream_asserted"]["tests/test_mouse.py"]["len(mouse)"]
    )
    for events, row in zip(imported, rows, strict=True):
        ours = reach_results(events).as_dict()
        assert {k: ours[k] for k in COUNTS} == {k: row[k] for k in COUNTS}, row["date"]
        assert (ours["date"], ours["start_time"], ours["end_time"]) == (
            row["date"],
            row["start_time"],
            row["end_time"],
        )
        assert ours["duration"] == pytest.approx(row["duration"])
        assert list(ours["intertrial_interval"]) == row["intertrial_interval"]
        # reach at HEAD: correction trials (after an incorrect response) excluded.
        assert ours["d_prime"] == pytest.approx(row["d_prime"], abs=1e-12), row["date"]


def test_the_all_trials_d_prime_is_the_one_reachs_own_test_still_asserts(
    imported: list[list[Any]], expected: dict[str, Any]
) -> None:
    asserted = expected["upstream_asserted"]["tests/test_session.py (last session, 2020-02-14)"]
    last = reach_results(imported[-1])
    assert last.d_prime_all_trials == pytest.approx(asserted["d_prime"], abs=1e-12)
    assert last.d_prime != pytest.approx(asserted["d_prime"])  # the two definitions differ
    for key in ("correct_l", "correct_r", "incorrect_l", "incorrect_r", "missed_l", "missed_r"):
        assert getattr(last, key) == asserted[key]
    assert last.resets_r == asserted["resets_r"]
    assert last.spontaneous_reaches_r == asserted["spontaneous_reaches_r"]
    assert last.intertrial_interval == tuple(asserted["intertrial_interval"])


def test_imported_events_are_valid_on_the_wire_ordered_and_stable(
    imported: list[list[Any]],
) -> None:
    codec = default_codec()
    raw = load_reach_file(ANCHORS / "mouse001.json")
    for session, events in zip(raw, imported, strict=True):
        assert isinstance(events[0], SessionStarted) and isinstance(events[-1], SessionEnded)
        assert [codec.decode(codec.encode(e)) for e in events] == events
        times = [e.occurred_at for e in events[1:-1]]
        assert times == sorted(times)
        trials = [e for e in events if isinstance(e, TrialCompleted)]
        assert len(trials) == len(session["trials"])
        lifts = [e for e in events if isinstance(e, MovementDetected) and e.phase == "trial"]
        assert len(lifts) == sum(1 for t in session["trials"] if "lift_time" in t)
        assert len({e.event_id for e in events}) == len(events)
    again = import_reach_sessions(raw, "mouse001")
    assert [[e.event_id for e in s] for s in again] == [[e.event_id for e in s] for s in imported]
