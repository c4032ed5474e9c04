"""The events the core emits: their deterministic ids, and the one place an AssignmentIssued is
built.

Every assignment (after an enrolment, a judged session, a recompute, a migration, or a
trainer's override, ejection or adjustment) comes from :func:`issue_assignment`, so they all
name their curriculum version, their parameters and their session number the same way. Pure
functions, no I/O; this module imports nothing else of the domain but the curriculum
interface, so every other module of the domain may import it.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from shaping.schemas.events import AssignmentIssued, AssignmentWelfare, Event, Parameters
from shaping.services.domain.curriculum import CurriculumEngine

_OUTPUT_NAMESPACE = uuid.UUID("5b1c1c62-3c52-4c8e-9a35-7f3f2d7a9e11")
"""Ids of what follows from a rig's or an enrolment's event (decisions, their assignments)."""

_TRAINER_NAMESPACE = uuid.UUID("8f0c7d36-2b8e-4f4e-9d5e-61c0a4b7e2d5")
"""Ids of a trainer's interventions' assignments and of warnings (a namespace of their own
since they were introduced: changing it would change ids already on the topics)."""


def derived_event_id(cause: Event, event_type: str) -> str:
    """Deterministic id of an event the core emits because of ``cause``.

    Processing the same input twice yields the same output ids, so downstream consumers
    deduplicate outputs of a re-processed input.
    """
    return str(uuid.uuid5(_OUTPUT_NAMESPACE, f"{cause.event_id}/{event_type}"))


def intervention_assignment_id(cause: Event) -> str:
    """Deterministic id of the assignment a trainer's override, ejection or adjustment issues."""
    return str(uuid.uuid5(_TRAINER_NAMESPACE, f"{cause.event_id}/AssignmentIssued"))


def warning_event_id(decision_id: str, index: int, kind: str) -> str:
    """Deterministic id of the ``index``-th warning (of ``kind``) a decision raises: a decision
    made again (a redelivered session end) raises the same warnings with the same ids."""
    return str(uuid.uuid5(_TRAINER_NAMESPACE, f"{decision_id}/{index}/{kind}"))


def issue_assignment(
    cause: Event,
    curriculum: CurriculumEngine,
    stage: str,
    *,
    reason: str,
    detail: str,
    sessions_at_stage: int,
    session_number: int,
    parameters: Parameters | None = None,
    event_id: str | None = None,
    issued_at: datetime | None = None,
    caused_by: str | None = None,
    supersedes: str | None = None,
) -> AssignmentIssued:
    """The assignment of ``stage`` of ``curriculum`` that ``cause`` leads to.

    Args:
        cause: the input event the assignment follows from (its mouse is the mouse assigned).
        curriculum: the curriculum version in force (named in the assignment).
        stage: the stage of the mouse's next session.
        reason: why (a decision, ``enrolled``, ``override``, ``migrated``...).
        detail: the reason in words, for a person.
        sessions_at_stage: sessions in a row at ``stage`` so far.
        session_number: the number the mouse's next session will have.
        parameters: the next session's parameters (default: the stage's own).
        event_id: the assignment's id (default: derived from ``cause``).
        issued_at: when it is issued (default: when ``cause`` occurred).
        caused_by: the id of the event that caused it (default: ``cause``'s; a decision's
            assignment names the decision).
        supersedes: the assignment this one replaces (a recompute's).
    """
    return AssignmentIssued(
        event_id=event_id or derived_event_id(cause, "AssignmentIssued"),
        mouse_id=cause.mouse_id,
        occurred_at=issued_at or cause.occurred_at,
        causation_id=caused_by or cause.event_id,
        stage=stage,
        parameters=curriculum.parameters(stage) if parameters is None else parameters,
        curriculum_name=curriculum.name,
        curriculum_version=curriculum.version,
        reason=reason,
        reason_detail=detail,
        sessions_at_stage=sessions_at_stage,
        session_number=session_number,
        supersedes=supersedes,
    )


def reissue_assignment(
    current: AssignmentIssued,
    cause: Event,
    *,
    reason: str,
    detail: str,
    welfare: AssignmentWelfare | None,
) -> AssignmentIssued:
    """``current`` issued again because of ``cause`` (the welfare gate's: a weighing, a
    release, a restriction started or ended): the same stage, parameters, adjustments and
    session number, with ``welfare``; a new id derived from ``cause``, dated and caused by it.
    The evidence, metrics and warnings stay with the decision's own assignment."""
    return AssignmentIssued(
        event_id=derived_event_id(cause, "AssignmentIssued"),
        mouse_id=current.mouse_id,
        occurred_at=cause.occurred_at,
        causation_id=cause.event_id,
        stage=current.stage,
        parameters=current.parameters,
        curriculum_name=current.curriculum_name,
        curriculum_version=current.curriculum_version,
        reason=reason,
        reason_detail=detail,
        sessions_at_stage=current.sessions_at_stage,
        session_number=current.session_number,
        adjustments=current.adjustments,
        welfare=welfare,
    )
