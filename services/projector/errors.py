"""Errors raised by the projector."""

from __future__ import annotations


class ProjectorError(Exception):
    """The projector could not apply a batch, or could not reach its source or store.

    A batch that raises this was rolled back as a whole: neither its rows nor its offsets were
    written, so running the projector again resumes from the last committed batch.

    Attributes:
        transient: the database could not be reached or dropped the connection (trying again
            later may work); False: the message itself could not be applied.
    """

    def __init__(self, message: str, *, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient
