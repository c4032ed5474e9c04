"""The port a rig uses to reach the rest of the system."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from shaping.schemas.events import AssignmentIssued, Event


class RigTransport(Protocol):
    """Publishes a rig's events and tells it the latest assignment per mouse."""

    def publish(self, events: Sequence[Event]) -> None:
        """Publishes events in order (keyed by mouse), durably, before returning."""
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
