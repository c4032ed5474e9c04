"""Errors raised by the projector."""

from __future__ import annotations


class ProjectorError(Exception):
    """The projector could not apply a batch, or could not reach its source or store.

    A batch that raises this was rolled back as a whole: neither its rows nor its offsets were
    written, so running the projector again resumes from the last committed batch.
    """
