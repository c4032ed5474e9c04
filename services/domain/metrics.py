"""Metrics the curriculum rules read: the registry of their definitions, and their values for a
mouse at decision time.

- :mod:`shaping.services.domain.metric_registry`: the kinds of metric, their arguments, the registry
  and the :class:`MetricView` metric functions read.
- :mod:`shaping.services.domain.metric_library`: the metrics Shaping ships (``METRICS``).
- :mod:`shaping.services.domain.session_stats`: what a trial adds to its session.
- this module: a finished session's record (:func:`session_record`), the history and counters
  it feeds (:func:`append_record`, :func:`count_session`) and the values at a decision
  (:class:`SessionMetrics`).

The contract a recompute relies on: a metric value at a decision is a pure function of the
mouse's session records up to and including the judged one (``MouseState.history``) and its
counters (``session_total``, ``sessions_at_stage``, ``session_counts``). Nothing is read from
a separate rolling buffer.

A session metric is either computed by Shaping from the trial events or *reported*: computed
by the rig or an analysis pipeline (AIND's foraging efficiency, mtrain's peak d') and sent in
``SessionEnded.metrics``, or read from a column of a session table by ``shaping evaluate``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from shaping.schemas.events import ParamValue
from shaping.services.domain.metric_library import builtin_metrics
from shaping.services.domain.metric_registry import (
    HABITUATION,
    MAX_DATE_WINDOW,
    Argument,
    FinishedSession,
    MetricDefinition,
    MetricKind,
    MetricRegistry,
    MetricView,
    finite,
)
from shaping.services.domain.state import (
    MAX_SESSION_HISTORY,
    MAX_TRIAL_WINDOW,
    MouseState,
    OpenSession,
    SessionRecord,
)

METRICS = MetricRegistry(builtin_metrics())
"""The metrics Shaping knows. A lab registers its own here (``METRICS.register`` or the
``METRICS.metric`` decorator) before its curricula load."""

COMPUTED_SESSION_METRICS = ("session_trials", "finished_trials", "session_accuracy")
"""The first session metrics a record keeps, in this order (then the other computed ones,
then the reported ones)."""

__all__ = [
    "HABITUATION",
    "MAX_DATE_WINDOW",
    "MAX_SESSION_HISTORY",
    "MAX_TRIAL_WINDOW",
    "METRICS",
    "Argument",
    "FinishedSession",
    "MetricDefinition",
    "MetricKind",
    "MetricRegistry",
    "MetricView",
    "SessionMetrics",
    "append_record",
    "clean",
    "count_session",
    "rename_stage",
    "session_record",
]


def clean(value: float | None) -> float | None:
    """A metric value as stored: NaN and infinities become None (no value)."""
    return finite(value)


def session_record(
    session: OpenSession,
    reported: Mapping[str, float | None] | None = None,
    duration_s: float | None = None,
    registry: MetricRegistry | None = None,
) -> SessionRecord:
    """The record of a finished session: its facts, its statistics, and the values of every
    computed session metric, then the reported ones.

    A reported value never replaces a computed one: Shaping's own count of the trials it saw
    is the one rules read.
    """
    registry = registry or METRICS
    finished = FinishedSession(
        stats=session.stats,
        duration_s=duration_s,
        start_delay_s=session.start_delay_s,
        task_protocol=session.task_protocol,
    )
    computed = [d for d in registry if d.kind == "session" and d.function is not None]
    computed.sort(key=lambda d: _computed_order(d.name))
    values: dict[str, float | None] = {}
    for definition in computed:
        assert definition.function is not None
        values[definition.name] = finite(definition.function(finished))
    for name, value in (reported or {}).items():
        if name not in values:
            values[name] = clean(value)
    return SessionRecord(
        session_id=session.session_id,
        stage=session.stage,
        metrics=values,
        session_date=session.session_date,
        task_protocol=session.task_protocol,
        ephys_rig=session.ephys_rig,
        start_delay_s=session.start_delay_s,
        stats=session.stats,
    )


def _computed_order(name: str) -> int:
    return (
        COMPUTED_SESSION_METRICS.index(name)
        if name in COMPUTED_SESSION_METRICS
        else len(COMPUTED_SESSION_METRICS)
    )


def append_record(
    history: Sequence[SessionRecord], record: SessionRecord
) -> tuple[SessionRecord, ...]:
    """The history with ``record`` appended: the last MAX_SESSION_HISTORY records, where a
    record keeps its per-trial strings only while the records after it hold fewer than
    MAX_TRIAL_WINDOW responded trials (every trial window up to the newest session stays
    exact; summaries are never dropped)."""
    kept = [*history, record][-MAX_SESSION_HISTORY:]
    newer = 0
    for index in range(len(kept) - 1, -1, -1):
        current = kept[index]
        if newer >= MAX_TRIAL_WINDOW and current.stats is not None and current.stats.detail:
            kept[index] = current.model_copy(update={"stats": current.stats.without_detail()})
        if current.stats is not None:
            newer += current.stats.n_responded
    return tuple(kept)


def count_session(
    counts: Mapping[str, Mapping[str, int]], record: SessionRecord
) -> dict[str, dict[str, int]]:
    """The ``session_counts`` counter with one more session: by stage run, then protocol."""
    protocol = record.task_protocol or ""
    updated = {stage: dict(by_protocol) for stage, by_protocol in counts.items()}
    by_protocol = updated.setdefault(record.stage, {})
    by_protocol[protocol] = by_protocol.get(protocol, 0) + 1
    return updated


def rename_stage(
    counts: Mapping[str, Mapping[str, int]], old: str, new: str
) -> dict[str, dict[str, int]]:
    """``session_counts`` after a migration renamed a stage (its sessions count as the new
    stage's)."""
    updated: dict[str, dict[str, int]] = {}
    for stage, by_protocol in counts.items():
        target = updated.setdefault(new if stage == old else stage, {})
        for protocol, count in by_protocol.items():
            target[protocol] = target.get(protocol, 0) + count
    return updated


def _argument_key(arguments: Mapping[str, ParamValue] | None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((arguments or {}).items()))


class SessionMetrics:
    """Metric values for judging the newest session of ``state.history``.

    Values are computed on demand from the records and counters, and cached for the decision
    (a psychometric fit read by several rules is fitted once).

    Args:
        state: the mouse's state folded up to the end of the judged session.
        session: the judged session (kept for callers; the records are what is read).
        registry: where metric functions are looked up (default: ``METRICS``).
    """

    def __init__(
        self,
        state: MouseState,
        session: OpenSession | None = None,
        registry: MetricRegistry | None = None,
    ) -> None:
        self._state = state
        self._session = session
        self.registry = registry or METRICS
        self.view = MetricView(
            state.history,
            session_total=state.session_total,
            sessions_at_stage=state.sessions_at_stage,
            session_counts=state.session_counts,
        )
        self._values: dict[Any, Any] = {}

    def bind(self, registry: MetricRegistry) -> SessionMetrics:
        """The same values, with metric functions looked up in ``registry`` (a curriculum's,
        which may hold a lab's metrics)."""
        if registry is self.registry:
            return self
        bound = SessionMetrics(self._state, self._session, registry)
        bound.view = self.view
        return bound

    def value(
        self,
        metric: str,
        window: int | None = None,
        arguments: Mapping[str, ParamValue] | None = None,
    ) -> float | None:
        """A counter's, trial window's or window's value, or the judged session's value of a
        session metric; None when it cannot be computed."""
        key = ("value", metric, window, _argument_key(arguments))
        if key in self._values:
            cached: float | None = self._values[key]
            return cached
        definition = self.registry.get(metric)
        result: float | None
        if definition is None or definition.function is None or definition.kind == "session":
            values = self.series(metric)
            result = values[-1] if values else None
        else:
            kwargs: dict[str, Any] = dict(arguments or {})
            if window is not None:
                kwargs["window"] = window
            raw = definition.function(self.view, **kwargs)
            result = finite(raw) if not isinstance(raw, list) else None
        self._values[key] = result
        return result

    def series(
        self, metric: str, arguments: Mapping[str, ParamValue] | None = None
    ) -> Sequence[float | None]:
        """A session metric's values, oldest first, ending with the judged session; or the
        values of a window-series metric over its window."""
        definition = self.registry.get(metric)
        if definition is not None and definition.kind == "window_series":
            key = ("series", metric, _argument_key(arguments))
            if key not in self._values:
                assert definition.function is not None
                raw = definition.function(self.view, **dict(arguments or {}))
                self._values[key] = [finite(v) for v in raw]
            values: list[float | None] = self._values[key]
            return values
        return [record.metrics.get(metric) for record in self._state.history]
