"""The embedded runtime: processor and projector in one process over an in-process log.

For a demo, for tests of the domain, and for a small lab on one PC: no Kafka, no Java. It
implements the rig's transport port, so simulated rigs publish to it as they would to Kafka.
"""

from __future__ import annotations

from collections.abc import Sequence

from shaping.schemas.codec import EventCodec, default_codec, encode_key
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.curricula.catalog import default_catalog
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.embedded.log import InProcessLog, LogRecord
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import ProjectedMessage, ProjectionStore

PROJECTOR = "projector"


class EmbeddedRuntime:
    """Runs each published event through the processor step, then projects the results.

    Args:
        store: where the status tables go (None to skip projection).
        catalog: the curricula (the shipped ones by default).
        topics: topic names used in the log (the same as on Kafka).
        log: an existing log to continue (a fresh one by default).
    """

    def __init__(
        self,
        store: ProjectionStore | None = None,
        catalog: CurriculumCatalog | None = None,
        topics: TopicNames | None = None,
        log: InProcessLog | None = None,
        codec: EventCodec | None = None,
    ) -> None:
        self.codec = codec or default_codec()
        self.step = ProcessorStep(TrainingCore(catalog or default_catalog()), self.codec)
        self.topics = topics or TopicNames.with_prefix("shaping")
        self.log = log or InProcessLog()
        self.store = store
        self.states: dict[str, MouseState] = {}
        self.assignments: dict[str, AssignmentIssued] = {}
        self._kinds: dict[str, TopicKind] = self.topics.kinds()
        self._projected = 0
        self._processed = 0

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

    def process_pending(self) -> None:
        """Runs the processor over input messages it has not seen yet."""
        for record in self.log.read(self.topics.events, self._processed):
            self._process(record)
            self._processed += 1

    def _process(self, record: LogRecord) -> None:
        mouse = (record.key or b"").decode("utf-8", "replace")
        result = self.step.process(
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
        self.store.apply_batch(PROJECTOR, self.messages(pending))
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
