"""Errors raised by the infrastructure helpers (Kafka topics, broker, database)."""

from __future__ import annotations


class InfraError(Exception):
    """Base class: the infrastructure is missing, unreachable or set up wrongly."""


class BrokerUnavailableError(InfraError):
    """No Kafka broker answered at the bootstrap address in time."""


class TopicCreationError(InfraError):
    """The broker refused to create a topic (for a reason other than "it exists")."""


class TopicMismatchError(InfraError):
    """A topic exists already but not with the layout Shaping needs.

    For example a different partition count (which changes the key -> partition
    mapping and so the per-mouse ordering guarantees) or an ``assignments`` topic
    that is not compacted. Shaping never alters an existing topic on its own:
    fix or delete the topic by hand, or use a different topic prefix.
    """

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("topic layout mismatch: " + "; ".join(self.problems))


class TopicMissingError(InfraError):
    """A topic a client needs has no partitions on the broker (it was never created)."""
