"""What the page shows, read from the status tables through the operator's read use cases
(:mod:`shaping.services.operator.queries`, and
:func:`~shaping.services.operator.interventions.timeline`).

:func:`overview` is the lab at a glance: one :class:`MouseRow` per mouse, those that need a
person first (:func:`~shaping.services.operator.queries.attention`'s order), then the others,
ejected mice last. :func:`mouse_page` is one mouse: its sessions (the learning curve), its
decisions with their evidence, and one timeline of stages, overrides, migrations, adjustments,
ejections and warnings.

Welfare comes from the husbandry tables through
:func:`~shaping.services.operator.husbandry.welfare_from_tables` (the lab's policy, the lab's
day): on the overview each mouse's weight and its percent of expected, today's water given,
required and still due, and the gate (held, cleared, not weighed); held mice and those at or
below their minimum weight come first. The mouse's page adds its weights with the expected
weight and the policy's thresholds (:class:`WeightChart`), its water per day
(:class:`WaterDay`), and its husbandry records with who made them.

Alerts are read from the ``alerts`` table (the projector's, from the alerts topic: the alerts
service on Kafka, or the embedded runtime's rules): each mouse's open alerts
(:attr:`Welfare.alerts`), and those about a rig, the lab or a service (:func:`open_alerts`).
Tables made before the alerts table have none to show (:func:`open_alerts` returns None).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Engine, select

from shaping.services.domain.welfare import DEFAULT_POLICY, WelfarePolicy, expected_grams
from shaping.services.operator.husbandry import (
    MouseWelfare,
    husbandry_from_rows,
    welfare_from_tables,
)
from shaping.services.operator.interventions import timeline
from shaping.services.operator.queries import (
    AttentionReason,
    StageCheck,
    attention,
    decisions_frame,
    enrolment_rows,
    require_mouse,
    sessions_frame,
    stage_history_frame,
    status_frame,
)
from shaping.services.projector.alert_rows import alert_rows
from shaping.services.projector.tables import (
    husbandry_notes,
    husbandry_restrictions,
    husbandry_water,
    husbandry_weights,
    mouse_status,
)


def _plain(value: Any) -> Any:
    """A value of a frame as plain Python: NaN and NaT become None, timestamps datetimes."""
    if value is None:
        return None
    if isinstance(value, float) and math.isnan(value):
        return None
    if type(value).__name__ == "NaTType":  # before to_pydatetime, which returns NaT itself
        return None
    if hasattr(value, "to_pydatetime"):
        try:
            return value.to_pydatetime()
        except ValueError:
            return None
    if hasattr(value, "item") and not isinstance(value, str | bytes):
        return value.item()
    return value


def _records(frame: Any) -> list[dict[str, Any]]:
    return [{k: _plain(v) for k, v in row.items()} for row in frame.to_dict("records")]


SEVERITY_ORDER = {"critical": 0, "warning": 1, "attention": 2, "info": 3}
"""Alerts are listed most severe first."""


@dataclass(frozen=True)
class AlertShown:
    """An open alert as the page shows it."""

    alert_id: str
    severity: str
    rule: str
    message: str
    raised_at: datetime | None
    subject: str
    acknowledged_by: str | None = None


def open_alerts(engine: Engine) -> dict[str, tuple[AlertShown, ...]] | None:
    """The open alerts by subject (a mouse's id; ``rig:<id>``, ``lab:<name>``,
    ``service:<name>`` for the others), most severe first; None when the tables hold no
    alerts table (made before it).

    Raises:
        OperatorError: the table cannot be read.
    """
    from shaping.services.operator.errors import OperatorError
    from shaping.services.projector.errors import ProjectorError

    try:
        rows = alert_rows(engine)
    except ProjectorError as exc:
        raise OperatorError(str(exc)) from exc
    if rows is None:
        return None
    found: dict[str, list[AlertShown]] = {}
    for a in rows:
        found.setdefault(a.subject, []).append(
            AlertShown(
                a.alert_id,
                a.severity,
                a.rule,
                a.message,
                a.raised_at,
                a.subject,
                a.acknowledged_by,
            )
        )
    return {
        subject: tuple(sorted(items, key=lambda x: (SEVERITY_ORDER.get(x.severity, 9), x.rule)))
        for subject, items in found.items()
    }


GATE_HELD = "held"
GATE_CLEARED = "cleared"
GATE_NOT_WEIGHED = "not weighed"
GATE_NOT_CLEARED = "not cleared"


@dataclass(frozen=True)
class Welfare:
    """A mouse's welfare on the lab's day (empty for a mouse never weighed nor restricted).

    Attributes:
        restricted: on water restriction.
        status: ``ok``, ``attention``, ``warning``, ``not_weighed_today`` or ``unrestricted``
            (:mod:`shaping.services.domain.welfare`).
        latest_grams, latest_at: the newest weight (any day).
        expected_grams: the expected weight today (restricted only).
        weight_percent: the newest weight's percent of expected (net of the implant).
        water_today_ml: water given today, all kinds.
        water_required_ml, water_still_due_ml: today's requirement and what is still due.
        supplement_ml: the suggested supplement; ``alert_animal_services``: more is due than
            the largest supplement.
        gate: ``held``, ``cleared``, ``not weighed``, ``not cleared`` (restricted), or empty.
        hold_reason: why it is held, with the figures.
        advice: what to do now, in words.
        alerts: the mouse's open alerts, most severe first.
    """

    restricted: bool = False
    status: str = "unrestricted"
    latest_grams: float | None = None
    latest_at: datetime | None = None
    expected_grams: float | None = None
    weight_percent: float | None = None
    water_today_ml: float | None = None
    water_required_ml: float | None = None
    water_still_due_ml: float | None = None
    supplement_ml: float = 0.0
    alert_animal_services: bool = False
    gate: str = ""
    hold_reason: str | None = None
    advice: str = ""
    alerts: tuple[AlertShown, ...] = ()

    @property
    def rank(self) -> int:
        """How soon a person should look: 0 held, 1 at or below the minimum weight (warning),
        2 something due (attention, not weighed, water for animal services, an open alert),
        3 nothing."""
        if self.gate == GATE_HELD:
            return 0
        if self.status == "warning":
            return 1
        if (
            self.status in ("attention", "not_weighed_today")
            or self.alert_animal_services
            or self.alerts
        ):
            return 2
        return 3

    @property
    def concern(self) -> str:
        """The CSS class of its most urgent concern (empty: none)."""
        return ("held", "warning", "attention", "")[self.rank]


def welfare_of(item: MouseWelfare) -> Welfare:
    """The page's figures of one mouse's welfare."""
    s = item.status
    if item.held is not None:
        gate = GATE_HELD
    elif not s.restricted:
        gate = ""
    elif item.cleared_on == s.day.isoformat():
        gate = GATE_CLEARED
    elif s.status == "not_weighed_today":
        gate = GATE_NOT_WEIGHED
    else:
        gate = GATE_NOT_CLEARED
    return Welfare(
        restricted=s.restricted,
        status=s.status,
        latest_grams=s.latest_grams,
        latest_at=s.latest_at,
        expected_grams=s.expected_grams,
        weight_percent=s.percent,
        water_today_ml=s.given_ml if (s.restricted or s.water_ml) else None,
        water_required_ml=s.requirement_ml,
        water_still_due_ml=s.still_required_ml,
        supplement_ml=s.supplement_ml,
        alert_animal_services=s.alert_animal_services,
        gate=gate,
        hold_reason=item.held,
        advice=s.advice() if s.restricted else "",
    )


@dataclass(frozen=True)
class MouseRow:
    """One mouse on the lab's overview."""

    mouse_id: str
    curriculum: str
    stage: str | None
    sessions_completed: int
    sessions_at_stage: int
    last_session_at: datetime | None
    last_rig: str | None
    last_accuracy: float | None
    last_decision: str | None
    last_decision_at: datetime | None
    ejected: bool
    reasons: tuple[AttentionReason, ...] = ()
    welfare: Welfare = field(default_factory=Welfare)

    @property
    def urgency(self) -> str:
        """The kind of its most urgent reason (empty: it needs nobody)."""
        return self.reasons[0].kind if self.reasons else ""

    @property
    def needs_person(self) -> bool:
        """Whether someone should look at it: a training reason or a welfare concern."""
        return not self.ejected and (bool(self.reasons) or self.welfare.rank < 3)


def overview(
    engine: Engine,
    is_terminal: StageCheck | None = None,
    policy: WelfarePolicy | None = None,
    now: datetime | None = None,
) -> list[MouseRow]:
    """Every mouse, those that need a person first, then the others by id, the ejected last.

    Held mice come first, then those at or below their minimum weight; then those with a
    training reason (most urgent first, :func:`attention`'s order), then those with something
    due for their welfare; then the rest.

    Args:
        policy: the lab's welfare policy (the default policy when None).
        now: the moment of the lab's day to show (now when None).

    Raises:
        OperatorError: the tables cannot be read.
    """
    policy = policy or DEFAULT_POLICY
    now = now or datetime.now(UTC)
    status = _records(status_frame(engine))
    sessions = _records(sessions_frame(engine))
    latest: dict[str, dict[str, Any]] = {}
    for row in sessions:
        if row["started_at"] is not None:
            latest[row["mouse_id"]] = row  # ordered by mouse and start
    needs = attention(engine, is_terminal=is_terminal)
    order = {item.mouse_id: n for n, item in enumerate(needs)}
    reasons = {item.mouse_id: item.reasons for item in needs}
    welfare = {
        item.mouse_id: welfare_of(item)
        for item in welfare_from_tables(engine, policy, policy.day_of(now), now)
    }
    for subject, items in (open_alerts(engine) or {}).items():
        welfare[subject] = replace(welfare.get(subject, Welfare()), alerts=items)
    rows = []
    for row in status:
        mouse = str(row["mouse_id"])
        last = latest.get(mouse, {})
        name = row["curriculum_name"] or ""
        version = row["curriculum_version"] or ""
        rows.append(
            MouseRow(
                mouse_id=mouse,
                curriculum=f"{name} {version}".strip(),
                stage=row["stage"],
                sessions_completed=int(row["sessions_completed"] or 0),
                sessions_at_stage=int(row["sessions_at_stage"] or 0),
                last_session_at=last.get("started_at"),
                last_rig=row["last_rig_id"],
                last_accuracy=row["last_accuracy"],
                last_decision=row["last_decision"],
                last_decision_at=row["last_decision_at"],
                ejected=row["last_reason"] == "ejected",
                reasons=reasons.get(mouse, ()),
                welfare=welfare.get(mouse, Welfare()),
            )
        )

    def first(r: MouseRow) -> tuple[bool, int, int, int, str]:
        rank = r.welfare.rank
        return (r.ejected, min(rank, 2), order.get(r.mouse_id, len(order)), rank, r.mouse_id)

    rows.sort(key=first)
    return rows


@dataclass(frozen=True)
class Observation:
    """One check of a rule: the metric observed against its threshold."""

    metric: str
    observed: float | None
    comparator: str
    threshold: float | None
    passed: bool


@dataclass(frozen=True)
class RuleEvidence:
    """One rule the curriculum evaluated for a decision, and whether it fired."""

    rule: str
    decision: str
    to_stage: str
    description: str
    fired: bool
    observations: tuple[Observation, ...]


@dataclass(frozen=True)
class Decision:
    """A decision on one session and the evidence behind it."""

    session_total: int
    session_id: str | None
    occurred_at: datetime | None
    from_stage: str
    to_stage: str
    decision: str
    rule: str | None
    superseded: bool
    evidence: tuple[RuleEvidence, ...]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def parse_evidence(evidence_json: str | None) -> tuple[RuleEvidence, ...]:
    """The rules of a decision's ``evidence_json``, in the order they were evaluated (what
    cannot be read is left out, never raised)."""
    try:
        rules = json.loads(evidence_json or "[]")
    except ValueError:
        return ()
    found = []
    for rule in rules if isinstance(rules, list) else []:
        if not isinstance(rule, dict):
            continue
        observations = tuple(
            Observation(
                metric=str(obs.get("metric", "")),
                observed=_number(obs.get("observed")),
                comparator=str(obs.get("comparator", "")),
                threshold=_number(obs.get("threshold")),
                passed=bool(obs.get("passed")),
            )
            for obs in rule.get("observations", [])
            if isinstance(obs, dict)
        )
        found.append(
            RuleEvidence(
                rule=str(rule.get("rule", "")),
                decision=str(rule.get("decision", "")),
                to_stage=str(rule.get("to_stage", "")),
                description=str(rule.get("description", "") or ""),
                fired=bool(rule.get("verdict")),
                observations=observations,
            )
        )
    return tuple(found)


@dataclass(frozen=True)
class TimelineEntry:
    """One line of a mouse's timeline."""

    at: datetime | None
    kind: str  # stage, override, migration, adjust, eject, enrol, warning, intervention
    what: str
    by: str = ""
    why: str = ""
    outcome: str = ""


@dataclass(frozen=True)
class SessionPoint:
    """One session on the learning curve."""

    number: int
    session_id: str
    started_at: datetime | None
    stage: str | None
    rig_id: str | None
    n_trials: int | None
    accuracy: float | None
    decision: str | None
    next_stage: str | None


@dataclass(frozen=True)
class WeightPoint:
    """One weight recorded."""

    at: datetime
    grams: float
    by: str = ""
    confirmed: bool = False


@dataclass(frozen=True)
class Line:
    """A line of the weight chart: grams at moments (a step at each lab day)."""

    name: str
    points: tuple[tuple[datetime, float], ...]


@dataclass(frozen=True)
class WeightChart:
    """The weights, and for the restriction in force the expected weight and the policy's
    attention and warning thresholds (net of the implant, as the percent is taken)."""

    weights: tuple[WeightPoint, ...]
    expected: Line | None = None
    attention: Line | None = None
    warning: Line | None = None


@dataclass(frozen=True)
class WaterDay:
    """The water of one lab day by kind, and that day's requirement (restricted days)."""

    day: date
    earned_ml: float = 0.0
    supplement_ml: float = 0.0
    free_access: bool = False
    required_ml: float | None = None

    @property
    def given_ml(self) -> float:
        """Earned and supplement together."""
        return self.earned_ml + self.supplement_ml


@dataclass(frozen=True)
class RestrictionInfo:
    """The water restriction in force."""

    started_at: datetime
    reference_grams: float
    reference_method: str
    implant_grams: float
    started_by: str


@dataclass(frozen=True)
class HusbandryRecord:
    """One husbandry fact with who recorded it."""

    at: datetime | None
    kind: str  # weight, water, restriction, note
    what: str
    by: str = ""


@dataclass(frozen=True)
class MousePage:
    """Everything the mouse's page shows."""

    row: MouseRow
    parameters: dict[str, Any]
    sessions: tuple[SessionPoint, ...]
    decisions: tuple[Decision, ...]
    timeline: tuple[TimelineEntry, ...]
    weight_chart: WeightChart = field(default_factory=lambda: WeightChart(()))
    water_days: tuple[WaterDay, ...] = ()
    restriction: RestrictionInfo | None = None
    records: tuple[HusbandryRecord, ...] = ()
    policy: WelfarePolicy = DEFAULT_POLICY


def _kind(what: str) -> str:
    for prefix, kind in (
        ("override", "override"),
        ("adjust", "adjust"),
        ("eject", "eject"),
        ("enrol", "enrol"),
        ("warning", "warning"),
        ("release", "release"),
    ):
        if what.startswith(prefix):
            return kind
    return "intervention"


def mouse_page(
    engine: Engine,
    mouse_id: str,
    is_terminal: StageCheck | None = None,
    policy: WelfarePolicy | None = None,
    now: datetime | None = None,
) -> MousePage:
    """One mouse's page (``policy`` and ``now`` as for :func:`overview`).

    Raises:
        UnknownMouseError: no such mouse (the closest ids named).
        OperatorError: the tables cannot be read.
    """
    policy = policy or DEFAULT_POLICY
    now = now or datetime.now(UTC)
    require_mouse(engine, mouse_id)
    row = next(r for r in overview(engine, is_terminal, policy, now) if r.mouse_id == mouse_id)
    with engine.connect() as conn:
        params_json = conn.execute(
            select(mouse_status.c.parameters_json).where(mouse_status.c.mouse_id == mouse_id)
        ).scalar_one_or_none()
    try:
        parameters = json.loads(params_json or "{}")
    except ValueError:
        parameters = {}
    sessions = tuple(
        SessionPoint(
            number=n,
            session_id=str(s["session_id"]),
            started_at=s["started_at"],
            stage=s["stage"],
            rig_id=s["rig_id"],
            n_trials=int(s["n_trials"]) if s["n_trials"] is not None else None,
            accuracy=s["accuracy"],
            decision=s["decision"],
            next_stage=s["next_stage"],
        )
        for n, s in enumerate(_records(sessions_frame(engine, mouse_id)), start=1)
    )
    decision_rows = _records(decisions_frame(engine, mouse_id))
    decisions = tuple(
        Decision(
            session_total=int(d["session_total"] or 0),
            session_id=d["session_id"],
            occurred_at=d["occurred_at"],
            from_stage=str(d["from_stage"]),
            to_stage=str(d["to_stage"]),
            decision=str(d["decision"]),
            rule=d["rule"] or None,
            superseded=bool(d["superseded_by"]),
            evidence=parse_evidence(d["evidence_json"]),
        )
        for d in reversed(decision_rows)
    )
    entries: list[TimelineEntry] = []
    for stage in _records(stage_history_frame(engine, mouse_id)):
        if stage["decision"] == "enrolled":
            what = f"starts at {stage['stage']}"
        else:
            rule = f" ({stage['rule']})" if stage["rule"] else ""
            what = (
                f"{stage['decision']} {stage['from_stage']} -> {stage['stage']}"
                f" after session {stage['entered_at_session']}{rule}"
            )
        entries.append(TimelineEntry(stage["occurred_at"], "stage", what, by="curriculum"))
    version: str | None = None
    for d in decision_rows:  # a migration shows as a change of curriculum version
        current = f"{d['curriculum_name']} {d['curriculum_version']}"
        if version is not None and current != version:
            entries.append(
                TimelineEntry(d["occurred_at"], "migration", f"migrated {version} -> {current}")
            )
        version = current
    for item in enrolment_rows(engine, mouse_id) + timeline(engine, mouse_id):
        entries.append(
            TimelineEntry(
                item["at"],
                _kind(str(item["what"])),
                str(item["what"]),
                str(item["by"] or ""),
                str(item["why"] or ""),
                str(item["outcome"] or ""),
            )
        )
    floor = datetime.min.replace(tzinfo=UTC)
    entries.sort(key=lambda e: e.at or floor, reverse=True)
    weights, water, restriction, records = _husbandry(engine, mouse_id)
    return MousePage(
        row,
        parameters,
        sessions,
        decisions,
        tuple(entries),
        weight_chart=weight_chart(weights, restriction, policy, now),
        water_days=water_days(weights, water, restriction, policy, now),
        restriction=None
        if restriction is None
        else RestrictionInfo(
            restriction["started_at"],
            float(restriction["reference_grams"]),
            str(restriction["reference_method"]),
            float(restriction["implant_grams"] or 0.0),
            str(restriction["started_by"] or ""),
        ),
        records=records,
        policy=policy,
    )


RECORDS_SHOWN = 60
"""The newest husbandry records a mouse's page lists."""

WATER_DAYS_SHOWN = 14
"""The lab days the water chart shows (the newest)."""


def _husbandry(
    engine: Engine, mouse_id: str
) -> tuple[
    list[dict[str, Any]], list[dict[str, Any]], dict[str, Any] | None, tuple[HusbandryRecord, ...]
]:
    """A mouse's weights and water (oldest first), its open restriction, and its newest
    husbandry records in words."""
    with engine.connect() as conn:
        weights = [
            dict(r)
            for r in conn.execute(
                select(husbandry_weights)
                .where(husbandry_weights.c.mouse_id == mouse_id)
                .order_by(husbandry_weights.c.weighed_at, husbandry_weights.c.event_id)
            ).mappings()
        ]
        water = [
            dict(r)
            for r in conn.execute(
                select(husbandry_water)
                .where(husbandry_water.c.mouse_id == mouse_id)
                .order_by(husbandry_water.c.given_at, husbandry_water.c.event_id)
            ).mappings()
        ]
        episodes = [
            dict(r)
            for r in conn.execute(
                select(husbandry_restrictions)
                .where(husbandry_restrictions.c.mouse_id == mouse_id)
                .order_by(husbandry_restrictions.c.started_at)
            ).mappings()
        ]
        notes = [
            dict(r)
            for r in conn.execute(
                select(husbandry_notes).where(husbandry_notes.c.mouse_id == mouse_id)
            ).mappings()
        ]
    open_ones = [e for e in episodes if e["ended_at"] is None]
    restriction = open_ones[-1] if open_ones else None
    records: list[HusbandryRecord] = []
    for w in weights:
        confirmed = " (confirmed)" if w["confirmed"] else ""
        scale = f" on {w['scale_id']}" if w["scale_id"] else ""
        records.append(
            HusbandryRecord(
                w["weighed_at"],
                "weight",
                f"weighed {w['grams']:g} g{scale}{confirmed}",
                w["recorded_by"] or "",
            )
        )
    for g in water:
        session = f" in session {g['session_id']}" if g["session_id"] else ""
        records.append(
            HusbandryRecord(
                g["given_at"],
                "water",
                f"{g['ml']:g} mL {g['water_type']} ({str(g['kind']).replace('_', ' ')}){session}",
                g["given_by"] or "",
            )
        )
    for e in episodes:
        implant = f", implant {e['implant_grams']:g} g" if e["implant_grams"] else ""
        records.append(
            HusbandryRecord(
                e["started_at"],
                "restriction",
                f"water restriction started: reference {e['reference_grams']:g} g "
                f"({e['reference_method']}){implant}",
                e["started_by"] or "",
            )
        )
        if e["ended_at"] is not None:
            why = f": {e['end_reason']}" if e["end_reason"] else ""
            records.append(
                HusbandryRecord(
                    e["ended_at"],
                    "restriction",
                    f"water restriction ended{why}",
                    e["ended_by"] or "",
                )
            )
    for n in notes:
        records.append(HusbandryRecord(n["noted_at"], "note", str(n["text"]), n["noted_by"] or ""))
    floor = datetime.min.replace(tzinfo=UTC)
    records.sort(key=lambda r: r.at or floor, reverse=True)
    return weights, water, restriction, tuple(records[:RECORDS_SHOWN])


def _threshold(expected: float, implant: float, percent: float) -> float:
    """The gross weight at ``percent`` of expected, net of the implant."""
    return implant + (expected - implant) * percent / 100.0


def weight_chart(
    weights: Sequence[dict[str, Any]],
    restriction: dict[str, Any] | None,
    policy: WelfarePolicy,
    now: datetime,
) -> WeightChart:
    """The weight chart's data: every weight; with a restriction in force, the expected
    weight and the thresholds from its start, a step at each weighing (and ``now``, when a
    growth curve has moved the expected weight since)."""
    points = tuple(
        WeightPoint(
            w["weighed_at"], float(w["grams"]), w["recorded_by"] or "", bool(w["confirmed"])
        )
        for w in weights
    )
    if restriction is None:
        return WeightChart(points)
    husbandry = husbandry_from_rows([], [], restriction)
    implant = float(restriction["implant_grams"] or 0.0)
    start: datetime = restriction["started_at"]
    # A step at the restriction's start and at each weighing since (the chart draws the last
    # value on to its right edge); today's, when a growth curve moves it since the last one.
    moments = sorted({start, *(p.at for p in points if p.at >= start)})
    if policy.expected_method == "growth_curve" and policy.day_of(now) > policy.day_of(moments[-1]):
        moments.append(now)
    expected: list[tuple[datetime, float]] = []
    attention: list[tuple[datetime, float]] = []
    warning: list[tuple[datetime, float]] = []
    for at in moments:
        grams = expected_grams(husbandry, policy, policy.day_of(at))
        if grams is None:
            continue
        expected.append((at, grams))
        margin = policy.minimum_percent + policy.attention_margin
        attention.append((at, _threshold(grams, implant, margin)))
        warning.append((at, _threshold(grams, implant, policy.minimum_percent)))
    return WeightChart(
        points,
        Line("expected", tuple(expected)),
        Line(
            f"attention ({policy.minimum_percent + policy.attention_margin:g} %)", tuple(attention)
        ),
        Line(f"warning ({policy.minimum_percent:g} %)", tuple(warning)),
    )


def water_days(
    weights: Sequence[dict[str, Any]],
    water: Sequence[dict[str, Any]],
    restriction: dict[str, Any] | None,
    policy: WelfarePolicy,
    now: datetime,
) -> tuple[WaterDay, ...]:
    """The water of the newest lab days (at most :data:`WATER_DAYS_SHOWN`, up to today), each
    with its requirement on the days of the restriction in force."""
    from shaping.services.domain.welfare import welfare_status

    by_day: dict[date, list[dict[str, Any]]] = {}
    for g in water:
        by_day.setdefault(policy.day_of(g["given_at"]), []).append(g)
    today = policy.day_of(now)
    start_day = policy.day_of(restriction["started_at"]) if restriction is not None else None
    days = set(by_day)
    if start_day is not None:
        days.add(today)
    shown = sorted(d for d in days if d <= today)[-WATER_DAYS_SHOWN:]
    found = []
    for day in shown:
        entries = by_day.get(day, [])
        kinds: dict[str, float] = {}
        for g in entries:
            kinds[g["kind"]] = kinds.get(g["kind"], 0.0) + float(g["ml"])
        required = None
        if start_day is not None and day >= start_day:
            upto = [w for w in weights if policy.day_of(w["weighed_at"]) <= day]
            status = welfare_status(husbandry_from_rows(upto, entries, restriction), policy, day)
            required = status.requirement_ml
        found.append(
            WaterDay(
                day,
                round(kinds.get("earned", 0.0), 6),
                round(kinds.get("supplement", 0.0), 6),
                "free_access" in kinds,
                required,
            )
        )
    return tuple(found)
