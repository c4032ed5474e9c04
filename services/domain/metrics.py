"""Metrics the curriculum rules read, computed from a mouse's state at decision time."""

from __future__ import annotations

from services.domain.state import MouseState, OpenSession

METRICS = {
    "accuracy": "Fraction correct among the last `window` responded trials (misses excluded).",
    "session_trials": "Trials in the session being judged.",
    "session_accuracy": "Fraction correct among the responded trials of the session.",
    "sessions_at_stage": "Sessions at the current stage in a row, including the judged one.",
    "session_total": "Sessions run in all, including the judged one.",
}
"""Every metric name the built-in rules may use, with its definition."""


class SessionMetrics:
    """Metric values for judging ``session`` given the state folded up to its end."""

    def __init__(self, state: MouseState, session: OpenSession) -> None:
        self._state = state
        self._session = session

    def value(self, metric: str, window: int | None = None) -> float | None:
        """Returns the metric's value, or None when it cannot be computed yet."""
        if metric == "accuracy":
            outcomes = self._state.recent_outcomes
            if window:
                outcomes = outcomes[-window:]
            return outcomes.count("1") / len(outcomes) if outcomes else None
        if metric == "session_trials":
            return float(self._session.n_trials)
        if metric == "session_accuracy":
            responded = self._session.n_correct + self._session.n_incorrect
            return self._session.n_correct / responded if responded else None
        if metric == "sessions_at_stage":
            return float(self._state.sessions_at_stage)
        if metric == "session_total":
            return float(self._state.session_total)
        raise KeyError(f"unknown metric {metric!r}; known: {', '.join(sorted(METRICS))}")
