"""The rig agent: one training session from assignment to decision, online or not.

``RigAgent.run`` is what ``shaping rig run --mouse M`` does:

1. Refresh the local cache of assignments from Kafka; if the broker is unreachable, say so and
   use the cached assignment (the one received last for the mouse). When the rig knows the
   cached assignment is stale (the decision on the mouse's previous session on this rig has
   not arrived within ``stale_assignment.max_wait_s``, or the newest assignment on the broker
   is written with a schema this rig cannot read), the config's ``stale_assignment.policy``
   decides: run it anyway, saying so on screen, in the log, in the rig's metrics and in the
   SessionStarted it records (``assignment_stale``), or refuse to run.
2. If the journal shows a session of the mouse that started and never ended (the rig crashed
   or was killed), resume it: same session, same parameters, the adapted settings as they were
   after its last trial. Otherwise start a new session with exactly the assignment's
   parameters (SessionStarted records them, the task's defaults for any the assignment leaves
   out, and the task's random seed).
3. Run the task on the rig's devices (gpiozero; in simulation gpiozero's mock pins driven by a
   simulated mouse). Every event goes to the durable outbox first; a background thread drains
   it to Kafka in order.
4. After the session, wait for the outbox to drain and for the decision on the session and the
   assignment that follows it, and show (and log) the evidence it carries: the status reached,
   each rule with its values and pass/fail, the reported metrics and the warnings; offline,
   say how many events wait.

Before a new session starts, the assignment is held against the rig's safety limits (the
config's ``[safety]``; :func:`shaping.rig.safety.screen_assignment`): one outside them is refused,
said on screen and in the log, kept in the store and counted in
``shaping_rig_unsafe_assignments_total``, and the agent runs nothing or the newest assignment
of the mouse it received that passes them (``safety.on_violation``), recording
``assignment_stale`` on that session. While the session runs the task keeps within the same
limits (:class:`shaping.rig.task.reach.ReachTask`).

A mouse a trainer ejected has an assignment with reason ``ejected``: the agent refuses to run
it.

Crash tests give the agent a :class:`~shaping.rig.faults.FaultPlan` (``shaping rig run
--fault-plan``): it may kill or pause the process after the N-th event stored, or kill it after
the N-th broker acknowledgement (the drainer's). An ordinary run has none.
"""

from __future__ import annotations

import difflib
import logging
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from shaping.rig.config import RigConfig, StaleAssignmentSettings, ValveCalibration
from shaping.rig.errors import BrokerUnreachableError, NoAssignmentError, RigBusyError, RigError
from shaping.rig.evidence import EJECTED, evidence_lines, next_session_line
from shaping.rig.faults import FaultPlan
from shaping.rig.hardware.devices import InputBus, RigHardware, connect_inputs, disconnect_inputs
from shaping.rig.link.drain import OutboxDrainer
from shaping.rig.link.follow import AssignmentFollower, unreadable_hint
from shaping.rig.link.store import CachedAssignment, ClockSkew, OpenSession, RigStore
from shaping.rig.locks import FileLock
from shaping.rig.reach import reach_session_metrics
from shaping.rig.safety import (
    Screening,
    UnsafeAssignmentRefusedError,
    screen_assignment,
)
from shaping.rig.task.clock import Clock, SystemClock, to_datetime
from shaping.rig.task.reach import (
    ReachParameters,
    ReachTask,
    RewardPlan,
    SessionRecorder,
    TaskState,
    TrialProgress,
)
from shaping.schemas.codec import EventCodec
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    MovementDetected,
    ParamValue,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.text import printable
from shaping.schemas.topics import TopicNames

log = logging.getLogger(__name__)

EVIDENCE_LOG = "evidence.log"
"""File in the rig's state folder where the evidence of every decision received is appended."""

CLOCK_SKEW_WARNING_S = 60.0
"""A rig clock further than this from the broker's gets a warning (``rig run``, ``rig status``)."""


class StaleAssignmentRefusedError(RigError):
    """The assignment the rig has is stale and ``stale_assignment.policy`` is ``refuse``."""


def clock_skew_warning(skew: ClockSkew | None) -> str | None:
    """The warning for a rig clock more than a minute off the broker's, else None."""
    if skew is None or abs(skew.smoothed_s) <= CLOCK_SKEW_WARNING_S:
        return None
    direction = "ahead of" if skew.smoothed_s > 0 else "behind"
    return (
        f"WARNING: this rig's clock runs {abs(skew.smoothed_s):.0f} s {direction} the broker's; "
        "configure NTP (event times and session dates come from this clock)"
    )


def screen_on_rig(config: RigConfig, store: RigStore, assignment: AssignmentIssued) -> Screening:
    """Holds an assignment against the rig's safety limits as a session of the reach task on
    this rig would run it: with the task's defaults, and the rewards through the valves'
    calibrations in force; the last safe candidates are the mouse's assignments in the store.

    Raises:
        RigError: the assignment's parameters or rewards cannot run at all (a wrong type, a
            reward by volume on a valve without calibration).
    """
    calibrations = {**config.valves, **store.calibrations()}

    def rewards(parameters: Mapping[str, ParamValue]) -> dict[str, tuple[float, float]]:
        plan = RewardPlan.plan(ReachParameters.from_assignment(parameters), calibrations)
        return {side: (plan.open_ms[side], plan.volume_ul[side]) for side in plan.open_ms}

    return screen_assignment(
        assignment,
        config.safety,
        [c.assignment for c in store.assignment_history(assignment.mouse_id)],
        ReachParameters().resolved(),
        rewards,
    )


class Display(Protocol):
    """What the person at the rig sees."""

    def message(self, text: str) -> None:
        """A line of information."""
        ...

    def session_started(
        self, started: SessionStarted, params: ReachParameters, resumed_at: int | None
    ) -> None:
        """The session starts (or resumes at trial ``resumed_at``)."""
        ...

    def trial(self, progress: TrialProgress, stage: str) -> None:
        """A trial finished."""
        ...

    def session_ended(self, ended: SessionEnded, state: TaskState) -> None:
        """The session ended."""
        ...

    def decision(self, decision: StageTransitioned, assignment: AssignmentIssued | None) -> None:
        """The processor's decision on the session arrived (with the next assignment)."""
        ...


@dataclass(frozen=True)
class RunOptions:
    """How to run a session.

    Attributes:
        mouse_id: the mouse.
        simulate: run on gpiozero mock pins with a simulated mouse and a virtual clock.
        seed: the simulated mouse's seed.
        start: simulation only: when the virtual clock starts (default: now).
        pace: simulation only: at most this many times faster than real time.
        offline: do not contact Kafka at all (the cache and the outbox only).
        assignment_timeout_s: how long to wait for the decision on the mouse's previous
            session (and so its new assignment) before the stale assignment policy applies
            (None: the config's ``stale_assignment.max_wait_s``).
        decision_timeout_s: how long to wait after the session for its decision.
        abandon_open: close an interrupted session instead of resuming it.
    """

    mouse_id: str
    simulate: bool = False
    seed: int = 1
    start: datetime | None = None
    pace: float | None = None
    offline: bool = False
    assignment_timeout_s: float | None = None
    decision_timeout_s: float = 60.0
    abandon_open: bool = False


@dataclass
class SessionReport:
    """What a run did."""

    session_id: str
    started: SessionStarted
    ended: SessionEnded
    state: TaskState
    resumed: bool
    offline: bool
    unsent: int
    decision: StageTransitioned | None = None
    next_assignment: AssignmentIssued | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ChosenAssignment:
    """The assignment a new session runs, and whether the rig knew it was stale.

    Attributes:
        assignment: the assignment.
        stale_reason: why the rig knows it is not the mouse's current assignment (None: it is
            the current one, as far as the rig can tell).
        waited_s: how long the rig waited for the current assignment (0: it did not wait).
    """

    assignment: AssignmentIssued
    stale_reason: str | None = None
    waited_s: float = 0.0


class RigAgent:
    """Runs sessions on one rig.

    Args:
        config: the rig's validated config.
        display: where progress goes.
        store: the rig's store (opened from the config if not given).
        codec: the codec the rig reads Kafka with (default: every committed schema; tests
            give a subset to stand for an older rig release).
        faults: crash tests only: the faults to inject after each event stored, handed on to
            the outbox drainer for those after a broker acknowledgement (None: none).
    """

    def __init__(
        self,
        config: RigConfig,
        display: Display,
        store: RigStore | None = None,
        codec: EventCodec | None = None,
        faults: FaultPlan | None = None,
    ) -> None:
        self.config = config
        self.display = display
        self.store = store or RigStore(config.store_path)
        self.codec = codec
        self.topics = TopicNames.with_prefix(config.topic_prefix)
        self._wake = threading.Event()
        self.faults = faults if faults is not None else FaultPlan.none()
        self._stored = 0  # events this agent stored, as the fault plan counts them

    # -- the run ------------------------------------------------------------------------------

    def run(self, options: RunOptions) -> SessionReport:
        """Runs (or resumes) one session of ``options.mouse_id`` and waits for its decision.

        Raises:
            RigError: the mouse is not on this rig, no assignment is known, another session
                runs on the rig, a parameter or the hardware is wrong. Nothing was recorded.
        """
        self._check_mouse(options.mouse_id)
        lock = FileLock(self.config.state_dir / "session.lock", f"rig {self.config.rig_id}")
        lock.acquire()
        try:
            with self._link(options) as link:
                return self._run(options, link)
        finally:
            lock.release()

    def _run(self, options: RunOptions, link: _Link) -> SessionReport:
        mouse = options.mouse_id
        open_session = self.store.open_session(mouse)
        if open_session is not None and options.abandon_open:
            ended = self._close_interrupted(open_session)
            self.display.message(
                f"closed the interrupted session {ended.session_id} ({ended.n_trials} trials)"
            )
            open_session = None
        chosen: ChosenAssignment | None = None
        if open_session is not None:
            started = open_session.started
            params = ReachParameters.from_assignment(started.parameters)
            seed = _task_seed(started.parameters)
        else:
            chosen = self._screen(mouse, self._choose_assignment(mouse, link, options))
            assignment = chosen.assignment
            params = ReachParameters.from_assignment(assignment.parameters)
            seed = (
                random.Random(f"{options.seed}:{mouse}:{assignment.event_id}").getrandbits(31)
                if options.simulate
                else random.SystemRandom().getrandbits(31)
            )
        rewards = RewardPlan.plan(params, self.calibrations())
        runtime = self._runtime(options, open_session)
        try:
            return self._session(
                options, link, runtime, open_session, chosen, params, rewards, seed
            )
        finally:
            disconnect_inputs(runtime.hardware)
            runtime.hardware.close()

    def _session(
        self,
        options: RunOptions,
        link: _Link,
        runtime: _Runtime,
        open_session: OpenSession | None,
        chosen: ChosenAssignment | None,
        params: ReachParameters,
        rewards: RewardPlan,
        seed: int,
    ) -> SessionReport:
        mouse = options.mouse_id
        clock = runtime.clock
        bus = InputBus(clock)
        connect_inputs(runtime.hardware, bus)
        if open_session is not None:
            started = open_session.started
            session_id = started.session_id or ""
            trials = [e for e in open_session.events if isinstance(e, TrialCompleted)]
            state = TaskState.after_trials(params, trials)
            if not options.simulate:
                # A real session continues: movements already recorded for the next trial
                # stay, and new ones are numbered after them.
                state.movements_in_trial = sum(
                    1
                    for e in open_session.events
                    if isinstance(e, MovementDetected) and e.trial_index == state.trial_index
                )
            session_start = started.occurred_at.timestamp()
            minutes = min(params.session_minutes, self.config.safety.max_session_minutes)
            if session_start + minutes * 60 <= clock.now():
                ended = self._close_interrupted(open_session)
                self.display.message(
                    f"session {session_id} was interrupted after {state.n_trials} trials and "
                    "its time is over; closed it"
                )
                return self._after(options, link, started, ended, state, True)
            self.display.message(
                f"resuming session {session_id} of {mouse} at trial {state.trial_index + 1} "
                f"(interrupted after {state.n_trials} trials)"
            )
        else:
            assert chosen is not None
            session_start = clock.now()
            session_id = f"{mouse}-{self.config.rig_id}-{to_datetime(session_start):%Y%m%dT%H%M%S}"
            if self.store.events(session_id):
                raise RigError(
                    f"session {session_id} already exists on this rig; a simulated session "
                    "needs a later --start"
                )
            state = TaskState.start(params)
        recorder = SessionRecorder(
            self._sink(runtime), clock, mouse, self.config.rig_id, session_id
        )
        if runtime.begin_cycle is not None:
            runtime.begin_cycle(session_id, state.trial_index)
        if open_session is None:
            assert chosen is not None
            assignment = chosen.assignment
            parameters: dict[str, ParamValue] = {
                **params.resolved(),
                **assignment.parameters,
                "task_seed": seed,
            }
            started = self._record_started(recorder, chosen, parameters)
            unused = sorted(set(assignment.parameters) - set(params.resolved()))
            if unused:
                # Visible, not fatal: a curriculum may carry another task's parameters, but a
                # misspelt name would otherwise leave its default in force unnoticed.
                self.display.message(f"not used by the reach task: {', '.join(unused)}")
        stage = started.stage
        self.display.session_started(
            started, params, state.trial_index if open_session is not None else None
        )
        task = ReachTask(
            hardware=runtime.hardware,
            clock=clock,
            bus=bus,
            params=params,
            rewards=rewards,
            recorder=recorder,
            session_start=session_start,
            task_seed=seed,
            on_trial=lambda progress: self.display.trial(progress, stage),
            session_metrics=lambda: reach_session_metrics(self.store.events(session_id)),
            limits=self.config.safety,
        )
        for cut in task.reward_cuts():
            log.warning("%s: %s", mouse, cut)
            self.display.message(f"SAFETY: {cut}")
        with _interrupt_on_sigint(bus):
            ended = task.run(state)
        self.display.session_ended(ended, state)
        return self._after(options, link, started, ended, state, open_session is not None)

    def _after(
        self,
        options: RunOptions,
        link: _Link,
        started: SessionStarted,
        ended: SessionEnded,
        state: TaskState,
        resumed: bool,
    ) -> SessionReport:
        mouse = options.mouse_id
        session_id = started.session_id or ""
        report = SessionReport(
            session_id, started, ended, state, resumed, link.offline, self.store.unsent_count()
        )
        if link.offline and link.drainer is not None and link.drainer.status.last_success:
            with suppress(BrokerUnreachableError):
                link.poll(1.0)  # the broker came back during the session
        report.offline = link.offline
        if link.offline:
            report.unsent = self.store.unsent_count()
            self.display.message(
                f"offline: {report.unsent} events wait in the outbox; they are sent by the "
                "next `shaping rig run` or `shaping rig sync` that reaches the broker"
            )
            return report
        self._wake.set()
        deadline = time.monotonic() + options.decision_timeout_s
        waiting_said = False
        followed: CachedAssignment | None = None
        unreadable_before = self._unreadable_now(mouse)
        unreadable: list[str] = []
        while time.monotonic() < deadline:
            with suppress(BrokerUnreachableError):
                link.poll(0.3)
            decision = self.store.decision(mouse, session_id)
            cached = self.store.cached_assignment(mouse)
            # The assignment that followed the decision carries its evidence; a trainer's
            # later override or adjustment may already have replaced it in the cache.
            followed = self.store.last_evidence(mouse)
            if (
                decision is not None
                and followed is not None
                and (followed.assignment.causation_id == decision.event_id)
            ):
                report.decision, report.next_assignment = decision, followed.assignment
                if cached is not None and cached.assignment.session_number >= (
                    followed.assignment.session_number
                ):
                    report.next_assignment = cached.assignment  # the one in force
                break
            if cached is not None and cached.assignment.reason == EJECTED:
                # Ejected during the session: it is kept but not judged.
                report.next_assignment = cached.assignment
                break
            unreadable = [r for r in self._unreadable_now(mouse) if r not in unreadable_before]
            if unreadable:
                break  # the processor answered in a schema this rig cannot read
            if not waiting_said:
                self.display.message("waiting for the decision on this session ...")
                waiting_said = True
        report.unsent = self.store.unsent_count()
        if report.decision is not None and followed is not None:
            evidence = followed.assignment
            self.display.decision(report.decision, evidence)
            self._log_evidence(mouse, session_id, evidence_lines(report.decision, evidence))
            newer = report.next_assignment
            if newer is not None and newer.event_id != evidence.event_id:
                self.display.message(f"since then, {newer.reason}: {next_session_line(newer)}")
        elif report.next_assignment is not None:
            self.display.message(
                f"{mouse} was ejected during this session: the session is kept but not judged. "
                f"{report.next_assignment.reason_detail}"
            )
        elif unreadable:
            self._say_unreadable(
                mouse, "the processor's answer on this session: " + "; ".join(unreadable)
            )
            report.notes.append("unreadable answer")
        else:
            reason = link.problem() or "the processor has not decided yet"
            self.display.message(
                f"no decision within {options.decision_timeout_s:g} s ({reason}); "
                f"{report.unsent} events wait in the outbox. `shaping rig status` shows the "
                "decision once it arrives."
            )
        return report

    def _log_evidence(self, mouse: str, session_id: str, lines: list[str]) -> None:
        """Logs the evidence and appends it to ``evidence.log`` in the rig's state folder, the
        trainer's record of every decision the rig received."""
        for line in lines:
            log.info("%s %s: %s", mouse, session_id, line)
        path = self.config.state_dir / EVIDENCE_LOG
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")
        try:
            with path.open("a", encoding="utf-8") as out:
                out.write(f"{stamp} UTC {mouse} session {session_id}\n")
                out.writelines(f"  {line}\n" for line in lines)
        except OSError as exc:
            self.display.message(f"cannot write {path}: {exc.strerror}")

    # -- assignments ----------------------------------------------------------------------------

    def _choose_assignment(self, mouse: str, link: _Link, options: RunOptions) -> ChosenAssignment:
        """The assignment a new session of the mouse runs, under the stale assignment policy.

        Waits (bounded) for the decision on the mouse's last session on this rig, or for the
        first assignment of a mouse just enrolled. An assignment the rig knows is stale is run
        loudly or refused, as ``stale_assignment.policy`` says.

        Raises:
            NoAssignmentError: no assignment of the mouse is cached.
            StaleAssignmentRefusedError: the cached one is stale and the policy refuses it.
            RigError: the mouse was ejected.
        """
        policy = self.config.stale_assignment
        max_wait_s = (
            policy.max_wait_s
            if options.assignment_timeout_s is None
            else options.assignment_timeout_s
        )
        began = time.monotonic()
        waited = False
        last = self.store.last_session(mouse)
        waiting_for = (
            last.session_id
            if last is not None and self.store.decision(mouse, last.session_id or "") is None
            else None
        )
        if not link.offline and waiting_for is not None and not self.store.undecodable(mouse):
            self.display.message(
                f"waiting up to {max_wait_s:g} s for the decision on {waiting_for} ..."
            )
            waited = True
            while time.monotonic() < began + max_wait_s:
                with suppress(BrokerUnreachableError):
                    link.poll(0.3)
                if self._answered(mouse, waiting_for):
                    waiting_for = None
                    break
                if self.store.undecodable(mouse) is not None:
                    break  # the answer came, in a schema this rig cannot read: waiting is vain
        cached = self.store.cached_assignment(mouse)
        if cached is None and not link.offline and not self.store.undecodable(mouse):
            # Just enrolled: the processor may not have issued the first assignment yet.
            waited = True
            while cached is None and time.monotonic() < began + max_wait_s:
                with suppress(BrokerUnreachableError):
                    link.poll(0.3)
                cached = self.store.cached_assignment(mouse)
        waited_s = round(time.monotonic() - began, 3) if waited else 0.0
        unreadable = self.store.undecodable(mouse)
        if cached is None:
            if unreadable is not None:
                where = (
                    f"its assignment on the broker cannot be read by this rig "
                    f"({unreadable.describe()}); {unreadable_hint(unreadable.error)}"
                )
                self._say_unreadable(mouse, where)
            elif link.offline:
                where = f"the broker is unreachable ({link.problem()})"
            else:
                where = f"none was found on the assignments topic within {max_wait_s:g} s"
            raise NoAssignmentError(
                f"no assignment known for {mouse}: {where}. Enroll the mouse and run once "
                "with the broker reachable, so the rig can cache its assignment."
            )
        if cached.assignment.reason == EJECTED:
            raise RigError(
                f"{mouse} was ejected: {cached.assignment.reason_detail or 'no more sessions'}"
            )
        reasons = []
        if waiting_for is not None and self.store.decision(mouse, waiting_for) is not None:
            reasons.append(
                f"the decision on {waiting_for} arrived but not the assignment that follows it "
                + ("(offline)" if link.offline else f"after {waited_s:g} s")
            )
        elif waiting_for is not None:
            reasons.append(
                f"the decision on {waiting_for} has not arrived "
                + (
                    f"(offline: {link.problem() or 'the broker was not contacted'})"
                    if link.offline
                    else f"after {waited_s:g} s"
                )
            )
        if unreadable is not None:
            reasons.append(
                f"the newest assignment for {mouse} cannot be read by this rig "
                f"({unreadable.describe()})"
            )
            self._say_unreadable(
                mouse,
                f"its newest assignment ({unreadable.describe()}); "
                f"{unreadable_hint(unreadable.error)}",
            )
        if not reasons:
            self.display.message(_describe(cached, link))
            return ChosenAssignment(cached.assignment, None, waited_s)
        reason = "; ".join(reasons)
        return self._stale(mouse, cached, reason, waited_s, policy)

    def _answered(self, mouse: str, session_id: str) -> bool:
        """Whether the decision on the session arrived, and the assignment that follows it
        (the processor publishes it right after the decision, naming it as its cause)."""
        decision = self.store.decision(mouse, session_id)
        if decision is None:
            return False
        followed = self.store.last_evidence(mouse)
        return followed is not None and followed.assignment.causation_id == decision.event_id

    def _unreadable_now(self, mouse: str) -> list[str]:
        """The mouse's records on the assignments and decisions topics the rig cannot read."""
        found = []
        for kind in ("decisions", "assignments"):
            record = self.store.undecodable(mouse, kind)
            if record is not None:
                found.append(f"{record.describe()}; {unreadable_hint(record.error)}")
        return found

    def _say_unreadable(self, mouse: str, what: str) -> None:
        """Says loudly that the rig cannot read what the broker holds for the mouse."""
        text = f"UNREADABLE: this rig cannot read {what}"
        log.warning("%s: %s", mouse, text)
        self.display.message(text)

    def _stale(
        self,
        mouse: str,
        cached: CachedAssignment,
        reason: str,
        waited_s: float,
        policy: StaleAssignmentSettings,
    ) -> ChosenAssignment:
        """Applies the stale assignment policy: run the cached assignment loudly, or refuse."""
        a = cached.assignment
        what = (
            f"session {a.session_number}, stage {a.stage} ({a.curriculum_name} "
            f"{a.curriculum_version}; {a.reason}), received {cached.received_at:%Y-%m-%d %H:%M} UTC"
        )
        if policy.policy == "refuse":
            self.store.record_stale_run(mouse, a.event_id, "refused", reason, waited_s)
            text = (
                f"STALE ASSIGNMENT for {mouse}: {reason}. Refusing to run the cached assignment "
                f"({what}) as stale_assignment.policy = refuse; run again once the processor "
                "has answered, or change the policy in the rig's config"
            )
            log.warning("%s", text)
            raise StaleAssignmentRefusedError(text)
        self.store.record_stale_run(mouse, a.event_id, "ran_cached", reason, waited_s)
        text = (
            f"STALE ASSIGNMENT for {mouse}: {reason}. Running the cached assignment ({what}); "
            "the session records assignment_stale = true"
        )
        log.warning("%s", text)
        self.display.message(text)
        return ChosenAssignment(a, reason, waited_s)

    def _screen(self, mouse: str, chosen: ChosenAssignment) -> ChosenAssignment:
        """Holds the chosen assignment against the rig's safety limits (``[safety]``).

        A safe one runs as chosen. An unsafe one is said on screen and in the log, kept in the
        store (``shaping_rig_unsafe_assignments_total``), and replaced by the newest safe
        assignment the rig received for the mouse (``on_violation = "last_safe"``; the session
        records it as stale), or refused.

        Raises:
            UnsafeAssignmentRefusedError: nothing safe can run.
        """
        screening = screen_on_rig(self.config, self.store, chosen.assignment)
        if screening.safe:
            return chosen
        text = screening.message()
        violations = "; ".join(v.describe() for v in screening.violations)
        action = screening.action or "refused"
        ran = screening.run
        self.store.record_unsafe_assignment(
            mouse,
            chosen.assignment.event_id,
            action,
            violations,
            ran.event_id if ran is not None else None,
        )
        log.warning("%s", printable(text))
        if ran is None:
            raise UnsafeAssignmentRefusedError(text)
        self.display.message(text)
        reasons = [r for r in (chosen.stale_reason, screening.stale_reason()) if r]
        return ChosenAssignment(ran, "; ".join(reasons), chosen.waited_s)

    def _record_started(
        self,
        recorder: SessionRecorder,
        chosen: ChosenAssignment,
        parameters: dict[str, ParamValue],
    ) -> SessionStarted:
        """Records SessionStarted, with whether the assignment was stale and the wait for it."""
        # The recorder builds the event (its id, time and envelope); it is stored once the
        # assignment's freshness is added.
        built: list[Event] = []
        sink, recorder.sink = recorder.sink, built.append
        try:
            recorder.started(chosen.assignment, parameters)
        finally:
            recorder.sink = sink
        started = built[0].model_copy(
            update={
                "assignment_stale": chosen.stale_reason is not None,
                "assignment_wait_s": chosen.waited_s,
                "assignment_stale_reason": chosen.stale_reason,
            }
        )
        assert isinstance(started, SessionStarted)
        recorder.sink(started)
        return started

    def calibrations(self) -> dict[str, ValveCalibration]:
        """Valve calibrations in force: the config file's, replaced by stored calibrations."""
        return {**self.config.valves, **self.store.calibrations()}

    # -- plumbing -------------------------------------------------------------------------------

    def _check_mouse(self, mouse: str) -> None:
        if mouse not in self.config.mice:
            close = difflib.get_close_matches(mouse, self.config.mice, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RigError(
                f"mouse {mouse} is not on rig {self.config.rig_id}'s list "
                f"({', '.join(self.config.mice)}){hint}"
            )

    def _sink(self, runtime: _Runtime) -> Callable[[Event], None]:
        topic = self.topics.events

        def store(event: Event) -> None:
            self.store.append(event, topic)
            self._wake.set()
            self._stored += 1
            self.faults.after_store(self._stored)
            if runtime.begin_cycle is not None and isinstance(event, TrialCompleted):
                runtime.begin_cycle(event.session_id or "", event.trial_index + 1)

        return store

    def _close_interrupted(self, open_session: OpenSession) -> SessionEnded:
        """Ends a session the rig could not finish, at the time of its last event."""
        started = open_session.started
        trials = [e for e in open_session.events if isinstance(e, TrialCompleted)]
        last = open_session.events[-1].occurred_at

        def store(event: Event) -> None:
            self.store.append(event, self.topics.events)

        recorder = SessionRecorder(
            store,
            _FixedClock(last.timestamp()),
            started.mouse_id,
            started.rig_id or self.config.rig_id,
            started.session_id or "",
        )
        return recorder.ended(
            len(trials),
            "interrupted",
            last.timestamp() - started.occurred_at.timestamp(),
            reach_session_metrics(open_session.events),
        )

    def _runtime(self, options: RunOptions, open_session: OpenSession | None) -> _Runtime:
        if not options.simulate:
            from shaping.rig.hardware.gpio import build_gpiozero_hardware

            hardware = build_gpiozero_hardware(self.config.pins, self.config.actuators)
            return _Runtime(hardware, SystemClock(), None)
        from shaping.rig.sim.reach_box import build_simulated_rig

        if open_session is not None:
            # A simulated session resumes where its last trial ended: the simulation is
            # deterministic from there, and what it re-records is already in the outbox.
            start = next(
                e.occurred_at
                for e in reversed(open_session.events)
                if isinstance(e, TrialCompleted | SessionStarted)
            )
        else:
            start = options.start or datetime.now(UTC)
        rig = build_simulated_rig(
            self.config.pins,
            self.config.actuators,
            options.mouse_id,
            options.seed,
            start.timestamp(),
            options.pace,
        )
        rig.mouse.restore(self._outcome_history(options.mouse_id))
        return _Runtime(rig.hardware, rig.clock, rig.mouse.begin_cycle)

    def _outcome_history(self, mouse: str) -> list[list[str]]:
        sessions: dict[str, list[str]] = {}
        for event in self.store.mouse_events(mouse, ["SessionStarted", "TrialCompleted"]):
            if isinstance(event, SessionStarted):
                sessions[event.session_id or ""] = []
            elif isinstance(event, TrialCompleted):
                sessions.setdefault(event.session_id or "", []).append(event.outcome)
        history = list(sessions.values())
        # A new session starts after a rest; a resumed one continues the last list.
        open_session = self.store.open_session(mouse)
        if open_session is None:
            history.append([])
        return history

    @contextmanager
    def _link(self, options: RunOptions) -> Iterator[_Link]:
        link = _Link(self, options)
        try:
            link.start()
            yield link
        finally:
            link.stop()


@dataclass
class _Runtime:
    hardware: RigHardware
    clock: Clock
    begin_cycle: Callable[[str, int], None] | None


class _FixedClock:
    """A clock stuck at one time (for closing an interrupted session)."""

    def __init__(self, at: float) -> None:
        self.at = at

    def now(self) -> float:
        return self.at

    def sleep(self, seconds: float) -> None:
        return None

    def wait(self, flag: threading.Event, timeout_s: float) -> bool:
        return flag.is_set()


class _Link:
    """The agent's connection to Kafka: the follower (read now, on demand) and the drainer
    (a background thread)."""

    def __init__(self, agent: RigAgent, options: RunOptions) -> None:
        self.agent = agent
        self.options = options
        config = agent.config
        self.offline = True
        self._problem: str | None = "offline mode" if options.offline else None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.follower: AssignmentFollower | None = None
        self.drainer: OutboxDrainer | None = None
        if not options.offline:
            self.follower = AssignmentFollower(
                agent.store,
                config.bootstrap,
                agent.topics.assignments,
                agent.topics.decisions,
                config.mice,
                client_id=f"shaping-rig-{config.rig_id}",
                codec=agent.codec,
            )
            self.drainer = OutboxDrainer(
                agent.store,
                config.bootstrap,
                client_id=f"shaping-rig-{config.rig_id}",
                codec=agent.codec,
                faults=agent.faults,
            )

    def start(self) -> None:
        warning = clock_skew_warning(self.agent.store.clock_skew())
        if warning is not None:
            log.warning("%s", warning)
            self.agent.display.message(warning)
        if self.follower is None or self.drainer is None:
            self.agent.display.message("offline mode: the broker is not contacted")
            return
        try:
            self.follower.catch_up(
                timeout_s=max(
                    5.0,
                    self.agent.config.stale_assignment.max_wait_s
                    if self.options.assignment_timeout_s is None
                    else self.options.assignment_timeout_s,
                )
            )
            self.offline = False
        except BrokerUnreachableError as exc:
            self._problem = str(exc)
            self.agent.display.message(
                f"broker {self.agent.config.bootstrap} unreachable ({exc}); working offline"
            )
        drainer = self.drainer
        self._thread = threading.Thread(
            target=drainer.run, args=(self._stop, self.agent._wake), daemon=True
        )
        self._thread.start()

    def poll(self, timeout_s: float) -> None:
        if self.follower is None:
            time.sleep(timeout_s)
            return
        try:
            self.follower.poll(timeout_s)
            self.offline = False
        except BrokerUnreachableError as exc:
            self._problem = str(exc)
            time.sleep(min(timeout_s, 0.5))
            raise

    def problem(self) -> str | None:
        if self.drainer is not None and self.agent.store.unsent_count():
            return self.drainer.status.last_error or self._problem
        return self._problem

    def stop(self) -> None:
        self._stop.set()
        self.agent._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self.drainer is not None:
            self.drainer.close()
        if self.follower is not None:
            self.follower.close()


def _task_seed(parameters: Mapping[str, ParamValue]) -> int:
    seed = parameters.get("task_seed")
    if isinstance(seed, int) and not isinstance(seed, bool):
        return seed
    raise RigError("the interrupted session does not record its task_seed; use --abandon")


def _describe(cached: CachedAssignment, link: _Link) -> str:
    a = cached.assignment
    what = (
        f"assignment for {a.mouse_id}: session {a.session_number}, stage {a.stage} "
        f"({a.curriculum_name} {a.curriculum_version}; {a.reason})"
    )
    received = f"received {cached.received_at:%Y-%m-%d %H:%M} UTC"
    if link.offline:
        return f"offline: using the cached {what}, {received}"
    return f"{what}"


@contextmanager
def _interrupt_on_sigint(bus: InputBus) -> Iterator[None]:
    """Ctrl-C ends the session cleanly (like reach's handler) instead of killing the task."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        bus.interrupt()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


__all__ = [
    "Display",
    "RigAgent",
    "RigBusyError",
    "RunOptions",
    "SessionReport",
    "UnsafeAssignmentRefusedError",
]
