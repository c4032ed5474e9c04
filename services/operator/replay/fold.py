"""The fold: input messages through the processor's own step, projected into fresh tables."""

from __future__ import annotations

from typing import Any

from shaping.schemas.events import AssignmentIssued, Event
from shaping.schemas.topics import TopicKind, TopicNames
from shaping.services.domain import MouseState
from shaping.services.operator.replay.errors import ReplayError
from shaping.services.operator.replay.log import SourceRecord
from shaping.services.operator.replay.reconcile import Reconciler
from shaping.services.processor.step import Outgoing, ProcessorStep
from shaping.services.projector.errors import ProjectorError
from shaping.services.projector.store import ProjectedMessage, SqlProjectionStore

BUILD_CONSUMER = "replay-build"
"""Consumer name under which the fresh tables are built (replaced by the projector's own)."""

_BATCH = 1000


class Rebuild:
    """Folds input messages through the processor's step and projects into fresh tables.

    The projector takes no fact from the events topic: it projects what the processor
    republished on the accepted topic and its outputs, and so does the rebuild.

    Args:
        step: the processor's step (its core holds the catalog).
        topics: the deployment's topic names.
        reconciler: compares outputs with the live ones.
        store: the fresh tables.
        batch_size: messages per projection transaction.
        partition: the partition the projected outputs are numbered in (their offsets count
            per topic from 0); a parked output's row names it.
    """

    def __init__(
        self,
        step: ProcessorStep,
        topics: TopicNames,
        reconciler: Reconciler,
        store: SqlProjectionStore | None,
        batch_size: int = _BATCH,
        partition: int = 0,
    ) -> None:
        self.step = step
        self.topics = topics
        self.reconciler = reconciler
        self.store = store
        self.batch_size = batch_size
        self.partition = partition
        self.states: dict[str, MouseState] = {}
        self.partition_of: dict[str, int] = {}
        self.processed = 0
        self.parked = 0
        self._batch: list[ProjectedMessage] = []
        self._out_offsets: dict[str, int] = {}
        self._pending_assignment: dict[str, AssignmentIssued] = {}

    def feed(self, record: SourceRecord) -> bool:
        """Processes one message of the events topic, as the processor would; returns whether
        it added a curriculum version to the catalog (a CurriculumPublished accepted there)."""
        mouse = (record.key or b"").decode("utf-8", "replace")
        result = self.step.process(
            self.states.get(mouse),
            record.key,
            record.value,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
        )
        if result.state is not None:
            self.states[result.state.mouse_id] = result.state
            self.partition_of[result.state.mouse_id] = record.partition
        for out in result.outputs:
            self._output(out)
        self.processed += 1
        return result.curriculum is not None

    def _output(self, out: Outgoing) -> None:
        event = out.event
        if out.topic_kind == "accepted":
            self.reconciler.accepted(out)
            self._project_output(event, "accepted")
            return
        if isinstance(event, AssignmentIssued):
            # Only each mouse's latest assignment is reconciled (the topic is compacted).
            earlier = self._pending_assignment.pop(event.mouse_id, None)
            if earlier is not None:
                self._project_output(earlier, "assignments")
            self._pending_assignment[event.mouse_id] = event
            return
        final = self.reconciler.output(event)
        self._project_output(final, out.topic_kind)

    def _project_output(self, event: Event, kind: TopicKind) -> None:
        topic = str(getattr(self.topics, kind))
        offset = self._out_offsets.get(topic, 0)
        self._out_offsets[topic] = offset + 1
        self._project(ProjectedMessage(topic, self.partition, offset, event, kind))

    def _project(self, message: ProjectedMessage) -> None:
        if self.store is None:
            return
        self._batch.append(message)
        if len(self._batch) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        """Projects what is buffered. A message the projector's store cannot apply is parked
        in ``rejected_events``, as the projector parks it (it stops neither)."""
        if self.store is not None and self._batch:
            try:
                self.store.apply_batch(BUILD_CONSUMER, self._batch)
            except ProjectorError as exc:
                if exc.transient:
                    raise ReplayError(f"cannot write the fresh tables: {exc}") from exc
                self._apply_one_by_one(self.store)
        self._batch = []

    def _apply_one_by_one(self, store: SqlProjectionStore) -> None:
        """Applies the batch message by message, parking each one the store refuses."""
        for message in self._batch:
            try:
                store.apply_batch(BUILD_CONSUMER, [message])
            except ProjectorError as failed:
                if failed.transient:
                    raise ReplayError(f"cannot write the fresh tables: {failed}") from None
                reason = f"the projector could not apply it: {failed}"
                store.park(BUILD_CONSUMER, message, reason)
                self.parked += 1

    def finish(self) -> None:
        """Reconciles each mouse's latest assignment, projects the rest, and puts the events
        that stand on the topics into the states.

        A state keeps its last decision and assignment to send them again when the session's
        end is redelivered; after a correction that must be the correction, not the event it
        superseded.
        """
        for event in self._pending_assignment.values():
            self._project_output(self.reconciler.final_assignment(event), "assignments")
        self._pending_assignment.clear()
        self.flush()
        standing = self.reconciler.standing
        for mouse_id, state in self.states.items():
            update: dict[str, Any] = {}
            for name in ("last_decision", "last_assignment"):
                event = getattr(state, name)
                final = standing.get(event.event_id) if event is not None else None
                if final is not None and final is not event and isinstance(final, type(event)):
                    update[name] = final
            if update:
                self.states[mouse_id] = state.model_copy(update=update)


__all__ = ["BUILD_CONSUMER", "Rebuild"]
