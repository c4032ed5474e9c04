"""Errors of the training domain."""


class DomainError(Exception):
    """Base class for domain errors."""


class ImpossibleEvent(DomainError):
    """A well-formed event that cannot have happened given the mouse's history.

    Examples: a trial for a session that never started, a session for a mouse that was never
    enrolled. The processor sends such events to the dead-letter topic with this message as the
    reason, and leaves the mouse's state unchanged.
    """


class CurriculumError(DomainError):
    """A curriculum is malformed or an event names something the curriculum lacks."""
