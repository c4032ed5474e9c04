"""The whole training engine: ``evolve`` folds an event into a mouse's state; ``decide`` says
which events follow from an event. Pure functions, no I/O: the stream processor, the embedded
runner, replay and simulation all call these, so they cannot disagree.

Both dispatch on the event's type through a table (:data:`_FOLDS`, :data:`_DECISIONS`; the
interventions' entries come from :mod:`shaping.services.domain.interventions`). A session is
judged by :func:`shaping.services.domain.judge.judge_session`, here as it ends and in
:mod:`shaping.services.domain.recompute` when a late session makes later ones be judged again;
a stage with rules marked ``evaluate: trial`` is also judged after every trial of its session
(:func:`shaping.services.domain.judge.judge_during_session`), and a session judged so is not
judged again at its end.
The curricula are an input: ``decide`` reads the catalog it is given and never changes it; a
CurriculumPublished yields the compiled version (:func:`publication`) for the caller to add.

Delivery is at least once, so both functions are idempotent on redelivered events: trials are
deduplicated by their index in the session, other events by event_id. A redelivered
SessionEnded makes ``decide`` return the same decision events again (same ids), so a decision
lost between a state write and a publish is sent again and consumers drop the copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from shaping.schemas.events import (
    RIG_EVENTS,
    AssignmentIssued,
    CurriculumPublished,
    Event,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    Parameters,
    ParametersAdjusted,
    RigsAllowed,
    SessionEnded,
    SessionStarted,
    StageOverridden,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.domain.curriculum import (
    CurriculumCatalog,
    CurriculumEngine,
    evaluates_after_trials,
)
from shaping.services.domain.errors import CurriculumError, ImpossibleEvent
from shaping.services.domain.frozen import replaced
from shaping.services.domain.gating import WelfareGate, concerns_gate, gate_outputs
from shaping.services.domain.husbandry import FOLDS as HUSBANDRY_FOLDS
from shaping.services.domain.husbandry import HUSBANDRY, decide_husbandry, with_earned_water
from shaping.services.domain.interventions import DECISIONS as INTERVENTION_DECISIONS
from shaping.services.domain.interventions import FOLDS as INTERVENTION_FOLDS
from shaping.services.domain.interventions import (
    check_rig,
    decide_rigs_allowed,
    ejected_refusal,
    fold_rigs_allowed,
    with_adjustments,
)
from shaping.services.domain.judge import (
    decided_during,
    decision_outputs,
    describe_decision,
    judge_during_session,
    judge_session,
    next_parameters,
    session_so_far,
)
from shaping.services.domain.metrics import (
    append_record,
    count_session,
    rename_stage,
    session_record,
)
from shaping.services.domain.outputs import derived_event_id, issue_assignment
from shaping.services.domain.recompute import (
    append_judged,
    check_recomputable,
    closed,
    counted,
    focus_session,
    fold_decision,
    insert_late,
    is_late,
    is_open,
    judged_entry,
    judged_index,
    recompute,
    session_date_of,
    start_key,
    start_session,
    was_judged,
)
from shaping.services.domain.session_stats import TrialFacts
from shaping.services.domain.state import MouseState, OpenSession

__all__ = ["TrainingCore", "derived_event_id", "evolve", "fold", "initial_state", "publication"]

H = TypeVar("H")


def _handler(table: Mapping[type[Event], H], kind: type[Event]) -> H | None:
    """The handler of an event type in a dispatch table (the nearest class of its MRO that
    has one, as ``isinstance`` would find it), or None."""
    handler = table.get(kind)
    if handler is not None:
        return handler
    for base in kind.__mro__[1:]:
        handler = table.get(base)
        if handler is not None:
            return handler
    return None


def initial_state(mouse_id: str) -> MouseState:
    """State of a mouse before any event."""
    return MouseState(mouse_id=mouse_id)


# -- evolve: folding one event into the state, by event type ----------------------------------

Fold = Callable[[MouseState, Any, tuple[str, ...]], MouseState]
"""Folds an event of one type, given the state, the event and the recent-id window with the
event's id in it."""


def _fold_enrolled(state: MouseState, event: MouseEnrolled, ids: tuple[str, ...]) -> MouseState:
    return state.model_copy(
        update={
            "enrolled": True,
            "curriculum_name": event.curriculum_name,
            "curriculum_version": event.curriculum_version,
            # A re-enrolment after an ejection starts over, without the adjustments.
            "ejected": False,
            "ejected_reason": "",
            "adjustments": {},
            "recent_event_ids": ids,
        }
    )


def _fold_assignment(
    state: MouseState, event: AssignmentIssued, ids: tuple[str, ...]
) -> MouseState:
    if state.husbandry.hold is not None and (
        event.welfare is None or event.welfare.held_reason is None
    ):
        # An assignment that is not held ends the hold (a weight above the minimum, a release,
        # the end of the restriction: services/domain/gating.py).
        state = state.model_copy(
            update={"husbandry": state.husbandry.model_copy(update={"hold": None})}
        )
    return state.model_copy(
        update={
            "stage": event.stage,
            "curriculum_name": event.curriculum_name,
            "curriculum_version": event.curriculum_version,
            "last_assignment": event,
            "recent_event_ids": ids,
            **({"enrolled_stage": event.stage} if event.reason == "enrolled" else {}),
        }
    )


def _fold_session_start(
    state: MouseState, event: SessionStarted, ids: tuple[str, ...]
) -> MouseState:
    return start_session(state, _open_session(event), ids)


def _fold_session_end(state: MouseState, event: SessionEnded, ids: tuple[str, ...]) -> MouseState:
    state = with_earned_water(state, event)  # the water its rewards delivered, in any case
    session = state.open_session
    if session is None or session.session_id != event.session_id:
        return state.model_copy(update={"recent_event_ids": ids})
    if decided_during(state, session):
        return _fold_decided_end(state, session, event, ids)
    # Sessions in a row at the stage actually run: a session at another stage than the one
    # before (a decision that moved the mouse, or a trainer's override) restarts the count
    # at 1; a trainer who runs the previous stage again continues it (AIND's
    # session_at_current_stage).
    last_stage = state.history[-1].stage if state.history else None
    streak = state.run_streak + 1 if session.stage == last_stage else 1
    record = session_record(session, event.metrics, event.duration_s)
    entry = judged_entry(state, session, event)
    if is_late(state, entry.order_key):
        counts = counted(state.session_counts, record, 1)
        return insert_late(state, record, entry, ids, counts)
    return state.model_copy(
        update={
            **closed(state, session.session_id),
            "judged": append_judged(state, entry),
            "stage": session.stage,
            "sessions_at_stage": streak,
            "run_streak": streak,
            "session_total": state.session_total + 1,
            "history": append_record(state.history, record),
            "session_counts": count_session(state.session_counts, record),
            "last_closed_session_id": session.session_id,
            "recent_event_ids": ids,
        }
    )


def _fold_decided_end(
    state: MouseState, session: OpenSession, event: SessionEnded, ids: tuple[str, ...]
) -> MouseState:
    """The end of a session judged during it (after a trial, by an ``evaluate: trial`` rule):
    it is recorded at the stage it started at and judged by that decision, as if the decision
    had come at its end; the mouse stays where the decision sent it (or where a trainer put it
    since), and nothing is judged again."""
    decision = state.last_decision
    assert decision is not None
    record = session_record(session, event.metrics, event.duration_s)
    # The operator stage is what it was when the session ran, before the decision moved it.
    entry = judged_entry(state.model_copy(update={"stage": decision.from_stage}), session, event)
    entry = entry.model_copy(
        update={
            "decision_id": decision.event_id,
            "stage": decision.from_stage,
            "to_stage": decision.to_stage,
            "decision": decision.decision,
            "sessions_at_stage": decision.sessions_at_stage,
            "session_total": decision.session_total,
            "curriculum_version": decision.curriculum_version,
        }
    )
    return state.model_copy(
        update={
            **closed(state, session.session_id),
            "judged": append_judged(state, entry),
            "run_streak": decision.sessions_at_stage,
            "session_total": state.session_total + 1,
            "history": append_record(state.history, record),
            "session_counts": count_session(state.session_counts, record),
            "last_closed_session_id": session.session_id,
            "recent_event_ids": ids,
        }
    )


def _fold_migrated(state: MouseState, event: MouseMigrated, ids: tuple[str, ...]) -> MouseState:
    # A renamed stage is the same stage for the mouse: its run of sessions continues.
    history = tuple(
        r.model_copy(update={"stage": event.to_stage}) if r.stage == event.from_stage else r
        for r in state.history
    )
    return state.model_copy(
        update={
            "curriculum_version": event.to_version,
            "stage": event.to_stage,
            "history": history,
            "session_counts": rename_stage(state.session_counts, event.from_stage, event.to_stage),
            "recent_event_ids": ids,
        }
    )


_FOLDS: dict[type[Event], Fold] = {
    MouseEnrolled: _fold_enrolled,
    AssignmentIssued: _fold_assignment,
    SessionStarted: _fold_session_start,
    SessionEnded: _fold_session_end,
    MouseMigrated: _fold_migrated,
    StageTransitioned: fold_decision,
    RigsAllowed: fold_rigs_allowed,
    **INTERVENTION_FOLDS,
    **HUSBANDRY_FOLDS,
}
"""How each event type the state remembers by id is folded; any other type only enters the
recent-id window (trials are folded by :func:`_evolve_trial`, deduplicated by index)."""


def evolve(state: MouseState, event: Event) -> MouseState:
    """Folds one event into the mouse's state (never raises on a valid event; redeliveries are
    no-ops)."""
    if isinstance(event, TrialCompleted | SessionEnded):
        # Sessions in progress are kept by id: a late rig's session may drain from its outbox
        # while the mouse runs on another rig (see services.domain.recompute).
        state = focus_session(state, event.session_id)
        if isinstance(event, TrialCompleted):  # deduplicated by its index, not its id
            return _evolve_trial(state, event)
    if state.seen(event.event_id):
        return state
    ids = state.remember(event.event_id)
    fold_one = _handler(_FOLDS, type(event))
    if fold_one is None:
        return state.model_copy(update={"recent_event_ids": ids})
    return fold_one(state, event, ids)


def _open_session(event: SessionStarted) -> OpenSession:
    """The session a SessionStarted opens, with the facts metrics read from its parameters."""
    parameters = event.parameters
    protocol = parameters.get("task_protocol")
    delay = parameters.get("session_start_delay_s")
    return OpenSession(
        session_id=event.session_id or "",
        stage=event.stage,
        rig_id=event.rig_id,
        session_date=event.effective_date,
        started_at=event.occurred_at,
        task_protocol=protocol if isinstance(protocol, str) else None,
        ephys_rig=parameters.get("ephys_rig") is True,
        start_delay_s=(
            float(delay) if isinstance(delay, int | float) and not isinstance(delay, bool) else None
        ),
    )


def _evolve_trial(state: MouseState, trial: TrialCompleted) -> MouseState:
    """Adds a trial to its session's statistics (a redelivered or stale trial is a no-op)."""
    session = state.open_session
    if (
        session is None
        or session.session_id != trial.session_id
        or trial.trial_index <= session.last_trial_index
    ):
        return state
    session = replaced(
        session, {"last_trial_index": trial.trial_index, "stats": session.stats.add(trial)}
    )
    return replaced(state, {"open_session": session})


def _trials_fold_quietly(
    catalog: CurriculumCatalog, state: MouseState, trials: Sequence[TrialFacts]
) -> bool:
    """Whether handling ``trials`` one by one would only add them to the open session's
    statistics, with no output: every one is a new trial of the session in progress (indexes
    rising past the last one counted), from one rig the mouse may train on, and no rule reads
    the session after a trial (its stage has no ``evaluate: trial`` rule, the session was
    judged already, the mouse was moved or ejected since it started). None of these change
    while trials fold, so the answer holds for the whole run."""
    session = state.open_session
    if session is None:
        return False
    last = session.last_trial_index
    rig = trials[0].rig_id
    for trial in trials:
        if trial.session_id != session.session_id or trial.trial_index <= last:
            return False
        if trial.rig_id != rig:
            return False
        last = trial.trial_index
    if state.allowed_rigs and rig not in state.allowed_rigs:
        return False  # refused one by one (check_rig), with the trial named
    if state.ejected or decided_during(state, session) or state.stage != session.stage:
        return True
    if state.curriculum_name is None:
        return True
    try:
        curriculum = _curriculum_of(catalog, state)
    except ImpossibleEvent:
        return True
    return not evaluates_after_trials(curriculum, session.stage)


def fold(state: MouseState, events: Iterable[Event]) -> MouseState:
    """Folds events in order."""
    for event in events:
        state = evolve(state, event)
    return state


# -- decide: what follows from an event, by event type -----------------------------------------

Decide = Callable[[CurriculumCatalog, MouseState, Any], list[Event]]
"""What follows from an event of one type, given the curricula known and the mouse's state;
raises ImpossibleEvent."""


def _curriculum(catalog: CurriculumCatalog, name: str, version: str | None) -> CurriculumEngine:
    """A curriculum version of the catalog (the newest when ``version`` is None).

    Raises:
        ImpossibleEvent: when the catalog does not know it.
    """
    try:
        return catalog.get(name, version)
    except CurriculumError as exc:
        raise ImpossibleEvent(str(exc)) from exc


def _curriculum_of(catalog: CurriculumCatalog, state: MouseState) -> CurriculumEngine:
    """The curriculum version in force for an enrolled mouse."""
    if state.curriculum_name is None:
        raise ImpossibleEvent(f"mouse {state.mouse_id!r} is not enrolled")
    return _curriculum(catalog, state.curriculum_name, state.curriculum_version)


def _decide_enrolled(
    catalog: CurriculumCatalog, state: MouseState, event: MouseEnrolled
) -> list[Event]:
    if state.seen(event.event_id):
        return []
    if state.enrolled and not state.ejected:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is already enrolled on {state.curriculum_name!r}"
        )
    curriculum = _curriculum(catalog, event.curriculum_name, event.curriculum_version)
    stage = event.start_stage or curriculum.first_stage
    if not curriculum.has_stage(stage):
        raise ImpossibleEvent(f"curriculum {curriculum.name!r} has no stage {stage!r}")
    detail = ("Enrolled again after an ejection" if state.ejected else "Enrolled") + (
        f" on {curriculum.name} {curriculum.version}; starts at {stage}."
    )
    return [
        issue_assignment(
            event,
            curriculum,
            stage,
            reason="enrolled",
            detail=detail,
            sessions_at_stage=0,
            session_number=state.session_total + 1,
        )
    ]


def _decide_session_start(
    catalog: CurriculumCatalog, state: MouseState, event: SessionStarted
) -> list[Event]:
    if not state.enrolled:
        raise ImpossibleEvent(f"session for mouse {event.mouse_id!r}, which is not enrolled")
    if not event.session_id:
        raise ImpossibleEvent("SessionStarted without a session_id")
    if state.seen(event.event_id):
        return []
    if state.ejected:
        raise ejected_refusal(state, f"session {event.session_id!r}")
    if was_judged(state, event.session_id):
        raise ImpossibleEvent(f"session {event.session_id!r} already ended")
    curriculum = _curriculum_of(catalog, state)
    if is_late(state, start_key(event)):
        check_recomputable(state, start_key(event), event.session_id, curriculum)
    if not curriculum.has_stage(event.stage):
        raise ImpossibleEvent(
            f"session runs stage {event.stage!r}, which {curriculum.name} "
            f"{curriculum.version} does not have"
        )
    return []


def _decide_trial(
    catalog: CurriculumCatalog, state: MouseState, event: TrialCompleted
) -> list[Event]:
    if is_open(state, event.session_id):
        return _decide_during_session(catalog, state, event)
    if was_judged(state, event.session_id):
        raise ImpossibleEvent(f"trial for session {event.session_id!r}, which already ended")
    if state.ejected:
        raise ejected_refusal(state, f"trial of session {event.session_id!r}")
    raise ImpossibleEvent(f"trial for session {event.session_id!r}, which never started")


def _decide_during_session(
    catalog: CurriculumCatalog, state: MouseState, trial: TrialCompleted
) -> list[Event]:
    """A trial of the session in progress: when its stage has rules evaluated after every
    trial (``evaluate: trial``) and one holds on the metrics so far, the decision and the next
    assignment, now (see :func:`shaping.services.domain.judge.judge_during_session`).

    Nothing is decided for a parked session, a late one, a mouse ejected or moved by a trainer
    since the session started, or a session already judged during it (once per session: the
    session goes on at the new stage and is not judged again at its end). A redelivered trial
    that led to a decision sends the same decision again (same ids), as a redelivered
    SessionEnded does.
    """
    session = state.open_session
    if session is None or session.session_id != trial.session_id or state.ejected:
        return []
    if trial.trial_index <= session.last_trial_index:
        decision = state.last_decision
        if decision is None or decision.causation_id != trial.event_id:
            return []
        assignment = state.last_assignment
        if assignment is not None and assignment.causation_id == decision.event_id:
            return [decision, assignment]
        return [decision]
    if decided_during(state, session) or state.stage != session.stage:
        return []
    if state.curriculum_name is None:
        return []
    try:
        curriculum = _curriculum_of(catalog, state)
    except ImpossibleEvent:
        return []  # a trial is never refused for what its session's end would find
    if not evaluates_after_trials(curriculum, session.stage):
        return []
    session_date = session_date_of(session, trial.occurred_at)
    if is_late(state, (session_date, session.started_at or trial.occurred_at, session.session_id)):
        return []  # a late session is judged at its end, by a recompute
    after = _evolve_trial(state, trial)
    running = after.open_session
    assert running is not None
    view = session_so_far(after, running)
    judged = judge_during_session(
        view,
        running,
        curriculum,
        trial,
        decision_id=derived_event_id(trial, "StageTransitioned"),
        session_date=session_date,
    )
    if judged is None:
        return []
    evaluation, transition = judged
    assignment = issue_assignment(
        trial,
        curriculum,
        evaluation.to_stage,
        parameters=next_parameters(evaluation, curriculum),
        reason=evaluation.decision,
        detail=describe_decision(evaluation, after_trial=running.n_trials),
        sessions_at_stage=0,
        session_number=view.session_total + 1,
        caused_by=transition.event_id,
    )
    outputs = decision_outputs(state, trial, transition, assignment, evaluation, curriculum)
    issued = outputs[-1]
    assert isinstance(issued, AssignmentIssued)
    # It names the session in progress, which is how a rig tells it applies now (at its next
    # trial boundary), not at the next session; a restricted mouse's welfare stays as the
    # session's own assignment had it (the welfare gate updates it with the next weighing).
    welfare = state.last_assignment.welfare if state.last_assignment is not None else None
    outputs[-1] = issued.model_copy(update={"session_id": session.session_id, "welfare": welfare})
    return outputs


def _running_parameters(state: MouseState, session: OpenSession) -> Parameters | None:
    """The parameters the judged session ran with, when they came from the assignment in
    force for its stage (in-stage policies continue from them)."""
    last = state.last_assignment
    if last is None or last.stage != session.stage:
        return None
    return last.parameters


def _decide_session_end(
    catalog: CurriculumCatalog, state: MouseState, event: SessionEnded
) -> list[Event]:
    if state.ejected:
        session = state.open_session
        if event.session_id is not None and event.session_id in (
            state.last_closed_session_id,
            session.session_id if session is not None else None,
        ):
            return []  # the session in progress at the ejection ends; it is not judged
        raise ejected_refusal(state, f"end of session {event.session_id!r}")
    judged_at = judged_index(state, event.session_id)
    if judged_at is not None and state.judged[judged_at].ended_event_id != event.event_id:
        # Another end of a session that already ended (a rig that re-sent a session under
        # new ids, say): never a redelivery, which carries the same id.
        raise ImpossibleEvent(
            f"session {event.session_id!r} already ended (SessionEnded "
            f"{state.judged[judged_at].ended_event_id}); a second end is refused"
        )
    if event.session_id is not None and event.session_id == state.last_closed_session_id:
        # Redelivered end of the last session: send the same decision again (same ids).
        return [e for e in (state.last_decision, state.last_assignment) if e is not None]
    if judged_at is not None:
        # Redelivered end of a session judged late (by a recompute): its decisions were
        # published before the state that records them was stored; nothing to send again.
        return []
    state = focus_session(state, event.session_id)
    session = state.open_session
    if session is None or session.session_id != event.session_id:
        raise ImpossibleEvent(f"end of session {event.session_id!r}, which never started")
    if decided_during(state, session):
        return []  # judged during the session (evaluate: trial): never judged twice
    curriculum = _curriculum_of(catalog, state)
    entry = judged_entry(state, session, event)
    if is_late(state, entry.order_key):
        return _decide_late_end(catalog, state, event, session, curriculum)
    after = evolve(state, event)
    evaluation, transition = judge_session(
        after,
        entry,
        session.stage,
        curriculum,
        event,
        decision_id=derived_event_id(event, "StageTransitioned"),
        rig_id=event.rig_id,
        occurred_at=event.occurred_at,
        running=_running_parameters(state, session),
    )
    moved = evaluation.to_stage != evaluation.from_stage
    assignment = issue_assignment(
        event,
        curriculum,
        evaluation.to_stage,
        parameters=next_parameters(evaluation, curriculum),
        reason=evaluation.decision,
        detail=describe_decision(evaluation),
        sessions_at_stage=0 if moved else after.sessions_at_stage,
        session_number=after.session_total + 1,
        caused_by=transition.event_id,
    )
    return decision_outputs(state, event, transition, assignment, evaluation, curriculum)


def _decide_late_end(
    catalog: CurriculumCatalog,
    state: MouseState,
    event: SessionEnded,
    session: OpenSession,
    curriculum: CurriculumEngine,
) -> list[Event]:
    """The end of a late session: the mouse is recomputed from it (see
    :mod:`shaping.services.domain.recompute`).

    Raises:
        ImpossibleEvent: when the sessions to judge again are no longer kept, or a
            recomputed stage does not exist in a session's curriculum version.
    """
    entry = judged_entry(state, session, event)
    check_recomputable(
        state, entry.order_key, entry.session_id, curriculum, session.stats.n_responded
    )
    return recompute(state, evolve(state, event), event, catalog)


def _decide_migrated(
    catalog: CurriculumCatalog, state: MouseState, event: MouseMigrated
) -> list[Event]:
    if state.ejected and not state.seen(event.event_id):
        raise ejected_refusal(state, "MouseMigrated")
    if state.seen(event.event_id):
        return []
    if not state.enrolled:
        raise ImpossibleEvent(f"mouse {event.mouse_id!r} is not enrolled")
    if state.curriculum_name != event.curriculum_name:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is on {state.curriculum_name!r}, not "
            f"{event.curriculum_name!r}"
        )
    if state.curriculum_version != event.from_version:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is on version {state.curriculum_version}, not "
            f"{event.from_version}"
        )
    if state.stage != event.from_stage:
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is at {state.stage!r} now, not {event.from_stage!r}: "
            f"plan the migration again"
        )
    curriculum = _curriculum(catalog, event.curriculum_name, event.to_version)
    if not curriculum.has_stage(event.to_stage):
        raise ImpossibleEvent(
            f"{curriculum.name} {curriculum.version} has no stage {event.to_stage!r}"
        )
    session = state.open_session
    renamed = event.to_stage != event.from_stage
    # Same stage names (a patch or minor version): the session in progress is judged by
    # the new version when it ends. A renaming waits for the session to end.
    if session is not None and (renamed or not curriculum.has_stage(session.stage)):
        raise ImpossibleEvent(
            f"mouse {event.mouse_id!r} is in session {session.session_id!r} at a stage "
            f"{event.to_version} renames; migrate between sessions"
        )
    known_hash = getattr(curriculum, "content_hash", None)
    if event.content_hash and known_hash is not None and known_hash != event.content_hash:
        raise ImpossibleEvent(
            f"the processor's {curriculum.name} {curriculum.version} differs from the one "
            f"the migration was planned with ({event.content_hash})"
        )
    assignment = issue_assignment(
        event,
        curriculum,
        event.to_stage,
        reason="migrated",
        detail=f"Migrated from {event.from_version} ({event.from_stage}) to "
        f"{event.to_version} ({event.to_stage})"
        + (f"; {event.reason}" if event.reason else "")
        + (" (stage renamed)" if renamed else ""),
        sessions_at_stage=state.sessions_at_stage,
        session_number=state.session_total + 1,
    )
    return [with_adjustments(assignment, state, curriculum)]  # the trainer's stay on


def _decide_intervention(
    catalog: CurriculumCatalog,
    state: MouseState,
    event: StageOverridden | MouseEjected | ParametersAdjusted,
) -> list[Event]:
    """A trainer's override, ejection or adjustment (see services.domain.interventions)."""
    if state.seen(event.event_id):
        return []
    if not state.enrolled:
        raise ImpossibleEvent(f"mouse {event.mouse_id!r} is not enrolled")
    decide_one = _handler(INTERVENTION_DECISIONS, type(event))
    assert decide_one is not None, "every intervention has a decision"
    return decide_one(state, event, _curriculum_of(catalog, state))


def _decide_rigs_allowed(
    catalog: CurriculumCatalog, state: MouseState, event: RigsAllowed
) -> list[Event]:
    """An operator's list of the rigs the mouse may train on (see services.domain.interventions)."""
    return decide_rigs_allowed(state, event)


def _decide_husbandry(catalog: CurriculumCatalog, state: MouseState, event: Event) -> list[Event]:
    """A weight, water, a restriction or a note (see services.domain.husbandry)."""
    return decide_husbandry(state, event)


def _decide_published(
    catalog: CurriculumCatalog, state: MouseState, event: CurriculumPublished
) -> list[Event]:
    publication(catalog, event)  # checked; it concerns no mouse
    return []


def publication(catalog: CurriculumCatalog, event: CurriculumPublished) -> CurriculumEngine | None:
    """The version a CurriculumPublished adds to ``catalog``, compiled; None when the catalog
    already has it. The catalog is not changed: adding the version is the caller's (the
    catalog is a fold over the published versions, in log order).

    Raises:
        ImpossibleEvent: when the content cannot be compiled, does not match its hash, or
            the catalog holds this version with other content.
    """
    digest = "sha256:" + hashlib.sha256(event.content.encode("utf-8")).hexdigest()
    if digest != event.content_hash:
        raise ImpossibleEvent(
            f"published content does not match its content_hash ({event.content_hash})"
        )
    if catalog.has(event.curriculum_name, event.curriculum_version):
        known = catalog.get(event.curriculum_name, event.curriculum_version)
        known_hash = getattr(known, "content_hash", None)
        if known_hash is not None and known_hash != event.content_hash:
            raise ImpossibleEvent(
                f"{event.curriculum_name} {event.curriculum_version} is already known with "
                f"other content ({known_hash}); publish a new version instead"
            )
        return None
    if catalog.compiler is None:
        raise ImpossibleEvent("this processor cannot add published curricula (no compiler)")
    try:
        engine = catalog.compiler(event.content)
    except CurriculumError as exc:
        raise ImpossibleEvent(f"published curriculum is invalid: {exc}") from exc
    if (engine.name, engine.version) != (event.curriculum_name, event.curriculum_version):
        raise ImpossibleEvent(
            f"content is {engine.name} {engine.version}, not {event.curriculum_name} "
            f"{event.curriculum_version}"
        )
    return engine


_DECISIONS: dict[type[Event], Decide] = {
    MouseEnrolled: _decide_enrolled,
    SessionStarted: _decide_session_start,
    TrialCompleted: _decide_trial,
    SessionEnded: _decide_session_end,
    MouseMigrated: _decide_migrated,
    CurriculumPublished: _decide_published,
    RigsAllowed: _decide_rigs_allowed,
    **{kind: _decide_intervention for kind in INTERVENTION_DECISIONS},
    **{kind: _decide_husbandry for kind in HUSBANDRY},
}
"""What follows from each input event type; any other type leads to nothing."""


class TrainingCore:
    """``decide`` and ``handle`` bound to the curricula the processor knows.

    The core never changes its catalog: a CurriculumPublished yields the compiled version
    (:meth:`publication`), and the caller adds it (the processor's step does, see
    :class:`shaping.services.processor.step.ProcessorStep`).
    """

    def __init__(self, catalog: CurriculumCatalog) -> None:
        self.catalog = catalog

    def curriculum_of(self, state: MouseState) -> CurriculumEngine:
        """The curriculum version in force for an enrolled mouse."""
        return _curriculum_of(self.catalog, state)

    def decide(self, state: MouseState, event: Event) -> list[Event]:
        """Returns the events that follow from ``event``.

        Raises:
            ImpossibleEvent: when the event cannot have happened given the mouse's history
                (a rig fact from a rig the mouse is not allowed on among them); the state must
                then stay as it is.
        """
        if isinstance(event, RIG_EVENTS):
            check_rig(state, event)
        decide_one = _handler(_DECISIONS, type(event))
        if decide_one is None:
            return []
        return decide_one(self.catalog, state, event)

    def check_rig(self, state: MouseState, event: Event) -> None:
        """Refuses a rig fact from a rig the mouse is not allowed on (:meth:`decide` does it for
        every rig fact; the processor's step calls this for the facts it does not fold).

        Raises:
            ImpossibleEvent: the mouse has a list of allowed rigs and this rig is not on it.
        """
        check_rig(state, event)

    def handle(self, state: MouseState, event: Event) -> tuple[MouseState, list[Event]]:
        """Decides, then folds the event and its consequences: the processor's one step for a
        mouse's event.

        Raises:
            ImpossibleEvent: as :meth:`decide`.
            TypeError: for a CurriculumPublished, which concerns no mouse: its value is the
                version to add to the catalog (:meth:`publication`).
        """
        if isinstance(event, CurriculumPublished):
            raise TypeError(
                "a CurriculumPublished changes no mouse's state: TrainingCore.publication(event) "
                "gives the version for the caller to add to its catalog"
            )
        outputs = self.decide(state, event)
        state = evolve(state, event)
        for output in outputs:
            state = evolve(state, output)
        return state, outputs

    def handle_trials(
        self, state: MouseState, trials: Sequence[TrialCompleted]
    ) -> tuple[MouseState, list[Event]]:
        """:meth:`handle` on each of ``trials`` in turn: the same state and outputs at the end.

        For the batch paths that fold whole sessions (``shaping evaluate --trials``, a stored
        history recomputed): when the trials would only add to the open session's statistics
        (see :func:`_trials_fold_quietly`), they are added in one pass
        (:meth:`SessionStats.add_all`), several times faster than one by one; otherwise
        (another or a parked session, a trial counted already, a rule read after every trial)
        each goes through :meth:`handle`. A trial concerns no welfare gate, so this is
        :meth:`handle_gated` too.

        Raises:
            ImpossibleEvent: as :meth:`handle`, for the first trial refused; the caller's
                state then stays as it was (none of ``trials`` is folded).
        """
        folded = self.fold_quietly(state, trials) if len(trials) > 1 else None
        if folded is not None:
            return folded, []
        outputs: list[Event] = []
        for trial in trials:
            state, emitted = self.handle(state, trial)
            outputs.extend(emitted)
        return state, outputs

    def fold_quietly(self, state: MouseState, trials: Sequence[TrialFacts]) -> MouseState | None:
        """The state after ``trials`` when handling them one by one would only add them to the
        open session's statistics, with no output (see :func:`_trials_fold_quietly`), added in
        one pass; None when it would do more (then :meth:`handle` each). Never raises for a
        run it folds: a run :meth:`handle` would refuse a trial of is None. The trials may be
        lighter records than TrialCompleted (:class:`TrialFacts`): nothing else of them is
        read."""
        if not trials or not _trials_fold_quietly(self.catalog, state, trials):
            return None
        session = state.open_session
        assert session is not None  # checked by _trials_fold_quietly
        session = replaced(
            session,
            {"last_trial_index": trials[-1].trial_index, "stats": session.stats.add_all(trials)},
        )
        return replaced(state, {"open_session": session})

    def handle_gated(
        self, state: MouseState, event: Event, gate: WelfareGate | None
    ) -> tuple[MouseState, list[Event]]:
        """:meth:`handle`, then the welfare gate (:mod:`shaping.services.domain.gating`): a
        restricted mouse's assignments carry its welfare, a weighing clears or holds it, a
        release clears it, a session started while held is flagged. For a mouse that is not on
        restriction (and for ``gate`` None) this is :meth:`handle` exactly.

        Raises:
            ImpossibleEvent: as :meth:`decide`.
        """
        after_all, outputs = self.handle(state, event)
        if gate is None or not concerns_gate(state, after_all, event):
            return after_all, outputs
        after = evolve(state, event)
        gated = gate_outputs(state, after, event, outputs, gate)
        if gated == outputs:
            return after_all, outputs
        return fold(after, gated), gated

    def publication(self, event: CurriculumPublished) -> CurriculumEngine | None:
        """The version ``event`` adds to this core's catalog, or None when it has it already;
        the catalog is not changed (see :func:`publication`).

        Raises:
            ImpossibleEvent: when the content cannot be compiled, does not match its hash, or
                the catalog holds this version with other content.
        """
        return publication(self.catalog, event)
