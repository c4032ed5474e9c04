"""One processing step, shared by the faust worker, the embedded runner and replay.

It turns one input message into the mouse's new state and the messages to publish: the input
itself on the ``accepted`` topic when the processor accepted it (the projector's only source
of rig and operator facts), decisions, assignments, or one EventRejected for the dead-letter
topic. It performs no I/O, so the Kafka path and the embedded path cannot disagree.

No input can make it raise (see docs/integrity.md). Every message ends in exactly one of:

- **accepted**: folded into the state, published on ``accepted`` (trials and movements, which
  no table shows, are not), with whatever decisions follow;
- **duplicate**: a redelivery (an offset the state has already folded, whatever its age) or the
  same event again (same id, same content): dropped silently and counted;
- **rejected**: one EventRejected with a reason for a person and a bounded copy of the bytes.
  Kinds: ``undecodable``, ``invalid`` (breaks the contract or the identifier grammar),
  ``impossible`` (cannot have happened given the mouse's history), ``duplicate`` (an event id
  reused with other content), ``clock`` (dated outside the window around the broker's time)
  and ``failed`` (a bug: the step raised; the message is parked, not looped on).

A message of the ``commands`` topic (:meth:`ProcessorStep.process_command`) changes no state.
The step dry-runs the past-tense event the command asks for against the mouse's state (the
same checks and the same core, on a copy) and answers with exactly one message: that event,
to be appended to the ``events`` topic (honoured; the processor folds it when it reads it
there, like any event), or one EventRejected naming the command (refused, malformed, or a bug).
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Literal

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.commands import Command
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    HUSBANDRY_EVENTS,
    ORIGINAL_KEY_MAX,
    ORIGINAL_VALUE_MAX,
    REASON_MAX,
    RIG_EVENTS,
    CurriculumPublished,
    Event,
    EventRejected,
    HoldReleased,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    MovementDetected,
    ParametersAdjusted,
    RigsAllowed,
    SessionStarted,
    StageOverridden,
    TrialCompleted,
)
from shaping.schemas.identifiers import is_id
from shaping.schemas.text import quoted
from shaping.schemas.topics import ANSWER_KIND, OUTPUT_KINDS, TopicKind
from shaping.services.domain import (
    CurriculumEngine,
    ImpossibleEvent,
    MouseState,
    TrainingCore,
    initial_state,
)
from shaping.services.domain.frozen import replaced
from shaping.services.domain.gating import WelfareGate
from shaping.services.domain.husbandry import policy_problem
from shaping.services.domain.state import RECENT_IDS
from shaping.services.domain.welfare import DEFAULT_POLICY, WelfarePolicy

log = logging.getLogger(__name__)


INPUT_TYPES = (
    MouseEnrolled,
    MouseMigrated,
    CurriculumPublished,
    StageOverridden,
    MouseEjected,
    ParametersAdjusted,
    RigsAllowed,
    *HUSBANDRY_EVENTS,
    HoldReleased,
    *RIG_EVENTS,
)
"""Event types accepted on the input (``events``) topic."""

NOT_FOLDED = (MovementDetected,)
"""Input types accepted but not given to the training core: they change no training state
(a rig sends hundreds per session, and folding them would crowd redelivered session events out
of the state's recent-id window). They are still refused from a rig the mouse is not allowed
on (:meth:`TrainingCore.check_rig`)."""

NOT_REPUBLISHED = (TrialCompleted, MovementDetected)
"""Accepted input types not republished on the ``accepted`` topic: no table shows them one by
one (trials are summarised in the decision of their session), and they are most of the log."""

OUTPUT_TOPIC = OUTPUT_KINDS
"""Where each emitted event type goes: the contract's routing table."""

_REJECT_NAMESPACE = uuid.UUID("0d6f43a4-54b3-4d8e-8f0a-6a1f9d8b2c33")

Outcome = Literal["accepted", "duplicate", "rejected", "ignored"]


@dataclass(frozen=True)
class ClockWindow:
    """How far an event's ``occurred_at`` may lie from the broker's time of its message.

    Rigs' clocks are not trusted for order (the log gives the order), but a date decides which
    sessions are pooled and judged together, so a date far from the time the broker received
    the message is refused. A rig drains its outbox late after an outage, so the past is wide;
    the future is narrow. Messages without a broker time (the embedded runtime's log on one PC)
    are not checked.

    Attributes:
        max_ahead: how far in the future of the broker's time an event may be dated.
        max_behind: how far in the past.
        max_date_skew: how far a SessionStarted's ``session_date`` (the rig's local calendar
            date) may lie from the UTC date of its ``occurred_at``.
        command_max_age: how long after the broker took a command the processor may still act
            on it. An operator waits seconds for the answer; a command read much later (a
            processor under a new consumer group reading the commands topic from its start, or
            one that was down for hours) is refused rather than acted on out of its time.
    """

    max_ahead: timedelta = timedelta(minutes=15)
    max_behind: timedelta = timedelta(days=366)
    max_date_skew: timedelta = timedelta(days=1)
    command_max_age: timedelta = timedelta(hours=1)

    def command_problem(self, broker_time: datetime | None, now: datetime | None) -> str | None:
        """Why a command taken by the broker at ``broker_time`` is too old to act on at
        ``now``, or None (also when either time is unknown)."""
        if broker_time is None or now is None:
            return None
        age = now - broker_time
        if age <= self.command_max_age:
            return None
        return (
            f"the broker took this command at {broker_time.isoformat()}, {_span(age)} before the "
            f"processor read it (at most {_span(self.command_max_age)} allowed): a command is "
            "not acted on this late; send it again if it is still wanted"
        )

    def problem(self, event: Event, broker_time: datetime | None) -> str | None:
        """Why the event's dates are refused, or None when they are fine."""
        if isinstance(event, SessionStarted) and event.session_date is not None:
            skew = abs(date.fromisoformat(event.session_date) - event.occurred_at.date())
            if skew > self.max_date_skew:
                return (
                    f"session_date {event.session_date} is {skew.days} days from the date it "
                    f"started ({event.occurred_at.date()}); at most {self.max_date_skew.days} "
                    "allowed"
                )
        if broker_time is None:
            return None
        delta = event.occurred_at - broker_time
        if delta > self.max_ahead:
            return (
                f"occurred_at {event.occurred_at.isoformat()} is {_span(delta)} ahead of the "
                f"broker's time {broker_time.isoformat()} (at most {_span(self.max_ahead)} "
                "allowed): the clock of the rig or PC that sent it is wrong; configure NTP"
            )
        if -delta > self.max_behind:
            return (
                f"occurred_at {event.occurred_at.isoformat()} is {_span(-delta)} before the "
                f"broker's time {broker_time.isoformat()} (at most {_span(self.max_behind)} "
                "allowed): the clock of the rig or PC that sent it is wrong; configure NTP"
            )
        return None


def _span(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.0f} days"
    if seconds >= 7200:
        return f"{seconds / 3600:,.1f} hours"
    if seconds >= 120:
        return f"{seconds / 60:,.0f} minutes"
    return f"{seconds:,.0f} s"


def content_digest(event: Event) -> str:
    """A digest of what an event says (not of its encoding: a newer schema version of the same
    event has the same digest)."""
    text = event.model_dump_json(exclude={"schema_version"})
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class Outgoing:
    """A message to publish: which topic, its key and its encoded value."""

    topic_kind: TopicKind
    key: bytes
    value: bytes
    event: Event


@dataclass(frozen=True)
class StepResult:
    """What one input message led to.

    Attributes:
        event: the decoded input, or None when it could not be decoded (or was a command).
        state: the mouse's new state, or None when it must stay as it was.
        outputs: messages to publish, in order.
        outcome: accepted, duplicate (dropped silently), rejected, or ignored (accepted but
            changing nothing, e.g. a movement). A command honoured is ``accepted``.
        command: the decoded command, for a message of the commands topic that decoded.
        curriculum: the curriculum version an accepted CurriculumPublished added to the
            catalog (None: none added).
    """

    event: Event | None
    state: MouseState | None
    outputs: list[Outgoing] = field(default_factory=list)
    outcome: Outcome = "accepted"
    command: Command | None = None
    curriculum: CurriculumEngine | None = None

    @property
    def rejected(self) -> bool:
        """Whether the input went to the dead-letter topic."""
        return any(o.topic_kind == "dead_letter" for o in self.outputs)


class ProcessorStep:
    """Decodes a message, runs the training core, encodes what follows.

    Args:
        core: the training core.
        codec: the wire format.
        service: name written into rejections (``rejected_by``).
        clock: the window of accepted dates (None: the default :class:`ClockWindow`).
        welfare: the lab's welfare policy, which husbandry commands are checked against (a
            plausible weight, no unconfirmed jump, no huge water entry); None: the default
            policy (:data:`~shaping.services.domain.welfare.DEFAULT_POLICY`). Only commands
            are checked against it, never the facts already on the log. The welfare gate
            (:mod:`shaping.services.domain.gating`: a restricted mouse held until weighed
            above its minimum) judges with it too, on the broker's time of each message.
    """

    def __init__(
        self,
        core: TrainingCore,
        codec: EventCodec,
        service: str = "processor",
        clock: ClockWindow | None = None,
        welfare: WelfarePolicy | None = None,
    ) -> None:
        self.core = core
        self.codec = codec
        self.service = service
        self.clock = clock or ClockWindow()
        self.welfare = welfare or DEFAULT_POLICY

    def process(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
    ) -> StepResult:
        """Processes one message of the input topic; never raises.

        Args:
            state: the stored state for the message key's mouse, None if there is none.
            key: Kafka key (the mouse id).
            value: message value in the Shaping wire format.
            topic, partition, offset: where the message came from (kept in a rejection, and
                the position that tells a redelivery).
            timestamp: the broker's time of the message (LogAppendTime), which dates are
                checked against; None: not checked.
        """
        try:
            return self._process(state, key, value, topic, partition, offset, timestamp)
        except Exception as exc:  # a bug, not bad input: park the message, never loop on it
            log.exception("processing %s/%d@%d failed; parking it", topic, partition, offset)
            return self.park(key, value, topic, partition, offset, exc, timestamp)

    def park(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        error: BaseException,
        timestamp: datetime | None = None,
    ) -> StepResult:
        """The dead letter of a message whose processing failed (kind ``failed``)."""
        reason = (
            f"processing failed with {type(error).__name__}: {quoted(str(error), 300)}; "
            "this is a bug in Shaping, not bad input: the message is kept here and the stream "
            "went on (report it with this dead letter)"
        )
        return self._reject(key, value, topic, partition, offset, reason, "failed", None, timestamp)

    def admit(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
    ) -> Event | StepResult:
        """The first half of :meth:`process`: the message decoded and checked before the core
        sees it (its type, its key, a redelivered offset, its dates). Returns the event when it
        passed, else what :meth:`process` returns for the message (rejected, a duplicate, or
        parked when the check itself failed). Never raises.

        :meth:`process_admitted` is the other half; the processor's batches go through both
        halves so that a mouse's run of trials can be folded at once (:meth:`fold_trials`).
        """
        try:
            return self._admit(state, key, value, topic, partition, offset, timestamp)
        except Exception as exc:  # a bug, not bad input: park the message, never loop on it
            log.exception("processing %s/%d@%d failed; parking it", topic, partition, offset)
            return self.park(key, value, topic, partition, offset, exc, timestamp)

    def process_admitted(
        self,
        state: MouseState | None,
        key: bytes,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None,
        event: Event,
    ) -> StepResult:
        """The second half of :meth:`process`, for an ``event`` :meth:`admit` returned for this
        message and ``state``: ``admit`` then this is :meth:`process`. Never raises."""
        try:
            return self._fold(state, key, value, topic, partition, offset, timestamp, event)
        except Exception as exc:  # a bug, not bad input: park the message, never loop on it
            log.exception("processing %s/%d@%d failed; parking it", topic, partition, offset)
            return self.park(key, value, topic, partition, offset, exc, timestamp)

    def fold_trials(
        self, state: MouseState | None, position: str, offset: int, trials: list[TrialCompleted]
    ) -> MouseState | None:
        """The mouse's state after a run of its trials, each admitted (:meth:`admit`) from
        ``position`` (topic/partition) at rising offsets up to ``offset``, the last one's; or
        None when the run is not one the core folds at once, quietly
        (:meth:`TrainingCore.fold_quietly`: every trial a new one of the session in progress,
        nothing decided after any of them). Then the caller processes the trials one by one,
        and that is what this gives when it gives a state: each trial accepted, nothing to
        publish, the same state at the end. Never raises (a failure is None: the one-by-one
        path then meets it, and parks the message that fails).
        """
        if state is None or len(trials) < 2:
            return None
        try:
            folded = self.core.fold_quietly(state, trials)
            if folded is None:
                return None
            offsets = {**folded.input_offsets, position: offset}
            return replaced(folded, {"input_offsets": offsets})
        except Exception:  # the one-by-one path meets it again, and parks the message
            log.debug("a run of %d trials did not fold at once", len(trials), exc_info=True)
            return None

    def _process(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None,
    ) -> StepResult:
        admitted = self._admit(state, key, value, topic, partition, offset, timestamp)
        if isinstance(admitted, StepResult):
            return admitted
        assert key is not None  # admitted: the key is the mouse id
        return self._fold(state, key, value, topic, partition, offset, timestamp, admitted)

    def _admit(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None,
    ) -> Event | StepResult:
        def reject(reason: str, kind: str, event: Event | None) -> StepResult:
            return self._reject(
                key, value, topic, partition, offset, reason, kind, event, timestamp
            )

        try:
            event = self.codec.decode(value)
        except SerializationError as exc:
            return reject(str(exc), exc.kind, None)
        if not isinstance(event, INPUT_TYPES):
            return reject(
                f"{event.event_type} is not accepted on the input topic", "invalid", event
            )
        if key is None or key != encode_key(event.mouse_id):
            shown = "none" if key is None else repr(quoted(key.decode("utf-8", "replace")))
            return reject(
                f"the Kafka key ({shown}) must be the mouse id {event.mouse_id!r}",
                "invalid",
                event,
            )
        if state is not None and offset <= state.input_offsets.get(f"{topic}/{partition}", -1):
            return StepResult(event, None, [], "duplicate")
        problem = self.clock.problem(event, timestamp)
        if problem is not None:
            return reject(problem, "clock", event)
        return event

    def _fold(
        self,
        state: MouseState | None,
        key: bytes,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None,
        event: Event,
    ) -> StepResult:
        def reject(reason: str, kind: str, event: Event | None) -> StepResult:
            return self._reject(
                key, value, topic, partition, offset, reason, kind, event, timestamp
            )

        position = f"{topic}/{partition}"
        if isinstance(event, NOT_FOLDED):
            try:
                self.core.check_rig(state or initial_state(event.mouse_id), event)
            except ImpossibleEvent as exc:
                return reject(str(exc), "impossible", event)
            return StepResult(event, None, [], "ignored")
        current = state or initial_state(event.mouse_id)
        digest = None
        if not isinstance(event, TrialCompleted):
            digest = content_digest(event)
            known = current.event_digests.get(event.event_id)
            if known == digest:
                return StepResult(event, None, [], "duplicate")
            if known is not None:
                return reject(
                    f"event id {event.event_id} was already used by another "
                    f"{event.event_type} with different content; every event needs a new id",
                    "duplicate",
                    event,
                )
        if isinstance(event, CurriculumPublished):
            # A curriculum version goes to the catalog, not to a mouse.
            try:
                published = self.core.publication(event)
            except ImpossibleEvent as exc:
                return reject(str(exc), "impossible", event)
            if published is not None:
                # The core never changes the catalog; the step that holds it adds the version
                # (the catalog is a fold over the published versions, in log order).
                self.core.catalog.add(published)
            return StepResult(event, None, [], "accepted", curriculum=published)
        try:
            new_state, emitted = self.core.handle_gated(
                current, event, self._gate(event, timestamp)
            )
        except ImpossibleEvent as exc:
            return reject(str(exc), "impossible", event)
        # A trial the core folds nothing of leaves the very same state object (it copies the
        # state only to count the trial), so only other events need the comparison (about
        # 3 µs a message).
        unchanged = new_state is current or (
            not isinstance(event, TrialCompleted) and new_state == current
        )
        if unchanged:
            # The core folded nothing: a trial it had already counted, or an event it had seen
            # (a redelivered SessionEnded re-sends its decision, with the same ids).
            return StepResult(event, None, [self._outgoing(e) for e in emitted], "duplicate")
        update: dict[str, object] = {"input_offsets": {**new_state.input_offsets, position: offset}}
        if digest is not None:
            digests = {**new_state.event_digests, event.event_id: digest}
            update["event_digests"] = dict(list(digests.items())[-RECENT_IDS:])
        new_state = replaced(new_state, update)
        outputs = [self._outgoing(e) for e in emitted]
        if not isinstance(event, NOT_REPUBLISHED) and value is not None:
            outputs.insert(0, Outgoing("accepted", key, value, event))
        return StepResult(event, new_state, outputs, "accepted")

    def process_command(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None = None,
        now: datetime | None = None,
    ) -> StepResult:
        """Judges one message of the commands topic; never raises and changes no state.

        The answer is one output: the past-tense event the command asks for (topic kind
        ``events``, keyed by the mouse, its id derived from the command's) when the core would
        accept it now, else one EventRejected caused by the command. A command whose event the
        mouse has already folded is a redelivery: no output (``duplicate``).

        Args:
            state: the stored state of the message key's mouse, None if there is none.
            key, value, topic, partition, offset, timestamp: as :meth:`process`.
            now: the processor's time; a command the broker took longer than
                :attr:`ClockWindow.command_max_age` before it is refused (None: not checked).
        """
        try:
            return self._process_command(
                state, key, value, topic, partition, offset, timestamp, now
            )
        except Exception as exc:  # a bug, not bad input: park the message, never loop on it
            log.exception("processing %s/%d@%d failed; parking it", topic, partition, offset)
            return self.park(key, value, topic, partition, offset, exc, timestamp)

    def _process_command(
        self,
        state: MouseState | None,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        timestamp: datetime | None,
        now: datetime | None,
    ) -> StepResult:
        def reject(reason: str, kind: str, command: Command | None) -> StepResult:
            if command is not None:
                reason = (
                    f"{reason} (command {command.command_type} {command.command_id}, asked by "
                    f"{quoted(command.requested_by, 80)})"
                )
            result = self._reject(
                key, value, topic, partition, offset, reason, kind, None, timestamp, command
            )
            return StepResult(None, None, result.outputs, "rejected", command)

        try:
            command = self.codec.decode_command(value)
        except SerializationError as exc:
            return reject(str(exc), exc.kind, None)
        if key is None or key != encode_key(command.mouse_id):
            shown = "none" if key is None else repr(quoted(key.decode("utf-8", "replace")))
            return reject(
                f"the Kafka key ({shown}) must be the mouse id {command.mouse_id!r}",
                "invalid",
                command,
            )
        stale = self.clock.command_problem(timestamp, now)
        if stale is not None:
            return reject(stale, "clock", command)
        try:
            event = command.answer()
        except ValueError as exc:  # pydantic's ValidationError is a ValueError
            return reject(f"cannot be answered: {quoted(str(exc), 300)}", "invalid", command)
        problem = self.clock.problem(event, timestamp)
        if problem is not None:
            return reject(problem.replace("occurred_at", "requested_at", 1), "clock", command)
        current = state or initial_state(event.mouse_id)
        known = current.event_digests.get(event.event_id)
        if known == content_digest(event):
            return StepResult(None, None, [], "duplicate", command)
        if known is not None:
            return reject(
                f"command id {command.command_id} was already used by another command with "
                "different content; every command needs a new id",
                "duplicate",
                command,
            )
        refused = policy_problem(current, event, self.welfare)
        if refused is not None:
            return reject(refused, "impossible", command)
        try:
            # A dry run on a copy: the state is folded only when the answer comes back on the
            # events topic, in the log's order.
            self.core.handle_gated(
                current.model_copy(deep=True), event, self._gate(event, timestamp)
            )
        except ImpossibleEvent as exc:
            return reject(str(exc), "impossible", command)
        answer = Outgoing(ANSWER_KIND, encode_key(event.mouse_id), self.codec.encode(event), event)
        return StepResult(None, None, [answer], "accepted", command)

    def _gate(self, event: Event, timestamp: datetime | None) -> WelfareGate:
        """The welfare gate for a message: the lab's policy and the log's time, the broker's
        time of the message (the event's own time where the log has none, as the embedded
        runtime's)."""
        return WelfareGate(self.welfare, timestamp or event.occurred_at)

    def _outgoing(self, event: Event) -> Outgoing:
        return Outgoing(
            OUTPUT_TOPIC[event.event_type],
            encode_key(event.mouse_id),
            self.codec.encode(event),
            event,
        )

    def _reject(
        self,
        key: bytes | None,
        value: bytes | None,
        topic: str,
        partition: int,
        offset: int,
        reason: str,
        kind: str,
        event: Event | None,
        timestamp: datetime | None,
        command: Command | None = None,
    ) -> StepResult:
        value = value or b""
        if event is not None:
            mouse_id = event.mouse_id
        elif command is not None:
            mouse_id = command.mouse_id
        else:
            text = (key or b"").decode("utf-8", "replace")
            mouse_id = text if is_id(text) else "unknown"
        when = timestamp or datetime.now(UTC)
        if event is not None and kind != "clock":
            when = event.occurred_at
        elif command is not None and kind != "clock":
            when = command.requested_at
        cause = event.event_id if event else command.command_id if command else None
        if len(reason) > REASON_MAX:
            reason = reason[: REASON_MAX - 40] + f"… (reason cut; {len(reason)} characters)"
        rejected = EventRejected(
            event_id=str(uuid.uuid5(_REJECT_NAMESPACE, f"{topic}/{partition}/{offset}")),
            mouse_id=mouse_id,
            rig_id=event.rig_id if event else None,
            session_id=event.session_id if event else None,
            occurred_at=when,
            causation_id=cause,
            reason=reason,
            error_kind=kind,  # type: ignore[arg-type]
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            original_key=None if key is None else key[:ORIGINAL_KEY_MAX],
            original_value=value[:ORIGINAL_VALUE_MAX],
            rejected_by=self.service,
            original_size=len(value),
            original_sha256=hashlib.sha256(value).hexdigest(),
        )
        return StepResult(event, None, [self._outgoing(rejected)], "rejected")
