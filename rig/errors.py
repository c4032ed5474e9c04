"""Errors raised on a rig."""


class RigError(Exception):
    """Base class for rig errors."""


class NoAssignmentError(RigError):
    """No assignment is known for a mouse, so no session can be configured."""
