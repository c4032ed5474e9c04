"""Errors of the operator commands; the CLI prints their message, never a traceback."""

from __future__ import annotations


class OperatorError(Exception):
    """A command cannot do what was asked: bad input, a missing database or an unknown mouse."""


class UnknownMouseError(OperatorError):
    """No mouse with this id is in the status tables."""
