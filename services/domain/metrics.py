"""Metrics the curriculum rules read: a registry of their definitions and their values for a
mouse at decision time.

Three kinds of metric exist, and the rule language treats each differently:

- ``counter``: one number at decision time (``session_total``, ``sessions_at_stage``).
- ``session``: one value per finished session, oldest first; a rule reads the judged session's
  value by name (``finished_trials``), an earlier one by index (``finished_trials[-2]``) or the
  last k sessions by slice (``mean(finished_trials[-5:])``).
- ``trials``: computed over the last ``window`` trials across sessions, so a rule must give the
  window (``accuracy(window=200)``).

A session metric is either computed by Shaping from the trial events or *reported*: computed by
the rig or an analysis pipeline (AIND's foraging efficiency, mtrain's peak d') and sent in
``SessionEnded.metrics``, or read from a column of a session table by ``shaping evaluate``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from services.domain.state import (
    MAX_SESSION_HISTORY,
    MAX_TRIAL_WINDOW,
    MouseState,
    OpenSession,
    SessionRecord,
)

MetricKind = Literal["counter", "session", "trials"]


@dataclass(frozen=True)
class MetricDefinition:
    """What a metric means and how rules may read it.

    Attributes:
        name: the name rules use.
        kind: ``counter``, ``session`` or ``trials`` (see the module docstring).
        description: the definition in words, and where it comes from.
        reported: whether the rig or an analysis pipeline supplies the value (per session)
            rather than Shaping computing it from trial events.
    """

    name: str
    kind: MetricKind
    description: str
    reported: bool = False


class MetricRegistry:
    """Metric definitions by name; curricula are validated against one.

    A lab adds its own metrics with :meth:`with_metrics` (a curriculum may also declare
    reported session metrics of its own).
    """

    def __init__(self, definitions: Iterable[MetricDefinition] = ()) -> None:
        self._by_name: dict[str, MetricDefinition] = {}
        for definition in definitions:
            if definition.name in self._by_name:
                raise ValueError(f"metric {definition.name!r} is defined twice")
            self._by_name[definition.name] = definition

    def get(self, name: str) -> MetricDefinition | None:
        """The definition of ``name``, or None when the registry does not know it."""
        return self._by_name.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[MetricDefinition]:
        return iter(self._by_name.values())

    def names(self) -> list[str]:
        """Every metric name, sorted."""
        return sorted(self._by_name)

    def with_metrics(self, definitions: Iterable[MetricDefinition]) -> MetricRegistry:
        """A registry with these definitions added (a name may not be redefined)."""
        return MetricRegistry([*self._by_name.values(), *definitions])


COMPUTED_SESSION_METRICS = ("session_trials", "finished_trials", "session_accuracy")
"""Session metrics Shaping computes from trial events, in the order records keep them."""

METRICS = MetricRegistry(
    [
        MetricDefinition(
            "accuracy",
            "trials",
            "Fraction correct among the last `window` responded trials, across sessions "
            "(misses excluded); Autopilot's Accuracy(threshold, window).",
        ),
        MetricDefinition("session_trials", "session", "Trials in a session, misses included."),
        MetricDefinition(
            "finished_trials",
            "session",
            "Responded (correct or incorrect) trials in a session; AIND's finished_trials, "
            "the trials that were not ignored.",
        ),
        MetricDefinition(
            "session_accuracy",
            "session",
            "Fraction correct among a session's responded trials (none responded: no value).",
        ),
        MetricDefinition(
            "sessions_at_stage",
            "counter",
            "Sessions in a row run at the judged session's stage, including it; it restarts "
            "at 1 when a session runs another stage than the one before (a progress, a "
            "rollback or a trainer's override). AIND's session_at_current_stage.",
        ),
        MetricDefinition(
            "session_total", "counter", "Sessions run in all, including the judged one."
        ),
        MetricDefinition(
            "foraging_efficiency",
            "session",
            "Rewards earned over the rewards an ideal forager would earn (AIND dynamic "
            "foraging); reported per session by the rig or the analysis pipeline.",
            reported=True,
        ),
        MetricDefinition(
            "peak_dprime",
            "session",
            "Highest rolling d' of a session (mtrain / AllenSDK); reported per session.",
            reported=True,
        ),
        MetricDefinition(
            "engaged_trials",
            "session",
            "Trials of a session in an engaged period (mtrain / AllenSDK); reported.",
            reported=True,
        ),
        MetricDefinition(
            "response_bias",
            "session",
            "Fraction of a session's responses that were licks, go or not (mtrain / "
            "AllenSDK); reported.",
            reported=True,
        ),
        MetricDefinition(
            "contingent_trials",
            "session",
            "Trials of a session whose outcome depended on the response (mtrain); reported.",
            reported=True,
        ),
        MetricDefinition(
            "aborted_fraction",
            "session",
            "Fraction of a session's trials aborted by an early lick (mtrain); reported.",
            reported=True,
        ),
    ]
)
"""The metrics Shaping knows. Issue #4 grows this into the full metrics library."""

__all__ = [
    "MAX_SESSION_HISTORY",
    "MAX_TRIAL_WINDOW",
    "METRICS",
    "MetricDefinition",
    "MetricKind",
    "MetricRegistry",
    "SessionMetrics",
    "clean",
    "session_record",
]


def clean(value: float | None) -> float | None:
    """A metric value as stored: NaN and infinities become None (no value)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def session_record(
    session: OpenSession, reported: Mapping[str, float | None] | None = None
) -> SessionRecord:
    """The metrics of a finished session: the computed ones, then the reported ones.

    A reported value never replaces a computed one: Shaping's own count of the trials it saw
    is the one rules read.
    """
    responded = session.n_correct + session.n_incorrect
    values: dict[str, float | None] = {
        "session_trials": float(session.n_trials),
        "finished_trials": float(responded),
        "session_accuracy": session.n_correct / responded if responded else None,
    }
    for name, value in (reported or {}).items():
        if name not in values:
            values[name] = clean(value)
    return SessionRecord(session_id=session.session_id, stage=session.stage, metrics=values)


class SessionMetrics:
    """Metric values for judging ``session``, given the state folded up to its end."""

    def __init__(self, state: MouseState, session: OpenSession) -> None:
        self._state = state
        self._session = session

    def value(self, metric: str, window: int | None = None) -> float | None:
        """The value of a counter or trial-window metric, or the judged session's value of a
        session metric; None when it cannot be computed."""
        if metric == "accuracy":
            outcomes = self._state.recent_outcomes
            if window:
                outcomes = outcomes[-window:]
            return outcomes.count("1") / len(outcomes) if outcomes else None
        if metric == "sessions_at_stage":
            return float(self._state.sessions_at_stage)
        if metric == "session_total":
            return float(self._state.session_total)
        values = self.series(metric)
        return values[-1] if values else None

    def series(self, metric: str) -> Sequence[float | None]:
        """A session metric's values, oldest first, ending with the judged session."""
        return [record.metrics.get(metric) for record in self._state.history]
