"""Hostile input: no message, however malformed, large or old, makes the codec or the
processing step raise, and each one ends as exactly one of accepted, duplicate or one
EventRejected (docs/integrity.md).

Inputs are real messages (a mouse's enrolment and sessions, every event type's example)
mutated by hypothesis: bytes flipped, cut, inserted, repeated, and timestamps pushed out of
Python's range both ways.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaping.schemas.codec import HEADER_LEN, default_codec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import ORIGINAL_VALUE_MAX, REASON_MAX, Event, EventRejected
from shaping.services.processor.step import ProcessorStep
from tests.support.examples import example_events
from tests.support.hostile import avro_long, encode_unchecked, with_occurred_at
from tests.support.story import core, enrolled, session, trials

CODEC = default_codec()
KAFKA_MAX_MESSAGE = 1_000_000
BROKER_TIME = datetime(2026, 2, 2, 12, 0, tzinfo=UTC)


def _corpus() -> list[tuple[bytes, bytes]]:
    events: list[Event] = [
        enrolled("M1"),
        *session("M1", "s-1", trials(correct=4, incorrect=2)),
        *example_events().values(),
    ]
    return [(encode_key(e.mouse_id), CODEC.encode(e)) for e in events]


CORPUS = _corpus()
STEP = ProcessorStep(core(), CODEC)
# A mouse that is enrolled and part-way through a session, so that mutated session events
# meet a state that can accept, refuse or recognise them.
_STATE = None
for _offset, (_key, _value) in enumerate(CORPUS[:4]):
    _STATE = STEP.process(_STATE, _key, _value, "t.events", 0, _offset).state or _STATE
STATE = _STATE


@st.composite
def mutated(draw: st.DrawFn) -> tuple[bytes, bytes]:
    key, value = draw(st.sampled_from(CORPUS))
    data = bytearray(value)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "repeat", "set", "long"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 50))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "long" and len(data) > HEADER_LEN:
            # An Avro long (zig-zag varint) of any size, e.g. a timestamp past year 9999.
            data[at:at] = avro_long(draw(st.integers(-(2**63), 2**63 - 1)))
    key_kind = draw(st.sampled_from(["same", "nul", "junk", "none"]))
    if key_kind == "nul":
        key = key + b"\x00"
    elif key_kind == "junk":
        key = draw(st.binary(max_size=40))
    return (b"" if key_kind == "none" else key), bytes(data)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_the_codec_only_ever_raises_its_own_error(message: tuple[bytes, bytes]) -> None:
    _, value = message
    try:
        event = CODEC.decode(value)
    except SerializationError as exc:
        assert exc.kind in ("undecodable", "invalid")
        assert str(exc)
        return
    assert CODEC.decode(CODEC.encode(event)) == event


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.integers(0, 50), st.booleans())
def test_every_input_is_accepted_dropped_or_exactly_one_dead_letter(
    message: tuple[bytes, bytes], offset: int, with_time: bool
) -> None:
    key, value = message
    result = STEP.process(
        STATE, key or None, value, "t.events", 1, 100 + offset, BROKER_TIME if with_time else None
    )
    letters = [o for o in result.outputs if isinstance(o.event, EventRejected)]
    if result.outcome == "rejected":
        assert len(letters) == 1 and len(result.outputs) == 1
        letter = letters[0].event
        assert isinstance(letter, EventRejected)
        assert letter.reason and len(letter.reason) <= REASON_MAX
        if key:  # written for a person, not as a Python repr of the bytes
            assert repr(key) not in letter.reason
        assert len(letter.original_value) <= ORIGINAL_VALUE_MAX
        assert letter.original_size == len(value)
        assert result.state is None
    else:
        assert not letters
    for out in result.outputs:
        assert len(out.value) < KAFKA_MAX_MESSAGE
        assert CODEC.decode(out.value) == out.event


def test_a_timestamp_past_year_9999_is_a_dead_letter_not_an_exception() -> None:
    key = CORPUS[0][0]
    for bad_millis in (253402300800000, -62135596800001):  # after year 9999; before year 1
        bad = with_occurred_at(enrolled("M1"), bad_millis)
        result = STEP.process(None, key, bad, "t.events", 0, 7, BROKER_TIME)
        [letter] = result.outputs
        assert isinstance(letter.event, EventRejected)
        assert letter.event.error_kind == "undecodable"
        assert "year" in letter.event.reason or "range" in letter.event.reason


def test_a_huge_message_becomes_a_bounded_dead_letter() -> None:
    key, value = CORPUS[0]
    huge = value + b"\x00" * 990_000
    result = STEP.process(None, key, huge, "t.events", 0, 8, BROKER_TIME)
    [letter] = result.outputs
    assert isinstance(letter.event, EventRejected)
    assert letter.event.original_size == len(huge)
    assert letter.event.original_truncated
    assert len(letter.value) < 100_000


def test_a_huge_stage_name_is_refused_with_a_short_reason() -> None:
    value = encode_unchecked(enrolled("M1"), start_stage="s" * 600_000)
    result = STEP.process(None, encode_key("M1"), value, "t.events", 0, 9, BROKER_TIME)
    [letter] = result.outputs
    assert isinstance(letter.event, EventRejected)
    assert letter.event.error_kind == "invalid"
    assert len(letter.event.reason) < 1_000
    assert len(letter.value) < 100_000


def test_dates_outside_the_window_around_the_broker_time_are_refused_with_the_reason() -> None:
    key = encode_key("M1")
    for when, words in (
        (BROKER_TIME + timedelta(days=3), "ahead of the broker's time"),
        (datetime(9999, 12, 31, tzinfo=UTC), "ahead of the broker's time"),
        (BROKER_TIME - timedelta(days=400), "before the broker's time"),
        (datetime(1970, 1, 1, tzinfo=UTC), "before the broker's time"),
    ):
        event = enrolled("M1").model_copy(update={"occurred_at": when})
        result = STEP.process(None, key, CODEC.encode(event), "t.events", 0, 1, BROKER_TIME)
        [letter] = result.outputs
        assert isinstance(letter.event, EventRejected)
        assert letter.event.error_kind == "clock" and words in letter.event.reason
        assert result.state is None
    inside = enrolled("M1").model_copy(update={"occurred_at": BROKER_TIME - timedelta(days=30)})
    result = STEP.process(None, key, CODEC.encode(inside), "t.events", 0, 1, BROKER_TIME)
    assert result.outcome == "accepted"


def test_a_redelivered_input_is_a_silent_duplicate_whatever_its_age() -> None:
    state = None
    messages = [(encode_key(e.mouse_id), CODEC.encode(e)) for e in [
        enrolled("M1"), *session("M1", "s-1", trials(correct=5)),
    ]]  # fmt: skip
    for offset, (key, value) in enumerate(messages):
        state = STEP.process(state, key, value, "t.events", 0, offset).state or state
    # The processor died before committing: everything comes again, the ended session's
    # trials included.
    for offset, (key, value) in enumerate(messages):
        result = STEP.process(state, key, value, "t.events", 0, offset)
        assert result.outcome == "duplicate", (offset, result.outputs)
        assert not result.rejected and result.state is None


def test_a_reused_event_id_with_other_content_is_refused_not_dropped() -> None:
    first = enrolled("M1")
    state = STEP.process(None, encode_key("M1"), CODEC.encode(first), "t.events", 0, 0).state
    again = STEP.process(state, encode_key("M1"), CODEC.encode(first), "t.events", 0, 1)
    assert again.outcome == "duplicate" and not again.outputs  # the same event re-sent
    other = first.model_copy(update={"curriculum_name": "reach-task"})
    result = STEP.process(state, encode_key("M1"), CODEC.encode(other), "t.events", 0, 2)
    [letter] = result.outputs
    assert isinstance(letter.event, EventRejected)
    assert letter.event.error_kind == "duplicate"
    assert first.event_id in letter.event.reason


def test_ids_with_control_characters_sql_or_paths_are_invalid() -> None:
    for bad in ("M\x1b[2J", "M1\x00", "../etc", "M1'; DROP TABLE mouse_status;--", "M" * 65):
        value = encode_unchecked(enrolled("M1"), mouse_id=bad)
        result = STEP.process(None, bad.encode(), value, "t.events", 0, 3)
        [letter] = result.outputs
        assert isinstance(letter.event, EventRejected)
        assert letter.event.error_kind == "invalid"
        assert letter.event.mouse_id == "unknown"
        assert "\x1b" not in letter.event.reason and "\x00" not in letter.event.reason


def test_an_unknown_fingerprint_is_undecodable() -> None:
    key, value = CORPUS[0]
    forged = value[:2] + struct.pack("<Q", 0x0123456789ABCDEF) + value[HEADER_LEN:]
    [letter] = STEP.process(None, key, forged, "t.events", 0, 4).outputs
    assert isinstance(letter.event, EventRejected)
    assert letter.event.error_kind == "undecodable"
    assert "fingerprint" in letter.event.reason


def test_a_refused_curriculum_publication_is_a_dead_letter_about_the_curriculum() -> None:
    published = example_events()["CurriculumPublished"]
    forged = published.model_copy(update={"content": published.content + " "})
    result = STEP.process(
        None, encode_key(forged.mouse_id), CODEC.encode(forged), "t.events", 0, 5, BROKER_TIME
    )
    [letter] = result.outputs
    assert isinstance(letter.event, EventRejected)
    assert letter.event.error_kind != "failed", letter.event.reason
    assert letter.event.mouse_id == forged.mouse_id
