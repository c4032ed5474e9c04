"""A simulated lab: mice spread over rigs, one session per mouse per day.

The same driver runs the embedded demo, ``shaping rig simulate`` and the Kafka end-to-end tests:
each simulated rig is a :class:`~shaping.rig.agent.RigAgent` (the runtime a Pi runs) with the
scripted task (:class:`~shaping.rig.task.scripted.ScriptedTask`, driven by one
:class:`~shaping.rig.sim.mouse.SimulatedMouse` per mouse) over the
:class:`~shaping.rig.link.transport.RigTransport` the caller gives, so every path sees the same
events. The lab itself plays the trainer: it enrols the mice through the same transport.

A lab that already trained the plan's mice is continued, not started again
(:func:`lab_position`, :func:`continue_plan`): each mouse's newest assignment gives the number
of its next session, it is not enrolled again, and the first simulated day is the day after
the newest date the lab knows for those mice (an assignment is dated by the session end or the
trainer's event that caused it, so no session of theirs is later). Session ids hold the mouse
and the start time, so they never repeat.

Every simulated rig holds the assignment it is about to run against the rig's safety limits
(its agent does, with :func:`shaping.rig.safety.screen_assignment`): one outside them is
refused, logged and kept in :attr:`LabRun.unsafe`, and the rig runs nothing or the newest
assignment of the mouse it received that passes them (``on_violation``).

With :attr:`LabPlan.husbandry` (the embedded demo) the lab also keeps its mice on water
restriction (:mod:`shaping.rig.sim.husbandry`): a simulated trainer weighs every mouse each
morning before its session, starts the restriction on the first day, gives the supplement each
assignment suggests after the session, and releases a held mouse with a reason after its rig
refused it (:attr:`LabRun.held`, :attr:`LabRun.releases`); the released mouse trains after the
rig's last slot of the day. The trainer's commands go to the ``trainer`` sink the caller gives
(the embedded runtime's ``send_commands``): rigs never send commands.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from shaping.rig.agent import RigAgent, RunOptions
from shaping.rig.config import RigConfig, SafetyLimits
from shaping.rig.errors import RigError
from shaping.rig.evidence import EJECTED
from shaping.rig.link.transport import RigTransport
from shaping.rig.safety import MouseHeldError, Screening, UnsafeAssignmentRefusedError
from shaping.rig.sim.husbandry import Release, SimulatedBody, SimulatedTrainer
from shaping.rig.sim.mouse import SimulatedMouse
from shaping.rig.task.port import Task
from shaping.rig.task.scripted import ScriptedTask
from shaping.schemas.commands import Command
from shaping.schemas.events import (
    WATER_EARNED_METRIC,
    AssignmentIssued,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
)
from shaping.schemas.text import printable

DEFAULT_START = datetime(2026, 1, 5, tzinfo=UTC)
"""The first day of a lab that knows none of the plan's mice (the same seed, the same lab)."""


log = logging.getLogger(__name__)

CommandSink = Callable[[Sequence[Command]], None]
"""Where the simulated trainer's commands go (the embedded runtime's ``send_commands``)."""

WEIGH_HOUR = 8
"""The hour (UTC) the simulated trainer starts weighing, a minute per mouse."""


@dataclass(frozen=True)
class LabPlan:
    """Who trains where and for how long."""

    n_mice: int = 8
    n_rigs: int = 4
    n_days: int = 10
    seed: int = 7
    curriculum: str = "basic-shaping"
    start: datetime = DEFAULT_START
    first_session_hour: int = 9
    slot_minutes: int = 50
    husbandry: bool = False
    """Simulate weights and water (see the module's doc)."""

    def mice(self) -> list[tuple[str, str]]:
        """(mouse_id, rig_id) pairs: mice are dealt round-robin to rigs."""
        return [(f"M{i + 1:03d}", f"rig-{i % self.n_rigs + 1}") for i in range(self.n_mice)]

    @property
    def lean_mouse(self) -> str:
        """The mouse that loses weight on restriction (the plan's last)."""
        return f"M{self.n_mice:03d}"


@dataclass
class SessionRecord:
    """A session the lab ran and the assignment it was configured from."""

    mouse_id: str
    rig_id: str
    day: int
    started: SessionStarted
    assignment: AssignmentIssued
    stale_assignment: bool


@dataclass(frozen=True)
class UnsafeStart:
    """A session about to start on an assignment outside the rig's safety limits.

    Attributes:
        mouse_id, rig_id, day: where and when.
        assignment: the unsafe assignment.
        action: ``refused`` (no session) or ``ran_last_safe``.
        ran: the last safe assignment run instead (None: nothing ran).
        message: what the rig said (its log, and ``shaping rig simulate``'s output).
    """

    mouse_id: str
    rig_id: str
    day: int
    assignment: AssignmentIssued
    action: str
    ran: AssignmentIssued | None
    message: str


@dataclass(frozen=True)
class HeldStart:
    """A session a rig refused because the mouse was held (or not cleared) that day.

    Attributes:
        mouse_id, rig_id, day: where and when.
        at: when the rig refused it.
        message: what the rig said on its screen.
    """

    mouse_id: str
    rig_id: str
    day: int
    at: datetime
    message: str


@dataclass
class LabRun:
    """Everything the simulated lab did.

    Attributes:
        plan: the plan it ran.
        sessions: every session, in the order run.
        unsafe: every session start on an assignment outside the safety limits, in order.
        continued: mice it continued, with the number of the first session it ran for each.
        skipped: mice it did not run, with the reason (ejected).
        pending: mice whose decision on their last session had not arrived when the run
            ended (``settle``), with the session number the lab waited for.
        held: every session a rig refused for the welfare gate, in order (husbandry only).
        releases: every hold the simulated trainer released, in order (husbandry only).
    """

    plan: LabPlan
    sessions: list[SessionRecord] = field(default_factory=list)
    unsafe: list[UnsafeStart] = field(default_factory=list)
    continued: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    pending: dict[str, int] = field(default_factory=dict)
    held: list[HeldStart] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)


@dataclass(frozen=True)
class LabPosition:
    """Where the lab stands for a plan's mice: each one's newest assignment (None: the lab has
    never assigned it, so it is enrolled)."""

    assignments: Mapping[str, AssignmentIssued | None]

    def known(self) -> dict[str, AssignmentIssued]:
        """The mice the lab has assigned, with their newest assignment."""
        return {m: a for m, a in self.assignments.items() if a is not None}

    def next_session(self, mouse_id: str) -> int:
        """The number of the mouse's next session (1 for a mouse the lab does not know)."""
        assignment = self.assignments.get(mouse_id)
        return assignment.session_number if assignment is not None else 1

    @property
    def last_date(self) -> date | None:
        """The newest date (UTC) of an assignment of the plan's mice, None when there is none."""
        dates = [a.occurred_at.astimezone(UTC).date() for a in self.known().values()]
        return max(dates) if dates else None

    def first_day(self) -> datetime:
        """Midnight (UTC) of the day after :attr:`last_date`; :data:`DEFAULT_START` for a lab
        that knows none of the mice."""
        last = self.last_date
        if last is None:
            return DEFAULT_START
        return datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC)


def lab_position(plan: LabPlan, transport: RigTransport) -> LabPosition:
    """The newest assignment the transport knows for each of the plan's mice (a Kafka transport
    must have read the assignments topic to its end first)."""
    return LabPosition(
        {mouse: transport.latest_assignment(mouse, 1, 0.0) for mouse, _ in plan.mice()}
    )


def continue_plan(plan: LabPlan, position: LabPosition, start: date | None = None) -> LabPlan:
    """The plan, starting on ``start`` or else on the day after the lab's last date.

    Raises:
        RigError: ``start`` is on or before the newest date the lab knows for the plan's mice
            (sessions there could repeat session ids, or be judged as late sessions).
    """
    last = position.last_date
    if start is None:
        return replace(plan, start=position.first_day())
    if last is not None and start <= last:
        raise RigError(
            f"--start {start.isoformat()} is not after {last.isoformat()}, the last day the lab "
            "knows for these mice: pick a later date (or leave --start out to continue the day "
            "after it)"
        )
    return replace(plan, start=datetime.combine(start, time(), tzinfo=UTC))


def continue_lab(
    plan: LabPlan,
    transport: RigTransport,
    wait_s: float = 0.0,
    start: date | None = None,
    now: datetime | None = None,
    safety: SafetyLimits | None = None,
) -> LabRun:
    """``shaping rig simulate``: continues the lab where it stands (see the module's doc).

    The transport must know every assignment already written (a Kafka transport must have read
    the assignments topic to its end). Every simulated day must lie before today (``now``, UTC,
    the wall clock by default): a rig cannot run sessions in the future, and the processor
    refuses events dated ahead of the broker's clock. The run waits for the decision on each
    mouse's last session (``settle``), so the next run continues from there. ``safety`` is the
    simulated rigs' limits (the defaults unless given).

    Raises:
        RigError: a ``start`` not after the lab's last day, or days that reach today.
    """
    position = lab_position(plan, transport)
    plan = continue_plan(plan, position, start)
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    last_day = plan.start.date() + timedelta(days=plan.n_days - 1)
    if last_day >= today:
        raise RigError(
            f"{plan.n_days} days from {plan.start.date().isoformat()} run until "
            f"{last_day.isoformat()}, but simulated sessions must lie before today "
            f"({today.isoformat()}): ask for fewer --days, an earlier --start (after the last "
            "day the lab knows), or use another topic --prefix for a new lab"
        )
    return run_lab(plan, transport, wait_s, position=position, settle=True, safety=safety)


def run_lab(
    plan: LabPlan,
    transport: RigTransport,
    wait_s: float = 0.0,
    position: LabPosition | None = None,
    settle: bool = False,
    safety: SafetyLimits | None = None,
    trainer: CommandSink | None = None,
) -> LabRun:
    """Enrolls the plan's mice, then runs every day's sessions through ``transport``.

    Before each session the rig reads the mouse's latest assignment; on the Kafka path it waits
    up to ``wait_s`` for the decision on the previous session. A rig that never got an
    assignment cannot run (NoAssignmentError).

    With a ``position`` (:func:`lab_position`), the mice it knows are continued: not enrolled
    again, their sessions numbered from their newest assignment, their event ids drawn afresh
    (from the seed, the mouse and the plan's start), and ejected ones skipped. ``settle``
    waits up to ``wait_s`` at the end for the decision on each mouse's last session, so a
    later run continues from there (:attr:`LabRun.pending` lists those that did not arrive).

    Before each session the rig holds the assignment against ``safety`` (the default limits
    unless given; :func:`rig.safety.screen_assignment`): an unsafe one is refused (no session
    that day for the mouse) or replaced by the newest safe assignment the rig received for the
    mouse, as ``safety.on_violation`` says, and logged and kept in :attr:`LabRun.unsafe`.

    With ``plan.husbandry`` the simulated trainer's commands go to ``trainer`` (see the
    module's doc).

    Raises:
        RigError: ``plan.husbandry`` without a ``trainer`` to send the commands to.
    """
    if plan.husbandry and trainer is None:
        raise RigError("simulating husbandry needs a trainer: somewhere to send its commands")
    limits = safety or SafetyLimits()
    run = LabRun(plan)
    mice = {mouse_id: SimulatedMouse(mouse_id, plan.seed) for mouse_id, _ in plan.mice()}
    agents = lab_agents(plan, transport, ScriptedTask(mice), limits)
    known = position.known() if position is not None else {}
    sessions_done = dict.fromkeys(mice, 0)
    for mouse_id, newest in known.items():
        if newest.reason == EJECTED:
            run.skipped[mouse_id] = f"ejected ({newest.reason_detail})"
            continue
        # a continued mouse draws its event ids from a stream of its own for this start, so
        # they differ from every earlier run's
        mice[mouse_id].rng.seed(f"{plan.seed}:{mouse_id}:{plan.start.isoformat()}")
        sessions_done[mouse_id] = newest.session_number - 1
        run.continued[mouse_id] = newest.session_number
    transport.publish(
        [
            MouseEnrolled(
                event_id=mouse.new_id(),
                mouse_id=mouse_id,
                occurred_at=plan.start,
                curriculum_name=plan.curriculum,
                enrolled_by="lab-simulation",
            )
            for mouse_id, mouse in mice.items()
            if mouse_id not in known
        ]
    )
    keeper = None
    if plan.husbandry:
        keeper = SimulatedTrainer(
            {
                mouse_id: SimulatedBody(mouse_id, plan.seed, lean=mouse_id == plan.lean_mouse)
                for mouse_id in mice
            }
        )
    day_runner = _Day(plan, transport, agents, run, sessions_done, wait_s, keeper, trainer)
    for day in range(plan.n_days):
        day_runner.simulate(day)
    if settle:
        for mouse_id, done in sessions_done.items():
            if mouse_id in run.skipped:
                continue
            judged = transport.latest_assignment(mouse_id, done + 1, wait_s)
            if judged is None or judged.session_number < done + 1:
                run.pending[mouse_id] = done + 1
    return run


@dataclass
class _Day:
    """One simulated day of the lab: the morning weighing, every rig's slots, the sessions of
    mice released after a refusal, and the night (husbandry only)."""

    plan: LabPlan
    transport: RigTransport
    agents: dict[str, RigAgent]
    run: LabRun
    sessions_done: dict[str, int]
    wait_s: float
    keeper: SimulatedTrainer | None
    trainer: CommandSink | None
    supplements: list[Command] = field(default_factory=list)

    def _send(self, commands: Sequence[Command]) -> None:
        if commands and self.trainer is not None:
            self.trainer(commands)

    def simulate(self, day: int) -> None:
        plan = self.plan
        day_start = plan.start + timedelta(days=day, hours=plan.first_session_hour)
        active = [(m, r) for m, r in plan.mice() if m not in self.run.skipped]
        if self.keeper is not None:
            weigh_start = plan.start + timedelta(days=day, hours=WEIGH_HOUR)
            self._send(
                [
                    command
                    for index, (mouse_id, _) in enumerate(active)
                    for command in self.keeper.morning(
                        mouse_id, weigh_start + timedelta(minutes=index), first_day=day == 0
                    )
                ]
            )
        released: list[tuple[str, str, int]] = []
        for rig_index in range(plan.n_rigs):
            rig_id = f"rig-{rig_index + 1}"
            on_rig = [m for m, r in active if r == rig_id]
            for slot, mouse_id in enumerate(on_rig):
                start = day_start + timedelta(minutes=slot * plan.slot_minutes)
                if not self._session(mouse_id, rig_id, day, start) and self._release(
                    mouse_id, day, start
                ):
                    released.append((mouse_id, rig_id, len(on_rig)))
        for mouse_id, rig_id, slots in released:
            # after the rig's last slot of the day
            start = day_start + timedelta(minutes=slots * plan.slot_minutes)
            self._session(mouse_id, rig_id, day, start)
        if self.keeper is not None:
            # the supplements given after the sessions, sent together
            self._send(self.supplements)
            self.supplements = []
            self.keeper.night()

    def _release(self, mouse_id: str, day: int, start: datetime) -> bool:
        """After a refusal for the welfare gate, the simulated trainer waters and releases
        the mouse (True: it trains later today)."""
        held = self.run.held
        if self.keeper is None or not held or held[-1].mouse_id != mouse_id or held[-1].day != day:
            return False
        commands, release = self.keeper.on_hold(mouse_id, day, start + timedelta(minutes=10))
        self._send([*self.supplements, *commands])
        self.supplements = []
        self.run.releases.append(release)
        return True

    def _session(self, mouse_id: str, rig_id: str, day: int, start: datetime) -> bool:
        """Runs one session; False when the rig refused it (unsafe, or held)."""
        options = RunOptions(
            mouse_id,
            start=start,
            assignment_timeout_s=self.wait_s,
            session_number=self.sessions_done[mouse_id] + 1,
        )
        try:
            report = self.agents[rig_id].run(options)
        except UnsafeAssignmentRefusedError as exc:
            if exc.screening is None:
                raise
            self.run.unsafe.append(_unsafe(mouse_id, rig_id, day, exc.screening))
            return False  # refused: no session for this mouse today
        except MouseHeldError as exc:
            self.run.held.append(HeldStart(mouse_id, rig_id, day, start, str(exc)))
            return False
        screening = report.screening
        if screening is not None and not screening.safe:
            self.run.unsafe.append(_unsafe(mouse_id, rig_id, day, screening))
        self.sessions_done[mouse_id] += 1
        assert report.assignment is not None
        self.run.sessions.append(
            SessionRecord(
                mouse_id,
                rig_id,
                day,
                report.started,
                report.assignment,
                bool(report.started.assignment_stale),
            )
        )
        if self.keeper is not None:
            earned = report.ended.metrics.get(WATER_EARNED_METRIC) or 0.0
            after = report.ended.occurred_at + timedelta(minutes=5)
            following = self.transport.latest_assignment(mouse_id, 1, 0.0)
            self.supplements += self.keeper.after_session(mouse_id, after, earned, following)
        return True


def lab_agents(
    plan: LabPlan, transport: RigTransport, task: Task, limits: SafetyLimits
) -> dict[str, RigAgent]:
    """One rig agent per rig of the plan, each with its mice, the limits, the lab's transport
    and the task (the scripted one for the lab)."""
    on_rig: dict[str, list[str]] = {}
    for mouse_id, rig_id in plan.mice():
        on_rig.setdefault(rig_id, []).append(mouse_id)
    return {
        rig_id: RigAgent(
            RigConfig.simulated(rig_id, mice, limits), _LabDisplay(rig_id), transport, task
        )
        for rig_id, mice in on_rig.items()
    }


def _unsafe(mouse_id: str, rig_id: str, day: int, screening: Screening) -> UnsafeStart:
    return UnsafeStart(
        mouse_id,
        rig_id,
        day,
        screening.assignment,
        screening.action or "refused",
        screening.run,
        screening.message(),
    )


class _LabDisplay:
    """A simulated rig's screen: what it says goes to the log (the lab's own output is the
    :class:`LabRun`)."""

    def __init__(self, rig_id: str) -> None:
        self.rig_id = rig_id

    def message(self, text: str) -> None:
        log.info("%s: %s", self.rig_id, printable(text))

    def session_started(self, started: SessionStarted, params: Any, resumed_at: int | None) -> None:
        return None

    def trial(self, progress: Any, stage: str) -> None:
        return None

    def session_ended(self, ended: SessionEnded, state: Any) -> None:
        return None

    def decision(self, decision: StageTransitioned, assignment: AssignmentIssued | None) -> None:
        return None
