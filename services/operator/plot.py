"""``shaping plot MOUSE``: a mouse's training as one PNG, from the status tables.

Two kinds:

``learning`` (the default)
    accuracy per session (coloured by stage, with a rolling mean) above the stage of each
    session; the stage timeline marks the trainer's overrides, ejections and adjustments
    (honoured or refused: table ``interventions``), the migrations to another version of the
    curriculum (a change of ``curriculum_version`` between sessions, in the stage history or in
    the mouse's status) and the training warnings (``training_warnings``), with a legend.
``ibl``
    IBL's training view, per date: the training status (the last effective decision of the
    date), the trials of each session, the easy-trial performance and the session accuracy,
    the psychometric fits' parameters over the 3-date window, and the psychometric curves per
    date and probabilityLeft block.

What the IBL view can show depends on what the tables hold. The decision evidence
(``decision_log.evidence_json``) keeps every comparison the rules made: the window's worst
easy-trial performance and trial count, the pooled fit's |bias|, threshold and lapses (while
the criteria of trained 1a/1b are checked), each block's lapses and the 0.8 - 0.2 bias shift.
No fit keeps its four signed parameters there, so curves need the values the curriculum
reports with each decision (``StageTransitioned.metrics``: ``psych_bias``, ``psych_20_*``,
``psych_80_*``, ``perf_easy[-1]``, ...), which the projector keeps in
``decision_log.metrics_json``; for tables projected before that column existed they can be read
from an embedded install's event log (``--events-log``), and the plot says so when they are
missing. As ibllib, the view shows the probabilityLeft block fits only for windows without a
trainingChoiceWorld date (a training date's few stray block trials give a meaningless fit).
The curve is psychofit's ``erf_psycho_2gammas``: the erf sigmoid of signed contrast, scaled
between the two lapse rates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from sqlalchemy import Engine, Table, inspect, select
from sqlalchemy.exc import SQLAlchemyError

from shaping.schemas.codec import EventCodec
from shaping.services.operator.errors import OperatorError

KINDS = ("learning", "ibl")
"""What ``shaping plot --kind`` draws."""

_ROLLING = 3
"""Sessions in the rolling mean drawn over the per-session accuracy."""

IBL_STATUS_ORDER: tuple[str, ...] = (
    "untrainable",
    "unbiasable",
    "in training",
    "trained 1a",
    "trained 1b",
    "ready4ephysrig",
    "ready4delay",
    "ready4recording",
)
"""IBL's training statuses by ibllib's rank, lowest first (the status axis, bottom up)."""

BLOCKS: tuple[tuple[float | None, str], ...] = (
    (None, "all trials"),
    (0.2, "probabilityLeft 0.2"),
    (0.8, "probabilityLeft 0.8"),
)
"""The psychometric fits of IBL's training status: every trial, and each biased block."""

PARAMETERS = ("bias", "threshold", "lapse_low", "lapse_high")
"""erf_psycho_2gammas' parameters, in psychofit's order."""


@dataclass
class MouseTables:
    """One mouse's rows of the status tables (and, if given, its decisions' reported values).

    Attributes:
        sessions: its sessions, oldest first (the sessions frame of ``shaping export``).
        history: the stages it entered (effective rows of ``stage_history``).
        decisions: its effective decisions (``decision_log`` rows not superseded), by
            session count.
        interventions: its overrides, ejections and adjustments (``interventions``).
        warnings: its training warnings (``training_warnings``).
        status: its row of ``mouse_status`` (empty when unknown).
        reported: the values its curriculum reported with each decision, by decision id
            (empty unless read from an event log).
    """

    sessions: pd.DataFrame
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    decisions: pd.DataFrame = field(default_factory=pd.DataFrame)
    interventions: pd.DataFrame = field(default_factory=pd.DataFrame)
    warnings: pd.DataFrame = field(default_factory=pd.DataFrame)
    status: dict[str, Any] = field(default_factory=dict)
    reported: dict[str, dict[str, float | None]] = field(default_factory=dict)


# --- reading --------------------------------------------------------------------------------


def _rows(engine: Engine, table: Table, mouse_id: str, order: Sequence[str]) -> pd.DataFrame:
    """A table's rows of one mouse; an empty frame when the table is not there (an older
    database)."""
    columns = [c.name for c in table.columns]
    try:
        if table.name not in inspect(engine).get_table_names():
            return pd.DataFrame(columns=columns)
        query = select(table).where(table.c.mouse_id == mouse_id)
        query = query.order_by(*(table.c[name] for name in order))
        with engine.connect() as conn:
            rows = [dict(row) for row in conn.execute(query).mappings()]
    except SQLAlchemyError as exc:
        raise OperatorError(f"query failed: {str(exc).strip().splitlines()[0]}") from exc
    frame = pd.DataFrame(rows, columns=columns)
    for column in columns:
        if column.endswith("_at"):
            frame[column] = pd.to_datetime(frame[column], utc=True)
    return frame


def read_mouse(
    engine: Engine,
    mouse_id: str,
    events_log: Path | None = None,
    *,
    codec: EventCodec,
) -> MouseTables:
    """Everything the plots read about one mouse.

    Args:
        engine: the status tables.
        mouse_id: the mouse.
        events_log: an embedded install's event log (``events.jsonl``) to read the values
            the curriculum reported with each decision from, for tables projected before
            ``decision_log.metrics_json`` kept them (None: from the tables).
        codec: decodes a refused intervention's original and the log
            (:func:`shaping.services.bootstrap.codec`).

    Raises:
        OperatorError: when a query fails or the log cannot be read.
    """
    from shaping.services.operator.queries import sessions_frame, stage_history_frame
    from shaping.services.projector.tables import (
        decision_log,
        interventions,
        mouse_status,
        rejected_events,
        training_warnings,
    )

    decisions = _rows(engine, decision_log, mouse_id, ["session_total", "occurred_at"])
    trainer = _rows(engine, interventions, mouse_id, ["requested_at", "event_id"])
    if trainer["kind"].isna().any():
        trainer = _refused_originals(
            trainer, _rows(engine, rejected_events, mouse_id, ["occurred_at"]), codec
        )
    decisions = decisions[decisions["superseded_by"].isna()].reset_index(drop=True)
    status = _rows(engine, mouse_status, mouse_id, ["mouse_id"])
    return MouseTables(
        sessions=sessions_frame(engine, mouse_id),
        history=stage_history_frame(engine, mouse_id),
        decisions=decisions,
        interventions=trainer,
        warnings=_rows(engine, training_warnings, mouse_id, ["occurred_at", "event_id"]),
        status=status.iloc[0].to_dict() if not status.empty else {},
        reported=(
            reported_metrics_from_log(events_log, mouse_id, codec)
            if events_log
            else _reported_from_tables(decisions)
        ),
    )


def _reported_from_tables(decisions: pd.DataFrame) -> dict[str, dict[str, float | None]]:
    """The values reported with each decision, by decision id, from ``decision_log``."""
    reported: dict[str, dict[str, float | None]] = {}
    for event_id, text in zip(
        decisions.get("event_id", []), decisions.get("metrics_json", []), strict=False
    ):
        if isinstance(text, str) and text:
            reported[str(event_id)] = json.loads(text)
    return reported


def _refused_originals(
    trainer: pd.DataFrame, rejected: pd.DataFrame, codec: EventCodec
) -> pd.DataFrame:
    """Fills in what a refused intervention's row lacks (only the refusal is projected: the
    trainer's event never reached the accepted topic) from the dead letter's original."""
    from shaping.schemas.errors import SerializationError
    from shaping.schemas.events import MouseEjected, ParametersAdjusted, StageOverridden

    originals: dict[str, Any] = {}
    for text in rejected.get("original_value_hex", []):
        try:
            original = codec.decode(bytes.fromhex(str(text)))
        except (SerializationError, ValueError):
            continue
        originals[original.event_id] = original
    trainer = trainer.copy()
    for index, row in trainer.iterrows():
        event = originals.get(str(row["event_id"]))
        if _present(row.get("kind")) or event is None:
            continue
        if isinstance(event, StageOverridden):
            trainer.loc[index, ["kind", "to_stage"]] = ["override", event.to_stage]
        elif isinstance(event, MouseEjected):
            trainer.loc[index, "kind"] = "eject"
        elif isinstance(event, ParametersAdjusted):
            trainer.loc[index, "kind"] = "adjust"
        trainer.loc[index, "requested_at"] = pd.Timestamp(event.occurred_at)
    return trainer


def reported_metrics_from_log(
    path: Path, mouse_id: str, codec: EventCodec
) -> dict[str, dict[str, float | None]]:
    """The values reported with each of a mouse's decisions (``StageTransitioned.metrics``),
    by decision id, from an embedded event log (``shaping demo``'s ``events.jsonl``), decoded
    with ``codec``.

    Raises:
        OperatorError: when the file is missing or is not such a log.
    """
    import base64

    from shaping.schemas.errors import SerializationError
    from shaping.schemas.events import StageTransitioned

    if not path.is_file():
        raise OperatorError(f"no event log at {path} (the events.jsonl of an embedded install)")
    found: dict[str, dict[str, float | None]] = {}
    try:
        with path.open(encoding="utf-8") as lines:
            for number, text in enumerate(lines, 1):
                if not text.strip():
                    continue
                item = json.loads(text)
                if not isinstance(item, dict) or "value_b64" not in item:
                    raise OperatorError(f"{path}:{number}: not a line of an embedded event log")
                if item.get("key") not in (None, mouse_id):
                    continue
                try:
                    event = codec.decode(base64.b64decode(item["value_b64"]))
                except SerializationError:
                    continue  # an undecodable input message: nothing reported there
                if isinstance(event, StageTransitioned) and event.mouse_id == mouse_id:
                    found[event.event_id] = dict(event.metrics)
    except (OSError, ValueError) as exc:
        raise OperatorError(f"cannot read the event log {path}: {exc}") from exc
    return found


# --- the learning curve and the stage timeline ----------------------------------------------


def stage_order(sessions: pd.DataFrame, history: pd.DataFrame) -> list[str]:
    """Stages in the order the mouse first met them (so a progression climbs the y axis)."""
    order: list[str] = []
    for stage in [
        *history.get("stage", []),
        *sessions.get("stage", []),
        *sessions.get("next_stage", []),
    ]:
        if isinstance(stage, str) and stage not in order:
            order.append(stage)
    return order


def _present(value: Any) -> bool:
    """Neither None, NaN nor NaT."""
    if value is None:
        return False
    try:
        return not bool(pd.isna(value))
    except (TypeError, ValueError):  # a list or an array: present
        return True


@dataclass(frozen=True)
class _Mark:
    """Something to draw on the stage timeline."""

    label: str
    x: float
    y: float


def _gap(starts: Sequence[pd.Timestamp], when: Any) -> int | None:
    """How many sessions had started by an instant (None: no instant)."""
    if not _present(when):
        return None
    moment = pd.Timestamp(when)
    return sum(1 for start in starts if start <= moment)


DECIDED = 0.12
"""Where, after session n, the decision on it is drawn (n + DECIDED)."""


def _timeline_marks(
    tables: MouseTables, ran: pd.DataFrame, level: dict[str, int]
) -> tuple[list[_Mark], list[tuple[float, str]], list[tuple[float, str]]]:
    """The interventions and warnings as marks; the migrations as (x, "old → new"); the
    stage the mouse was on as (x, stage) points, from each session, the decision on it and
    the honoured overrides.

    x is the session number; the interventions between sessions n and n + 1 are spread around
    n + 0.5 in the order they were made."""
    starts = list(ran["started_at"])
    numbers = {sid: i + 1 for i, sid in enumerate(ran["session_id"])}
    path: list[tuple[float, str]] = []
    if not tables.history.empty and tables.history["decision"].iloc[0] == "enrolled":
        path.append((0.5, str(tables.history["stage"].iloc[0])))
    for i, (_, row) in enumerate(ran.iterrows(), 1):
        path.append((float(i), str(row["stage"])))
        if _present(row.get("next_stage")):
            path.append((i + DECIDED, str(row["next_stage"])))

    names = {"override": "override", "eject": "ejection", "adjust": "adjustment"}
    pending: list[tuple[int, pd.Timestamp, str, str | None]] = []
    for _, row in tables.interventions.iterrows():
        kind = names.get(str(row.get("kind")), str(row.get("kind")))
        refused = _present(row.get("refused_at")) or _present(row.get("refused_reason"))
        when = row.get("refused_at") if refused else row.get("honoured_at")
        if not _present(when):
            when = row.get("requested_at")
        gap = _gap(starts, when)
        if gap is None:
            continue
        target = row.get("assigned_stage") if kind == "override" and not refused else None
        label = kind + (" (refused)" if refused else "")
        pending.append((gap, pd.Timestamp(when), label, str(target) if _present(target) else None))
    pending.sort(key=lambda p: (p[0], p[1]))
    marks: list[_Mark] = []
    for gap in dict.fromkeys(p[0] for p in pending):
        these = [p for p in pending if p[0] == gap]
        for j, (_, _, label, target) in enumerate(these):
            x = gap + 0.5 + (j - (len(these) - 1) / 2) * 0.2
            if target is not None:
                path.append((x, target))
            path.sort(key=lambda point: point[0])
            stage = next((s for at, s in reversed(path) if at <= x), None)
            if stage is None:
                continue
            level.setdefault(stage, len(level))
            marks.append(_Mark(label, x, float(level[stage])))
    for _, stage in path:
        level.setdefault(stage, len(level))
    for _, row in tables.warnings.iterrows():
        session = row.get("session_id")
        if session in numbers:
            x = float(numbers[session])
        else:
            gap = _gap(starts, row.get("occurred_at"))
            if gap is None:
                continue
            x = gap + 0.5
        stage = str(row.get("stage"))
        level.setdefault(stage, len(level))
        marks.append(_Mark(f"warning: {row.get('kind')}", x, level[stage] + 0.22))

    # migrations: the curriculum version changes between two sessions (or after the last
    # one: the mouse's status); positions are session numbers, n + 1 the next session
    versions: list[tuple[float, int, str, str]] = [
        (float(i), 0, str(r["curriculum_name"]), str(r["curriculum_version"]))
        for i, (_, r) in enumerate(ran.iterrows(), 1)
        if _present(r.get("curriculum_version"))
    ]
    for _, h in tables.history.iterrows():
        if _present(h.get("curriculum_version")) and _present(h.get("entered_at_session")):
            judged = int(h["entered_at_session"]) + (1 if h.get("decision") == "enrolled" else 0)
            versions.append(
                (float(judged), 1, str(h["curriculum_name"]), str(h["curriculum_version"]))
            )
    if tables.status.get("curriculum_version"):
        versions.append(
            (
                float(len(ran) + 1),
                2,
                str(tables.status.get("curriculum_name")),
                str(tables.status["curriculum_version"]),
            )
        )
    versions.sort(key=lambda v: (v[0], v[1]))
    migrations: list[tuple[float, str]] = []
    for (_, _, name_a, version_a), (at, _, name_b, version_b) in pairwise(versions):
        if name_a == name_b and version_a != version_b:
            migrations.append((at - 0.5, f"{version_a} → {version_b}"))
    return marks, migrations, path


_MARK_STYLE: dict[str, dict[str, Any]] = {
    "override": {"marker": "D", "color": "tab:purple", "s": 70},
    "ejection": {"marker": "X", "color": "black", "s": 110},
    "adjustment": {"marker": "P", "color": "tab:gray", "s": 70},
}
_WARNING_COLOURS = ("tab:orange", "tab:red", "goldenrod", "tab:brown", "tab:pink")


def learning_figure(mouse_id: str, tables: MouseTables) -> Figure:
    """Accuracy per session above the stage timeline, with every intervention, migration and
    warning marked on the timeline.

    Raises:
        OperatorError: when the mouse has no session yet.
    """
    ran = tables.sessions.dropna(subset=["started_at"]).reset_index(drop=True)
    if ran.empty:
        raise OperatorError(f"{mouse_id} has no session yet: nothing to plot")
    number = pd.Series(range(1, len(ran) + 1), name="session")
    stages = stage_order(ran, tables.history)
    level = {stage: i for i, stage in enumerate(stages)}
    marks, migrations, path = _timeline_marks(tables, ran, level)
    stages = sorted(level, key=level.__getitem__)
    colours = plt.get_cmap("tab10")

    fig, (curve, timeline) = plt.subplots(
        2, 1, figsize=(11, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 2]}
    )
    curriculum = ran["curriculum_name"].dropna()
    title = mouse_id + (f" ({curriculum.iloc[-1]})" if not curriculum.empty else "")
    fig.suptitle(f"{title}: learning curve and stage timeline")

    accuracy = ran["accuracy"].astype(float)
    for stage in stages:
        on_stage = ran["stage"] == stage
        if on_stage.any():
            curve.scatter(
                number[on_stage], accuracy[on_stage], color=colours(level[stage] % 10), label=stage
            )
    curve.plot(
        number,
        accuracy.rolling(_ROLLING, min_periods=1).mean(),
        color="black",
        linewidth=1.2,
        label=f"mean of last {_ROLLING}",
    )
    curve.set_title("learning curve")
    curve.set_ylabel("accuracy")
    curve.set_ylim(-0.02, 1.02)
    curve.grid(alpha=0.3)
    curve.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")

    ys = [level[stage] for stage in ran["stage"]]
    handles: list[Any] = []
    end = max([m.x for m in marks] + [path[-1][0]])
    xs = [x for x, _ in path] + [end]
    (line,) = timeline.step(
        xs,
        [level[s] for _, s in path] + [level[path[-1][1]]],
        where="post",
        color="tab:blue",
        linewidth=1.3,
        label="stage (after each decision and override)",
        zorder=2,
    )
    handles.append(line)
    handles.append(
        timeline.scatter(
            number,
            ys,
            color=[colours(y % 10) for y in ys],
            edgecolors="white",
            zorder=3,
            label="session",
        )
    )
    order = [
        "override",
        "override (refused)",
        "ejection",
        "ejection (refused)",
        "adjustment",
        "adjustment (refused)",
    ]
    for label in order:
        chosen = [m for m in marks if m.label == label]
        if not chosen:
            continue
        style = dict(_MARK_STYLE[label.split(" ")[0]])
        if label.endswith("(refused)"):
            style["facecolors"] = "none"
            style["edgecolors"] = style.pop("color")
            style["linewidths"] = 1.5
        handles.append(
            timeline.scatter(
                [m.x for m in chosen], [m.y for m in chosen], label=label, zorder=4, **style
            )
        )
    top = len(stages) - 0.5
    for i, (x, text) in enumerate(migrations):
        (vline,) = timeline.plot(
            [x, x],
            [-0.5, top],
            color="tab:brown",
            linestyle="--",
            linewidth=1.3,
            label="migration" if i == 0 else "_nolegend_",
            zorder=1,
        )
        if i == 0:
            handles.append(vline)
        timeline.text(x, top, text, color="tab:brown", fontsize=8, ha="center", va="bottom")
    kinds = list(dict.fromkeys(m.label for m in marks if m.label.startswith("warning: ")))
    for i, label in enumerate(kinds):
        chosen = [m for m in marks if m.label == label]
        handles.append(
            timeline.scatter(
                [m.x for m in chosen],
                [m.y for m in chosen],
                marker="^",
                s=60,
                color=_WARNING_COLOURS[i % len(_WARNING_COLOURS)],
                edgecolors="black",
                linewidths=0.5,
                label=label,
                zorder=5,
            )
        )
    timeline.set_title("stage timeline")
    timeline.set_yticks(range(len(stages)), stages)
    timeline.set_ylim(-0.5, len(stages) - 0.5 + (0.35 if migrations else 0))
    timeline.set_xlabel("session (n.5: between sessions n and n + 1)")
    timeline.set_ylabel("stage")
    timeline.grid(alpha=0.3)
    timeline.xaxis.get_major_locator().set_params(integer=True)
    timeline.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")
    fig.tight_layout()
    return fig


def plot_mouse(
    mouse_id: str,
    sessions: pd.DataFrame | MouseTables,
    history: pd.DataFrame | None,
    out: Path,
    dpi: int = 110,
) -> Path:
    """Draws the learning curve and stage timeline (see :func:`learning_figure`) as a PNG.

    Args:
        mouse_id: the mouse (for the title).
        sessions: its rows of the sessions frame, oldest first, or all its tables.
        history: its rows of the stage history (None with a :class:`MouseTables`).
        out: the PNG to write (parent folders are created).
        dpi: resolution.

    Returns:
        The path written.

    Raises:
        OperatorError: when the mouse has no session yet.
    """
    if isinstance(sessions, MouseTables):
        tables = sessions
    else:
        tables = MouseTables(sessions, history if history is not None else pd.DataFrame())
    return save(learning_figure(mouse_id, tables), out, dpi)


def save(fig: Figure, out: Path, dpi: int = 110) -> Path:
    """Writes the figure as a PNG (creating its folder) and closes it."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=dpi, format="png")
    finally:
        plt.close(fig)
    return out


# --- IBL's training view --------------------------------------------------------------------


def psychometric(
    x: Any, bias: float, threshold: float, lapse_low: float, lapse_high: float
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """psychofit's erf_psycho_2gammas: P(rightward choice) at signed contrast ``x`` (%),
    ``lapse_low + (1 - lapse_low - lapse_high) * (erf((x - bias) / threshold) + 1) / 2``."""
    from scipy.special import erf

    values = np.asarray(x, dtype=float)
    return np.asarray(
        lapse_low + (1.0 - lapse_low - lapse_high) * (erf((values - bias) / threshold) + 1.0) / 2,
        dtype=float,
    )


_PSYCH = re.compile(
    r"^(?P<abs>abs\()?psych_(?P<parameter>bias|threshold|lapse_low|lapse_high)"
    r"\(dates=\d+(?:, block=(?P<block>[0-9.]+))?\)\)?$"
)
_SHIFT = re.compile(r"^psych_bias\(dates=\d+, block=0\.8\) - psych_bias\(dates=\d+, block=0\.2\)$")
_REPORTED = re.compile(
    r"^psych_(?:(?P<block>20|80)_)?(?P<parameter>bias|threshold|lapse_low|lapse_high)$"
)


@dataclass
class _Day:
    """What one date's decision says: its status, and the values to draw."""

    date: date
    status: str
    perf_easy: float | None = None  # the date's own (reported)
    perf_easy_window_min: float | None = None  # the worst date of the window (evidence)
    fits: dict[float | None, dict[str, float]] = field(default_factory=dict)
    abs_bias: dict[float | None, float] = field(default_factory=dict)
    bias_shift: float | None = None
    training_dates: float | None = None  # window dates on trainingChoiceWorld

    def block_fits(self) -> bool:
        """Whether its window's block fits mean something: ibllib fits the probabilityLeft
        blocks only for a window without trainingChoiceWorld dates (a training date has a few
        stray trials in a block; their fit is noise). Unknown: yes."""
        return self.training_dates is None or self.training_dates == 0


def _block(text: str | None) -> float | None:
    return None if text is None else round(float(text), 3)


def _observations(evidence: str) -> Iterable[dict[str, Any]]:
    try:
        rules = json.loads(evidence)
    except (TypeError, ValueError):
        return []
    return [o for rule in rules if isinstance(rule, dict) for o in rule.get("observations", [])]


def _thresholds(decisions: pd.DataFrame, pattern: str) -> list[tuple[str, float]]:
    """The distinct (comparator, threshold) the rules compared metrics matching ``pattern``
    with (the criteria, as the curriculum states them)."""
    found: dict[tuple[str, float], None] = {}
    rx = re.compile(pattern)
    for evidence in decisions.get("evidence_json", []):
        for o in _observations(evidence):
            if rx.search(str(o.get("metric", ""))) and _present(o.get("threshold")):
                found[(str(o["comparator"]), float(o["threshold"]))] = None
    return sorted(found, key=lambda t: t[1])


def _days(tables: MouseTables) -> list[_Day]:
    """One entry per date with a decision: the last effective decision of the date."""
    days: dict[str, _Day] = {}
    for _, row in tables.decisions.iterrows():
        label = row.get("session_date")
        if not _present(label):
            label = pd.Timestamp(row["occurred_at"]).date().isoformat()
        day = _Day(date.fromisoformat(str(label)), str(row["to_stage"]))
        for o in _observations(row.get("evidence_json")):
            metric, value = str(o.get("metric", "")), o.get("observed")
            if not isinstance(value, int | float) or not _present(value):
                continue
            match = _PSYCH.match(metric)
            if match:
                block = _block(match["block"])
                if match["abs"]:
                    day.abs_bias[block] = abs(float(value))
                else:
                    day.fits.setdefault(block, {})[match["parameter"]] = float(value)
            elif _SHIFT.match(metric):
                day.bias_shift = float(value)
            elif re.match(r"^min\(window_perf_easy\(dates=\d+\)\)$", metric):
                day.perf_easy_window_min = float(value)
            elif re.match(r"^window_protocol_count\(protocol='training', dates=\d+\)$", metric):
                day.training_dates = float(value)
        reported = tables.reported.get(str(row["event_id"]), {})
        if reported:
            fits: dict[float | None, dict[str, float]] = {}
            for name, value in reported.items():
                match = _REPORTED.match(name)
                if match and _present(value):
                    block = {"20": 0.2, "80": 0.8}.get(match["block"] or "")
                    fits.setdefault(block, {})[match["parameter"]] = float(value)  # type: ignore[arg-type]
            day.fits = fits  # the whole fits, signed
            if _present(reported.get("bias_shift")):
                day.bias_shift = float(reported["bias_shift"])  # type: ignore[arg-type]
            if _present(reported.get("perf_easy[-1]")):
                day.perf_easy = float(reported["perf_easy[-1]"])  # type: ignore[arg-type]
            if _present(reported.get("training_dates")):
                day.training_dates = float(reported["training_dates"])  # type: ignore[arg-type]
        if not day.block_fits():
            day.fits = {b: f for b, f in day.fits.items() if b is None}
            day.abs_bias = {b: v for b, v in day.abs_bias.items() if b is None}
            day.bias_shift = None
        days[str(label)] = day
    return sorted(days.values(), key=lambda d: d.date)


def _mark_status_changes(axes: Sequence[Axes], days: Sequence[_Day]) -> list[float]:
    changes = [_when(b.date) for a, b in pairwise(days) if a.status != b.status]
    for ax in axes:
        for i, when in enumerate(changes):
            ax.axvline(
                when,
                color="0.55",
                linestyle=":",
                linewidth=1.2,
                zorder=0,
                label="status changed" if i == 0 and ax is axes[0] else "_nolegend_",
            )
    return changes


def _when(day: date) -> float:
    """A date on matplotlib's date axis."""
    return float(mdates.date2num(datetime(day.year, day.month, day.day)))


def _criteria(ax: Axes, thresholds: Sequence[tuple[str, float]]) -> None:
    """The rules' thresholds as dashed lines, each with its comparison written on it."""
    for comparator, value in thresholds:
        ax.axhline(value, color="0.4", linestyle="--", linewidth=0.8, zorder=0)
        ax.text(
            1.0,
            value,
            f"{comparator} {value:g}",
            transform=ax.get_yaxis_transform(),
            ha="right",
            va="bottom",
            fontsize=7,
            color="0.3",
        )


def ibl_figure(mouse_id: str, tables: MouseTables) -> Figure:
    """IBL's training view of one mouse (see the module's docstring).

    Raises:
        OperatorError: when the mouse has no decision yet.
    """
    days = _days(tables)
    if not days:
        raise OperatorError(f"{mouse_id} has no judged session yet: nothing to plot")
    x = [_when(d.date) for d in days]
    fig = plt.figure(figsize=(16, 12))
    # three columns: the series per date, their legends, the curves
    grid = fig.add_gridspec(
        5,
        3,
        width_ratios=[1.6, 0.42, 1.0],
        hspace=0.5,
        wspace=0.08,
        left=0.09,
        right=0.98,
        top=0.93,
        bottom=0.06,
    )
    status_ax = fig.add_subplot(grid[0, 0])
    trials_ax = fig.add_subplot(grid[1, 0], sharex=status_ax)
    perf_ax = fig.add_subplot(grid[2, 0], sharex=status_ax)
    bias_ax = fig.add_subplot(grid[3, 0], sharex=status_ax)
    lapse_ax = fig.add_subplot(grid[4, 0], sharex=status_ax)
    right = grid[:, 2].subgridspec(3, 1, hspace=0.42)
    curve_axes = [fig.add_subplot(right[i, 0]) for i in range(3)]
    curriculum = tables.sessions.get("curriculum_name", pd.Series(dtype=object)).dropna()
    name = f" ({curriculum.iloc[-1]})" if not curriculum.empty else ""
    fig.suptitle(f"{mouse_id}{name}: IBL training status, {days[0].date} to {days[-1].date}")

    # the status per date
    order = list(IBL_STATUS_ORDER) + sorted(
        {d.status for d in days} - set(IBL_STATUS_ORDER), key=[d.status for d in days].index
    )
    rank = {status: i for i, status in enumerate(order)}
    ys = [rank[d.status] for d in days]
    status_ax.step(x, ys, where="post", color="0.5", linewidth=1, zorder=1, label="_nolegend_")
    status_ax.plot(x, ys, linestyle="none", marker="o", color="tab:blue", label="status", zorder=3)
    status_ax.set_yticks(range(len(order)), order)
    status_ax.set_ylim(-0.5, len(order) - 0.5)
    status_ax.set_title("training status per date")
    status_ax.grid(alpha=0.3)
    changes = _mark_status_changes([status_ax, trials_ax, perf_ax, bias_ax, lapse_ax], days)
    for when, day in zip(x, days, strict=True):
        if when in changes:
            status_ax.annotate(
                day.status,
                (when, rank[day.status]),
                textcoords="offset points",
                xytext=(4, 6),
                fontsize=7,
            )
    status_ax.legend(loc="upper left", fontsize="small")

    # trials per session, stacked per date
    sessions = tables.sessions.dropna(subset=["started_at"]).copy()
    sessions["day"] = [_when(pd.Timestamp(t).date()) for t in sessions["started_at"]]
    sessions["nth"] = sessions.groupby("day").cumcount()
    bottoms: dict[float, float] = {}
    for nth in sorted(sessions["nth"].unique()) if not sessions.empty else []:
        layer = sessions[sessions["nth"] == nth]
        heights = layer["n_trials"].fillna(0).astype(float).tolist()
        base = [bottoms.get(d, 0.0) for d in layer["day"]]
        trials_ax.bar(
            list(layer["day"]),
            heights,
            bottom=base,
            width=0.7,
            color=plt.get_cmap("Blues")(0.45 + 0.15 * (nth % 4)),
            edgecolor="white",
            label="trials of the date's first session" if nth == 0 else f"session {nth + 1}",
        )
        for d, h in zip(layer["day"], heights, strict=True):
            bottoms[d] = bottoms.get(d, 0.0) + h
    _criteria(
        trials_ax,
        _thresholds(tables.decisions, r"^min\(window_n_trials\(dates=\d+\)\)$"),
    )
    trials_ax.set_title("trials per session")
    trials_ax.set_ylabel("trials")
    trials_ax.grid(alpha=0.3, axis="y")

    # performance
    handles: list[Any] = []
    own = [(w, d.perf_easy) for w, d in zip(x, days, strict=True) if d.perf_easy is not None]
    worst = [
        (w, d.perf_easy_window_min)
        for w, d in zip(x, days, strict=True)
        if d.perf_easy_window_min is not None
    ]
    if own:
        handles += perf_ax.plot(
            [w for w, _ in own],
            [v for _, v in own],
            marker="o",
            color="tab:green",
            label="easy-trial performance of the date",
        )
    elif worst:
        handles += perf_ax.plot(
            [w for w, _ in worst],
            [v for _, v in worst],
            marker="o",
            color="tab:green",
            label="easy-trial performance, worst date of the 3-date window",
        )
    judged = sessions.dropna(subset=["accuracy"]) if "accuracy" in sessions else sessions
    if not judged.empty:
        handles += perf_ax.plot(
            list(judged["day"]),
            judged["accuracy"].astype(float).tolist(),
            marker=".",
            linestyle="--",
            color="0.35",
            label="session accuracy (all trials)",
        )
    _criteria(perf_ax, _thresholds(tables.decisions, r"window_perf_easy\(dates=\d+\)\)$"))
    perf_ax.set_ylim(0.0, 1.05)
    perf_ax.set_title("performance")
    perf_ax.set_ylabel("fraction correct")
    perf_ax.grid(alpha=0.3)
    perf_ax.legend(handles=handles, loc="lower right", fontsize="small")

    # the fits' parameters
    styles = {None: "tab:blue", 0.2: "tab:orange", 0.8: "tab:purple"}
    for block, label in BLOCKS:
        points = [
            (w, d.fits[block]["bias"])
            for w, d in zip(x, days, strict=True)
            if "bias" in d.fits.get(block, {})
        ]
        if points:
            bias_ax.plot(
                *zip(*points, strict=True), marker="o", color=styles[block], label=f"bias, {label}"
            )
        points = [
            (w, d.abs_bias[block])
            for w, d in zip(x, days, strict=True)
            if block in d.abs_bias and "bias" not in d.fits.get(block, {})
        ]
        if points:
            bias_ax.plot(
                *zip(*points, strict=True),
                marker="o",
                markerfacecolor="none",
                color=styles[block],
                label=f"|bias|, {label}",
            )
        points = [
            (w, d.fits[block]["threshold"])
            for w, d in zip(x, days, strict=True)
            if "threshold" in d.fits.get(block, {})
        ]
        if points:
            bias_ax.plot(
                *zip(*points, strict=True),
                marker="s",
                linestyle="--",
                color=styles[block],
                label=f"threshold, {label}",
            )
        for parameter, marker, word in (("lapse_low", "v", "low"), ("lapse_high", "^", "high")):
            points = [
                (w, d.fits[block][parameter])
                for w, d in zip(x, days, strict=True)
                if parameter in d.fits.get(block, {})
            ]
            if points:
                lapse_ax.plot(
                    *zip(*points, strict=True),
                    marker=marker,
                    linestyle="-" if word == "low" else "--",
                    color=styles[block],
                    label=f"lapse {word}, {label}",
                )
    shift = [(w, d.bias_shift) for w, d in zip(x, days, strict=True) if d.bias_shift is not None]
    if shift:
        bias_ax.plot(
            *zip(*shift, strict=True), marker="D", color="tab:red", label="bias shift (0.8 - 0.2)"
        )
    bias_ax.set_title("psychometric bias and threshold (3-date window)")
    bias_ax.set_ylabel("contrast (%)")
    bias_ax.grid(alpha=0.3)
    lapse_ax.set_title("psychometric lapse rates (3-date window)")
    lapse_ax.set_ylabel("lapse rate")
    lapse_ax.set_ylim(-0.02, 1.02)
    lapse_ax.grid(alpha=0.3)
    _criteria(lapse_ax, _thresholds(tables.decisions, r"psych_lapse_(low|high)\(dates=\d+\)$"))
    for ax in (bias_ax, lapse_ax):
        if ax.get_lines():
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="x-small")
    for ax in (status_ax, trials_ax, perf_ax, bias_ax):
        ax.tick_params(labelbottom=False)
    lapse_ax.xaxis.set_major_locator(mdates.AutoDateLocator(minticks=4, maxticks=10))
    lapse_ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
    plt.setp(lapse_ax.get_xticklabels(), rotation=30, ha="right")
    lapse_ax.set_xlabel("date")

    # the curves, one axes per block, one curve per date
    contrasts = np.linspace(-100, 100, 201)
    colour = plt.get_cmap("viridis")
    span = max(len(days) - 1, 1)
    for ax, (block, label) in zip(curve_axes, BLOCKS, strict=True):
        ax.set_title(f"psychometric curves: {label}")
        drawn = 0
        for i, day in enumerate(days):
            fit = day.fits.get(block, {})
            if all(p in fit for p in PARAMETERS) and fit["threshold"] > 0:
                ax.plot(
                    contrasts,
                    psychometric(contrasts, *(fit[p] for p in PARAMETERS)),
                    color=colour(i / span),
                    linewidth=1.4,
                    label=day.date.isoformat(),
                )
                drawn += 1
        ax.set_xlim(-100, 100)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("P(rightward choice)")
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend(
                loc="upper left",
                fontsize="xx-small",
                ncol=2,
                title="fit up to",
                title_fontsize="xx-small",
            )
        else:
            why = (
                "no fit of this block: ibllib fits the\nprobabilityLeft blocks on windows of\n"
                "biased dates only"
                if tables.reported
                else "these tables keep no reported values\n(projected before metrics_json);"
                "\nread them from the log: --events-log"
            )
            ax.text(
                0.5,
                0.5,
                why,
                transform=ax.transAxes,
                ha="center",
                va="center",
                fontsize=8,
                color="0.35",
            )
    curve_axes[-1].set_xlabel("signed contrast (%)")
    return fig


def plot_ibl(mouse_id: str, tables: MouseTables, out: Path, dpi: int = 100) -> Path:
    """Draws IBL's training view (see :func:`ibl_figure`) as a PNG.

    Raises:
        OperatorError: when the mouse has no decision yet.
    """
    return save(ibl_figure(mouse_id, tables), out, dpi)
