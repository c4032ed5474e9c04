"""Per-mouse training state: a fold over the mouse's events."""

from __future__ import annotations

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

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    model_config = ConfigDict(frozen=True, extra="forbid")

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

    model_config = ConfigDict(frozen=True, extra="forbid")

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


WEIGHTS_KEPT = 14
"""Weights a state keeps (the newest last): enough for the last one, a jump check and a trend."""

WATER_WINDOW_HOURS = 48
"""Water entries a state keeps: those within this many hours of the newest one, so that
today's water (and yesterday's, in any lab's time zone) is always there."""

WATER_KEPT = 64
"""At most this many water entries are kept, whatever their times."""


class WeightEntry(BaseModel):
    """A weight the mouse's state keeps: when (the log's time) and how many grams."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    grams: float


class WaterEntry(BaseModel):
    """Water the mouse's state keeps: when, how much, how (earned, supplement, free_access)
    and what (water, sucrose, ...)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    ml: float
    kind: str
    water_type: str = "water"


class Restriction(BaseModel):
    """The water restriction in force: its reference weight, how it was set, the implant's
    weight, and the birth date and sex a growth-curve policy reads."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    started_at: datetime
    reference_grams: float
    reference_method: str
    implant_grams: float = 0.0
    birth_date: str | None = None
    sex: str | None = None


class Hold(BaseModel):
    """A hold in force (the newest AssignmentHeld): when (the log's time), why in words, and
    the event that held the mouse."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: datetime
    reason: str
    event_id: str


class Husbandry(BaseModel):
    """The compact husbandry part of a mouse's state (``services/domain/husbandry.py`` folds
    it): the newest weights (at most :data:`WEIGHTS_KEPT`), the newest water
    (:data:`WATER_WINDOW_HOURS`, at most :data:`WATER_KEPT`), the restriction in force and the
    hold in force (``services/domain/gating.py``: until a weight above the minimum, a
    trainer's release or the end of the restriction)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weights: tuple[WeightEntry, ...] = ()
    water: tuple[WaterEntry, ...] = ()
    restriction: Restriction | None = None
    hold: Hold | None = None


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
        allowed_rigs: the rigs the mouse may train on (the newest RigsAllowed); its rig facts
            from any other rig are refused. Empty: no restriction (a mouse never given a list,
            and every state stored before the list existed).
        husbandry: its weights, water and water restriction (:class:`Husbandry`; empty in
            every state stored before husbandry was recorded, which needs no new store format).
    """

    # Unknown fields are refused here and in every model a state holds: the processor stores
    # states (services/processor/state_store.py), and a field renamed by another version must
    # fail to load rather than come back as its default.
    model_config = ConfigDict(frozen=True, extra="forbid")

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
    allowed_rigs: tuple[str, ...] = ()
    husbandry: Husbandry = Field(default_factory=Husbandry)

    def seen(self, event_id: str) -> bool:
        """Whether a non-trial event with this id was already folded in."""
        return event_id in self.recent_event_ids

    def remember(self, event_id: str) -> tuple[str, ...]:
        """The recent-id window with ``event_id`` added."""
        return (*self.recent_event_ids, event_id)[-RECENT_IDS:]


# -- what a trial changes ------------------------------------------------------------------------

SESSION_FIELDS = ("open_session", "parked_sessions", "input_offsets")
"""The :class:`MouseState` fields a TrialCompleted can change (``evolve``: ``focus_session``
then ``_evolve_trial``; the processing step: the input offset); every other field changes
only with a non-trial event. The processor's store keeps them in a record of their own
(``services/processor/state_store.py``), so that a trial does not rewrite the whole state."""


def only_sessions_changed(before: MouseState, after: MouseState) -> bool:
    """Whether ``after`` differs from ``before`` at most in :data:`SESSION_FIELDS`."""
    empty: dict[str, object] = {"open_session": None, "parked_sessions": (), "input_offsets": {}}
    return before.model_copy(update=empty) == after.model_copy(update=empty)
