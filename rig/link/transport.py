"""The port a rig uses to reach the rest of the system: :class:`RigTransport`.

The rig agent (:class:`shaping.rig.agent.RigAgent`) publishes every event it records through a
transport and reads the assignments it runs from it; it never names Kafka itself. Three
objects satisfy the port:

- :class:`shaping.rig.link.outbox.OutboxTransport`: a rig on a Pi. ``publish`` stores the events
  in the rig's SQLite outbox (durable when it returns) and a drainer thread sends them to Kafka
  in order; ``latest_assignment`` answers from the assignment cache the follower keeps, so the
  rig works on offline.
- :class:`shaping.rig.link.kafka.KafkaRigTransport`: straight to Kafka, nothing on disk
  (``publish`` returns once the broker acknowledged): the simulated lab on Kafka.
- the embedded runtime (``shaping.services.embedded.runtime.EmbeddedRuntime``; the rig does not
  import it, its caller hands it in): in process, for the demo and tests. Processing is
  synchronous there, so the assignment that follows a session is known when ``publish`` returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shaping.schemas.events import AssignmentIssued, Event


class RigTransport(Protocol):
    """Publishes a rig's events and tells it the latest assignment per mouse."""

    def publish(self, events: Sequence[Event]) -> None:
        """Publishes events in order (keyed by mouse), durably, before returning.

        One call is one batch: a transport may hand it on whole (the scripted task publishes a
        session in one call; the reach task each event as it happens).
        """
        ...

    def latest_assignment(
        self, mouse_id: str, min_session_number: int = 1, timeout_s: float = 0.0
    ) -> AssignmentIssued | None:
        """The newest known assignment for a mouse.

        Waits up to ``timeout_s`` for one whose ``session_number`` is at least
        ``min_session_number`` (the decision on the previous session); returns the newest
        known one, possibly older, when none arrives in time, or None when there is none.
        """
        ...
