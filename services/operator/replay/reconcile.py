"""Reconciling the rebuilt outputs with the live ones: keep, correct (a new id that
``supersedes`` the live version) or publish as new."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterable
from typing import Any

from shaping.schemas.codec import EventCodec, encode_key
from shaping.schemas.events import AssignmentIssued, Event, EventRejected
from shaping.schemas.topics import TopicKind
from shaping.services.embedded.log import event_json
from shaping.services.processor.step import OUTPUT_TOPIC, Outgoing

REPLAY_NAMESPACE = uuid.UUID("8f0e2a51-6c3d-4e7b-9b1a-2d5c7e9f4a60")
"""Namespace of the ids of corrections (outputs that differ from the live ones)."""

_CONTENT_EXCLUDED = {"event_id", "supersedes", "causation_id", "schema_version"}


def content_of(event: Event) -> str:
    """What an output says, without its identity (id, causation, supersedes, schema version).

    A dead letter whose input could not be decoded has no date of its own (the step dates it
    with the broker's time, or the time it ran), so its date is left out too.
    """
    exclude = _CONTENT_EXCLUDED
    if isinstance(event, EventRejected) and event.causation_id is None:
        exclude = exclude | {"occurred_at"}
    return json.dumps(event_json(event, exclude), sort_keys=True, default=str)


class LiveOutputs:
    """The outputs on the live topics, indexed for comparison.

    Args:
        events: decoded events of the decisions, assignments and dead-letter topics, in the
            order they were read (per partition: topic order).
        accepted: ids of the events on the accepted topic (the inputs the live processor
            accepted, republished verbatim).
    """

    def __init__(self, events: Iterable[Event], accepted: Iterable[str] = ()) -> None:
        self.by_id: dict[str, Event] = {}
        self.successors: dict[str, list[str]] = {}
        self.latest_assignment: dict[str, AssignmentIssued] = {}
        self.accepted: set[str] = set(accepted)
        for event in events:
            self.by_id[event.event_id] = event
            replaced = getattr(event, "supersedes", None)
            if replaced:
                self.successors.setdefault(replaced, []).append(event.event_id)
            if isinstance(event, AssignmentIssued):
                known = self.latest_assignment.get(event.mouse_id)
                # A rig keeps the assignment with the highest session number; later wins ties.
                if known is None or event.session_number >= known.session_number:
                    self.latest_assignment[event.mouse_id] = event

    def latest_version(self, event_id: str) -> Event | None:
        """The live event that is the newest version of ``event_id``: the event itself, or
        the last correction of it an earlier replay published.

        Only corrections are followed (they keep the cause of what they correct); a decision
        the core itself replaced after a late session has another cause and is an output of
        its own.
        """
        current = self.by_id.get(event_id)
        if current is None:
            return None
        seen = {event_id}
        while True:
            nexts = [
                self.by_id[i]
                for i in self.successors.get(current.event_id, [])
                if i not in seen and self.by_id[i].causation_id == current.causation_id
            ]
            if not nexts:
                return current
            current = nexts[-1]
            seen.add(current.event_id)


def correction_id(original_id: str, replaced_id: str, content: str) -> str:
    """Id of a correction: a function of what it corrects and of what it says."""
    digest = hashlib.sha256(content.encode("utf-8")).hexdigest()
    return str(uuid.uuid5(REPLAY_NAMESPACE, f"{original_id}/{replaced_id}/{digest}"))


def _kind_of(event: Event) -> TopicKind:
    return OUTPUT_TOPIC[event.event_type]


class Reconciler:
    """Decides, output by output, which event the rebuilt tables hold and what to publish.

    Args:
        live: the live outputs.
        codec: encodes what is published.

    Attributes:
        to_publish: the messages to publish, in order (corrections, outputs absent from the
            live topics, and accepted inputs missing from the accepted topic, verbatim).
    """

    def __init__(self, live: LiveOutputs, codec: EventCodec) -> None:
        self.live = live
        self.codec = codec
        self.to_publish: list[Outgoing] = []
        self.renamed: dict[str, str] = {}
        self.unfixable: list[str] = []
        self.corrections = 0
        self.standing: dict[str, Event] = {}

    def _publish(self, event: Event) -> None:
        self.to_publish.append(
            Outgoing(_kind_of(event), encode_key(event.mouse_id), self.codec.encode(event), event)
        )

    def accepted(self, out: Outgoing) -> None:
        """An input the fold accepted: published (its original bytes) when the accepted topic
        lacks it (the live processor refused it, had not got that far, or predates the topic).
        """
        if out.event.event_id not in self.live.accepted:
            self.to_publish.append(out)
            self.live.accepted.add(out.event.event_id)

    def output(self, event: Event) -> Event:
        """The event that stands for ``event`` (the live one when they agree), noting any
        correction or new event to publish. Assignments go through :meth:`final_assignment`."""
        final = self._output(event)
        self.standing[event.event_id] = final
        return final

    def _output(self, event: Event) -> Event:
        latest = self.live.latest_version(event.event_id)
        if latest is None:
            self._publish(event)
            return event
        content = content_of(event)
        if content_of(latest) == content:
            return latest
        if "supersedes" not in type(event).model_fields:
            # Dead letters and warnings cannot supersede: the live event stands (a rejection
            # is a fact about the input bytes; its wording may come from an older release).
            self.unfixable.append(
                f"{event.event_type} {event.event_id} differs from the live one and cannot "
                "supersede it; the live one is kept"
            )
            return latest
        return self._correct(event, latest.event_id, content)

    def final_assignment(self, event: AssignmentIssued) -> Event:
        """The latest assignment of a mouse: the live latest when they agree, else a
        correction superseding it."""
        final = self._final_assignment(event)
        self.standing[event.event_id] = final
        return final

    def _final_assignment(self, event: AssignmentIssued) -> Event:
        live = self.live.latest_assignment.get(event.mouse_id)
        if live is None:
            self._publish(event)
            return event
        content = content_of(event)
        if content_of(live) == content:
            return live
        if event.session_number < live.session_number:
            self.unfixable.append(
                f"{event.mouse_id}: the rebuilt assignment is for session {event.session_number}"
                f", the live one for {live.session_number}; rigs keep the live one"
            )
        return self._correct(event, live.event_id, content)

    def _correct(self, event: Event, replaced_id: str, content: str) -> Event:
        new_id = correction_id(event.event_id, replaced_id, content)
        update: dict[str, Any] = {"event_id": new_id, "supersedes": replaced_id}
        cause = getattr(event, "causation_id", None)
        if cause in self.renamed:
            update["causation_id"] = self.renamed[cause]
        corrected = event.model_copy(update=update)
        self.renamed[event.event_id] = new_id
        if new_id not in self.live.by_id:
            self._publish(corrected)
            self.corrections += 1
        return corrected


__all__ = ["REPLAY_NAMESPACE", "LiveOutputs", "Reconciler", "content_of", "correction_id"]
