"""The processor's state store: its tables, their changelog topics and the bytes it keeps.

This module owns everything about how the processor stores a mouse's state, so the processor
(:mod:`shaping.services.processor.app`) and the operator's replay, which writes the
processor's changelogs from outside (:mod:`shaping.services.operator.replay`), cannot drift
apart. It imports neither faust nor Kafka: replay and the benchmarks use it too.

Names. The processor keeps two changelog-backed faust tables, :data:`STATE_TABLE` and
:data:`SESSIONS_TABLE`. Faust names a table's changelog topic ``<app id>-<table>-changelog``;
the app id is ``Settings.processor_id`` (the app keeps faust's version 1, so faust adds no
``-v<N>`` suffix). :class:`Changelogs` derives both names; they are the names every
deployment already has. The changelogs have the partition count of Shaping's topics
(``Settings.partitions``: a table partition follows its input partition) and the replication
factor :data:`CHANGELOG_REPLICATION_FACTOR`.

Records. A mouse's state is stored as two records (why: "State records" in app.py):

- a state record in ``mouse_state``: the whole :class:`MouseState`;
- an open-sessions record in ``mouse_sessions`` (:class:`OpenSessions`): what a trial changes,
  tied by a digest to the state record it extends.

Format. Every record starts with a 4-byte header: a 3-byte ASCII magic naming the kind of
record (``SMS`` state, ``SOS`` open sessions), then one byte holding the format number as
``0x30 + n`` (the ASCII digit for formats 1 to 9, so a changelog dump shows ``SMS2``). Then,
in format 2 (what this version writes, :data:`STATE_FORMAT`):

- state record: the state as UTF-8 JSON (pydantic's ``model_dump_json``), zlib-compressed;
- open-sessions record: the :class:`OpenSessions` JSON, zlib-compressed.

In both, a session's statistics are in their compact JSON form
(``services/domain/session_stats.py``: the 0% contrast reaction times as sorted microsecond
deltas). Format 1, what earlier releases wrote, differs in two ways only: its state record is
plain JSON (not compressed), and its statistics hold ``rt_zero`` as a list of floats. This
version reads both (:data:`READ_FORMATS`): the statistics' types read either JSON form, and
the processor rewrites a state in format 2 the next time it stores it, so an upgrade from
format 1 needs no replay.

The format number changes whenever what a stored record means changes (a field renamed,
removed or retyped; a change of encoding); adding a field with a default needs no new number,
since a record without it still means the same. Reading a record of a format this version
does not read raises :class:`StateFormatError`, and so does a record with a field this version
does not know (the stored models forbid unknown fields): a renamed field is refused, never
silently read as its default. The error says what was found and which formats this version
reads, and to run ``shaping replay``, which rebuilds every state from the event log and hands
it to the processor in this version's format. Bytes that are no record of the store at all
(another magic, broken JSON or zlib, a value of the wrong type) raise a plain ``ValueError``:
they are damage, not another version.

Records written before the format number existed (decision). Format 1 is the content those
releases wrote: their open-sessions records already began with ``SOS1``, which is exactly the
format-1 header, and their state records were bare JSON, which always begins with ``{``, a
byte no header begins with. So a state record beginning with ``{`` is read as format 1,
unversioned, like an ``SMS1`` record; the unknown-field check still refuses whatever does not
fit the models.
"""

from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shaping.services.domain.state import MouseState, OpenSession, only_sessions_changed

STATE_TABLE = "mouse_state"
"""The faust table of state records, keyed by the mouse id in UTF-8."""

SESSIONS_TABLE = "mouse_sessions"
"""The faust table of open-sessions records (what trials change, on top of ``mouse_state``),
same keys."""

CHANGELOG_REPLICATION_FACTOR = 1
"""Replication factor of the changelog topics, for faust (which creates them when the processor
starts) and for replay (which creates the state changelog when it hands over to a processor
that never ran). Shaping creates its own topics with a replication factor of 1 too
(``ensure_topics``); there is no setting for it."""

STATE_FORMAT = 2
"""The format number of every record this version writes."""

READ_FORMATS = (1, 2)
"""The format numbers this version reads: its own and format 1, which earlier releases wrote
(a deployment upgrades without a replay; the processor rewrites each state in format 2 the
next time it stores it)."""

STATE_MAGIC = b"SMS"
"""First bytes of a state record, before its format byte."""

SESSIONS_MAGIC = b"SOS"
"""First bytes of an open-sessions record, before its format byte."""

_FORMAT_BASE = 0x30
"""The format byte is ``_FORMAT_BASE + format number`` (ASCII digits for formats 1 to 9)."""

_HEADER = len(STATE_MAGIC) + 1

_UNVERSIONED = b"{"
"""First byte of a state record written before the format number existed (bare JSON)."""

_SESSIONS_LEVEL = 1
"""zlib level of open-sessions records: level 1 already halves them (per-trial strings and
reaction times), at a few tens of microseconds per trial."""

_STATE_LEVEL = 6
"""zlib level of format-2 state records. An IBL mouse after 60 dates of 600 trials: 18 KB at
level 1, 16 KB at level 6 (bench/STATE.md); a state record is written once per batch of a
mouse's messages (or once per mouse at the end of a replay), not per trial, so the better
ratio is worth its encoding time."""

REPLAY_HINT = (
    "stop every processor and run `shaping replay`, which rebuilds the state of every mouse "
    "from the event log and stores it in this version's format (docs/replay.md)"
)
"""What to do about a stored state this version cannot read."""


_Model = TypeVar("_Model", bound=BaseModel)


class StateFormatError(ValueError):
    """A stored record is of a format this version does not read: another format number, or a
    field this version does not know. Not damage: the store was written by another version of
    Shaping, and ``shaping replay`` rebuilds it. The processor stops on it.

    Attributes:
        found: what the record holds (e.g. ``format 2``, ``unknown field(s) stats.foo``).
    """

    def __init__(self, message: str, found: str) -> None:
        super().__init__(message)
        self.found = found


@dataclass(frozen=True)
class Changelogs:
    """The changelog topics of the processor's tables.

    Attributes:
        state: the changelog of :data:`STATE_TABLE`.
        sessions: the changelog of :data:`SESSIONS_TABLE`.
    """

    state: str
    sessions: str

    @classmethod
    def of(cls, processor_id: str) -> Changelogs:
        """The changelogs of the processor with this id (``Settings.processor_id``)."""
        return cls(
            state=changelog_topic(processor_id, STATE_TABLE),
            sessions=changelog_topic(processor_id, SESSIONS_TABLE),
        )

    def all(self) -> list[str]:
        """Both topics, state first."""
        return [self.state, self.sessions]


def changelog_topic(processor_id: str, table: str = STATE_TABLE) -> str:
    """The changelog topic of one of the processor's tables (faust's naming:
    ``<app id>-<table>-changelog``; the app id is the processor id)."""
    return f"{processor_id}-{table}-changelog"


# -- the records ---------------------------------------------------------------------------------


class OpenSessions(BaseModel):
    """The open-session fields of a :class:`MouseState`, stored apart from the rest.

    The processor stores a mouse's state as two records: the state record (the whole
    :class:`MouseState`, :func:`encode_state`, written when anything but the open sessions
    changed) and this one (written after a trial, which changes only the open sessions).
    ``base`` is the :func:`record_digest` of the state record it was written on: it applies to
    that record only, so a state record written after it (a session end, a decision, a
    replay's hand-over) makes it stale by its own bytes, with no second write.

    Attributes:
        base: digest of the state record these open sessions extend.
        open_session: ``MouseState.open_session``.
        parked_sessions: ``MouseState.parked_sessions``.
        input_offsets: ``MouseState.input_offsets``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: str
    open_session: OpenSession | None = None
    parked_sessions: tuple[OpenSession, ...] = ()
    input_offsets: dict[str, int] = Field(default_factory=dict)


def _header(magic: bytes) -> bytes:
    return magic + bytes([_FORMAT_BASE + STATE_FORMAT])


def _format_of(byte: int) -> str:
    number = byte - _FORMAT_BASE
    return f"format {number}" if number >= 1 else f"an unknown format (byte 0x{byte:02x})"


def _refuse(what: str, found: str) -> StateFormatError:
    return StateFormatError(
        f"{what} is in {found}, but this version of Shaping writes format {STATE_FORMAT} and "
        f"reads only formats {', '.join(map(str, READ_FORMATS))}: the processor's state was "
        f"stored by another version; {REPLAY_HINT}",
        found,
    )


def _payload(data: bytes, magic: bytes, what: str) -> tuple[int, bytes]:
    """The format number and the bytes after the header of a record of a format this version
    reads (:data:`READ_FORMATS`).

    Raises:
        StateFormatError: when the header names another format.
        ValueError: when the bytes do not begin with the header of this kind of record.
    """
    if len(data) < _HEADER or not data.startswith(magic):
        raise ValueError(f"not {what} (it begins with {data[:_HEADER]!r})")
    number = data[len(magic)] - _FORMAT_BASE
    if number not in READ_FORMATS:
        raise _refuse(what, _format_of(data[len(magic)]))
    return number, data[_HEADER:]


def _inflate(payload: bytes, what: str) -> bytes:
    try:
        return zlib.decompress(payload)
    except zlib.error as exc:
        raise ValueError(f"{what} is corrupt: {exc}") from exc


def _validated(model: type[_Model], text: bytes, what: str) -> _Model:
    """``text`` validated as ``model``; an unknown field raises :class:`StateFormatError`."""
    try:
        return model.model_validate_json(text)
    except ValidationError as exc:
        unknown = [
            ".".join(str(part) for part in error["loc"])
            for error in exc.errors()
            if error["type"] == "extra_forbidden"
        ]
        if not unknown:
            raise
        found = f"unknown field(s) {', '.join(unknown)}"
        raise StateFormatError(
            f"{what} has field(s) this version of Shaping does not know: {', '.join(unknown)} "
            f"(it writes format {STATE_FORMAT}; a field renamed or removed by another "
            f"version looks like this): the processor's state was stored by another version; "
            f"{REPLAY_HINT}",
            found,
        ) from None


def encode_state(state: MouseState) -> bytes:
    """A state record: the header, then the state as zlib-compressed JSON (format 2)."""
    return _header(STATE_MAGIC) + zlib.compress(
        state.model_dump_json().encode("utf-8"), _STATE_LEVEL
    )


def state_json(data: bytes) -> bytes:
    """The JSON a state record holds, whatever format this version reads it in (for tools and
    tests that look inside a record).

    Raises:
        StateFormatError: a record of another format.
        ValueError: bytes that are no state record.
    """
    what = "a state record"
    if data.startswith(_UNVERSIONED):
        if 1 not in READ_FORMATS:
            raise _refuse(what, "the unversioned format of earlier releases (format 1)")
        return data
    number, payload = _payload(data, STATE_MAGIC, what)
    return payload if number == 1 else _inflate(payload, what)


def decode_state(data: bytes) -> MouseState:
    """Reads a state record of format 2 or 1 (see the module docstring for the formats).

    Raises:
        StateFormatError: a record of another format, or with an unknown field.
        ValueError: bytes that are no state record.
    """
    return _validated(MouseState, state_json(data), "a state record")


def encode_sessions(part: OpenSessions) -> bytes:
    """An open-sessions record: the header, then the record as zlib-compressed JSON."""
    return _header(SESSIONS_MAGIC) + zlib.compress(
        part.model_dump_json().encode("utf-8"), _SESSIONS_LEVEL
    )


def decode_sessions(data: bytes) -> OpenSessions:
    """Reads an open-sessions record (format 2 or 1: both zlib-compressed JSON).

    Raises:
        StateFormatError: a record of another format, or with an unknown field.
        ValueError: bytes that are no open-sessions record.
    """
    what = "an open-sessions record"
    _, payload = _payload(data, SESSIONS_MAGIC, what)
    return _validated(OpenSessions, _inflate(payload, what), what)


def record_digest(record: bytes) -> str:
    """The digest that ties an open-sessions record to the state record it extends."""
    # SHA-256 (hardware-accelerated on current CPUs: ~35 us for a 60 KB record), truncated to
    # 128 bits: a stale record passing for a current one is out of the question.
    return hashlib.sha256(record).hexdigest()[:32]


# -- the two records of one mouse ---------------------------------------------------------------


def split_sessions(state: MouseState, record: bytes) -> OpenSessions:
    """The open-session part of ``state``, to store on top of the state record ``record``
    (whose state must equal ``state`` outside ``SESSION_FIELDS``)."""
    return OpenSessions(
        base=record_digest(record),
        open_session=state.open_session,
        parked_sessions=state.parked_sessions,
        input_offsets=state.input_offsets,
    )


def join_sessions(record: bytes, sessions: bytes | None) -> MouseState:
    """The state stored as a state record and, if any, an open-sessions record.

    The open-sessions record applies when it was written on this very state record (its
    ``base``); otherwise it is older than the state record (which holds the open sessions as
    they were when it was written) and is ignored.

    Raises:
        StateFormatError: either record is of another format, or has an unknown field.
        ValueError: either record is damaged.
    """
    state = decode_state(record)
    if sessions is None:
        return state
    part = decode_sessions(sessions)
    if part.base != record_digest(record):
        return state
    update: dict[str, Any] = {
        "open_session": part.open_session,
        "parked_sessions": part.parked_sessions,
        "input_offsets": part.input_offsets or state.input_offsets,
    }
    return state.model_copy(update=update)


def records_to_store(
    record: bytes | None, before: MouseState | None, after: MouseState
) -> tuple[bytes | None, bytes | None]:
    """What to store after a step: ``(state record, open-sessions record)``, one of them None.

    Args:
        record: the stored state record (None: the mouse has none yet).
        before: the stored state (the join of ``record`` and its open sessions).
        after: the new state.

    Returns:
        Only an open-sessions record on ``record`` when just the open sessions changed (a
        trial: a few KB); otherwise only the whole state as the new state record. Either way
        one record, so a step's write is all or nothing.
    """
    if record is not None and before is not None and only_sessions_changed(before, after):
        return None, encode_sessions(split_sessions(after, record))
    return encode_state(after), None


__all__ = [
    "CHANGELOG_REPLICATION_FACTOR",
    "READ_FORMATS",
    "REPLAY_HINT",
    "SESSIONS_MAGIC",
    "SESSIONS_TABLE",
    "STATE_FORMAT",
    "STATE_MAGIC",
    "STATE_TABLE",
    "Changelogs",
    "OpenSessions",
    "StateFormatError",
    "changelog_topic",
    "decode_sessions",
    "decode_state",
    "encode_sessions",
    "encode_state",
    "join_sessions",
    "record_digest",
    "records_to_store",
    "split_sessions",
    "state_json",
]
