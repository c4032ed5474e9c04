"""Enrolments pinned to the curriculum version they were accepted on, as the log says."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.events import (
    Event,
    EventRejected,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    SessionStarted,
)
from shaping.services.domain import CurriculumCatalog, MouseState, TrainingCore
from shaping.services.domain.core import derived_event_id
from shaping.services.operator.replay.log import SourceRecord, decode_or_none

LOOKAHEAD = 200_000
"""How many input messages a fold reads ahead at most to find the version an enrolment was
accepted on (see :class:`EnrolmentPins`)."""


class Lookahead:
    """Input messages in order, with the ability to look at the next ones first (those read
    ahead are kept and handed out in their turn)."""

    def __init__(self, records: Iterable[SourceRecord], limit: int = LOOKAHEAD) -> None:
        self._source = iter(records)
        self._ahead: deque[SourceRecord] = deque()
        self.limit = limit

    def __iter__(self) -> Lookahead:
        return self

    def __next__(self) -> SourceRecord:
        if self._ahead:
            return self._ahead.popleft()
        return next(self._source)

    def ahead(self) -> Iterator[SourceRecord]:
        """The messages after the last one handed out, reading ahead up to :attr:`limit`."""
        index = 0
        while True:
            if index < len(self._ahead):
                yield self._ahead[index]
            elif len(self._ahead) < self.limit:
                record = next(self._source, None)
                if record is None:
                    return
                self._ahead.append(record)
                yield record
            else:
                return
            index += 1


def _recorded_versions(
    outputs: Iterable[Event],
) -> tuple[dict[str, tuple[str, str]], set[str]]:
    """``(versions, refused)``: the ``(curriculum, version)`` named by an output each input
    caused (the processor's own output before a correction an earlier replay published), and
    the ids of the inputs the live processor refused."""
    caused: dict[str, tuple[str, str]] = {}
    refused: set[str] = set()
    corrections: dict[str, tuple[str, str]] = {}
    for event in outputs:
        cause = event.causation_id
        if not cause:
            continue
        if isinstance(event, EventRejected):
            refused.add(cause)
            continue
        name = getattr(event, "curriculum_name", None)
        version = getattr(event, "curriculum_version", None)
        if isinstance(name, str) and isinstance(version, str):
            # A correction an earlier replay published says what that replay decided; the
            # processor's own output says what the mouse was on.
            found = corrections if getattr(event, "supersedes", None) else caused
            found.setdefault(cause, (name, version))
    for cause, named in corrections.items():
        caused.setdefault(cause, named)
    return caused, refused


class EnrolmentPins:
    """The curriculum version each enrolment that names none was accepted on, as the log says.

    The processor resolves an enrolment without a version to the newest version it knows when
    it accepts it. A fold today may know newer ones (a major version added to the lab's folder,
    a version published since) and must not move the mouse onto one of them: a mouse changes
    version only by a MouseMigrated. What the log recorded, in order of trust:

    1. the assignment the enrolment caused (``causation_id`` = the enrolment's id) on the
       assignments topic, or its row in the live stage history (the compacted topic drops an
       enrolment's assignment once the mouse has a newer one);
    2. else the mouse's next events, read ahead up to its next enrolment: a migration's
       ``from_version``, the version named by an output one of them caused (a decision, an
       assignment, a warning), or a session's version (the rig ran what it was assigned).
       Events the live processor refused are passed over.

    An enrolment the live processor refused, or one the log says nothing more about, is not
    pinned: it resolves as the processor would resolve it now.

    Args:
        outputs: the live outputs (decisions, assignments, dead letters).
        tables: the live status tables (their ``stage_history``).
        codec: decodes the input messages read ahead.
    """

    def __init__(
        self,
        outputs: Iterable[Event] = (),
        tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
        *,
        codec: EventCodec,
    ) -> None:
        self.codec = codec
        self._caused, self._refused = _recorded_versions(outputs)
        self._history: dict[str, tuple[str, str]] = {
            str(row["event_id"]): (str(row.get("curriculum_name")), str(row["curriculum_version"]))
            for row in (tables or {}).get("stage_history", [])
            if row.get("decision") == "enrolled" and row.get("curriculum_version")
        }
        self.pinned: dict[str, str | None] = {}
        self._inputs: Lookahead | None = None

    def read(self, records: Iterable[SourceRecord], limit: int = LOOKAHEAD) -> Lookahead:
        """The input messages for the fold, in which :meth:`version_for` may read ahead."""
        self._inputs = Lookahead(records, limit)
        return self._inputs

    def version_for(self, event: MouseEnrolled) -> str | None:
        """The version the enrolment was accepted on (None: as the processor resolves it)."""
        if event.curriculum_version is not None:
            return event.curriculum_version
        if event.event_id not in self.pinned:
            self.pinned[event.event_id] = self._find(event)
        return self.pinned[event.event_id]

    def _find(self, event: MouseEnrolled) -> str | None:
        name = event.curriculum_name
        recorded = (
            self._caused.get(event.event_id),
            self._history.get(derived_event_id(event, "AssignmentIssued")),
        )
        for found in recorded:
            if found is not None and found[0] == name:
                return found[1]
        if event.event_id in self._refused or self._inputs is None:
            return None
        return self._read_ahead(event, self._inputs)

    def _read_ahead(self, event: MouseEnrolled, inputs: Lookahead) -> str | None:
        """The version the mouse's next events say, up to its next enrolment."""
        name = event.curriculum_name
        key = encode_key(event.mouse_id)
        ejected = False
        for record in inputs.ahead():
            if record.key != key:
                continue
            later = decode_or_none(self.codec, record.value)
            if (
                later is None
                or later.mouse_id != event.mouse_id
                or later.event_id == event.event_id
                or later.event_id in self._refused
            ):
                continue
            if isinstance(later, MouseEjected):
                ejected = True
            elif isinstance(later, MouseEnrolled):
                if ejected:
                    return None  # enrolled again: this enrolment left no trace
                # else refused live (the mouse was enrolled), its dead letter maybe expired
            elif isinstance(later, MouseMigrated):
                return later.from_version if later.curriculum_name == name else None
            named = self._caused.get(later.event_id)
            if named is not None and named[0] == name:
                return named[1]
            if isinstance(later, SessionStarted) and later.curriculum_name == name:
                return later.curriculum_version
        return None


class PinnedCore(TrainingCore):
    """The training core, with every enrolment that names no version pinned to the version the
    log says it was accepted on (:class:`EnrolmentPins`)."""

    def __init__(self, catalog: CurriculumCatalog, pins: EnrolmentPins) -> None:
        super().__init__(catalog)
        self.pins = pins

    def handle(self, state: MouseState, event: Event) -> tuple[MouseState, list[Event]]:
        if isinstance(event, MouseEnrolled) and event.curriculum_version is None:
            version = self.pins.version_for(event)
            if version is not None:
                # The state and outputs are those of the enrolment as accepted: the version
                # goes into the state only with the assignment it causes, as it did live.
                event = event.model_copy(update={"curriculum_version": version})
        return super().handle(state, event)


__all__ = ["LOOKAHEAD", "EnrolmentPins", "Lookahead", "PinnedCore"]
