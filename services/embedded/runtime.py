"""The embedded runtime: processor and projector in one process over an in-process log.

For a demo, for tests of the domain, and for a small lab on one PC: no Kafka, no Java. It
implements the rig's transport port, so simulated rigs publish to it as they would to Kafka.

Operators' commands go to the log's commands topic (:meth:`EmbeddedRuntime.send_commands`) and
are routed as on Kafka: the step judges each one against the mouse's state and appends its
answer, the past-tense event, to the events topic (or a dead letter), and the runtime then
folds that event like any other. The projector never reads the commands topic.
"""

from __future__ import annotations

from collections.abc import Sequence

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.commands import Command
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.embedded.log import InProcessLog, LogRecord
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import ProjectedMessage, ProjectionStore

PROJECTOR = "projector"


class EmbeddedRuntime:
    """Runs each published event through the processor step, then projects the results.

    Args:
        store: where the status tables go (None to skip projection).
        catalog: the curricula (:func:`shaping.services.bootstrap.catalog` for the shipped
            ones and a lab's folder).
        codec: encodes and decodes the log's records
            (:func:`shaping.services.bootstrap.codec`).
        topics: topic names used in the log (the same as on Kafka).
        log: an existing log to continue (a fresh one by default).
    """

    def __init__(
        self,
        store: ProjectionStore | None = None,
        *,
        catalog: CurriculumCatalog,
        codec: EventCodec,
        topics: TopicNames | None = None,
        log: InProcessLog | None = None,
    ) -> None:
        self.codec = codec
        self.step = ProcessorStep(TrainingCore(catalog), self.codec)
        self.topics = topics or TopicNames.with_prefix("shaping")
        self.log = log or InProcessLog()
        self.store = store
        self.states: dict[str, MouseState] = {}
        self.assignments: dict[str, AssignmentIssued] = {}
        self._kinds: dict[str, TopicKind] = self.topics.kinds()
        self._projected = 0
        self._processed = 0
        self._judged = 0

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
                return
            self._process(pending[0], command=True)
            self._judged += 1

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
            return
        pending = self.log.records()[self._projected :]
        if not pending:
            return
        # As on Kafka, the projector does not read the commands topic.
        projected = [r for r in pending if r.topic != self.topics.commands]
        if projected:
            self.store.apply_batch(PROJECTOR, self.messages(projected))
        self._projected += len(pending)

    def messages(self, records: Sequence[LogRecord] | None = None) -> list[ProjectedMessage]:
        """Log records (all by default) as the projector reads them, decoded and with their
        topic's kind; undecodable ones carry no event (they still advance the offset)."""
        messages = []
        for record in self.log.records() if records is None else records:
            event: Event | None
            try:
                event = self.codec.decode(record.value)
            except SerializationError:
                event = None
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
