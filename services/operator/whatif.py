"""``shaping whatif``: recorded sessions replayed open-loop through another curriculum.

The question a lab asks before changing a curriculum: had the mice been on NEW, where would
each be now, and how much sooner or later would it have reached each stage? What-if answers it
from the sessions already recorded, without touching the live system:

- The recorded events are read from the event log: the Kafka events topic from offset 0 with a
  throwaway consumer (no group, nothing committed, nothing produced), or the ``events.jsonl``
  of an embedded install.
- The path a mouse took (**live**) is what the processor decides over that log: the same
  :class:`~services.processor.step.ProcessorStep` over the same curricula (shipped, a lab's
  folder, published versions). Per session: the stage it ran and the decision after it. A
  mouse stays on the curriculum version the log says it was on: an enrolment that names no
  version is pinned to the version it was accepted on (the output topics, read with the same
  throwaway consumer, record it; else the mouse's sessions say it), not to the newest known
  today (:class:`~services.operator.replay.EnrolmentPins`).
- The path under **NEW** is open loop: each mouse's recorded behaviour (its trials and session
  metrics, as recorded) is judged by NEW, and every session is taken to run the stage NEW would
  have assigned. The same :class:`~services.domain.TrainingCore` folds the events, so the
  session metrics (``SessionRecord``), trial windows and rules are the processor's own.
- ``since`` switches the mice to NEW at their first session on or after that date, keeping
  their stage (when NEW has it) and their session counts, as a migration would.

Open loop cannot know how a mouse would have behaved on another stage's parameters: it judges
the behaviour recorded on the stage it actually ran. ``docs/replay.md`` says more.
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from shaping.schemas.codec import EventCodec
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    Event,
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.domain import CurriculumCatalog, CurriculumEngine, MouseState, TrainingCore
from shaping.services.domain.core import initial_state
from shaping.services.domain.errors import ImpossibleEvent
from shaping.services.operator.errors import OperatorError
from shaping.services.operator.replay import EnrolmentPins, PinnedCore, SourceRecord
from shaping.services.processor.step import ClockWindow, ProcessorStep

CSV_COLUMNS = (
    "mouse_id",
    "session",
    "session_id",
    "session_date",
    "curriculum_live",
    "curriculum_new",
    "stage_live",
    "stage_new",
    "decision_live",
    "decision_new",
    "next_stage_live",
    "next_stage_new",
    "differs",
)
"""Columns of the CSV: one row per recorded session of each mouse."""


@dataclass(frozen=True)
class Judged:
    """One session under one curriculum: the stage it ran, and the decision after it."""

    stage: str
    decision: str
    next_stage: str


@dataclass
class SessionRow:
    """A recorded session of a mouse under both curricula."""

    session: int
    session_id: str
    session_date: str
    live: Judged
    new: Judged

    @property
    def differs(self) -> bool:
        """Whether the stage run or the stage after differs."""
        return (self.live.stage, self.live.next_stage) != (self.new.stage, self.new.next_stage)


@dataclass
class MousePaths:
    """A mouse's stage paths under its own curriculum and under NEW.

    Attributes:
        mouse_id: the mouse.
        curriculum_live: ``name@version`` the mouse is on.
        start_live: the stage it started on (live).
        start_new: the stage it starts on under NEW (its stage at the switch with ``since``).
        rows: its judged sessions, oldest first.
        skipped: recorded events NEW could not take (e.g. a session NEW finds impossible).
    """

    mouse_id: str
    curriculum_live: str
    start_live: str | None
    start_new: str | None
    rows: list[SessionRow] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def path(self, which: str) -> list[str]:
        """Stage of each session, then the stage of the next one."""
        judged = [getattr(row, which) for row in self.rows]
        start = self.start_live if which == "live" else self.start_new
        if not judged:
            return [start] if start else []
        return [j.stage for j in judged] + [judged[-1].next_stage]

    @property
    def first_difference(self) -> int | None:
        """Number of the first session whose stage differs (``len(rows) + 1``: the next one,
        not yet run); None when both paths agree."""
        for number, (live, new) in enumerate(
            zip(self.path("live"), self.path("new"), strict=False), 1
        ):
            if live != new:
                return number
        return None

    def reached(self, which: str) -> dict[str, int]:
        """Sessions finished before the mouse first ran (or was assigned) each stage."""
        reached: dict[str, int] = {}
        for done, stage in enumerate(self.path(which)):
            reached.setdefault(stage, done)
        return reached


@dataclass
class WhatIf:
    """The result: every mouse's paths, and which curricula were compared."""

    new_curriculum: str
    mice: list[MousePaths]

    def stages(self) -> list[str]:
        """Every stage met on any path, in order of first appearance."""
        order: list[str] = []
        for mouse in self.mice:
            for stage in mouse.path("live") + mouse.path("new"):
                if stage not in order:
                    order.append(stage)
        return order


def parse_date(text: str) -> date:
    """An ISO date (``2026-01-07``).

    Raises:
        OperatorError: when it is not one.
    """
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise OperatorError(f"not a date like 2026-01-07: {text!r}") from None


def load_new_curriculum(spec: str, catalog: CurriculumCatalog) -> CurriculumEngine:
    """NEW: a curriculum file (Shaping, AIND or mtrain), or ``NAME@VERSION`` / ``NAME`` of a
    curriculum the processor knows.

    Raises:
        OperatorError: when it is neither.
    """
    from shaping.services.curricula.errors import CurriculumInvalid, ImportFailed
    from shaping.services.curricula.sources import load_any
    from shaping.services.domain.errors import CurriculumError

    path = Path(spec)
    if path.is_file():
        try:
            return load_any(path)
        except (CurriculumInvalid, ImportFailed) as exc:
            raise OperatorError(f"{spec} is not a valid curriculum:\n{exc}") from None
    name, _, version = spec.partition("@")
    try:
        return catalog.get(name, version or None)
    except CurriculumError:
        known = [f"{c.name}@{c.version}" for c in catalog]
        close = difflib.get_close_matches(spec, known, n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise OperatorError(
            f"no curriculum file {spec!r} and no known curriculum of that name{hint}"
        ) from None


class _Recorder:
    """Collects, per mouse, the sessions judged in one fold."""

    def __init__(self) -> None:
        self.judged: dict[str, list[tuple[str, Judged]]] = {}
        self.started: dict[str, str] = {}

    def note(self, outputs: Iterable[Event]) -> None:
        for event in outputs:
            if isinstance(event, StageTransitioned) and event.session_id is not None:
                judged = Judged(event.from_stage, event.decision, event.to_stage)
                self.judged.setdefault(event.mouse_id, []).append((event.session_id, judged))


def _session_date(event: SessionStarted) -> str:
    getter = getattr(event, "effective_date", None)
    return str(getter) if getter is not None else event.occurred_at.date().isoformat()


def run_whatif(
    records: Iterable[SourceRecord],
    events_topic: str,
    catalog: CurriculumCatalog,
    new: CurriculumEngine,
    mice: Sequence[str] | None = None,
    since: date | None = None,
    outputs: Iterable[Event] = (),
    clock: ClockWindow | None = None,
    *,
    codec: EventCodec,
) -> WhatIf:
    """Judges the recorded sessions under the mice's curricula and, open loop, under ``new``.

    The live path keeps every mouse on the curriculum version the log says it was on: an
    enrolment that names no version is pinned to the version it was accepted on
    (:class:`~services.operator.replay.EnrolmentPins`), not to the newest one known today.

    Args:
        records: the event log (only the events topic is read).
        events_topic: name of the events topic in ``records``.
        catalog: the curricula the processor knows (its CurriculumPublished events are added
            as the log goes).
        new: the curriculum to try.
        mice: only these mice (default: every mouse with an enrolment).
        since: switch to ``new`` at the first session on or after this date.
        outputs: the live outputs (decisions, assignments, dead letters), which record the
            version each enrolment was accepted on; without them the sessions tell it.
        clock: the processor's window of accepted dates (its settings; None: the default).
        codec: the event codec (:func:`shaping.services.bootstrap.codec`).

    Raises:
        OperatorError: for a mouse of ``mice`` that the log does not have.
    """
    pins = EnrolmentPins(outputs, codec=codec)
    live_step = ProcessorStep(PinnedCore(catalog, pins), codec, clock=clock)
    new_core = TrainingCore(CurriculumCatalog([new]))
    wanted = set(mice) if mice else None
    live_states: dict[str, MouseState] = {}
    new_states: dict[str, MouseState] = {}
    switched: set[str] = set()
    live = _Recorder()
    new_rec = _Recorder()
    dates: dict[str, str] = {}
    paths: dict[str, MousePaths] = {}
    seen: set[str] = set()
    for record in pins.read(r for r in records if r.topic == events_topic):
        mouse = (record.key or b"").decode("utf-8", "replace")
        seen.add(mouse)
        # Other mice's events change nothing here, but published curricula do.
        if wanted is not None and mouse not in wanted and not _is_publication(codec, record.value):
            continue
        before = live_states.get(mouse)
        result = live_step.process(
            before,
            record.key,
            record.value,
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
        )
        event = result.event
        if result.rejected or event is None or result.outcome == "duplicate":
            continue  # refused, or a redelivery the processor dropped
        if result.state is not None:
            live_states[mouse] = result.state
        live.note(o.event for o in result.outputs)
        if isinstance(event, MouseEnrolled):
            state = live_states.get(mouse)
            paths[mouse] = MousePaths(
                mouse,
                f"{event.curriculum_name}@{state.curriculum_version if state else '?'}",
                state.stage if state else None,
                None,
            )
        if mouse not in paths:
            continue
        if isinstance(event, SessionStarted) and event.session_id:
            dates[event.session_id] = _session_date(event)
        if since is None or mouse in switched:
            _fold_new(new_core, new, mouse, event, new_states, new_rec, paths[mouse])
        elif (
            isinstance(event, SessionStarted) and date.fromisoformat(_session_date(event)) >= since
        ):
            switched.add(mouse)
            new_states[mouse] = _switch(before or initial_state(mouse), new)
            paths[mouse].start_new = new_states[mouse].stage
            _fold_new(new_core, new, mouse, event, new_states, new_rec, paths[mouse])
        else:
            new_rec.note(o.event for o in result.outputs)
        if isinstance(event, MouseEnrolled) and since is not None:
            paths[mouse].start_new = paths[mouse].start_live
        if mouse in live_states:
            state = live_states[mouse]
            paths[mouse].curriculum_live = f"{state.curriculum_name}@{state.curriculum_version}"
    if wanted is not None:
        unknown = sorted(wanted - set(paths))
        if unknown:
            hints = []
            for mouse in unknown:
                close = difflib.get_close_matches(mouse, sorted(seen), n=3, cutoff=0.5)
                hints.append(mouse + (f" (did you mean {' or '.join(close)}?)" if close else ""))
            raise OperatorError(f"no enrolled mouse {', '.join(hints)} in the event log")
    result_mice = []
    for mouse in sorted(paths):
        entry = paths[mouse]
        # A recomputed decision replaces the earlier one of its session (same place).
        new_by_session = dict(new_rec.judged.get(mouse, []))
        live_by_session = dict(live.judged.get(mouse, []))
        for number, (session_id, judged) in enumerate(live_by_session.items(), start=1):
            under_new = new_by_session.get(session_id)
            if under_new is None:
                continue
            entry.rows.append(
                SessionRow(number, session_id, dates.get(session_id, ""), judged, under_new)
            )
        result_mice.append(entry)
    return WhatIf(f"{new.name}@{new.version}", result_mice)


def _is_publication(codec: Any, value: bytes | None) -> bool:
    try:
        return codec.decode(value).event_type == "CurriculumPublished"
    except SerializationError:
        return False


def _switch(state: MouseState, new: CurriculumEngine) -> MouseState:
    """The mouse moved to ``new``, as a migration would: same stage if ``new`` has it, same
    session counts and history."""
    stage = (
        state.stage if state.stage is not None and new.has_stage(state.stage) else new.first_stage
    )
    return state.model_copy(
        update={
            "curriculum_name": new.name,
            "curriculum_version": new.version,
            "stage": stage,
            "last_assignment": None,
        }
    )


def _fold_new(
    core: TrainingCore,
    new: CurriculumEngine,
    mouse: str,
    event: Event,
    states: dict[str, MouseState],
    recorder: _Recorder,
    paths: MousePaths,
) -> None:
    """Folds one recorded event into the mouse's state under NEW (open loop)."""
    state = states.get(mouse) or initial_state(mouse)
    rewritten: Event
    if isinstance(event, MouseEnrolled):
        start = (
            event.start_stage if event.start_stage and new.has_stage(event.start_stage) else None
        )
        rewritten = event.model_copy(
            update={
                "curriculum_name": new.name,
                "curriculum_version": new.version,
                "start_stage": start,
            }
        )
    elif isinstance(event, SessionStarted):
        # Open loop: the session ran the stage NEW had assigned.
        rewritten = event.model_copy(
            update={
                "stage": state.stage or new.first_stage,
                "curriculum_name": new.name,
                "curriculum_version": new.version,
                "assignment_id": None,
            }
        )
    elif isinstance(event, TrialCompleted | SessionEnded):
        rewritten = event
    else:
        return  # operators' and curricula events concern the live curriculum
    try:
        state, outputs = core.handle(state, rewritten)
    except ImpossibleEvent as exc:
        paths.skipped.append(f"{event.event_type} {event.event_id}: {exc}")
        return
    except Exception as exc:  # NEW never ran on these events live: say so, never crash
        paths.skipped.append(
            f"{event.event_type} {event.event_id}: {type(exc).__name__}: {str(exc)[:200]}"
        )
        return
    states[mouse] = state
    recorder.note(outputs)
    if isinstance(event, MouseEnrolled):
        paths.start_new = state.stage


# -- output ---------------------------------------------------------------------------------------


def write_csv(result: WhatIf, path: Path) -> int:
    """Writes one row per recorded session of each mouse (:data:`CSV_COLUMNS`); returns the
    number of rows."""
    rows = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for mouse in result.mice:
            for row in mouse.rows:
                writer.writerow(
                    (
                        mouse.mouse_id,
                        row.session,
                        row.session_id,
                        row.session_date,
                        mouse.curriculum_live,
                        result.new_curriculum,
                        row.live.stage,
                        row.new.stage,
                        row.live.decision,
                        row.new.decision,
                        row.live.next_stage,
                        row.new.next_stage,
                        row.differs,
                    )
                )
                rows += 1
    return rows


def plot(result: WhatIf, path: Path, dpi: int = 100) -> Path:
    """Draws each mouse's stage over sessions under both curricula (one panel per mouse).

    Raises:
        OperatorError: when no mouse has a session to draw.
    """
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mice = [m for m in result.mice if m.rows]
    if not mice:
        raise OperatorError("no mouse has a recorded session: nothing to plot")
    stages = result.stages()
    level = {stage: i for i, stage in enumerate(stages)}
    columns = min(3, len(mice))
    rows = math.ceil(len(mice) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(4.2 * columns, 2.6 * rows + 0.6), sharey=True, squeeze=False
    )
    for index, mouse in enumerate(mice):
        ax = axes[index // columns][index % columns]
        for which, style, label in (
            ("live", {"color": "tab:blue", "linewidth": 2.2}, mouse.curriculum_live),
            (
                "new",
                {"color": "tab:orange", "linestyle": "--", "linewidth": 1.8},
                result.new_curriculum,
            ),
        ):
            ys = [level[s] for s in mouse.path(which)]
            # The last value is the stage of the next session: hold it for one more step.
            xs = list(range(1, len(ys) + 2))
            ax.step(xs, [*ys, ys[-1]], where="post", label=label, **style)
        first = mouse.first_difference
        if first is not None:
            ax.axvline(first, color="grey", linewidth=0.8, linestyle=":")
        ax.set_title(mouse.mouse_id, fontsize="medium")
        ax.set_xlabel("session (the last: the next one)")
        ax.set_xlim(1, len(mouse.rows) + 2)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    for index in range(len(mice), rows * columns):
        axes[index // columns][index % columns].set_visible(False)
    axes[0][0].set_yticks(range(len(stages)), stages)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(
        handles,
        ["as recorded (live)", f"what if: {result.new_curriculum}"],
        loc="upper center",
        ncol=2,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, format="png")
    plt.close(fig)
    del labels
    return path
