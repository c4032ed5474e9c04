"""Recording a session: its events with deterministic ids (:func:`session_event_id`,
:class:`SessionRecorder`) and what a display shows after each trial (:class:`TrialProgress`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from shaping.rig.config import Side
from shaping.rig.task.adaptation import TaskState
from shaping.rig.task.clock import Clock, to_datetime
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MovementDetected,
    ParamValue,
    SessionEnded,
    SessionStarted,
    TrialCompleted,
)

Outcome = Literal["correct", "incorrect", "miss"]
Phase = Literal["iti", "trial", "outcome"]

_EVENT_NAMESPACE = uuid.UUID("8a4f5b0e-3f4b-4f53-9d5e-6c0b7a1d2e91")


def session_event_id(session_id: str, *parts: object) -> str:
    """Deterministic id of a session's event: re-recording it after a crash gives the same id,
    so the outbox keeps one copy."""
    return str(uuid.uuid5(_EVENT_NAMESPACE, "/".join([session_id, *map(str, parts)])))


class SessionRecorder:
    """Builds a session's events and hands each to ``sink`` as it happens.

    Args:
        sink: receives every event, in order (the agent's outbox).
        clock: the task's clock (events are stamped with its time).
        mouse_id, rig_id, session_id: the envelope.
    """

    def __init__(
        self,
        sink: Callable[[Event], None],
        clock: Clock,
        mouse_id: str,
        rig_id: str,
        session_id: str,
    ) -> None:
        self.sink = sink
        self.clock = clock
        self.envelope = {"mouse_id": mouse_id, "rig_id": rig_id, "session_id": session_id}
        self.session_id = session_id

    def started(
        self, assignment: AssignmentIssued, parameters: Mapping[str, ParamValue]
    ) -> SessionStarted:
        """Records the session's start with its full parameter set."""
        event = SessionStarted(
            event_id=session_event_id(self.session_id, "started"),
            occurred_at=to_datetime(self.clock.now()),
            causation_id=assignment.event_id,
            stage=assignment.stage,
            curriculum_name=assignment.curriculum_name,
            curriculum_version=assignment.curriculum_version,
            parameters=dict(parameters),
            assignment_id=assignment.event_id,
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event

    def movement(
        self,
        movement: Literal["paw_lift", "spout_touch"],
        side: Side,
        phase: Phase,
        trial_index: int,
        sequence: int,
        at: float,
        restarted_iti: bool,
    ) -> None:
        """Records a paw lift or spout touch outside the response."""
        self.sink(
            MovementDetected(
                event_id=session_event_id(self.session_id, "movement", trial_index, sequence),
                occurred_at=to_datetime(at),
                movement=movement,
                side=side,
                phase=phase,
                trial_index=trial_index,
                restarted_iti=restarted_iti,
                **self.envelope,  # type: ignore[arg-type]
            )
        )

    def trial(
        self,
        trial_index: int,
        outcome: Outcome,
        target: Side,
        response: Side | None,
        reaction_time_s: float | None,
        reward_volume_ul: float,
        correction_trial: bool,
        trial_parameters: dict[str, ParamValue],
    ) -> TrialCompleted:
        """Records a finished trial."""
        event = TrialCompleted(
            event_id=session_event_id(self.session_id, "trial", trial_index),
            occurred_at=to_datetime(self.clock.now()),
            trial_index=trial_index,
            outcome=outcome,
            target_side=target,
            response_side=response,
            reaction_time_s=None if reaction_time_s is None else round(reaction_time_s, 4),
            reward_volume_ul=round(reward_volume_ul, 4),
            correction_trial=correction_trial,
            trial_parameters=trial_parameters,
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event

    def ended(
        self,
        n_trials: int,
        end_reason: str,
        duration_s: float,
        metrics: Mapping[str, float | None] | None = None,
    ) -> SessionEnded:
        """Records the end of the session, with the session metrics the rig reports."""
        event = SessionEnded(
            event_id=session_event_id(self.session_id, "ended"),
            occurred_at=to_datetime(self.clock.now()),
            n_trials=n_trials,
            end_reason=end_reason,
            duration_s=round(max(0.0, duration_s), 3),
            metrics=dict(metrics or {}),
            **self.envelope,  # type: ignore[arg-type]
        )
        self.sink(event)
        return event


@dataclass(frozen=True)
class TrialProgress:
    """What a display shows after each trial."""

    state: TaskState
    trial: TrialCompleted
    time_left_s: float
