"""``shaping events tail`` and ``shaping events show``: read Shaping's topics as text.

Message values are Avro single-object bytes, unreadable with kcat; these commands decode them
with the contract's codec and print one line per record (``--format table``) or one JSON object
per line (``--format json``). Records of the commands topic are decoded as commands (operators'
requests such as OverrideStage), every other topic's as events; a dead letter's original as
whichever of the two it is. Nothing here trusts the bytes: a record that does not decode is
shown as undecodable with a hexdump, a dead letter (EventRejected) with its reason, a hexdump of
the original bytes and the original decoded when it decodes, and every string that reaches the
terminal has its control characters escaped (``\\x1b``), so a hostile key or value can neither
crash the command nor drive the terminal.

Reading never joins a consumer group and never commits offsets. The rendering functions are
pure (no Kafka), so they are tested on arbitrary bytes. This module is the use case: it plans a
reading (:func:`plan_reading`), reads it (:func:`show_records`, :func:`tail_records`) and renders
it (:meth:`Reading.render`), and says what went wrong with an :class:`EventsError`. The
commands, their options and how they print are in services/cli/events.py.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
import unicodedata
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shaping.schemas.codec import EventCodec
    from shaping.schemas.commands import Command
    from shaping.schemas.events import Event, EventRejected
    from shaping.schemas.topics import TopicNames
    from shaping.services.adapters.settings import Settings

CONNECT_TIMEOUT_S = 10.0
DEFAULT_MAX_BYTES = 512
"""How many bytes of an undecodable value or a dead letter's original a hexdump shows."""

Warn = Callable[[str], None]
"""Where a reading's warnings go (a line of text each, e.g. a partition that stopped
delivering)."""


class EventsError(Exception):
    """The records cannot be read as asked: an unknown event type or topic, or no broker. The
    message says what to change."""


def _warn_on_stderr(message: str) -> None:
    sys.stderr.write(message + "\n")


class TopicKind(StrEnum):
    """A topic by its kind; the name is ``<prefix>.<kind>``."""

    events = "events"
    accepted = "accepted"
    decisions = "decisions"
    assignments = "assignments"
    dead_letter = "dead-letter"
    curricula = "curricula"
    commands = "commands"
    alerts = "alerts"
    all = "all"


class OutputFormat(StrEnum):
    """How records are printed."""

    table = "table"
    json = "json"


def topic_names(kinds: Sequence[TopicKind], topics: TopicNames) -> list[str]:
    """The topic names of ``kinds`` (``all``: every topic of the deployment), in the order
    given, no repeats.

    Raises:
        ValueError: for a kind this deployment's topic layout does not have.
    """
    names: list[str] = []
    for kind in kinds or [TopicKind.events]:
        if kind == TopicKind.all:
            found = list(topics.all())
        else:
            name = getattr(topics, kind.name, None)
            if not isinstance(name, str) or not name:
                raise ValueError(f"this deployment has no {kind.value} topic")
            found = [name]
        names.extend(n for n in found if n not in names)
    return names


# -- escaping -------------------------------------------------------------------------------------

_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def _unsafe(char: str) -> bool:
    """Control, format (bidi overrides, zero-width), surrogate, private-use, unassigned and
    line/paragraph separator characters: anything a terminal might act on or hide."""
    return unicodedata.category(char) in _UNSAFE_CATEGORIES


def _escape_char(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def escape_terminal(text: str) -> str:
    """``text`` safe to print: control and invisible characters as ``\\xNN`` (``\\uNNNN``
    above 0xFF), a backslash doubled, so the printed form is unambiguous."""
    out = []
    for char in text:
        if char == "\\":
            out.append("\\\\")
        elif _unsafe(char):
            out.append(_escape_char(char))
        else:
            out.append(char)
    return "".join(out)


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def json_line(obj: Any) -> str:
    """One JSON object on one line, with every character a terminal could act on written as a
    JSON ``\\uNNNN`` escape (still valid JSON: it parses back to the same strings)."""
    text = json.dumps(obj, ensure_ascii=False, allow_nan=False, default=str)
    return "".join(_json_escape(c) if _unsafe(c) else c for c in text)


def bytes_text(data: bytes) -> str | None:
    """The bytes as text when they are UTF-8, else None."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def key_text(key: bytes | None) -> str:
    """A record key for a table cell: its escaped text, ``0x<hex>`` if not UTF-8, ``-``."""
    if key is None:
        return "-"
    text = bytes_text(key)
    return escape_terminal(text) if text is not None else "0x" + key.hex()


def hexdump(data: bytes, limit: int | None = DEFAULT_MAX_BYTES) -> list[str]:
    """``data`` as hexdump lines: offset, 16 bytes in hex, the printable ASCII ones.

    At most ``limit`` bytes are shown (None: all); a last line says how many were left out.
    """
    shown = data if limit is None else data[: max(0, limit)]
    lines = []
    for start in range(0, len(shown), 16):
        chunk = shown[start : start + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        hexes = f"{hexes[:23]} {hexes[23:]}" if len(chunk) > 8 else hexes
        ascii_ = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        lines.append(f"{start:08x}  {hexes:<48}  |{ascii_}|")
    if len(shown) < len(data):
        lines.append(f"... {len(data) - len(shown)} more bytes")
    if not data:
        lines.append("(0 bytes)")
    return lines


# -- decoding -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RawRecord:
    """One Kafka record as read, nothing decoded."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int | None
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes | None]] = ()


@dataclass(frozen=True)
class Decoded:
    """The result of decoding bytes that may be anything."""

    event: Event | Command | None = None
    """The event (or, where commands were expected, the command) the bytes hold."""
    error: str | None = None
    writer: str | None = None
    """``EventType vN`` of the writer schema, from the fingerprint, when known."""


def message_type(message: Event | Command) -> str:
    """The wire name of an event (``event_type``) or a command (``command_type``)."""
    from shaping.schemas.events import Event

    return message.event_type if isinstance(message, Event) else message.command_type


def decode_any(codec: EventCodec, value: bytes | None, commands: bool = False) -> Decoded:
    """Decodes a message value; never raises, whatever the bytes.

    Args:
        codec: the contract's codec.
        value: the bytes.
        commands: accept a command too (a record of the commands topic, or a dead letter's
            original); otherwise only an event decodes.
    """
    from shaping.schemas.headers import H_EVENT_TYPE, H_SCHEMA_VERSION, headers_for

    try:
        described = dict(headers_for(value))
    except Exception:  # pragma: no cover - headers_for never raises; belt and braces
        described = {}
    writer = None
    if H_EVENT_TYPE in described:
        writer = f"{described[H_EVENT_TYPE].decode()} v{described[H_SCHEMA_VERSION].decode()}"
    if value is None:
        return Decoded(error="no value (a tombstone)")
    try:
        message = codec.decode_message(value) if commands else codec.decode(value)
        return Decoded(event=message, writer=writer)
    except Exception as exc:  # any bytes at all: a decoder bug must not end the listing
        return Decoded(error=f"{type(exc).__name__}: {exc}", writer=writer)


def _plain(value: Any) -> Any:
    """A decoded event's fields as JSON-ready values: timestamps ISO 8601 UTC, bytes hex,
    non-finite floats as text."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, datetime):
        return _iso(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_fields(event: Event | Command) -> dict[str, Any]:
    """Every field of an event or a command, JSON-ready (an EventRejected's original bytes as
    hex)."""
    return dict(_plain(event.model_dump(mode="python")))


def _timestamp(ms: int | None) -> datetime | None:
    if ms is None or ms < 0:
        return None
    try:
        return datetime.fromtimestamp(ms / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return None


# -- filtering ------------------------------------------------------------------------------------


def record_mice(record: RawRecord, decoded: Decoded, codec: EventCodec) -> set[str]:
    """The mice a record concerns: its key, its event's mouse and, for a dead letter, the
    original's key and mouse."""
    mice = set()
    if record.key is not None and (text := bytes_text(record.key)) is not None:
        mice.add(text)
    event = decoded.event
    if event is not None:
        mice.add(event.mouse_id)
        original_key = getattr(event, "original_key", None)
        if isinstance(original_key, bytes) and (text := bytes_text(original_key)) is not None:
            mice.add(text)
        original = getattr(event, "original_value", None)
        if isinstance(original, bytes):
            inner = decode_any(codec, original, commands=True)
            if inner.event is not None:
                mice.add(inner.event.mouse_id)
    return mice


def record_types(record: RawRecord, decoded: Decoded) -> set[str]:
    """The event (or command) types a record is of: its decoded type and its header's
    claim."""
    from shaping.schemas.headers import H_EVENT_TYPE, header_text

    types = set()
    if decoded.event is not None:
        types.add(message_type(decoded.event))
    claimed = header_text(record.headers).get(H_EVENT_TYPE)
    if claimed:
        types.add(claimed)
    return types


@dataclass
class Selection:
    """Which records are wanted, beyond their topic and position."""

    mice: Sequence[str] = ()
    types: Sequence[str] = ()

    def matches(self, record: RawRecord, decoded: Decoded, codec: EventCodec) -> bool:
        if self.mice and not set(self.mice) & record_mice(record, decoded, codec):
            return False
        wanted_types = {t.lower() for t in self.types}
        if not wanted_types:
            return True
        return bool(wanted_types & {t.lower() for t in record_types(record, decoded)})

    @property
    def filtered(self) -> bool:
        return bool(self.mice or self.types)


# -- rendering ------------------------------------------------------------------------------------


def _num(value: Any, digits: int = 3) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


_COMMAND_ENVELOPE = {"command_id", "command_type", "schema_version", "mouse_id", "requested_at"}


def summary(event: Event | Command) -> str:
    """A one-line digest of an event's (or a command's) fields that matter most (unescaped)."""
    from shaping.schemas.commands import Command
    from shaping.schemas.events import (
        AssignmentIssued,
        CurriculumPublished,
        EventRejected,
        MouseEnrolled,
        SessionEnded,
        SessionStarted,
        StageTransitioned,
        TrialCompleted,
    )

    if isinstance(event, Command):  # what it asks for, and who asks
        return _fields_text(event_fields(event), _COMMAND_ENVELOPE)
    if isinstance(event, MouseEnrolled):
        version = f"@{event.curriculum_version}" if event.curriculum_version else ""
        start = f" start={event.start_stage}" if event.start_stage else ""
        by = f" by={event.enrolled_by}" if event.enrolled_by else ""
        return f"{event.curriculum_name}{version}{start}{by}"
    if isinstance(event, SessionStarted):
        return (
            f"session={event.session_id} stage={event.stage} "
            f"{event.curriculum_name}@{event.curriculum_version} rig={event.rig_id}"
        )
    if isinstance(event, TrialCompleted):
        rt = f" rt={_num(event.reaction_time_s)}s" if event.reaction_time_s is not None else ""
        correction = " correction" if event.correction_trial else ""
        return (
            f"session={event.session_id} trial={event.trial_index} {event.outcome}{rt}{correction}"
        )
    if isinstance(event, SessionEnded):
        return (
            f"session={event.session_id} trials={event.n_trials} end={event.end_reason} "
            f"duration={_num(event.duration_s)}s"
        )
    if isinstance(event, StageTransitioned):
        sup = f" supersedes={event.supersedes}" if event.supersedes else ""
        return (
            f"{event.decision}: {event.from_stage} -> {event.to_stage} rule={event.rule} "
            f"session={event.session_id}{sup}"
        )
    if isinstance(event, AssignmentIssued):
        return (
            f"stage={event.stage} session#={event.session_number} "
            f"{event.curriculum_name}@{event.curriculum_version} reason={event.reason}"
        )
    if isinstance(event, EventRejected):
        return f"{event.error_kind}: {event.reason}"
    if isinstance(event, CurriculumPublished):
        return f"{event.curriculum_name}@{event.curriculum_version} hash={event.content_hash}"
    envelope = {
        "event_id",
        "event_type",
        "schema_version",
        "mouse_id",
        "rig_id",
        "session_id",
        "occurred_at",
        "causation_id",
    }
    return _fields_text(event_fields(event), envelope)


def _fields_text(fields: dict[str, Any], envelope: set[str]) -> str:
    """``name=value`` for each field outside ``envelope`` that has a value."""
    return " ".join(
        f"{name}={json.dumps(value, ensure_ascii=False, default=str)}"
        for name, value in fields.items()
        if name not in envelope and value not in (None, "", [], {})
    )


def _location(record: RawRecord) -> str:
    return f"{record.topic}/{record.partition}@{record.offset}"


TABLE_HEADER = (
    f"{'TIME (UTC)':<23}  {'TOPIC/PARTITION@OFFSET':<28}  {'KEY':<12}  {'TYPE':<22}  SUMMARY"
)


@dataclass
class Renderer:
    """Turns raw records into printable text (``table``) or JSON lines (``json``).

    Args:
        codec: the contract's codec.
        output: table or json.
        show_headers: in a table, print each record's Kafka headers under it.
        max_bytes: how many bytes a hexdump shows (None: all).
        commands_topics: the topics whose records are commands (the deployment's commands
            topic); every other topic's records are decoded as events.
    """

    codec: EventCodec
    output: OutputFormat = OutputFormat.table
    show_headers: bool = False
    max_bytes: int | None = DEFAULT_MAX_BYTES
    commands_topics: frozenset[str] = frozenset()
    _header_done: bool = field(default=False, init=False)

    def decode(self, record: RawRecord) -> Decoded:
        """The record's value decoded as its topic holds them: a command or an event."""
        return decode_any(self.codec, record.value, record.topic in self.commands_topics)

    def render(self, record: RawRecord, decoded: Decoded | None = None) -> list[str]:
        """The lines that show one record; never raises, and no line holds a control
        character."""
        decoded = decoded if decoded is not None else self.decode(record)
        try:
            if self.output == OutputFormat.json:
                return [json_line(self.as_json(record, decoded))]
            lines = [] if self._header_done else [TABLE_HEADER]
            self._header_done = True
            return lines + self.as_table(record, decoded)
        except Exception as exc:  # pragma: no cover - a rendering bug must not end the listing
            text = f"{_location(record)}  cannot render: {type(exc).__name__}: {exc}"
            return [escape_terminal(text)]

    # json ------------------------------------------------------------------------------------

    def as_json(self, record: RawRecord, decoded: Decoded) -> dict[str, Any]:
        """One record as a JSON-ready dict (a command's fields under ``command``, with its
        ``command_type``; an event's under ``event``)."""
        from shaping.schemas.commands import Command
        from shaping.schemas.events import EventRejected
        from shaping.schemas.headers import header_text

        moment = _timestamp(record.timestamp_ms)
        out: dict[str, Any] = {
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "timestamp": _iso(moment) if moment else None,
        }
        if record.key is None or (text := bytes_text(record.key)) is not None:
            out["key"] = None if record.key is None else text
        else:
            out["key_hex"] = record.key.hex()
        out["headers"] = header_text(record.headers)
        event = decoded.event
        if event is None:
            out["event_type"] = None
            out["error"] = decoded.error
            out["writer"] = decoded.writer
            if record.value is not None:
                out["value_hex"] = record.value.hex()
            return out
        if isinstance(event, Command):
            out["command_type"] = event.command_type
            out["writer"] = decoded.writer
            out["command"] = event_fields(event)
            return out
        out["event_type"] = event.event_type
        out["writer"] = decoded.writer
        out["event"] = event_fields(event)
        if isinstance(event, EventRejected):
            inner = decode_any(self.codec, event.original_value, commands=True)
            out["original"] = {
                "hexdump": hexdump(event.original_value, self.max_bytes),
                "event": event_fields(inner.event) if inner.event is not None else None,
                "error": inner.error,
                "writer": inner.writer,
            }
        return out

    # table -----------------------------------------------------------------------------------

    def as_table(self, record: RawRecord, decoded: Decoded) -> list[str]:
        """One record as a table row, with detail lines under it where it needs them."""
        from shaping.schemas.events import EventRejected
        from shaping.schemas.headers import header_text

        moment = _timestamp(record.timestamp_ms)
        when = moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:23] if moment else "-"
        event = decoded.event
        if event is not None:
            kind = message_type(event)
            if decoded.writer and not decoded.writer.endswith(f" v{event.schema_version}"):
                kind += f" ({decoded.writer})"
            elif decoded.writer:
                kind += f" v{event.schema_version}"
            text = summary(event)
        elif record.value is None:
            kind, text = "(tombstone)", "no value"
        else:
            kind = "(undecodable)"
            text = f"{len(record.value)} bytes: {decoded.error}"
        row = (
            f"{when:<23}  {escape_terminal(_location(record)):<28}  {key_text(record.key):<12}  "
            f"{escape_terminal(kind):<22}  {escape_terminal(text)}"
        )
        lines = [row]
        indent = "    "
        if self.show_headers:
            shown = header_text(record.headers)
            heads = ", ".join(f"{k}={v}" for k, v in shown.items()) or "(none)"
            lines.append(f"{indent}headers: {escape_terminal(heads)}")
        if event is None and record.value is not None:
            lines.extend(indent + line for line in hexdump(record.value, self.max_bytes))
        if isinstance(event, EventRejected):
            lines.extend(indent + line for line in self._dead_letter(event))
        return lines

    def _dead_letter(self, event: EventRejected) -> list[str]:
        source = f"{event.source_topic}/{event.source_partition}@{event.source_offset}"
        lines = [
            f"reason: {escape_terminal(event.reason)}",
            f"kind: {escape_terminal(event.error_kind)}  source: {escape_terminal(source)}  "
            f"rejected by: {escape_terminal(event.rejected_by)}",
            f"original key: {key_text(event.original_key)}",
            f"original value ({_original_size(event)}):",
        ]
        lines.extend("  " + line for line in hexdump(event.original_value, self.max_bytes))
        inner = decode_any(self.codec, event.original_value, commands=True)
        if inner.event is not None:
            body = json.dumps(event_fields(inner.event), ensure_ascii=False, default=str)
            kind = message_type(inner.event)
            lines.append(f"original decodes as {kind}: {escape_terminal(body)}")
        else:
            lines.append(f"original does not decode: {escape_terminal(inner.error or '')}")
        return lines


def _original_size(event: EventRejected) -> str:
    """How much of the original a dead letter keeps (schema v2 may keep only its start)."""
    kept = len(event.original_value)
    size = getattr(event, "original_size", None)
    sha = getattr(event, "original_sha256", None)
    text = f"{kept} bytes"
    if isinstance(size, int) and size > kept:
        text = f"the first {kept} of {size} bytes"
    if sha:
        text += f", sha256 {escape_terminal(str(sha))}"
    return text


# -- time -----------------------------------------------------------------------------------------

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ISO 8601 (a naive one is UTC), a date (its UTC midnight), or an age
    such as ``90s``, ``15m``, ``2h``, ``3d``, ``1w`` (that long before now).

    Raises:
        ValueError: for anything else.
    """
    now = now or datetime.now(UTC)
    match = _RELATIVE.match(text)
    if match:
        return now - timedelta(seconds=float(match[1]) * _UNITS[match[2]])
    raw = text.strip()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        day = date.fromisoformat(raw)
        return datetime(day.year, day.month, day.day, tzinfo=UTC)
    try:
        moment = datetime.fromisoformat(raw.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a time: give 2026-03-02, 2026-03-02T10:00:00Z, or an age like "
            "15m, 2h, 3d"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _millis(moment: datetime) -> int:
    return int(moment.timestamp() * 1000)


# -- reading --------------------------------------------------------------------------------------


@dataclass
class Bounds:
    """Where to read, per partition: offsets ``[start, end)``."""

    start: dict[Any, int]
    end: dict[Any, int]


class TopicScanner:
    """Reads records of some topics by offset range, without a consumer group.

    Args:
        bootstrap: Kafka bootstrap servers.
        topics: topic names.
        partitions: only these partitions (None: all).
        timeout_s: how long to wait for the broker and the topics' metadata.
        warn: gets the warning when a partition stops delivering before its end (default:
            a line on stderr).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        partitions: Sequence[int] | None = None,
        timeout_s: float | None = None,
        warn: Warn | None = None,
    ) -> None:
        from shaping.services.adapters.kafka import consumer as kafka_consumer
        from shaping.services.adapters.topics import wait_for_partitions

        timeout_s = CONNECT_TIMEOUT_S if timeout_s is None else timeout_s
        self.warn = warn if warn is not None else _warn_on_stderr
        self.consumer = kafka_consumer(
            bootstrap, "shaping-events", bootstrap_timeout_ms=int(timeout_s * 1000)
        )
        try:
            found = wait_for_partitions(self.consumer, list(topics), timeout_s) or []
        except Exception:
            self.consumer.close()
            raise
        if partitions is not None:
            found = [tp for tp in found if tp.partition in set(partitions)]
        self.partitions = found
        self.consumer.assign(self.partitions)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicScanner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ends(self) -> dict[Any, int]:
        """The current end offset of every partition (the offset the next record gets)."""
        return dict(self.consumer.end_offsets(self.partitions)) if self.partitions else {}

    def beginnings(self) -> dict[Any, int]:
        """The first offset still on the broker, per partition."""
        return dict(self.consumer.beginning_offsets(self.partitions)) if self.partitions else {}

    def offsets_at(self, moment: datetime, default: dict[Any, int]) -> dict[Any, int]:
        """Per partition, the first offset whose timestamp is at or after ``moment``
        (``default`` where there is none)."""
        if not self.partitions:
            return {}
        found = self.consumer.offsets_for_times({tp: _millis(moment) for tp in self.partitions})
        return {
            tp: (found[tp].offset if found.get(tp) is not None else default[tp])
            for tp in self.partitions
        }

    def read(self, bounds: Bounds, idle_s: float = 15.0) -> Iterator[RawRecord]:
        """Every record in ``[start, end)`` of each partition, in each partition's order."""
        todo = {tp for tp in self.partitions if bounds.start.get(tp, 0) < bounds.end.get(tp, 0)}
        for tp in self.partitions:
            if tp in todo:
                self.consumer.seek(tp, bounds.start[tp])
        self.consumer.resume(*todo)
        self.consumer.pause(*[tp for tp in self.partitions if tp not in todo])
        last_progress = time.monotonic()
        while todo:
            batches = self.consumer.poll(timeout_ms=500, max_records=1000)
            for tp, records in batches.items():
                for msg in records:
                    if tp in todo and msg.offset < bounds.end[tp]:
                        yield to_raw(msg)
            if batches:
                last_progress = time.monotonic()
            for tp in list(todo):
                if self.consumer.position(tp) >= bounds.end[tp]:
                    todo.discard(tp)
                    self.consumer.pause(tp)
            if todo and time.monotonic() - last_progress > idle_s:
                stuck = ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(todo))
                self.warn(f"warning: nothing more arrived from {stuck} for {idle_s:g} s; stopping")
                return
        self.consumer.resume(*self.partitions)

    def follow(
        self,
        start: dict[Any, int],
        stop: Callable[[], bool],
    ) -> Iterator[RawRecord]:
        """Every record from ``start`` on, as it arrives, until ``stop()`` is true."""
        self.consumer.resume(*self.partitions)
        for tp in self.partitions:
            self.consumer.seek(tp, start[tp])
        while not stop():
            batches = self.consumer.poll(timeout_ms=250, max_records=500)
            for records in batches.values():
                for msg in records:
                    yield to_raw(msg)


def to_raw(msg: Any) -> RawRecord:
    """A kafka-python ConsumerRecord as a RawRecord."""
    return RawRecord(
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        timestamp_ms=msg.timestamp,
        key=msg.key,
        value=msg.value,
        headers=list(msg.headers or []),
    )


def _sort_key(record: RawRecord) -> tuple[int, str, int, int]:
    return (record.timestamp_ms or 0, record.topic, record.partition, record.offset)


def last_matching(
    scanner: TopicScanner,
    count: int,
    wanted: Callable[[RawRecord], bool],
    floor: dict[Any, int],
    ends: dict[Any, int],
) -> list[RawRecord]:
    """The last ``count`` wanted records (by timestamp) between ``floor`` and ``ends``.

    Reads each partition back from its end in growing windows until it has ``count`` wanted
    records or reaches ``floor``: the newest ``count`` overall are among those, and a filter
    that matches rarely does not read a whole long topic when it need not.
    """
    if count <= 0:
        return []
    found: dict[Any, list[RawRecord]] = {tp: [] for tp in ends}
    low = dict(ends)
    step = max(count, 200)
    while True:
        pending = [tp for tp in low if len(found[tp]) < count and low[tp] > floor[tp]]
        if not pending:
            break
        start = dict(low)
        for tp in pending:
            start[tp] = max(floor[tp], low[tp] - step)
        for record in scanner.read(Bounds(start, low)):
            if wanted(record):
                found[(record.topic, record.partition)].append(record)
        low = start
        step *= 4
    merged = sorted((r for records in found.values() for r in records), key=_sort_key)
    return merged[-count:]


# -- the use case: plan a reading, read it, render it -------------------------------------------


@dataclass
class Reading:
    """What to read and how to show it, resolved from what the user asked for.

    Attributes:
        bootstrap: Kafka bootstrap servers.
        topics: the topic names, in the order asked.
        partitions: only these partitions (None: all).
        selection: which of the records read are wanted.
        renderer: how a wanted record is shown.
    """

    bootstrap: str
    topics: list[str]
    partitions: list[int] | None
    selection: Selection
    renderer: Renderer

    def wanted(self, record: RawRecord) -> bool:
        """Whether the selection keeps ``record``."""
        codec = self.renderer.codec
        return self.selection.matches(record, self.renderer.decode(record), codec)

    def render(self, records: Iterable[RawRecord]) -> Iterator[list[str]]:
        """The lines of each record the selection keeps, one list per record, as they come."""
        codec = self.renderer.codec
        for record in records:
            decoded = self.renderer.decode(record)
            if self.selection.matches(record, decoded, codec):
                yield self.renderer.render(record, decoded)


def plan_reading(
    settings: Settings,
    codec: EventCodec,
    kinds: Sequence[TopicKind] = (),
    mice: Sequence[str] = (),
    types: Sequence[str] = (),
    partitions: Sequence[int] = (),
    output: OutputFormat = OutputFormat.table,
    show_headers: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Reading:
    """Resolves a request: the topic names of ``kinds`` (default: events), the event (or
    command) types spelled as the contract spells them, and, when only some mice are wanted
    and no partition is named, the partitions their keys go to (this asks the broker for the
    partition counts).

    Args:
        settings: the deployment's bootstrap servers and topic names.
        codec: decodes the records (:func:`shaping.services.bootstrap.codec`).
        max_bytes: bytes a hexdump shows; 0 shows all.

    Raises:
        EventsError: an event type the contract does not have (the closest one suggested), or
            a topic kind this deployment lacks.
    """
    from shaping.schemas.commands import COMMAND_TYPES
    from shaping.schemas.events import EVENT_TYPES

    known = {name.lower(): name for name in EVENT_TYPES}
    known.update({name.lower(): name for name in COMMAND_TYPES})
    for name in types:
        if name.lower() not in known:
            import difflib

            close = difflib.get_close_matches(name, list(known.values()), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EventsError(
                f"unknown event type {name!r}{hint} (known: {', '.join(sorted(EVENT_TYPES))}; "
                f"commands: {', '.join(sorted(COMMAND_TYPES))})"
            )
    try:
        names = topic_names(kinds, settings.topics)
    except ValueError as exc:
        raise EventsError(str(exc)) from exc
    parts = list(partitions) if partitions else None
    if parts is None and mice:
        parts = mouse_partitions(settings.bootstrap, names, mice)
    return Reading(
        bootstrap=settings.bootstrap,
        topics=names,
        partitions=parts,
        selection=Selection(mice=list(mice), types=[known[t.lower()] for t in types]),
        renderer=Renderer(
            codec,
            output=output,
            show_headers=show_headers,
            max_bytes=max_bytes or None,
            commands_topics=frozenset({settings.topics.commands}),
        ),
    )


def mouse_partitions(
    bootstrap: str, topics: Sequence[str], mice: Sequence[str]
) -> list[int] | None:
    """The partitions the mice's keys go to (Kafka's default partitioner, murmur2, as every
    Shaping producer uses), or None (read every partition) when the curricula topic, keyed
    otherwise, is among the topics or the topics' partition counts differ."""
    from kafka.partitioner.default import murmur2

    from shaping.services.adapters.kafka import consumer as kafka_consumer

    if any(name.endswith(".curricula") for name in topics):
        return None
    consumer = kafka_consumer(
        bootstrap, "shaping-events", bootstrap_timeout_ms=int(CONNECT_TIMEOUT_S * 1000)
    )
    try:
        counts = {len(consumer.partitions_for_topic(name) or ()) for name in topics}
    finally:
        consumer.close()
    counts.discard(0)
    if len(counts) != 1:
        return None
    (count,) = counts
    return sorted({(murmur2(m.encode("utf-8")) & 0x7FFFFFFF) % count for m in mice})


def open_scanner(reading: Reading, warn: Warn | None = None) -> TopicScanner:
    """A scanner on the reading's topics and partitions.

    Raises:
        EventsError: no broker answers in time, the topics are missing, or none of the
            partitions asked for exists.
    """
    from kafka.errors import KafkaError

    from shaping.services.adapters.errors import InfraError

    try:
        scanner = TopicScanner(reading.bootstrap, reading.topics, reading.partitions, warn=warn)
    except InfraError as exc:
        raise EventsError(f"{exc}") from exc
    except (KafkaError, OSError) as exc:
        raise EventsError(
            f"no Kafka broker answered at {reading.bootstrap} within {CONNECT_TIMEOUT_S:g} s "
            f"({type(exc).__name__}); start one (`make kafka-up`) or pass --bootstrap"
        ) from exc
    if not scanner.partitions:
        scanner.close()
        wanted = ", ".join(str(p) for p in reading.partitions or [])
        raise EventsError(f"no partition {wanted} in {', '.join(reading.topics)}")
    return scanner


def show_records(
    reading: Reading,
    from_offset: int | None = None,
    to_offset: int | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int | None = None,
    warn: Warn | None = None,
) -> list[RawRecord]:
    """The wanted records in a range, oldest first (merged by timestamp), at most ``limit``.

    The range is everything on the topics now, narrowed by each bound given: offsets
    ``from_offset`` to ``to_offset`` (inclusive) in every partition read, and times ``since``
    (inclusive) to ``until`` (exclusive).

    Raises:
        EventsError: as :func:`open_scanner`.
    """
    with open_scanner(reading, warn) as scanner:
        ends = scanner.ends()
        begins = scanner.beginnings()
        start = dict(begins)
        end = dict(ends)
        if from_offset is not None:
            start = {tp: max(begins[tp], from_offset) for tp in start}
        if to_offset is not None:
            end = {tp: min(ends[tp], to_offset + 1) for tp in end}
        if since is not None:
            at = scanner.offsets_at(since, ends)
            start = {tp: max(start[tp], at[tp]) for tp in start}
        if until is not None:
            at = scanner.offsets_at(until, ends)
            end = {tp: min(end[tp], at[tp]) for tp in end}
        records = sorted(
            (r for r in scanner.read(Bounds(start, end)) if reading.wanted(r)), key=_sort_key
        )
    return records if limit is None else records[:limit]


def tail_records(
    reading: Reading,
    last: int = 10,
    since: datetime | None = None,
    follow: bool = False,
    timeout_s: float | None = None,
    warn: Warn | None = None,
) -> Generator[RawRecord, None, None]:
    """The last ``last`` wanted records (merged by timestamp), or every wanted one since
    ``since``; then, with ``follow``, every record of the topics as it arrives, until
    ``timeout_s`` has passed since the call began (None: until the caller stops). The records
    followed are not filtered: :meth:`Reading.render` keeps the wanted ones.

    A generator: the broker is reached when the first record is asked for, and the scanner
    is closed when the generator ends or is closed.

    Raises:
        EventsError: as :func:`open_scanner`, when the first record is asked for.
    """
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    with open_scanner(reading, warn) as scanner:
        ends = scanner.ends()
        begins = scanner.beginnings()
        if since is not None:
            start = scanner.offsets_at(since, ends)
            records = sorted(
                (r for r in scanner.read(Bounds(start, ends)) if reading.wanted(r)),
                key=_sort_key,
            )
        else:
            records = last_matching(scanner, last, reading.wanted, begins, ends)
        yield from records
        if follow:
            yield from scanner.follow(
                ends, lambda: deadline is not None and time.monotonic() >= deadline
            )
