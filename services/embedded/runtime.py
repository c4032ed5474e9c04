"""The embedded runtime: processor and projector in one process over an in-process log.

For a demo, for tests of the domain, and for a small lab on one PC: no Kafka, no Java. It
implements the rig's transport port, so simulated rigs publish to it as they would to Kafka.

Operators' commands go to the log's commands topic (:meth:`EmbeddedRuntime.send_commands`) and
are routed as on Kafka: the step judges each one against the mouse's state and appends its
answer, the past-tense event, to the events topic (or a dead letter), and the runtime then
folds that event like any other. The projector never reads the commands topic.

Given alert rules (``alerts``), the runtime is also the alerts service
(:mod:`shaping.services.alerts`): after each step it feeds the rules what the Kafka service
reads (the events, accepted, decisions and dead-letter topics, in log order) and appends the
alert events they answer to the log's alerts topic, which the projector projects like the rest
(the ``alerts`` table). Their time is the log's: a record's time is its event's ``occurred_at``
(the embedded log has no broker to stamp it), never earlier than the newest one seen; no wall
clock is read, so the same log always raises the same alerts.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from shaping.schemas.alerts import AlertEvent
from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.commands import Command
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.alerts.config import AlertRules, default_rules
from shaping.services.alerts.rules import AlertEngine
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.domain.welfare import DEFAULT_POLICY, WelfarePolicy
from shaping.services.embedded.log import InProcessLog, LogRecord
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import ProjectedMessage, ProjectionStore

PROJECTOR = "projector"

ALERT_INPUTS: tuple[TopicKind, ...] = ("events", "accepted", "decisions", "dead_letter")
"""What the alert rules read (as the Kafka alerts service, services/alerts/runner.py)."""

TICK = timedelta(minutes=1)
"""The rules that depend on time alone are evaluated when the log's time has moved on this much
since they last were (the Kafka service ticks them each round)."""

FROM_THE_LOG = "from the log"
"""``alerts`` of :meth:`EmbeddedRuntime.resume`: run the default rules when the saved log holds
alerts (it was run with them), else none."""


class EmbeddedRuntime:
    """Runs each published event through the processor step, then projects the results.

    Args:
        store: where the status tables go (None to skip projection).
        catalog: the curricula (:func:`shaping.services.bootstrap.catalog` for the shipped
            ones and a lab's folder).
        codec: encodes and decodes the log's records
            (:func:`shaping.services.bootstrap.codec`).
        topics: topic names used in the log (the same as on Kafka).
        log: a log to continue (a fresh one by default). Its records are processed again
            from the start, and what follows from them appended: for a log that already holds
            its answers, use :meth:`resume`.
        welfare: the lab's welfare policy, which husbandry commands are checked against (None:
            the default policy).
        alerts: the lab's alert rules (:func:`shaping.services.alerts.config.default_rules`
            or a rules file's); None: no alerts are raised.
    """

    def __init__(
        self,
        store: ProjectionStore | None = None,
        *,
        catalog: CurriculumCatalog,
        codec: EventCodec,
        topics: TopicNames | None = None,
        log: InProcessLog | None = None,
        welfare: WelfarePolicy | None = None,
        alerts: AlertRules | None = None,
    ) -> None:
        self.codec = codec
        self.step = ProcessorStep(TrainingCore(catalog), self.codec, welfare=welfare)
        self.topics = topics or TopicNames.with_prefix("shaping")
        self.log = log or InProcessLog()
        self.store = store
        self.states: dict[str, MouseState] = {}
        self.assignments: dict[str, AssignmentIssued] = {}
        self._kinds: dict[str, TopicKind] = self.topics.kinds()
        self._projected = 0
        self._processed = 0
        self._judged = 0
        self.alert_engine = AlertEngine(alerts) if alerts is not None else None
        self._alert_inputs = {self.topics.of_kind(kind): kind for kind in ALERT_INPUTS}
        self._alerts_read = 0  # records of the log the rules have seen (in append order)
        self._log_time: datetime | None = None
        self._ticked: datetime | None = None
        # Records the rules decoded, kept for the projector's pass over them (then dropped).
        self._decoded: dict[tuple[str, int], Event | None] = {}

    @classmethod
    def resume(
        cls,
        log: InProcessLog,
        store: ProjectionStore | None = None,
        *,
        catalog: CurriculumCatalog,
        codec: EventCodec,
        topics: TopicNames | None = None,
        welfare: WelfarePolicy | None = None,
        alerts: AlertRules | str | None = FROM_THE_LOG,
    ) -> EmbeddedRuntime:
        """A runtime that continues a saved log (an embedded install's ``events.jsonl``) whose
        records were already processed and projected (into ``store``): the mice's states are
        folded again from its events topic, as replay does, and nothing is appended or
        projected until new messages come.

        With alert rules (by default the built-in ones when the log holds alerts, see
        :data:`FROM_THE_LOG`), the rules take up the log as the Kafka service does after a
        restart: the alerts topic says which alerts are open, and the inputs already on the
        log rebuild the rules' state without raising anything again."""
        if alerts == FROM_THE_LOG:
            names = topics or TopicNames.with_prefix("shaping")
            found = log.read(names.alerts)
            alerts = default_rules(welfare=welfare or DEFAULT_POLICY) if found else None
        elif isinstance(alerts, str):
            raise ValueError(f"alerts must be alert rules, None or {FROM_THE_LOG!r}")
        runtime = cls(
            store, catalog=catalog, codec=codec, topics=topics, welfare=welfare, alerts=alerts
        )
        events = runtime.topics.events
        for record in log.read(events):
            mouse = (record.key or b"").decode("utf-8", "replace")
            result = runtime.step.process(
                runtime.states.get(mouse), record.key, record.value, events, 0, record.offset
            )
            if result.state is not None:
                runtime.states[result.state.mouse_id] = result.state
            for out in result.outputs:
                if isinstance(out.event, AssignmentIssued):
                    runtime.assignments[out.event.mouse_id] = out.event
        runtime.log = log
        runtime._processed = len(log.read(events))
        runtime._judged = len(log.read(runtime.topics.commands))
        runtime._projected = len(log)
        engine = runtime.alert_engine
        if engine is not None:
            for record in log.read(runtime.topics.alerts):
                event = runtime._decode(record.value)
                if isinstance(event, AlertEvent):
                    engine.restore(event)
            engine.quiet = True
            try:
                runtime._feed_alerts()
            finally:
                engine.quiet = False
                runtime._decoded.clear()  # projected already
        runtime._alerts_read = len(log)
        return runtime

    def publish(self, events: Sequence[Event]) -> None:
        """Appends events to the input topic, processes and projects them."""
        for event in events:
            self.log.append(
                self.topics.events, encode_key(event.mouse_id), self.codec.encode(event)
            )
        self.process_pending()
        self.project_pending()

    def publish_raw(self, key: bytes | None, value: bytes) -> None:
        """Appends raw bytes to the input topic (for tests of bad input), then processes."""
        self.log.append(self.topics.events, key, value)
        self.process_pending()
        self.project_pending()

    def send_commands(self, commands: Sequence[Command]) -> None:
        """Appends operators' commands to the commands topic, then processes and projects
        (each answer, honoured or refused, is on the log afterwards)."""
        for command in commands:
            self.log.append(
                self.topics.commands, encode_key(command.mouse_id), self.codec.encode(command)
            )
        self.process_pending()
        self.project_pending()

    def send_raw_command(self, key: bytes | None, value: bytes) -> None:
        """Appends raw bytes to the commands topic (for tests of bad input), then processes."""
        self.log.append(self.topics.commands, key, value)
        self.process_pending()
        self.project_pending()

    def process_pending(self) -> None:
        """Runs the processor over input messages it has not seen yet: the events, then each
        command in turn with the event that answered it folded before the next is judged (as
        an operator who waits for each answer sees them)."""
        while True:
            for record in self.log.read(self.topics.events, self._processed):
                self._process(record)
                self._processed += 1
            pending = self.log.read(self.topics.commands, self._judged)
            if not pending:
                break
            self._process(pending[0], command=True)
            self._judged += 1
        self.raise_alerts()

    def raise_alerts(self) -> list[AlertEvent]:
        """Feeds the alert rules the records appended since they last read the log, ticks them
        at the log's time, and appends their alert events to the alerts topic (keyed by alert
        id, as on Kafka). Returns those events (none without rules)."""
        if self.alert_engine is None:
            return []
        out = self._feed_alerts()
        now = self._log_time
        if now is not None and (self._ticked is None or now - self._ticked >= TICK):
            out += self.alert_engine.tick(now)
            self._ticked = now
        for alert in out:
            self.log.append(
                self.topics.alerts, alert.alert_id.encode("utf-8"), self.codec.encode(alert)
            )
        self._alerts_read = len(self.log)
        return out

    def _feed_alerts(self) -> list[AlertEvent]:
        """The rules' answers to the log's records they have not read (in append order); each
        record is read at its event's time, never before the newest one seen."""
        engine = self.alert_engine
        assert engine is not None
        out: list[AlertEvent] = []
        for record in self.log.since(self._alerts_read):
            kind = self._alert_inputs.get(record.topic)
            if kind is None:
                continue
            event = self._decode(record.value)
            self._decoded[(record.topic, record.offset)] = event  # the projector's next
            if event is not None and (self._log_time is None or event.occurred_at > self._log_time):
                self._log_time = event.occurred_at
            if self._log_time is None:
                continue  # nothing on the log says what time it is yet
            out += engine.observe(kind, event, self._log_time)
        self._alerts_read = len(self.log)
        return out

    def _decode(self, value: bytes) -> Event | None:
        try:
            return self.codec.decode(value)
        except SerializationError:
            return None

    def _process(self, record: LogRecord, command: bool = False) -> None:
        mouse = (record.key or b"").decode("utf-8", "replace")
        process = self.step.process_command if command else self.step.process
        result = process(
            self.states.get(mouse), record.key, record.value, record.topic, 0, record.offset
        )
        if result.state is not None:
            self.states[result.state.mouse_id] = result.state
        for out in result.outputs:
            self.log.append(getattr(self.topics, out.topic_kind), out.key, out.value)
            if isinstance(out.event, AssignmentIssued):
                self.assignments[out.event.mouse_id] = out.event

    def project_pending(self) -> None:
        """Projects log messages the store has not seen, in log order."""
        if self.store is None:
            self._decoded.clear()
            return
        pending = self.log.since(self._projected)
        if not pending:
            return
        # As on Kafka, the projector does not read the commands topic.
        projected = [r for r in pending if r.topic != self.topics.commands]
        try:
            if projected:
                self.store.apply_batch(PROJECTOR, self.messages(projected))
        finally:
            self._decoded.clear()
        self._projected += len(pending)

    def messages(self, records: Sequence[LogRecord] | None = None) -> list[ProjectedMessage]:
        """Log records (all by default) as the projector reads them, decoded and with their
        topic's kind; undecodable ones carry no event (they still advance the offset)."""
        messages = []
        for record in self.log.records() if records is None else records:
            position = (record.topic, record.offset)
            if position in self._decoded:
                event = self._decoded[position]
            else:
                event = self._decode(record.value)
            messages.append(
                ProjectedMessage(
                    record.topic, record.partition, record.offset, event, self._kinds[record.topic]
                )
            )
        return messages

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        """The newest assignment on the log for a mouse (processing is synchronous here)."""
        return self.assignments.get(mouse_id)
