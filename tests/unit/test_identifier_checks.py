"""The identifier checks remember texts that passed (a decoded message names the same mouse, rig
and session as the one before it), and timestamps the wire gives already normalised are kept as
they are. Neither may let anything through that the checks refuse, nor grow without bound."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from shaping.schemas import identifiers
from shaping.schemas.events import TrialCompleted
from shaping.schemas.identifiers import check_id, check_session_id


def test_a_text_that_passed_passes_again_and_a_refused_one_is_refused_every_time() -> None:
    assert check_id("M-0042") == "M-0042"
    assert check_id("M-0042") == "M-0042"
    for _ in range(2):
        with pytest.raises(ValueError, match="is not allowed"):
            check_id("M 0042")


def test_passing_one_grammar_does_not_pass_another() -> None:
    assert check_session_id("s1:2026-02-02@rig+1") == "s1:2026-02-02@rig+1"
    with pytest.raises(ValueError, match="mouse_id 's1:2026-02-02@rig\\+1' is not allowed"):
        check_id("s1:2026-02-02@rig+1", "mouse_id")


def test_a_str_subclass_is_checked_every_time_and_never_remembered() -> None:
    class Sly(str):
        def __eq__(self, other: object) -> bool:
            return True

        __hash__ = str.__hash__

    check_id("known-1")
    assert check_id(Sly("known-1")) == "known-1"
    with pytest.raises(ValueError):
        check_id(Sly("not known!"))
    assert all(type(text) is str for text, _ in identifiers._PASSED)


def test_a_flood_of_new_names_never_holds_more_than_the_bound() -> None:
    for number in range(3 * identifiers._PASSED_MAX):
        check_id(f"m{number}")
        assert len(identifiers._PASSED) <= identifiers._PASSED_MAX
    assert check_id("m1") == "m1"


def _trial(occurred_at: datetime) -> TrialCompleted:
    return TrialCompleted(
        mouse_id="M1",
        rig_id="rig-1",
        session_id="s1",
        occurred_at=occurred_at,
        trial_index=0,
        outcome="correct",
    )


@pytest.mark.parametrize(
    ("given", "kept"),
    [
        (datetime(2026, 2, 2, 9, 0, 0, 123000, tzinfo=UTC), 123000),  # as the wire gives it
        (datetime(2026, 2, 2, 9, 0, 0, 123456, tzinfo=UTC), 123000),  # finer than the wire
        (datetime(2026, 2, 2, 11, 0, 0, 5999, tzinfo=timezone(timedelta(hours=2))), 5000),
    ],
)
def test_timestamps_are_utc_to_the_millisecond_whichever_way_they_come(
    given: datetime, kept: int
) -> None:
    when = _trial(given).occurred_at
    assert when.tzinfo is UTC
    assert (when.hour, when.microsecond) == (9, kept)


def test_a_naive_timestamp_is_still_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        _trial(datetime(2026, 2, 2, 9))
