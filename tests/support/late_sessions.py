"""Late sessions, for tests: a mouse's sessions as plans (date, start, trial outcomes), their
events, a one-mouse processor (``World``) that delivers them in date order or in any other
order, and views of the outcome (the effective decisions, the training state, the projected
tables) that leave out what only names events or says when they were issued.

Shared by tests/unit/test_late_sessions.py, tests/property/test_late_properties.py and
tests/integration/test_late_kafka.py.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from shaping.schemas.events import (
    Event,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.curricula.catalog import compile_content, shipped_files
from shaping.services.curricula.loader import load_all
from shaping.services.domain import (
    CurriculumCatalog,
    ImpossibleEvent,
    MouseState,
    TrainingCore,
    initial_state,
)
from shaping.services.processor.state_store import decode_state, encode_state
from tests.support.wiring import embedded_runtime, sql_store

T0 = datetime(2026, 3, 2, 8, 0, tzinfo=UTC)
"""Day 0 of every story (a Monday, UTC)."""

_NAMESPACE = uuid.UUID("6f1b7f0e-39c4-4f55-9b0e-2b7d0c1e4a77")

BASIC = ("basic-shaping", "0.1.0")


def catalog(*names: str) -> CurriculumCatalog:
    """The shipped curricula with these file names (default: basic-shaping only), so these
    tests do not depend on the other shipped files."""
    wanted = names or ("basic-shaping.yaml",)
    files = [path for path in shipped_files() if path.name in wanted]
    assert len(files) == len(wanted), files
    return CurriculumCatalog(load_all(files), compiler=compile_content)


def eid(name: str) -> str:
    """A readable name's UUID: stable across runs, so a re-sent event is the same event."""
    return str(uuid.uuid5(_NAMESPACE, name))


@dataclass(frozen=True)
class Plan:
    """One session of a story: when it ran and how the mouse did.

    Attributes:
        session_id: the session.
        day: its date, in days after T0 (several sessions may share one).
        minute: when it started on that day, in minutes after 08:00.
        outcomes: its trials' outcomes.
        rig_id: the rig that ran it.
        parameters: its SessionStarted parameters (IBL: task_protocol, ...).
        trial_parameters: per trial (IBL: contrasts, probability_left); empty: none.
        sides: per trial, the response side (empty: from the outcome).
    """

    session_id: str
    day: int
    minute: int
    outcomes: tuple[str, ...]
    rig_id: str = "rig-1"
    parameters: dict[str, Any] = field(default_factory=dict)
    trial_parameters: tuple[dict[str, Any], ...] = ()
    sides: tuple[str | None, ...] = ()

    @property
    def key(self) -> tuple[int, int, str]:
        """Date order: the order the processor judges sessions in."""
        return (self.day, self.minute, self.session_id)

    @property
    def started_at(self) -> datetime:
        return T0 + timedelta(days=self.day, minutes=self.minute)


def enrolment(mouse: str, curriculum: tuple[str, str] = BASIC) -> MouseEnrolled:
    return MouseEnrolled(
        event_id=eid(f"{mouse}/enrolled"),
        mouse_id=mouse,
        occurred_at=T0 - timedelta(days=1),
        curriculum_name=curriculum[0],
        curriculum_version=curriculum[1],
    )


def session_events(
    mouse: str, plan: Plan, stage: str, curriculum: tuple[str, str] = BASIC
) -> list[Event]:
    """SessionStarted (at ``stage``), a TrialCompleted per outcome, SessionEnded."""
    start = plan.started_at
    common: dict[str, Any] = {
        "mouse_id": mouse,
        "rig_id": plan.rig_id,
        "session_id": plan.session_id,
    }
    events: list[Event] = [
        SessionStarted(
            event_id=eid(f"{mouse}/{plan.session_id}/started"),
            occurred_at=start,
            stage=stage,
            curriculum_name=curriculum[0],
            curriculum_version=curriculum[1],
            parameters=dict(plan.parameters),
            session_date=start.date().isoformat(),
            **common,
        )
    ]
    for index, outcome in enumerate(plan.outcomes):
        side: str | None
        if plan.sides:
            side = plan.sides[index]
        else:
            side = None if outcome == "miss" else ("left" if index % 2 else "right")
        target = side if outcome == "correct" else ({"left": "right", "right": "left"}.get(side))
        events.append(
            TrialCompleted(
                event_id=eid(f"{mouse}/{plan.session_id}/trial/{index}"),
                occurred_at=start + timedelta(seconds=5 * (index + 1)),
                trial_index=index,
                outcome=outcome,  # type: ignore[arg-type]
                target_side=target,
                response_side=side,
                reaction_time_s=None if outcome == "miss" else 0.3 + (index % 7) / 10,
                trial_parameters=(
                    dict(plan.trial_parameters[index]) if plan.trial_parameters else {}
                ),
                **common,
            )
        )
    events.append(
        SessionEnded(
            event_id=eid(f"{mouse}/{plan.session_id}/ended"),
            occurred_at=start + timedelta(seconds=5 * (len(plan.outcomes) + 1)),
            n_trials=len(plan.outcomes),
            end_reason="completed",
            duration_s=5.0 * (len(plan.outcomes) + 1),
            **common,
        )
    )
    return events


IBL = ("ibl", "1.0.0")
IBL_CONTRASTS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)


def ibl_plan(session_id: str, day: int, n_trials: int, skill: float, seed: int) -> Plan:
    """A trainingChoiceWorld session as IBL trials: a contrast on one side per trial (block
    0.5); the mouse is right more often at higher contrast and ``skill`` (0: chance)."""
    rng = random.Random(seed)
    outcomes: list[str] = []
    sides: list[str | None] = []
    parameters: list[dict[str, Any]] = []
    for _ in range(n_trials):
        contrast = rng.choice(IBL_CONTRASTS)
        right = rng.random() < 0.5
        p_correct = 0.025 + 0.95 * (0.5 + 0.5 * math.tanh(8 * skill * contrast))
        if rng.random() < 0.02:
            outcomes.append("miss")
            sides.append(None)
        else:
            correct = rng.random() < p_correct
            outcomes.append("correct" if correct else "incorrect")
            sides.append("right" if right == correct else "left")
        parameters.append(
            {"probability_left": 0.5, ("contrast_right" if right else "contrast_left"): contrast}
        )
    return Plan(
        session_id,
        day,
        0,
        tuple(outcomes),
        parameters={"task_protocol": "training", "ephys_rig": False},
        trial_parameters=tuple(parameters),
        sides=tuple(sides),
    )


def mixed(n_trials: int, accuracy: float, seed: int, miss: float = 0.05) -> tuple[str, ...]:
    """Outcomes of a mouse that is right with probability ``accuracy`` (seeded)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n_trials):
        if rng.random() < miss:
            out.append("miss")
        else:
            out.append("correct" if rng.random() < accuracy else "incorrect")
    return tuple(out)


class World:
    """One mouse's processor: every event through ``TrainingCore.handle``, the state stored as
    bytes between events (as the processor's table does); refused events kept aside."""

    def __init__(self, mouse: str, engine: TrainingCore | None = None) -> None:
        self.mouse = mouse
        self.engine = engine or TrainingCore(catalog())
        self.state = initial_state(mouse)
        self.outputs: list[Event] = []
        self.accepted: list[Event] = []
        self.refused: list[tuple[Event, str]] = []
        self.sessions: dict[str, list[Event]] = {}

    def send(self, events: Iterable[Event]) -> list[Event]:
        """Handles events in order; returns what they caused."""
        caused: list[Event] = []
        for event in events:
            # Through bytes, as the processor's table stores it (trials aside: it is slow).
            stored = (
                self.state
                if isinstance(event, TrialCompleted)
                else decode_state(encode_state(self.state))
            )
            try:
                self.state, out = self.engine.handle(stored, event)
            except ImpossibleEvent as exc:
                self.refused.append((event, str(exc)))
                continue
            self.accepted.append(event)
            self.accepted.extend(out)
            caused.extend(out)
        self.outputs.extend(caused)
        return caused

    def run(
        self, plan: Plan, stage: str | None = None, curriculum: tuple[str, str] = BASIC
    ) -> list[Event]:
        """Runs a session at ``stage`` (default: the stage the mouse is assigned now)."""
        events = session_events(self.mouse, plan, stage or self.stage, curriculum)
        self.sessions[plan.session_id] = events
        return self.send(events)

    @property
    def stage(self) -> str:
        assert self.state.stage is not None
        return self.state.stage


def in_order(
    mouse: str,
    plans: Sequence[Plan],
    curriculum: tuple[str, str] = BASIC,
    engine: TrainingCore | None = None,
) -> tuple[World, dict[str, str]]:
    """The reference: sessions delivered in date order, each run at the stage assigned.

    Returns the world and the stage each session ran.
    """
    world = World(mouse, engine)
    world.send([enrolment(mouse, curriculum)])
    stages: dict[str, str] = {}
    for plan in sorted(plans, key=lambda p: p.key):
        stages[plan.session_id] = world.stage
        world.run(plan, curriculum=curriculum)
    return world, stages


def delivered(
    mouse: str,
    plans: Sequence[Plan],
    order: Sequence[int],
    stages: dict[str, str] | None = None,
    curriculum: tuple[str, str] = BASIC,
    engine: TrainingCore | None = None,
) -> World:
    """Sessions delivered whole in ``order`` (indices into ``plans``).

    Each session runs the stage in ``stages`` (what it ran in the reference) or, when None, the
    stage the processor assigned when its events arrive (a rig runs what it was told).
    """
    world = World(mouse, engine)
    world.send([enrolment(mouse, curriculum)])
    for index in order:
        plan = plans[index]
        world.run(plan, stages[plan.session_id] if stages else None, curriculum)
    return world


_EPHEMERAL = {"event_id", "occurred_at", "causation_id", "supersedes"}


def effective(outputs: Iterable[Event]) -> dict[str, dict[str, Any]]:
    """The effective history: per session, the decision in force (not superseded), without
    what only says when or why it was issued."""
    decisions = {e.event_id: e for e in outputs if isinstance(e, StageTransitioned)}
    superseded = {d.supersedes for d in decisions.values() if d.supersedes}
    history: dict[str, dict[str, Any]] = {}
    for decision in decisions.values():
        if decision.event_id in superseded:
            continue
        assert decision.session_id not in history, f"two decisions in force for {decision}"
        history[decision.session_id or ""] = decision.model_dump(exclude=_EPHEMERAL)
    return history


def training_view(state: MouseState) -> dict[str, Any]:
    """The training state, without what only names events (ids) or says when they came."""
    view = state.model_dump(
        exclude={"recent_event_ids", "last_decision", "last_assignment", "judged"}
    )
    view["judged"] = [entry.model_dump(exclude={"decision_id"}) for entry in state.judged]
    if state.last_decision is not None:
        view["last_decision"] = state.last_decision.model_dump(exclude=_EPHEMERAL)
    if state.last_assignment is not None:
        view["last_assignment"] = state.last_assignment.model_dump(
            exclude={*_EPHEMERAL, "reason_detail"}
        )
    return view


def ibl_engine() -> TrainingCore:
    return TrainingCore(catalog("training-status.yaml"))


def project(
    plans: Sequence[Plan], order: Sequence[int], db: Path, stages: dict[str, str] | None = None
) -> dict[str, list[dict[str, Any]]]:
    """Runs the sessions through the embedded runtime into SQLite; returns the tables."""
    store = sql_store(f"sqlite:///{db}")
    try:
        runtime = embedded_runtime(store=store, catalog=catalog())
        runtime.publish([enrolment("M1")])
        for index in order:
            plan = plans[index]
            stage = stages[plan.session_id] if stages else runtime.states["M1"].stage
            assert stage is not None
            runtime.publish(session_events("M1", plan, stage))
        return store.snapshot()
    finally:
        store.close()


def effective_rows(tables: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """decision_log rows in force, by session, without ids and times."""
    keep = (
        "from_stage",
        "to_stage",
        "decision",
        "rule",
        "sessions_at_stage",
        "session_total",
        "evidence_json",
        "session_date",
        "curriculum_version",
    )
    return {
        row["session_id"]: {k: row[k] for k in keep}
        for row in tables["decision_log"]
        if row["superseded_by"] is None
    }


def status_view(tables: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    [status] = tables["mouse_status"]
    return {
        "status": {
            k: status[k]
            for k in (
                "stage",
                "parameters_json",
                "sessions_at_stage",
                "next_session_number",
                "last_reason",
                "last_decision",
                "last_session_id",
                "sessions_completed",
            )
        },
        "reached": [
            (r["stage"], r["first_date"], r["session_id"], r["session_total"])
            for r in tables["stage_reached"]
        ],
        "entered": sorted(
            (r["entered_at_session"], r["stage"], r["decision"])
            for r in tables["stage_history"]
            if r["superseded_by"] is None
        ),
        "sessions": sorted(
            (r["session_id"], r["decision"], r["next_stage"], r["n_trials"])
            for r in tables["session_summaries"]
        ),
    }
