"""The rig agent: one training session from assignment to decision, online or not.

The agent is the one runtime every rig runs, real or simulated. It talks to the rest of the
system only through a :class:`~shaping.rig.link.transport.RigTransport` (events out,
assignments in) and runs a :class:`~shaping.rig.task.port.Task` (what a session does):

============================  ==========================================  =====================
who                           transport                                   task
============================  ==========================================  =====================
``shaping rig run``           :class:`~shaping.rig.link.outbox.           :class:`~shaping.rig.
                              OutboxTransport` (outbox, drainer,          task.pins.PinTask`
                              follower)                                   (reach on pins)
``shaping demo``              the embedded runtime (in process)           :class:`~shaping.rig.
                                                                          task.scripted.
``shaping rig simulate``,     a Kafka transport                           ScriptedTask` (the
end-to-end tests, benchmarks                                              simulated mouse)
============================  ==========================================  =====================

``RigAgent.run`` is what ``shaping rig run --mouse M`` does (:mod:`shaping.rig.bootstrap`
builds that agent):

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

A transport without an outbox (the embedded runtime, a plain Kafka transport) keeps no journal
and no decisions, so the agent runs a simpler step 1 on it: it reads the mouse's latest
assignment, waiting up to ``assignment_timeout_s`` for the session it expects
(``RunOptions.session_number``), and runs the newest it has, as stale when it is older. It does
not wait for the decision after the session: the next session's wait does.

During a session the task reads the mouse's newest assignment at every trial boundary
(:meth:`RigAgent._newest`: the link polled without waiting, then the cache): one the processor
issued during this session (a curriculum rule evaluated after every trial held; it names the
session) is applied there, the reach task starting over with the new stage's parameters within
the rig's safety limits (:mod:`shaping.rig.task.midsession`). The decision it follows is the
decision on the session, which the agent then shows as after any session.

Before a new session starts, the assignment is held against the rig's safety limits (the
config's ``[safety]``; :func:`shaping.rig.safety.screen_assignment`), with the task's defaults
and rewards: one outside them is refused, said on screen and in the log, kept in the store
and counted in ``shaping_rig_unsafe_assignments_total``, and the agent runs nothing or the
newest assignment of the mouse it received that passes them (``safety.on_violation``),
recording ``assignment_stale`` on that session. While the session runs the task keeps within
the same limits (:class:`shaping.rig.task.reach.ReachTask`,
:func:`shaping.rig.task.scripted.run_simulated_session`).

A mouse a trainer ejected has an assignment with reason ``ejected``: the agent refuses to run
it. A mouse on water restriction (its assignment carries ``welfare``) runs only when its
newest assignment is cleared for the rig's day (its own clock's local date) and not held: the
agent otherwise says why on screen and in the log (:func:`shaping.rig.safety.welfare_refusal`)
and runs nothing. After a session it shows the water the mouse still needs today and the
suggested supplement, from the next assignment's welfare.

Crash tests give the agent a :class:`~shaping.rig.faults.FaultPlan` (``shaping rig run
--fault-plan``): it may kill or pause the process after the N-th event stored, or kill it after
the N-th broker acknowledgement (the drainer's). An ordinary run has none.
"""

from __future__ import annotations

import difflib
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any, Protocol

from shaping.rig.config import RigConfig, StaleAssignmentSettings
from shaping.rig.errors import BrokerUnreachableError, NoAssignmentError, RigBusyError, RigError
from shaping.rig.evidence import EJECTED, evidence_lines, next_session_line
from shaping.rig.faults import FaultPlan
from shaping.rig.link.follow import unreadable_hint
from shaping.rig.link.outbox import OutboxTransport
from shaping.rig.link.store import CachedAssignment, ClockSkew, RigStore
from shaping.rig.link.transport import RigTransport
from shaping.rig.locks import FileLock
from shaping.rig.safety import (
    MouseHeldError,
    Screening,
    UnsafeAssignmentRefusedError,
    screen_assignment,
    water_line,
    welfare_refusal,
)
from shaping.rig.task.parameters import ReachParameters
from shaping.rig.task.pins import SessionDisplay, reach_rewards
from shaping.rig.task.port import ChosenAssignment, Newest, SessionRequest, Task, TaskOutcome
from shaping.schemas.events import (
    AssignmentIssued,
    Event,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
)
from shaping.schemas.text import printable

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
    return screen_assignment(
        assignment,
        config.safety,
        [c.assignment for c in store.assignment_history(assignment.mouse_id)],
        ReachParameters().resolved(),
        reach_rewards(calibrations),
    )


class Display(SessionDisplay, Protocol):
    """What the person at the rig sees: the session (:class:`SessionDisplay`) and the decision."""

    def decision(self, decision: StageTransitioned, assignment: AssignmentIssued | None) -> None:
        """The processor's decision on the session arrived (with the next assignment)."""
        ...


@dataclass(frozen=True)
class RunOptions:
    """How to run a session.

    Attributes:
        mouse_id: the mouse.
        simulate: run on gpiozero mock pins with a simulated mouse and a virtual clock (the
            pin task).
        seed: the simulated mouse's seed.
        start: simulation only: when the session starts (default: now).
        pace: simulation only: at most this many times faster than real time.
        offline: do not contact Kafka at all (the cache and the outbox only).
        assignment_timeout_s: how long to wait for the decision on the mouse's previous
            session (and so its new assignment) before the stale assignment policy applies
            (None: the config's ``stale_assignment.max_wait_s``).
        decision_timeout_s: how long to wait after the session for its decision.
        abandon_open: close an interrupted session instead of resuming it.
        session_number: a transport without an outbox only: the session the rig expects to
            run, whose assignment it waits for (None: any).
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
    session_number: int | None = None


@dataclass
class SessionReport:
    """What a run did.

    Attributes:
        state: the task's state at the end (the pin task's ``TaskState``; None for the
            scripted task).
        assignment: the assignment the session ran (None: it resumed an interrupted one).
        screening: how the assignment held against the safety limits (None: not screened).
        events: the events the task published in this run, when it keeps them (the scripted
            task).
    """

    session_id: str
    started: SessionStarted
    ended: SessionEnded
    state: Any
    resumed: bool
    offline: bool
    unsent: int
    decision: StageTransitioned | None = None
    next_assignment: AssignmentIssued | None = None
    notes: list[str] = field(default_factory=list)
    assignment: AssignmentIssued | None = None
    screening: Screening | None = None
    events: Sequence[Event] = ()


class RigAgent:
    """Runs sessions on one rig (see the module's doc).

    Args:
        config: the rig's validated config (a simulated rig of the lab:
            :meth:`RigConfig.simulated <shaping.rig.config.RigConfig.simulated>`).
        display: where progress goes.
        transport: how events leave the rig and assignments reach it. An
            :class:`~shaping.rig.link.outbox.OutboxTransport` also gives the agent its store:
            the journal, the cache, the decisions, the stale and unsafe records.
        task: what a session runs.
        faults: crash tests only: the faults to inject after each event stored (the outbox
            drainer gets those after a broker acknowledgement from the transport; None: none).
    """

    def __init__(
        self,
        config: RigConfig,
        display: Display,
        transport: RigTransport,
        task: Task,
        faults: FaultPlan | None = None,
    ) -> None:
        self.config = config
        self.display = display
        self.transport = transport
        self.task = task
        self.link = transport if isinstance(transport, OutboxTransport) else None
        self.store: RigStore | None = self.link.store if self.link is not None else None
        self.faults = faults if faults is not None else FaultPlan.none()
        self._stored = 0  # events this agent stored, as the fault plan counts them
        self._received: dict[str, list[AssignmentIssued]] = {}  # without a store: newest first

    @property
    def _store(self) -> RigStore:
        if self.store is None:
            raise RigError("this rig's transport keeps no store")
        return self.store

    # -- the run ------------------------------------------------------------------------------

    def run(self, options: RunOptions) -> SessionReport:
        """Runs (or resumes) one session of ``options.mouse_id``; with an outbox, waits for its
        decision.

        Raises:
            RigError: the mouse is not on this rig, no assignment is known, another session
                runs on the rig, a parameter or the hardware is wrong. Nothing was recorded.
        """
        self._check_mouse(options.mouse_id)
        if self.link is None:
            return self._run_direct(options)
        link = self.link
        lock = FileLock(self.config.state_dir / "session.lock", f"rig {self.config.rig_id}")
        lock.acquire()
        try:
            warning = clock_skew_warning(link.store.clock_skew())
            if warning is not None:
                log.warning("%s", warning)
                self.display.message(warning)
            catch_up_s = max(
                5.0,
                self.config.stale_assignment.max_wait_s
                if options.assignment_timeout_s is None
                else options.assignment_timeout_s,
            )
            with link.connect(options.offline, catch_up_s, self.display.message):
                return self._run(options, link)
        finally:
            lock.release()

    def _run(self, options: RunOptions, link: OutboxTransport) -> SessionReport:
        mouse = options.mouse_id
        interrupted = self.task.interrupted(mouse)
        if interrupted is not None and options.abandon_open:
            ended = self.task.close_interrupted(mouse, self._publish)
            self.display.message(
                f"closed the interrupted session {ended.session_id} ({ended.n_trials} trials)"
            )
            interrupted = None
        chosen: ChosenAssignment | None = None
        if interrupted is None:
            picked = self._choose_assignment(mouse, link, options)
            self._gate(picked.assignment, options)
            chosen, _ = self._screen(mouse, picked)
        outcome = self.task.run(self._request(options, chosen))
        return self._after(options, link, outcome, chosen)

    def _run_direct(self, options: RunOptions) -> SessionReport:
        """A session over a transport without an outbox (see the module's doc)."""
        mouse = options.mouse_id
        wanted = options.session_number or 1
        wait_s = (
            self.config.stale_assignment.max_wait_s
            if options.assignment_timeout_s is None
            else options.assignment_timeout_s
        )
        latest = self.transport.latest_assignment(mouse, wanted, wait_s)
        if latest is None:
            raise NoAssignmentError(f"no assignment for {mouse}; is it enrolled?")
        history = self._received.setdefault(mouse, [])
        if all(a.event_id != latest.event_id for a in history):
            history.insert(0, latest)
        self._gate(latest, options)
        chosen, screening = self._screen(mouse, ChosenAssignment(latest, None, None))
        if screening.safe and chosen.assignment.session_number < wanted:
            stale = (
                f"the assignment for session {wanted} had not arrived after {wait_s:g} s; "
                f"ran the one for session {chosen.assignment.session_number}"
            )
            log.warning("%s on %s: stale assignment: %s", mouse, self.config.rig_id, stale)
            chosen = ChosenAssignment(chosen.assignment, stale, None)
        outcome = self.task.run(self._request(options, chosen))
        if chosen.assignment.welfare is not None:
            # A restricted mouse: the processor may already have answered (the embedded runtime
            # answers at once), and the next assignment's welfare says the water still due.
            number = chosen.assignment.session_number
            following = self.transport.latest_assignment(mouse, number + 1, 0.0)
            if following is not None and following.session_number > number:
                self._show_water(following)
        return SessionReport(
            outcome.started.session_id or "",
            outcome.started,
            outcome.ended,
            outcome.state,
            outcome.resumed,
            offline=False,
            unsent=0,
            assignment=chosen.assignment,
            screening=screening,
            events=outcome.events,
        )

    def _request(self, options: RunOptions, chosen: ChosenAssignment | None) -> SessionRequest:
        return SessionRequest(
            mouse_id=options.mouse_id,
            rig_id=self.config.rig_id,
            chosen=chosen,
            limits=self.config.safety,
            publish=self._publish,
            simulate=options.simulate,
            seed=options.seed,
            start=options.start,
            pace=options.pace,
            newest=self._newest(options.mouse_id),
        )

    def _newest(self, mouse: str) -> Newest:
        """How the task reads the mouse's newest assignment at a trial boundary, without
        waiting: the link is polled once (nothing blocks; offline, the cache as it is) and the
        cache answers; a transport without an outbox answers from what it holds."""
        link = self.link

        def newest(session_id: str) -> AssignmentIssued | None:
            if link is None:
                return self.transport.latest_assignment(mouse, 1, 0.0)
            if not link.offline:
                with suppress(BrokerUnreachableError):
                    link.poll(0.0)
            cached = link.store.cached_assignment(mouse)
            return cached.assignment if cached is not None else None

        return newest

    def _after(
        self,
        options: RunOptions,
        link: OutboxTransport,
        outcome: TaskOutcome,
        chosen: ChosenAssignment | None,
    ) -> SessionReport:
        """Waits for the outbox to drain and for the decision on the session, and shows it."""
        mouse = options.mouse_id
        started = outcome.started
        session_id = started.session_id or ""
        report = SessionReport(
            session_id,
            started,
            outcome.ended,
            outcome.state,
            outcome.resumed,
            link.offline,
            self._store.unsent_count(),
            assignment=chosen.assignment if chosen is not None else None,
        )
        if link.offline and link.reconnected():
            with suppress(BrokerUnreachableError):
                link.poll(1.0)  # the broker came back during the session
        report.offline = link.offline
        if link.offline:
            report.unsent = self._store.unsent_count()
            self.display.message(
                f"offline: {report.unsent} events wait in the outbox; they are sent by the "
                "next `shaping rig run` or `shaping rig sync` that reaches the broker"
            )
            return report
        link.wake()
        deadline = time.monotonic() + options.decision_timeout_s
        waiting_said = False
        followed: CachedAssignment | None = None
        unreadable_before = self._unreadable_now(mouse)
        unreadable: list[str] = []
        while time.monotonic() < deadline:
            with suppress(BrokerUnreachableError):
                link.poll(0.3)
            decision = self._store.decision(mouse, session_id)
            cached = self._store.cached_assignment(mouse)
            # The assignment that followed the decision carries its evidence; a trainer's
            # later override or adjustment may already have replaced it in the cache.
            followed = self._store.last_evidence(mouse)
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
        report.unsent = self._store.unsent_count()
        if report.decision is not None and followed is not None:
            evidence = followed.assignment
            self.display.decision(report.decision, evidence)
            self._log_evidence(mouse, session_id, evidence_lines(report.decision, evidence))
            newer = report.next_assignment
            if newer is not None and newer.event_id != evidence.event_id:
                self.display.message(f"since then, {newer.reason}: {next_session_line(newer)}")
            self._show_water(newer or evidence)
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

    # -- the welfare gate -----------------------------------------------------------------------

    def _gate(self, assignment: AssignmentIssued, options: RunOptions) -> None:
        """Refuses a mouse on water restriction that is held or not cleared for the rig's day:
        said on screen and in the log, kept in the store (for the metric); nothing runs and
        nothing is published.

        Raises:
            MouseHeldError: with the reason and what to do.
        """
        refusal = welfare_refusal(assignment, _rig_day(options))
        if refusal is None:
            return
        log.warning("%s on %s: not started: %s", assignment.mouse_id, self.config.rig_id, refusal)
        self.display.message(f"NOT STARTED: {refusal}")
        if self.store is not None:  # counted in shaping_rig_held_refusals_total
            self.store.record_held_refusal(assignment.mouse_id, assignment.event_id, refusal)
        raise MouseHeldError(refusal)

    def _show_water(self, assignment: AssignmentIssued | None) -> None:
        """Shows (and logs) what a restricted mouse still needs today after its session."""
        line = water_line(assignment)
        if line is not None:
            log.info("%s", line)
            self.display.message(line)

    # -- assignments ----------------------------------------------------------------------------

    def _choose_assignment(
        self, mouse: str, link: OutboxTransport, options: RunOptions
    ) -> ChosenAssignment:
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
        last = self._store.last_session(mouse)
        waiting_for = (
            last.session_id
            if last is not None and self._store.decision(mouse, last.session_id or "") is None
            else None
        )
        if not link.offline and waiting_for is not None and not self._store.undecodable(mouse):
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
                if self._store.undecodable(mouse) is not None:
                    break  # the answer came, in a schema this rig cannot read: waiting is vain
        cached = self._store.cached_assignment(mouse)
        if cached is None and not link.offline and not self._store.undecodable(mouse):
            # Just enrolled: the processor may not have issued the first assignment yet.
            waited = True
            while cached is None and time.monotonic() < began + max_wait_s:
                with suppress(BrokerUnreachableError):
                    link.poll(0.3)
                cached = self._store.cached_assignment(mouse)
        waited_s = round(time.monotonic() - began, 3) if waited else 0.0
        unreadable = self._store.undecodable(mouse)
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
        if waiting_for is not None and self._store.decision(mouse, waiting_for) is not None:
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
        decision = self._store.decision(mouse, session_id)
        if decision is None:
            return False
        followed = self._store.last_evidence(mouse)
        return followed is not None and followed.assignment.causation_id == decision.event_id

    def _unreadable_now(self, mouse: str) -> list[str]:
        """The mouse's records on the assignments and decisions topics the rig cannot read."""
        found = []
        for kind in ("decisions", "assignments"):
            record = self._store.undecodable(mouse, kind)
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
            self._store.record_stale_run(mouse, a.event_id, "refused", reason, waited_s)
            text = (
                f"STALE ASSIGNMENT for {mouse}: {reason}. Refusing to run the cached assignment "
                f"({what}) as stale_assignment.policy = refuse; run again once the processor "
                "has answered, or change the policy in the rig's config"
            )
            log.warning("%s", text)
            raise StaleAssignmentRefusedError(text)
        self._store.record_stale_run(mouse, a.event_id, "ran_cached", reason, waited_s)
        text = (
            f"STALE ASSIGNMENT for {mouse}: {reason}. Running the cached assignment ({what}); "
            "the session records assignment_stale = true"
        )
        log.warning("%s", text)
        self.display.message(text)
        return ChosenAssignment(a, reason, waited_s)

    def _screen(self, mouse: str, chosen: ChosenAssignment) -> tuple[ChosenAssignment, Screening]:
        """Holds the chosen assignment against the rig's safety limits (``[safety]``), as the
        task would run it (its defaults, its rewards).

        A safe one runs as chosen. An unsafe one is said on screen and in the log, kept in the
        store (``shaping_rig_unsafe_assignments_total``) when the transport has one, and
        replaced by the newest safe assignment the rig received for the mouse
        (``on_violation = "last_safe"``; the session records it as stale), or refused.

        Raises:
            UnsafeAssignmentRefusedError: nothing safe can run (it carries the screening).
        """
        if self.store is not None:
            history = [c.assignment for c in self.store.assignment_history(mouse)]
        else:
            history = list(self._received.get(mouse, []))
        screening = screen_assignment(
            chosen.assignment,
            self.config.safety,
            history,
            self.task.defaults(),
            self.task.rewards(),
        )
        if screening.safe:
            return chosen, screening
        text = screening.message()
        violations = "; ".join(v.describe() for v in screening.violations)
        action = screening.action or "refused"
        ran = screening.run
        if self.store is not None:
            self.store.record_unsafe_assignment(
                mouse,
                chosen.assignment.event_id,
                action,
                violations,
                ran.event_id if ran is not None else None,
            )
        log.warning("%s", printable(text))
        if ran is None:
            raise UnsafeAssignmentRefusedError(text, screening)
        self.display.message(text)
        reasons = [r for r in (chosen.stale_reason, screening.stale_reason()) if r]
        return ChosenAssignment(ran, "; ".join(reasons), chosen.waited_s), screening

    # -- plumbing -------------------------------------------------------------------------------

    def _check_mouse(self, mouse: str) -> None:
        if mouse not in self.config.mice:
            close = difflib.get_close_matches(mouse, self.config.mice, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise RigError(
                f"mouse {mouse} is not on rig {self.config.rig_id}'s list "
                f"({', '.join(self.config.mice)}){hint}"
            )

    def _publish(self, events: Sequence[Event]) -> None:
        """Publishes through the transport, then gives the fault plan its count."""
        self.transport.publish(events)
        for _ in events:
            self._stored += 1
            self.faults.after_store(self._stored)


def _rig_day(options: RunOptions) -> date:
    """The rig's calendar day: its own clock's local date (a simulated session's start)."""
    return (options.start or datetime.now(UTC)).astimezone().date()


def _describe(cached: CachedAssignment, link: OutboxTransport) -> str:
    a = cached.assignment
    what = (
        f"assignment for {a.mouse_id}: session {a.session_number}, stage {a.stage} "
        f"({a.curriculum_name} {a.curriculum_version}; {a.reason})"
    )
    received = f"received {cached.received_at:%Y-%m-%d %H:%M} UTC"
    if link.offline:
        return f"offline: using the cached {what}, {received}"
    return f"{what}"


__all__ = [
    "Display",
    "MouseHeldError",
    "RigAgent",
    "RigBusyError",
    "RunOptions",
    "SessionReport",
    "UnsafeAssignmentRefusedError",
]
