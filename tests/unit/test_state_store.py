"""The processor's stored format (``shaping.services.processor.state_store``).

Every record carries the store's format number; a record of another format, or with a field
this version does not know (a renamed one included), is refused with :class:`StateFormatError`
and the hint to run ``shaping replay``, never read with defaults. Records of the releases
before the format number (bare JSON state records, ``SOS1`` open-sessions records) read as
format 1. Damaged bytes stay a plain ValueError. The faust processor stops on a format error
instead of retrying and parking the message; replay's hand-over rewrites such records.
"""

from __future__ import annotations

import asyncio
import json
import logging
import zlib
from dataclasses import dataclass, field
from typing import Any

import pytest
from pydantic import ValidationError

from shaping.schemas.codec import default_codec, encode_key
from shaping.services.domain import MouseState, initial_state
from shaping.services.operator import replay
from shaping.services.processor import app as processor_app
from shaping.services.processor import state_store
from shaping.services.processor.state_store import (
    STATE_FORMAT,
    Changelogs,
    OpenSessions,
    StateFormatError,
    changelog_topic,
    decode_sessions,
    decode_state,
    encode_sessions,
    encode_state,
    join_sessions,
    records_to_store,
    split_sessions,
    state_json,
)
from shaping.services.processor.step import ProcessorStep
from tests.support.story import core, enrolled, session, trials


def states() -> tuple[MouseState, MouseState, MouseState]:
    """A mouse after two finished sessions (history, decision, assignment, stats), the same
    mouse once its third session started, and after ten trials of it (which change only the
    open session: the state record of ``started`` holds the rest)."""
    engine = core()
    state = initial_state("M1")
    events = [enrolled("M1")]
    for n in range(2):
        events.extend(session("M1", f"s-{n}", trials(correct=40, incorrect=10), day=n))
    for event in events:
        state, _ = engine.handle(state, event)
    finished = state
    start, *trial_events, _ = session("M1", "s-open", trials(correct=5, incorrect=5), day=3)
    started, _ = engine.handle(state, start)
    state = started
    for event in trial_events:
        state, _ = engine.handle(state, event)
    assert finished.history and finished.last_decision and finished.last_assignment
    assert state.open_session is not None and state.open_session.n_trials == 10
    return finished, started, state


def with_json(record: bytes, change: Any) -> bytes:
    """The state of ``record`` with its JSON ``change`` edited, as a format-1 record (plain
    JSON after the header, which this version still reads and checks field by field)."""
    data = json.loads(state_json(record))
    change(data)
    return b"SMS1" + json.dumps(data).encode()


def sessions_with_json(record: bytes, change: Any) -> bytes:
    data = json.loads(zlib.decompress(record[4:]))
    change(data)
    return record[:4] + zlib.compress(json.dumps(data).encode())


def assert_replay_hint(error: StateFormatError, *found: str) -> None:
    message = str(error)
    assert "`shaping replay`" in message
    assert f"format {STATE_FORMAT}" in message
    for text in found:
        assert text in message, message


# -- round trip and the format number ----------------------------------------------------------


def test_states_and_open_sessions_come_back_exactly() -> None:
    finished, started, running = states()
    for state in (finished, started, running, initial_state("M2")):
        assert decode_state(encode_state(state)) == state
    part = split_sessions(running, encode_state(started))
    assert decode_sessions(encode_sessions(part)) == part
    assert join_sessions(encode_state(started), encode_sessions(part)) == running


def test_every_record_carries_the_format_number() -> None:
    finished, started, running = states()
    digit = bytes([0x30 + STATE_FORMAT])
    assert STATE_FORMAT == 2 and digit == b"2"
    assert encode_state(finished).startswith(b"SMS" + digit)
    assert encode_sessions(split_sessions(running, b"x")).startswith(b"SOS" + digit)
    record = encode_state(started)
    # What the processor writes after each step is one of the two, both with the header.
    whole, none = records_to_store(None, None, finished)
    assert none is None and whole is not None and whole.startswith(b"SMS" + digit)
    none, trial = records_to_store(record, started, running)
    assert none is None and trial is not None and trial.startswith(b"SOS" + digit)


# -- other formats -------------------------------------------------------------------------------


@pytest.mark.parametrize("number", [3, 9, 0])
def test_a_state_record_of_another_format_number_is_refused(number: int) -> None:
    finished, _, _ = states()
    record = b"SMS" + bytes([0x30 + number]) + encode_state(finished)[4:]
    with pytest.raises(StateFormatError) as caught:
        decode_state(record)
    shown = f"format {number}" if number else "unknown format (byte 0x30)"
    assert_replay_hint(caught.value, "a state record", shown)
    assert caught.value.found.endswith(shown)


def test_an_open_sessions_record_of_another_format_number_is_refused() -> None:
    _, started, running = states()
    record = encode_state(started)
    other = b"SOS3" + encode_sessions(split_sessions(running, record))[4:]
    with pytest.raises(StateFormatError) as caught:
        decode_sessions(other)
    assert_replay_hint(caught.value, "an open-sessions record", "format 3")
    # The processor loads both records together: the join refuses it too.
    with pytest.raises(StateFormatError):
        join_sessions(record, other)


def test_a_later_format_refuses_the_records_of_this_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a next version that reads only its own format (3) does with what this version and
    earlier releases wrote: refuses every one of them, with the replay hint, and reads its
    own. (This version reads format 1 as well: tests/unit/test_state_compact.py.)"""
    finished, started, running = states()
    state_record = encode_state(started)
    sessions_record = encode_sessions(split_sessions(running, state_record))
    unversioned = finished.model_dump_json().encode()
    monkeypatch.setattr(state_store, "STATE_FORMAT", 3)
    monkeypatch.setattr(state_store, "READ_FORMATS", (3,))
    for record, found in [(state_record, "format 2"), (unversioned, "unversioned")]:
        with pytest.raises(StateFormatError) as caught:
            decode_state(record)
        assert "`shaping replay`" in str(caught.value) and found in str(caught.value)
        assert "writes format 3" in str(caught.value)
    with pytest.raises(StateFormatError, match="format 2"):
        decode_sessions(sessions_record)
    assert encode_state(finished).startswith(b"SMS3")
    assert decode_state(encode_state(finished)) == finished


def test_records_of_the_releases_before_the_format_number_read_as_format_1() -> None:
    """Bare JSON state records and ``SOS1`` open-sessions records, byte for byte as the
    releases before wrote them, load (the decision in the store's docstring)."""
    _, started, running = states()
    old_record = started.model_dump_json().encode("utf-8")
    old_part = OpenSessions(
        base=state_store.record_digest(old_record),
        open_session=running.open_session,
        parked_sessions=running.parked_sessions,
        input_offsets=running.input_offsets,
    )
    old_sessions = b"SOS1" + zlib.compress(old_part.model_dump_json().encode(), 1)
    assert decode_state(old_record) == started
    assert join_sessions(old_record, old_sessions) == running
    # The next trial goes on from the old record: its open sessions are tied to those bytes.
    eleventh = session("M1", "s-open", trials(correct=11), day=3)[11]
    one_more, _ = core().handle(running, eleventh)
    assert one_more.open_session is not None and one_more.open_session.n_trials == 11
    none, trial = records_to_store(old_record, running, one_more)
    assert none is None and trial is not None
    assert join_sessions(old_record, trial) == one_more
    # And an old record with a field this version does not know is refused like any other.
    stale = json.dumps({**json.loads(old_record), "streak": 3}).encode()
    with pytest.raises(StateFormatError, match="streak"):
        decode_state(stale)


# -- unknown fields ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "where"),
    [
        (lambda d: d.update(colour="brown"), "colour"),
        (lambda d: d["history"][0].update(grade=3), "history.0.grade"),
        (lambda d: d["history"][0]["stats"].update(n_bias=1), "history.0.stats.n_bias"),
        (lambda d: d["judged"][-1].update(reviewer="x"), "judged.1.reviewer"),
        (lambda d: d["last_decision"].update(reviewed=True), "last_decision.reviewed"),
        (lambda d: d["last_assignment"].update(note="x"), "last_assignment.note"),
    ],
)
def test_a_state_record_with_an_unknown_field_is_refused(change: Any, where: str) -> None:
    finished, _, _ = states()
    with pytest.raises(StateFormatError) as caught:
        decode_state(with_json(encode_state(finished), change))
    assert_replay_hint(caught.value, where)
    assert caught.value.found == f"unknown field(s) {where}"


def test_an_open_sessions_record_with_an_unknown_field_is_refused() -> None:
    _, started, running = states()
    record = encode_sessions(split_sessions(running, encode_state(started)))
    changed = sessions_with_json(record, lambda d: d["open_session"].update(lamp="on"))
    with pytest.raises(StateFormatError) as caught:
        decode_sessions(changed)
    assert_replay_hint(caught.value, "open_session.lamp")


def test_a_renamed_field_is_refused_not_read_as_its_default() -> None:
    """Another version stored ``run_streak`` as ``streak``: read with defaults, the mouse
    would silently lose its streak."""
    finished, _, _ = states()
    assert finished.run_streak == 2

    def rename(data: dict[str, Any]) -> None:
        data["streak"] = data.pop("run_streak")

    with pytest.raises(StateFormatError) as caught:
        decode_state(with_json(encode_state(finished), rename))
    assert_replay_hint(caught.value, "streak")


# -- damage is no format ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"garbage", b"SOS1not a state", b"SMS1not json", b"{not json", b'{"enrolled": true}'],
)
def test_damaged_state_bytes_stay_a_plain_value_error(data: bytes) -> None:
    with pytest.raises(ValueError) as caught:
        decode_state(data)
    assert not isinstance(caught.value, StateFormatError)


def test_a_value_of_the_wrong_type_stays_a_validation_error() -> None:
    finished, _, _ = states()
    record = with_json(encode_state(finished), lambda d: d.update(session_total="many"))
    with pytest.raises(ValidationError):
        decode_state(record)


# -- names ---------------------------------------------------------------------------------------


def test_the_changelog_topics_keep_faust_s_names() -> None:
    assert Changelogs.of("shaping-processor") == Changelogs(
        state="shaping-processor-mouse_state-changelog",
        sessions="shaping-processor-mouse_sessions-changelog",
    )
    assert changelog_topic("p") == "p-mouse_state-changelog"
    assert replay.changelog_topic is changelog_topic


# -- the processor and replay --------------------------------------------------------------------


@dataclass
class FakeMessage:
    topic: str = "t.events"
    partition: int = 0
    offset: int = 7
    timestamp: float | None = None


@dataclass
class FakeEvent:
    key: bytes
    value: bytes
    message: FakeMessage = field(default_factory=FakeMessage)


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def get_topic_name(self) -> str:
        return "t.dead-letter"

    async def send(self, key: bytes, value: bytes, headers: Any) -> Any:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def faust_processor(stored: bytes) -> tuple[processor_app.FaustProcessor, FakeTopic]:
    dead_letters = FakeTopic()
    processor = processor_app.FaustProcessor(
        app=None,  # type: ignore[arg-type]  # not reached: nothing is stored
        step=ProcessorStep(core(), default_codec()),
        table={encode_key("M1"): stored},  # type: ignore[arg-type]
        outputs={"dead_letter": dead_letters},  # type: ignore[dict-item]
        sessions={},  # type: ignore[arg-type]
    )
    return processor, dead_letters


def test_the_processor_stops_on_a_state_of_another_format(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No retry, no dead letter: one log line with the hint, and the error goes up (the
    agent's crash stops the worker; the message stays uncommitted)."""
    monkeypatch.setattr(processor_app, "RETRY_PAUSE_S", 0.0)
    finished, _, _ = states()
    processor, dead_letters = faust_processor(b"SMS3" + encode_state(finished)[4:])
    event = FakeEvent(encode_key("M1"), default_codec().encode(enrolled("M1")))
    with caplog.at_level(logging.INFO), pytest.raises(StateFormatError):
        asyncio.run(processor.handle(event))  # type: ignore[arg-type]
    assert dead_letters.sent == []
    records = [r for r in caplog.records if r.name == processor_app.__name__]
    assert [r.levelno for r in records] == [logging.CRITICAL]
    assert "shaping replay" in records[0].getMessage()
    assert "'M1'" in records[0].getMessage()


def test_the_processor_parks_a_message_whose_state_is_damaged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damaged bytes are not another format: retried, then parked as before."""
    monkeypatch.setattr(processor_app, "RETRY_PAUSE_S", 0.0)
    processor, dead_letters = faust_processor(b"SMS1not json")
    event = FakeEvent(encode_key("M1"), default_codec().encode(enrolled("M1")))
    with caplog.at_level(logging.WARNING):
        result = asyncio.run(processor.handle(event))  # type: ignore[arg-type]
    assert result.outcome == "rejected" and len(dead_letters.sent) == 1
    assert "failed (attempt 1 of" in caplog.text


def test_replay_rewrites_records_of_another_format_and_keeps_old_ones_that_hold_the_state() -> None:
    finished, _, _ = states()
    other = b"SMS3" + encode_state(finished)[4:]
    assert not replay._same_state(other, None, finished)
    unknown = with_json(encode_state(finished), lambda d: d.update(colour="brown"))
    assert not replay._same_state(unknown, None, finished)
    # An unversioned record of this format holds the state: an upgrade alone rewrites nothing.
    assert replay._same_state(finished.model_dump_json().encode(), None, finished)
