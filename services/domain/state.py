"""Per-mouse training state: a fold over the mouse's events."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from schemas.events import AssignmentIssued, StageTransitioned

RECENT_IDS = 64
"""How many recent non-trial event ids a state remembers to drop redelivered events."""

MAX_TRIAL_WINDOW = 1000
"""Most recent responded trials a state keeps; no rule may read a longer trial window."""

MAX_SESSION_HISTORY = 20
"""Finished sessions whose metrics a state keeps; no rule may read further back."""


class OpenSession(BaseModel):
    """The session a mouse is running now, with running counts."""

    model_config = ConfigDict(frozen=True)

    session_id: str
    stage: str
    rig_id: str | None = None
    last_trial_index: int = -1
    n_trials: int = 0
    n_correct: int = 0
    n_incorrect: int = 0
    n_miss: int = 0


class SessionRecord(BaseModel):
    """A finished session as the rules see it: the stage it ran and its session metrics.

    Attributes:
        session_id: the session.
        stage: the stage the session actually ran.
        metrics: every session metric's value (None: no value, e.g. NaN), computed ones first.
    """

    model_config = ConfigDict(frozen=True)

    session_id: str
    stage: str
    metrics: dict[str, float | None]


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
        recent_outcomes: outcomes of the last responded trials, oldest first, as a string of
            ``1`` (correct) and ``0`` (incorrect); at most MAX_TRIAL_WINDOW long. A string keeps
            the state small in the changelog.
        open_session: the session in progress, if any.
        last_closed_session_id: the session most recently judged.
        last_decision: the StageTransitioned for that session.
        last_assignment: the assignment in force.
        recent_event_ids: ids of recent non-trial events, to drop redeliveries.
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
    recent_outcomes: str = ""
    open_session: OpenSession | None = None
    last_closed_session_id: str | None = None
    last_decision: StageTransitioned | None = None
    last_assignment: AssignmentIssued | None = None
    recent_event_ids: tuple[str, ...] = ()

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
