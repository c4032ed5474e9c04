"""The one error replay raises."""

from __future__ import annotations

from shaping.services.operator.errors import OperatorError


class ReplayError(OperatorError):
    """Replay cannot run or cannot switch over; nothing was switched."""


__all__ = ["ReplayError"]
