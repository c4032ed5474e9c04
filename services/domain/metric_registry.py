"""The metric registry: named metrics, their arguments and the functions that compute them.

Five kinds of metric exist, and the rule language reads each differently:

- ``counter``: one number at decision time (``session_total``; with arguments,
  ``session_count(stage="in training")``).
- ``session``: one value per finished session, oldest first; a rule reads the judged
  session's value by name (``finished_trials``), an earlier one by index
  (``finished_trials[-2]``) or the last k sessions by slice (``mean(finished_trials[-5:])``).
  Computed ones are computed once, when the session ends, and kept in its record; *reported*
  ones come from ``SessionEnded.metrics`` (or a session table's column).
- ``trials``: over the last ``window`` trials across sessions (``accuracy(window=200)``).
- ``window``: one number pooled over the last k sessions or the last k dates
  (``psych_threshold(dates=3)``, ``window_rt_zero(sessions=5)``).
- ``window_series``: one value per session or date of such a window, oldest first, for
  ``all``/``any``/``min``/``mean``... (``all(window_perf_easy(dates=3) > 0.9)``).

A lab adds a metric by registering a function::

    from shaping.services.domain.metrics import METRICS, Argument

    @METRICS.metric("early_licks", "counter", "Early licks of the judged session ...")
    def early_licks(view):
        return view.judged.metrics.get("early_licks")

The curriculum validator checks every name and argument against the registry when a
curriculum loads.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shaping.schemas.events import ParamValue
from shaping.services.domain.session_stats import SessionStats
from shaping.services.domain.state import MAX_SESSION_HISTORY, MAX_TRIAL_WINDOW, SessionRecord

MetricKind = Literal["counter", "session", "trials", "window", "window_series"]
ArgumentType = Literal["int", "number", "text", "bool"]

MAX_DATE_WINDOW = 7
"""Most dates a window metric may pool (``dates=k``)."""

HABITUATION = "habituation"
"""A session whose ``task_protocol`` is this carries no performance data for window metrics
(IBL skips habituation dates; a habituation date still takes its place in a date window)."""

WINDOW_KINDS = ("window", "window_series")


@dataclass(frozen=True)
class Argument:
    """A keyword argument a metric takes in rules (``block=0.2``, ``protocol="biased"``).

    Attributes:
        name: the keyword.
        type: ``int``, ``number``, ``text`` or ``bool``.
        required: whether a rule must give it.
        minimum: lowest allowed number.
        maximum: highest allowed number.
        choices: the allowed values, if limited.
        description: what it selects.
    """

    name: str
    type: ArgumentType
    required: bool = False
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[ParamValue, ...] | None = None
    description: str = ""

    def check(self, value: ParamValue) -> str | None:
        """Why ``value`` is not allowed, or None when it is."""
        if self.type == "bool":
            return None if isinstance(value, bool) else "must be True or False"
        if self.type == "text":
            if not isinstance(value, str):
                return 'must be a quoted string, e.g. "biased"'
        elif isinstance(value, bool) or not isinstance(value, int | float):
            return "must be a number"
        elif self.type == "int" and not float(value).is_integer():
            return "must be a whole number"
        else:
            low = self.minimum is not None and value < self.minimum
            high = self.maximum is not None and value > self.maximum
            if (low or high) and self.minimum is not None and self.maximum is not None:
                return f"must be between {self.minimum:g} and {self.maximum:g}"
            if low:
                return f"must be at least {self.minimum:g}"
            if high:
                return f"must be at most {self.maximum:g}"
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(repr(c) for c in self.choices)}"
        return None


WINDOW_SESSIONS = Argument(
    "sessions",
    "int",
    minimum=1,
    maximum=MAX_SESSION_HISTORY,
    description="pool the last k sessions, the judged one included",
)
WINDOW_DATES = Argument(
    "dates",
    "int",
    minimum=1,
    maximum=MAX_DATE_WINDOW,
    description="pool the judged session's date and the k-1 dates with sessions before it",
)
TRIAL_WINDOW = Argument(
    "window",
    "int",
    required=True,
    minimum=1,
    maximum=MAX_TRIAL_WINDOW,
    description="the last N trials across sessions",
)


@dataclass(frozen=True)
class MetricDefinition:
    """What a metric means, how rules may read it, and how it is computed.

    Attributes:
        name: the name rules use.
        kind: ``counter``, ``session``, ``trials``, ``window`` or ``window_series``.
        description: the definition in words, and where it comes from.
        reported: whether the rig or an analysis pipeline supplies the value (per session)
            rather than Shaping computing it from trial events.
        function: how it is computed (None: reported). A ``session`` function takes the
            finished session (:class:`FinishedSession`); the others take a
            :class:`MetricView` and the rule's arguments as keywords (``window``, ``sessions``
            or ``dates`` among them).
        arguments: the keyword arguments it takes besides ``window``/``sessions``/``dates``.
    """

    name: str
    kind: MetricKind
    description: str
    reported: bool = False
    function: Callable[..., Any] | None = None
    arguments: tuple[Argument, ...] = ()

    @property
    def called(self) -> bool:
        """Whether rules call it with parentheses (it takes arguments)."""
        return self.kind in ("trials", *WINDOW_KINDS) or bool(self.arguments)

    def all_arguments(self) -> tuple[Argument, ...]:
        """Every keyword argument, the window ones included."""
        if self.kind == "trials":
            return (TRIAL_WINDOW, *self.arguments)
        if self.kind in WINDOW_KINDS:
            return (WINDOW_SESSIONS, WINDOW_DATES, *self.arguments)
        return self.arguments

    def check_arguments(self, given: Mapping[str, ParamValue]) -> list[str]:
        """Every problem with the arguments a rule gives (empty: they are fine)."""
        known = {a.name: a for a in self.all_arguments()}
        problems = []
        for name, value in given.items():
            argument = known.get(name)
            if argument is None:
                takes = ", ".join(known) or "no arguments"
                problems.append(f"{self.name} has no argument {name!r} (it takes {takes})")
                continue
            why = argument.check(value)
            if why is not None:
                shown = f"{value:g}" if isinstance(value, float) else repr(value)
                problems.append(f"{self.name}: {name} {why}, not {shown}")
        for argument in known.values():
            if argument.required and argument.name not in given:
                problems.append(f"{self.name} needs {argument.name}=... ({argument.description})")
        if self.kind in WINDOW_KINDS and ("sessions" in given) == ("dates" in given):
            problems.append(
                f"{self.name} pools a window: give exactly one of sessions=k or dates=k"
            )
        return problems

    def usage(self) -> str:
        """How a rule reads it, e.g. ``psych_bias(dates=3, block=0.2)``."""
        if not self.called:
            return self.name
        parts = []
        for argument in self.all_arguments():
            text = f"{argument.name}=<{argument.type}>"
            parts.append(text if argument.required else f"[{text}]")
        if self.kind in WINDOW_KINDS:
            parts[:2] = ["sessions=<int> | dates=<int>"]
        return f"{self.name}({', '.join(parts)})"


class MetricRegistry:
    """Metric definitions by name; curricula are validated against one.

    A lab adds its own metrics with :meth:`register` (or the :meth:`metric` decorator) before
    curricula load; :meth:`with_metrics` gives a copy with more definitions (a curriculum's
    declared reported metrics).
    """

    def __init__(self, definitions: Iterable[MetricDefinition] = ()) -> None:
        self._by_name: dict[str, MetricDefinition] = {}
        for definition in definitions:
            self.add(definition)

    def add(self, definition: MetricDefinition) -> MetricDefinition:
        """Adds a definition (a name may not be defined twice)."""
        if definition.name in self._by_name:
            raise ValueError(f"metric {definition.name!r} is defined twice")
        if definition.function is None and not definition.reported:
            raise ValueError(f"metric {definition.name!r} needs a function (or reported=True)")
        if definition.reported and definition.kind not in ("session", "counter"):
            raise ValueError(
                f"a reported metric is a session or counter one, not {definition.kind}"
            )
        self._by_name[definition.name] = definition
        return definition

    def register(
        self,
        name: str,
        kind: MetricKind,
        function: Callable[..., Any],
        description: str,
        arguments: Sequence[Argument] = (),
    ) -> MetricDefinition:
        """Registers a computed metric (see the module docstring for the function's form)."""
        return self.add(
            MetricDefinition(name, kind, description, False, function, tuple(arguments))
        )

    def metric(
        self, name: str, kind: MetricKind, description: str, arguments: Sequence[Argument] = ()
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator form of :meth:`register`."""

        def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
            self.register(name, kind, function, description, arguments)
            return function

        return decorate

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


@dataclass(frozen=True)
class FinishedSession:
    """What a ``session`` metric function reads: a session's statistics and facts at its end."""

    stats: SessionStats
    duration_s: float | None
    start_delay_s: float | None
    task_protocol: str | None


@dataclass
class Unit:
    """One session or one date of a window: the sessions pooled in it, oldest first."""

    date: str | None
    records: list[SessionRecord]

    @property
    def last(self) -> SessionRecord:
        """The unit's last session (IBL reads a date's protocol and rig from it)."""
        return self.records[-1]

    @property
    def protocol(self) -> str | None:
        """The task protocol of the unit's last session."""
        return self.last.task_protocol

    @property
    def ephys_rig(self) -> bool:
        """Whether the unit's last session ran on an ephys rig."""
        return self.last.ephys_rig

    @property
    def start_delay_s(self) -> float | None:
        """The longest start delay among the unit's sessions."""
        delays = [r.start_delay_s for r in self.records if r.start_delay_s is not None]
        return max(delays) if delays else None

    @property
    def stats(self) -> list[SessionStats]:
        """The statistics of its sessions that have them."""
        return [r.stats for r in self.records if r.stats is not None]


class MetricView:
    """A mouse's metric inputs at one decision: its session records up to and including the
    judged one, and its counters. Metric functions read only this, so a metric value is a pure
    function of the records and counters (what a recompute relies on)."""

    def __init__(
        self,
        history: Sequence[SessionRecord],
        *,
        session_total: int = 0,
        sessions_at_stage: int = 0,
        session_counts: Mapping[str, Mapping[str, int]] | None = None,
    ) -> None:
        self.history = list(history)
        self.session_total = session_total
        self.sessions_at_stage = sessions_at_stage
        self.session_counts = session_counts or {}
        self._units: dict[tuple[str, int], list[Unit]] = {}
        self.cache: dict[Any, Any] = {}

    @property
    def judged(self) -> SessionRecord | None:
        """The judged session's record (the newest), if any."""
        return self.history[-1] if self.history else None

    def units(self, sessions: int | None = None, dates: int | None = None) -> list[Unit]:
        """The window's sessions or dates with data, oldest first.

        ``sessions=k``: the last k sessions, the judged one included. ``dates=k``: the judged
        session's date and the k-1 earlier dates on which the mouse had sessions (sessions
        dated after the judged one are not in it, as ibllib computes a date's status from that
        date and earlier ones); a date's sessions are pooled. Habituation sessions (and dates
        whose last session is one) take their place in the window but carry no data.
        """
        key = ("dates", dates) if dates is not None else ("sessions", sessions or 1)
        if key in self._units:
            return self._units[key]
        judged = self.judged
        units: list[Unit] = []
        if judged is not None and dates is not None:
            until = judged.session_date
            eligible = [r for r in self.history if _on_or_before(r.session_date, until)]
            chosen = sorted({r.session_date or "" for r in eligible})[-dates:]
            for day in chosen:
                records = [r for r in eligible if (r.session_date or "") == day]
                units.append(Unit(day or None, records))
        elif judged is not None:
            units = [Unit(r.session_date, [r]) for r in self.history[-(sessions or 1) :]]
        units = [u for u in units if u.protocol != HABITUATION]
        self._units[key] = units
        return units

    def window(self, arguments: Mapping[str, Any]) -> list[Unit]:
        """The units of the window the arguments name (``sessions`` or ``dates``)."""
        return self.units(arguments.get("sessions"), arguments.get("dates"))

    def recent_trials(
        self, count: int, responded: bool = False
    ) -> list[tuple[str, str, int | None]]:
        """The last ``count`` trials across sessions, oldest first, as (outcome code, side
        code, reaction time in ms); ``responded`` keeps only correct and incorrect trials.

        Only records that still keep their per-trial strings are read (see ``trim``)."""
        key = ("trials", count, responded)
        if key in self.cache:
            return list(self.cache[key])
        found: list[tuple[str, str, int | None]] = []
        for record in reversed(self.history):
            stats = record.stats
            if stats is None or not stats.detail:
                break
            trials = list(zip(stats.outcomes, stats.sides, stats.rts_ms, strict=True))
            if responded:
                trials = [t for t in trials if t[0].lower() != "m"]
            found[:0] = trials[-(count - len(found)) :]
            if len(found) >= count:
                break
        self.cache[key] = found
        return list(found)


def _on_or_before(day: str | None, until: str | None) -> bool:
    if day is None or until is None:
        return True
    return day <= until


def median(values: Sequence[float]) -> float | None:
    """The median (the mean of the two middle values for an even count); None when empty."""
    ordered = sorted(values)
    n = len(ordered)
    if n == 0:
        return None
    middle = n // 2
    if n % 2:
        return float(ordered[middle])
    return (ordered[middle - 1] + ordered[middle]) / 2


def ratio(numerator: float, denominator: float) -> float | None:
    """numerator / denominator, None when the denominator is 0."""
    return numerator / denominator if denominator else None


def finite(value: float | None) -> float | None:
    """A value as stored: NaN and infinities become None (no value)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


__all__ = [
    "HABITUATION",
    "MAX_DATE_WINDOW",
    "Argument",
    "FinishedSession",
    "MetricDefinition",
    "MetricKind",
    "MetricRegistry",
    "MetricView",
    "Unit",
    "finite",
    "median",
    "ratio",
]
