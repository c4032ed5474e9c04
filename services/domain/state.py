"""Per-mouse training state: a fold over the mouse's events."""

from __future__ import annotations

import hashlib
import zlib
from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field

from shaping.schemas.events import AssignmentIssued, Parameters, SessionSummary, StageTransitioned
from shaping.services.domain.session_stats import SessionStats

RECENT_IDS = 64
"""How many recent non-trial event ids a state remembers to drop redelivered events."""

MAX_TRIAL_WINDOW = 1000
"""Longest trial window a rule may read. Records keep their per-trial strings while the newer
records hold fewer trials than this (older ones keep only their summaries)."""

MAX_SESSION_HISTORY = 20
"""Finished sessions whose metrics a state keeps; no rule may read further back."""


class OpenSession(BaseModel):
    """The session a mouse is running now, with its running statistics.

    Attributes:
        session_id: the session.
        stage: the stage it runs.
        rig_id: the rig running it.
        last_trial_index: index of the last trial folded in (redeliveries are dropped).
        session_date: the session's calendar date (``SessionStarted.session_date``, else the UTC
            date it started): windows over dates group sessions by it.
        started_at: when it started.
        task_protocol: the ``task_protocol`` parameter it runs (IBL: training, biased, ...).
        ephys_rig: the ``ephys_rig`` parameter (IBL: the session runs on an ephys rig).
        start_delay_s: the ``session_start_delay_s`` parameter (IBL: delay before the first
            trial).
        stats: sufficient statistics of its trials so far.
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    stage: str
    rig_id: str | None = None
    last_trial_index: int = -1
    session_date: str | None = None
    started_at: datetime | None = None
    task_protocol: str | None = None
    ephys_rig: bool = False
    start_delay_s: float | None = None
    stats: SessionStats = Field(default_factory=SessionStats)

    @property
    def n_trials(self) -> int:
        """Trials so far, misses included."""
        return self.stats.n_trials

    @property
    def n_correct(self) -> int:
        """Correct trials so far."""
        return self.stats.n_correct

    @property
    def n_incorrect(self) -> int:
        """Incorrect trials so far."""
        return self.stats.n_incorrect

    @property
    def n_miss(self) -> int:
        """Missed trials so far."""
        return self.stats.n_miss


class SessionRecord(BaseModel):
    """A finished session as the rules see it: the stage it ran, its facts, its session metrics
    and the sufficient statistics every computed metric reads.

    Attributes:
        session_id: the session.
        stage: the stage the session actually ran.
        metrics: every session metric's value (None: no value, e.g. NaN), computed ones first.
        session_date: its calendar date (ISO); None only in records written before dates were
            kept.
        task_protocol: its ``task_protocol`` parameter, if any.
        ephys_rig: whether it ran on an ephys rig.
        start_delay_s: its start delay (s), if given.
        stats: its trials' sufficient statistics (None in records written before they were
            kept).
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    stage: str
    metrics: dict[str, float | None]
    session_date: str | None = None
    task_protocol: str | None = None
    ephys_rig: bool = False
    start_delay_s: float | None = None
    stats: SessionStats | None = None


class JudgedSession(BaseModel):
    """What a recompute needs of a judged session besides its :class:`SessionRecord`.

    ``MouseState.judged`` runs parallel to the newest records of ``MouseState.history`` (same
    sessions, same order: by :attr:`order_key`). See ``services/domain/recompute.py`` and
    docs/recompute.md.

    Attributes:
        session_id: the session.
        session_date: its calendar date (``SessionStarted.effective_date``).
        started_at: when it started (orders the sessions of one date).
        rig_id: the rig that ran it.
        ended_event_id: event_id of its SessionEnded.
        ended_at: when it ended.
        summary: its counts, as its decisions report them.
        curriculum_version: the curriculum version it is judged by.
        operator_stage: the stage an operator (an override, a migration) set between the
            session before it and this one; a recompute keeps it instead of the recomputed
            stage. None: the mouse ran on what the decisions said.
        decision_id: event_id of the decision in force for it ("" until it is judged).
        stage: the stage it was judged at.
        to_stage: the stage that decision sent the mouse to.
        decision: that decision (stay, progress, ...).
        sessions_at_stage: the decision's ``sessions_at_stage`` (sessions in a row at
            ``stage``, this one included).
        session_total: the decision's ``session_total`` (sessions in all, this one included).
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    session_date: str
    started_at: datetime
    rig_id: str | None = None
    ended_event_id: str
    ended_at: datetime
    summary: SessionSummary
    curriculum_version: str
    operator_stage: str | None = None
    decision_id: str = ""
    stage: str
    to_stage: str
    decision: str = "stay"
    sessions_at_stage: int = 0
    session_total: int = 0

    @property
    def order_key(self) -> tuple[str, datetime, str]:
        """Where the session sorts among the mouse's sessions: date, start time, id."""
        return (self.session_date, self.started_at, self.session_id)


class MouseState(BaseModel):
    """Everything the processor knows about one mouse.

    Attributes:
        mouse_id: the mouse.
        enrolled: whether a MouseEnrolled was accepted.
        curriculum_name: curriculum the mouse is on.
        curriculum_version: version in force for the mouse.
        stage: stage of the mouse's next session.
        sessions_at_stage: finished sessions at ``stage`` in a row (0 after a decision that
            moved the mouse, until it runs a session).
        run_streak: sessions in a row at the stage the last session ran (``history[-1]``),
            whatever was decided after it: a trainer who runs that stage again continues the
            count (AIND's session_at_current_stage).
        session_total: finished sessions in all.
        history: metrics of the last MAX_SESSION_HISTORY finished sessions, oldest first.
        session_counts: sessions run in all, by stage then ``task_protocol`` (``""``: none);
            counters the rules read (``session_count(...)``: IBL's 40-session limits), kept
            whole however long the history.
        open_session: the session in progress, if any.
        last_closed_session_id: the session most recently judged.
        last_decision: the StageTransitioned for that session.
        last_assignment: the assignment in force.
        recent_event_ids: ids of recent non-trial events, to drop redeliveries.
        ejected: a trainer took the mouse out of training (MouseEjected): it gets no more
            assignments and new sessions are refused, until it is enrolled again.
        ejected_reason: the trainer's reason for the ejection (for refusal messages).
        adjustments: the trainer's per-mouse parameter adjustments in force
            (ParametersAdjusted), applied on top of every assignment at a stage that allows
            them.
        parked_sessions: other sessions in progress, besides ``open_session`` (a late rig's
            session draining from its outbox while the mouse runs on another rig); a trial or
            end of one of them makes it the ``open_session`` again.
        judged: recompute data of the newest judged sessions, parallel to the end of
            ``history`` (see :class:`JudgedSession`).
        enrolled_stage: the stage the mouse started on (its first assignment), where a
            recompute from its very first session starts.
        input_offsets: per input ``topic/partition``, the offset of the last message folded
            into this state. A message at or below it is a redelivery (the processor restarted
            before committing its offset) and is dropped, whatever its age.
        event_digests: digests of the content of the newest non-trial events, by event id
            (at most :data:`RECENT_IDS`): an id that comes again with other content is a
            reused id, refused, not a redelivery.
    """

    model_config = ConfigDict(frozen=True)

    mouse_id: str
    enrolled: bool = False
    curriculum_name: str | None = None
    curriculum_version: str | None = None
    stage: str | None = None
    sessions_at_stage: int = 0
    run_streak: int = 0
    session_total: int = 0
    history: tuple[SessionRecord, ...] = ()
    session_counts: dict[str, dict[str, int]] = Field(default_factory=dict)
    open_session: OpenSession | None = None
    last_closed_session_id: str | None = None
    last_decision: StageTransitioned | None = None
    last_assignment: AssignmentIssued | None = None
    recent_event_ids: tuple[str, ...] = ()
    ejected: bool = False
    ejected_reason: str = ""
    adjustments: Parameters = {}
    parked_sessions: tuple[OpenSession, ...] = ()
    judged: tuple[JudgedSession, ...] = ()
    enrolled_stage: str | None = None
    input_offsets: dict[str, int] = Field(default_factory=dict)
    event_digests: dict[str, str] = Field(default_factory=dict)

    def seen(self, event_id: str) -> bool:
        """Whether a non-trial event with this id was already folded in."""
        return event_id in self.recent_event_ids

    def remember(self, event_id: str) -> tuple[str, ...]:
        """The recent-id window with ``event_id`` added."""
        return (*self.recent_event_ids, event_id)[-RECENT_IDS:]

    def to_bytes(self) -> bytes:
        """Serialises the state (for the processor's changelog-backed table)."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> MouseState:
        """Reads a state written by :meth:`to_bytes`."""
        return cls.model_validate_json(data)


# -- the state as the processor stores it: a state record and an open-sessions record ----------

SESSION_FIELDS = ("open_session", "parked_sessions", "input_offsets")
"""The :class:`MouseState` fields a TrialCompleted can change (``evolve``: ``focus_session``
then ``_evolve_trial``; the processing step: the input offset); every other field changes
only with a non-trial event."""

_SESSIONS_MAGIC = b"SOS1"
"""First bytes of an open-sessions record (then zlib-compressed JSON)."""

_SESSIONS_LEVEL = 1
"""zlib level of open-sessions records: level 1 already halves them (per-trial strings and
reaction times), at a few tens of microseconds per trial."""


def record_digest(record: bytes) -> str:
    """The digest that ties an open-sessions record to the state record it extends."""
    # SHA-256 (hardware-accelerated on current CPUs: ~35 us for a 60 KB record), truncated to
    # 128 bits: a stale record passing for a current one is out of the question.
    return hashlib.sha256(record).hexdigest()[:32]


class OpenSessions(BaseModel):
    """The open-session fields of a :class:`MouseState`, stored apart from the rest.

    The processor stores a mouse's state as two records: the state record (the whole
    :class:`MouseState`, :meth:`MouseState.to_bytes`, written when anything but the open
    sessions changed) and this one (written after a trial, which changes only the open
    sessions). ``base`` is the :func:`record_digest` of the state record it was written on:
    it applies to that record only, so a state record written after it (a session end, a
    decision, a replay's hand-over) makes it stale by its own bytes, with no second write.

    Attributes:
        base: digest of the state record these open sessions extend.
        open_session: ``MouseState.open_session``.
        parked_sessions: ``MouseState.parked_sessions``.
        input_offsets: ``MouseState.input_offsets``.
    """

    model_config = ConfigDict(frozen=True)

    base: str
    open_session: OpenSession | None = None
    parked_sessions: tuple[OpenSession, ...] = ()
    input_offsets: dict[str, int] = Field(default_factory=dict)

    def to_bytes(self) -> bytes:
        """Serialises the record (a marker, then zlib-compressed JSON)."""
        return _SESSIONS_MAGIC + zlib.compress(self.model_dump_json().encode(), _SESSIONS_LEVEL)

    @classmethod
    def from_bytes(cls, data: bytes) -> OpenSessions:
        """Reads a record written by :meth:`to_bytes`.

        Raises:
            ValueError: when the bytes are no open-sessions record.
        """
        if not data.startswith(_SESSIONS_MAGIC):
            raise ValueError("not an open-sessions record")
        try:
            text = zlib.decompress(data[len(_SESSIONS_MAGIC) :])
        except zlib.error as exc:
            raise ValueError(f"corrupt open-sessions record: {exc}") from exc
        return cls.model_validate_json(text)


def split_sessions(state: MouseState, record: bytes) -> OpenSessions:
    """The open-session part of ``state``, to store on top of the state record ``record``
    (whose state must equal ``state`` outside :data:`SESSION_FIELDS`)."""
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
    """
    state = MouseState.from_bytes(record)
    if sessions is None:
        return state
    part = OpenSessions.from_bytes(sessions)
    if part.base != record_digest(record):
        return state
    return state.model_copy(
        update={
            "open_session": part.open_session,
            "parked_sessions": part.parked_sessions,
            "input_offsets": part.input_offsets or state.input_offsets,
        }
    )


def only_sessions_changed(before: MouseState, after: MouseState) -> bool:
    """Whether ``after`` differs from ``before`` at most in :data:`SESSION_FIELDS`."""
    empty: dict[str, object] = {"open_session": None, "parked_sessions": (), "input_offsets": {}}
    return before.model_copy(update=empty) == after.model_copy(update=empty)


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
        return None, split_sessions(after, record).to_bytes()
    return after.to_bytes(), None
