"""``shaping events tail|show`` without a broker: decoding any bytes, escaping for terminals,
dead letters, filters, times. The commands against a real broker are in
tests/integration/test_headers_kafka.py."""

from __future__ import annotations

import json
import unicodedata
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec
from shaping.schemas.commands import OverrideStage
from shaping.schemas.events import EventRejected
from shaping.schemas.headers import headers_for
from shaping.schemas.topics import TopicNames
from shaping.services.adapters.settings import Settings
from shaping.services.cli import app
from shaping.services.operator.events import (
    TABLE_HEADER,
    EventsError,
    OutputFormat,
    RawRecord,
    Renderer,
    Selection,
    TopicKind,
    decode_any,
    escape_terminal,
    hexdump,
    json_line,
    parse_time,
    plan_reading,
    topic_names,
)
from tests.support.story import T0, enrolled, session, trials

CODEC = default_codec()
MS = int(T0.timestamp() * 1000)


def record(value: bytes | None, key: bytes | None = b"M1", **kw: object) -> RawRecord:
    fields: dict[str, object] = {
        "topic": "shaping.events",
        "partition": 1,
        "offset": 7,
        "timestamp_ms": MS,
        "key": key,
        "value": value,
        "headers": headers_for(value),
    }
    fields.update(kw)
    return RawRecord(**fields)  # type: ignore[arg-type]


def table(rec: RawRecord, **kw: object) -> list[str]:
    lines = Renderer(CODEC, OutputFormat.table, **kw).render(rec)  # type: ignore[arg-type]
    assert lines[0] == TABLE_HEADER
    return lines[1:]


def as_json(rec: RawRecord) -> dict[str, object]:
    [line] = Renderer(CODEC, OutputFormat.json).render(rec)
    parsed: dict[str, object] = json.loads(line)
    return parsed


def no_control_chars(line: str) -> bool:
    return not any(unicodedata.category(c) in {"Cc", "Cf", "Zl", "Zp"} for c in line)


def dead_letter(original: bytes, key: bytes | None = b"M1") -> EventRejected:
    return EventRejected(
        mouse_id="M1",
        occurred_at=T0,
        reason="invalid MouseEnrolled: curriculum_name: unknown \x1b[31mred",
        error_kind="invalid",
        source_topic="shaping.events",
        source_partition=2,
        source_offset=41,
        original_key=key,
        original_value=original,
        rejected_by="processor",
    )


# -- escaping -------------------------------------------------------------------------------------


def test_control_characters_are_shown_as_hex_escapes() -> None:
    assert escape_terminal("a\x1b[31mb\x07\n\x00\x7f\x9b") == (
        "a\\x1b[31mb\\x07\\x0a\\x00\\x7f\\x9b"
    )
    assert escape_terminal("left\u202eright\u200b") == "left\\u202eright\\u200b"
    assert escape_terminal("back\\slash") == "back\\\\slash"
    assert escape_terminal("Maus Öhrchen 🐭") == "Maus Öhrchen 🐭"


def test_json_lines_escape_what_a_terminal_acts_on_and_still_parse() -> None:
    value = {"s": "a\x1b]0;title\x07b\u202e\x85\u2028z", "t": "Öhr"}
    line = json_line(value)
    assert no_control_chars(line)
    assert "\n" not in line
    assert json.loads(line) == value
    assert "Öhr" in line


def test_hexdump_shows_offsets_hex_and_printable_ascii() -> None:
    lines = hexdump(b"\xc3\x01ABCDEFGHIJKLMNOPQRSTUVWXYZ\x1b")
    assert (
        lines[0] == "00000000  c3 01 41 42 43 44 45 46  47 48 49 4a 4b 4c 4d 4e  |..ABCDEFGHIJKLMN|"
    )
    assert lines[1].startswith("00000010  4f 50")
    assert lines[1].endswith("|OPQRSTUVWXYZ.|")
    assert hexdump(bytes(100), limit=32)[-1] == "... 68 more bytes"
    assert hexdump(b"") == ["(0 bytes)"]


# -- records --------------------------------------------------------------------------------------


def test_an_event_is_one_row_with_its_type_and_summary() -> None:
    value = CODEC.encode(enrolled("M1", start_stage="s2_training", enrolled_by="alice"))
    [row] = table(record(value))
    assert "shaping.events/1@7" in row
    assert "MouseEnrolled v1" in row
    assert "basic-shaping start=s2_training by=alice" in row
    assert row.startswith("2026-02-02 09:00:00.000")


def test_every_event_type_of_a_session_has_a_summary() -> None:
    for event in session("M1", "M1-s1", trials(correct=1, incorrect=1)):
        [row] = table(record(CODEC.encode(event)))
        assert event.event_type in row
        assert "session=M1-s1" in row


def test_json_has_position_headers_and_every_field() -> None:
    event = enrolled("M1")
    out = as_json(record(CODEC.encode(event)))
    assert out["topic"] == "shaping.events"
    assert (out["partition"], out["offset"], out["key"]) == (1, 7, "M1")
    assert out["timestamp"] == "2026-02-02T09:00:00.000Z"
    assert out["event_type"] == "MouseEnrolled"
    assert out["headers"]["shaping-event-type"] == "MouseEnrolled"  # type: ignore[index]
    fields = out["event"]
    assert isinstance(fields, dict)
    assert fields["event_id"] == event.event_id
    assert fields["occurred_at"] == "2026-02-02T09:00:00.000Z"


def test_undecodable_bytes_are_shown_as_such_with_a_hexdump() -> None:
    value = b"\x1b[2J\x1b]0;pwned\x07 not avro"
    rows = table(record(value, key=b"\x1b[31mM1"))
    assert "(undecodable)" in rows[0]
    assert "\\x1b[31mM1" in rows[0]
    assert "not an Avro single-object message" in rows[0]
    assert any("|.[2J.]0;pwned. n|" in line for line in rows[1:])
    assert all(no_control_chars(line) for line in rows)
    out = as_json(record(value, key=b"\xff\xfe"))
    assert out["event_type"] is None
    assert out["key_hex"] == "fffe"
    assert out["value_hex"] == value.hex()
    assert "not an Avro" in str(out["error"])


def test_a_known_fingerprint_with_a_corrupt_body_names_its_writer() -> None:
    good = CODEC.encode(enrolled("M1"))
    rows = table(record(good[:14]))
    assert "(undecodable)" in rows[0]
    assert "corrupt MouseEnrolled" in rows[0]
    assert decode_any(CODEC, good[:14]).writer == "MouseEnrolled v1"


def test_a_tombstone_is_shown() -> None:
    [row] = table(record(None, topic="shaping.assignments"))
    assert "(tombstone)" in row
    assert as_json(record(None))["error"] == "no value (a tombstone)"


def test_a_dead_letter_shows_its_reason_the_original_bytes_and_the_decoded_original() -> None:
    original = CODEC.encode(enrolled("M1", curriculum_name="nope"))
    rows = table(record(CODEC.encode(dead_letter(original)), topic="shaping.dead-letter"))
    text = "\n".join(rows)
    assert "EventRejected" in rows[0]
    assert "invalid: invalid MouseEnrolled" in rows[0]
    assert "reason: invalid MouseEnrolled: curriculum_name: unknown \\x1b[31mred" in text
    assert "source: shaping.events/2@41" in text
    assert f"original value ({len(original)} bytes" in text
    assert "  00000000  c3 01 7c 1c fe 35 42 e7" in text
    assert "original decodes as MouseEnrolled:" in text
    assert '"curriculum_name": "nope"' in text
    assert all(no_control_chars(line) for line in rows)

    out = as_json(record(CODEC.encode(dead_letter(original))))
    event = out["event"]
    assert isinstance(event, dict)
    assert event["original_value"] == original.hex()
    assert event["original_key"] == b"M1".hex()
    inner = out["original"]
    assert isinstance(inner, dict)
    assert inner["event"]["curriculum_name"] == "nope"
    assert inner["hexdump"][0].startswith("00000000  c3 01")


def test_a_dead_letter_whose_original_does_not_decode_says_so() -> None:
    rows = table(record(CODEC.encode(dead_letter(b"\x00garbage\x1b", key=b"\x9b"))))
    text = "\n".join(rows)
    assert "original does not decode: SerializationError: not an Avro" in text
    assert "original key: 0x9b" in text
    assert "|.garbage.|" in text


@given(
    key=st.none() | st.binary(max_size=40),
    value=st.none() | st.binary(max_size=200),
    headers=st.lists(st.tuples(st.text(max_size=10), st.none() | st.binary(max_size=10))),
    timestamp=st.none() | st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
def test_any_record_renders_without_crashing_or_control_characters(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes | None]],
    timestamp: int | None,
) -> None:
    rec = record(value, key=key, headers=headers, timestamp_ms=timestamp)
    for output in OutputFormat:
        lines = Renderer(CODEC, output, show_headers=True).render(rec)
        assert lines
        assert all(no_control_chars(line) for line in lines)
    json.loads(Renderer(CODEC, OutputFormat.json).render(rec)[0])


@given(tail=st.binary(max_size=120))
def test_any_body_behind_a_known_fingerprint_renders(tail: bytes) -> None:
    head = CODEC.encode(enrolled("M1"))[:10]
    lines = Renderer(CODEC, OutputFormat.table).render(record(head + tail))
    assert all(no_control_chars(line) for line in lines)


# -- filters and options --------------------------------------------------------------------------


def test_mouse_filter_matches_the_key_the_event_or_a_dead_letters_original() -> None:
    sel = Selection(mice=["M2"])
    by_key = record(b"junk", key=b"M2")
    by_event = record(CODEC.encode(enrolled("M2")), key=None)
    original = CODEC.encode(enrolled("M2"))
    in_dead_letter = record(CODEC.encode(dead_letter(original, key=None)), key=b"other")
    other = record(CODEC.encode(enrolled("M3")), key=b"M3")
    for rec, expected in [(by_key, True), (by_event, True), (in_dead_letter, True), (other, False)]:
        assert sel.matches(rec, decode_any(CODEC, rec.value), CODEC) is expected


def test_type_filter_uses_the_decoded_type_or_the_header() -> None:
    sel = Selection(types=["mouseenrolled"])
    rec = record(CODEC.encode(enrolled("M1")))
    assert sel.matches(rec, decode_any(CODEC, rec.value), CODEC)
    corrupt = record(b"junk", headers=[("shaping-event-type", b"MouseEnrolled")])
    assert sel.matches(corrupt, decode_any(CODEC, corrupt.value), CODEC)
    [start, *_] = session("M1", "M1-s1", [])
    rec = record(CODEC.encode(start))
    assert not sel.matches(rec, decode_any(CODEC, rec.value), CODEC)


def test_topic_kinds_name_topics_under_the_prefix() -> None:
    names = TopicNames.with_prefix("lab")
    assert topic_names([], names) == ["lab.events"]
    assert topic_names([TopicKind.dead_letter, TopicKind.events], names) == [
        "lab.dead-letter",
        "lab.events",
    ]
    assert topic_names([TopicKind.all, TopicKind.events], names) == names.all()
    assert topic_names([TopicKind.alerts], names) == ["lab.alerts"]


def test_a_reading_is_planned_and_rendered_without_the_command_line() -> None:
    settings = Settings(bootstrap="127.0.0.1:1", topic_prefix="lab")
    with pytest.raises(EventsError, match="did you mean 'TrialCompleted'"):
        plan_reading(settings, CODEC, types=["TrialComplete"])
    reading = plan_reading(
        settings,
        CODEC,
        kinds=[TopicKind.dead_letter, TopicKind.events],
        mice=["M2"],
        types=["mouseenrolled"],
        partitions=[0],  # named: the broker is not asked where M2's key goes
        output=OutputFormat.json,
    )
    assert reading.topics == ["lab.dead-letter", "lab.events"] and reading.partitions == [0]
    assert reading.selection.types == ["MouseEnrolled"]
    kept = record(CODEC.encode(enrolled("M2")), key=b"M2")
    other_mouse = record(CODEC.encode(enrolled("M3")), key=b"M3")
    [start, *_] = session("M2", "M2-s1", [])
    other_type = record(CODEC.encode(start), key=b"M2")
    assert [reading.wanted(r) for r in (kept, other_mouse, other_type)] == [True, False, False]
    [[line]] = list(reading.render([other_mouse, kept, other_type]))
    assert json.loads(line)["event"]["mouse_id"] == "M2"


def test_times_are_iso_dates_or_ages() -> None:
    now = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
    assert parse_time("2026-03-01", now) == datetime(2026, 3, 1, tzinfo=UTC)
    assert parse_time("2026-03-01T10:30:00Z", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_time("2026-03-01T10:30:00", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_time("2026-03-01T11:30:00+01:00", now) == datetime(2026, 3, 1, 10, 30, tzinfo=UTC)
    assert parse_time("15m", now) == now - timedelta(minutes=15)
    assert parse_time("2h", now) == now - timedelta(hours=2)
    assert parse_time("3d", now) == now - timedelta(days=3)
    with pytest.raises(ValueError, match="not a time"):
        parse_time("yesterday", now)


@pytest.mark.parametrize("command", [["events"], ["events", "tail"], ["events", "show"]])
def test_events_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def override(mouse: str = "M2") -> OverrideStage:
    return OverrideStage(
        mouse_id=mouse,
        requested_at=T0,
        requested_by="ada",
        to_stage="s2_training",
        from_stage="s1_habituation",
        reason="ready early",
    )


def test_the_commands_topic_shows_commands_not_undecodable_records() -> None:
    settings = Settings(bootstrap="127.0.0.1:1", topic_prefix="lab")
    assert topic_names([TopicKind.commands], settings.topics) == ["lab.commands"]
    reading = plan_reading(
        settings, CODEC, kinds=[TopicKind.commands], types=["overridestage"], partitions=[0]
    )
    assert reading.topics == ["lab.commands"] and reading.selection.types == ["OverrideStage"]
    command = override()
    value = CODEC.encode(command)
    on_commands = record(value, key=b"M2", topic="lab.commands")
    [row] = reading.render([on_commands])
    assert "OverrideStage v1" in row[1], row
    assert '"s2_training"' in row[1] and 'requested_by="ada"' in row[1]
    assert "(undecodable)" not in "\n".join(row)
    assert reading.wanted(on_commands)
    assert not reading.wanted(record(CODEC.encode(enrolled("M2")), topic="lab.commands"))

    as_json = Renderer(CODEC, OutputFormat.json, commands_topics=frozenset({"lab.commands"}))
    out = json.loads(as_json.render(on_commands)[0])
    assert out["command_type"] == "OverrideStage" and "event_type" not in out
    assert out["command"]["command_id"] == command.command_id
    assert out["command"]["to_stage"] == "s2_training"

    # On any other topic a command is no event: still shown as undecodable, saying why.
    rows = table(record(value, key=b"M2", topic="lab.events"))
    assert "(undecodable)" in rows[0] and "is a command, not an event" in rows[0]


def test_a_refused_command_in_a_dead_letter_decodes_as_the_command() -> None:
    original = CODEC.encode(override("M1"))
    rows = table(record(CODEC.encode(dead_letter(original)), topic="shaping.dead-letter"))
    assert any(line.strip().startswith("original decodes as OverrideStage:") for line in rows)
    out = as_json(record(CODEC.encode(dead_letter(original)), topic="shaping.dead-letter"))
    inner = out["original"]
    assert isinstance(inner, dict) and inner["event"]["reason"] == "ready early"
    assert Selection(mice=["M1"]).matches(
        record(CODEC.encode(dead_letter(original, key=None)), key=b"x"),
        decode_any(CODEC, CODEC.encode(dead_letter(original, key=None))),
        CODEC,
    )


def test_an_unknown_event_type_gets_a_suggestion() -> None:
    result = CliRunner().invoke(app, ["events", "show", "--type", "TrialComplete"])
    assert result.exit_code == 2
    assert "did you mean 'TrialCompleted'" in result.output


def test_a_bad_time_is_explained() -> None:
    result = CliRunner().invoke(
        app, ["events", "show", "--since", "yesterday", "--bootstrap", "127.0.0.1:1"]
    )
    assert result.exit_code == 2
    assert "--since" in result.output


def test_no_broker_is_an_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shaping.services.operator.events.CONNECT_TIMEOUT_S", 1.0)
    result = CliRunner().invoke(app, ["events", "tail", "--bootstrap", "127.0.0.1:1"])
    assert result.exit_code == 2, result.output
    assert "no Kafka broker answered at 127.0.0.1:1 within 1 s" in result.output
