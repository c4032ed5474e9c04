"""The alert rules over the log: pure, no I/O, no clock of their own.

:class:`AlertEngine` is fed what the processor decided and accepted, the dead letters and the
raw events topic (:meth:`AlertEngine.observe`, each record with its broker time), and the log's
time when nothing arrives (:meth:`AlertEngine.tick`); it answers with the alert events to
write. The rules a lab switched on (:class:`~shaping.services.alerts.config.AlertRules`):

training (on each decision)
    ``stuck_at_stage``: a ``stay`` decision with ``sessions_at_stage`` at the stage's limit or
    more (``warning`` from ``warning_after``); resolved when the mouse moves, is overridden,
    migrated or ejected. ``<kind>`` of ``training_warnings`` (``untrainable_risk``,
    ``regression_prevented``, ...): a TrainingWarning of that kind; resolved when a later
    decision of the mouse came without one. ``stage_label``: the mouse reached a stage that is
    itself a verdict (IBL's ``untrainable``, ``unbiasable``); resolved when it leaves it.
heartbeats (on ticks)
    ``rig_silent``: a rig that sent something in the last day has sent nothing for N minutes
    during its usual hours; resolved by its next message. ``processor_silent``: input needing
    an answer arrived on the events topic and the processor wrote nothing for N minutes;
    resolved by its next output. ``dead_letters``: more than K dead letters in M minutes.
husbandry (on each husbandry fact and on ticks; the lab's welfare policy)
    ``weight``: the newest weight of a restricted mouse is near (attention) or at or below
    (warning) its minimum; ``not_weighed``: a restricted mouse not weighed by the policy's hour;
    ``water_due``: water still due N hours (23) after the last water. Resolved when the
    condition clears or the restriction ends. :meth:`AlertEngine.husbandry_rules` is the hook
    for more.

An alert's state (open, its episode and revision) is the log's: :meth:`AlertEngine.restore`
folds the alerts topic, and in :attr:`AlertEngine.quiet` mode (re-reading inputs already
answered) the rules rebuild their own state and emit nothing.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

from shaping.schemas.alerts import (
    AlertAcknowledged,
    AlertEvent,
    AlertRaised,
    AlertResolved,
    AlertUpdated,
    alert_event_id,
    alert_id,
    subject_id,
)
from shaping.schemas.events import (
    Event,
    EventRejected,
    MouseEjected,
    MouseMigrated,
    MovementDetected,
    RestrictionEnded,
    RestrictionStarted,
    SessionEnded,
    StageOverridden,
    StageTransitioned,
    TrainingWarning,
    TrialCompleted,
    WaterGiven,
    WeightRecorded,
)
from shaping.services.alerts.config import AlertRules
from shaping.services.domain.husbandry import earned_water_ml
from shaping.services.domain.state import Husbandry, Restriction, WaterEntry, WeightEntry
from shaping.services.domain.welfare import status_of, welfare_status

InputKind = str
"""Which topic a record came from: ``events``, ``accepted``, ``decisions``, ``dead_letter``,
``assignments``."""

PROCESSOR_OUTPUTS = ("accepted", "decisions", "assignments", "dead_letter")
NO_ANSWER = (TrialCompleted, MovementDetected)
"""Inputs the processor answers with nothing of their own."""

WEIGHTS_KEPT = 10
WATER_KEPT = 50
RIG_DAYS_KEPT = 7
DEAD_LETTERS_KEPT = 100_000


@dataclass(frozen=True)
class Finding:
    """What a rule says about a subject: raise (or update) an alert with these values."""

    rule: str
    scope: str
    scope_key: str
    severity: str
    message: str
    evidence: dict[str, str] = field(default_factory=dict)
    rig_id: str | None = None
    session_id: str | None = None


@dataclass
class AlertState:
    """The newest state of one alert, as its events on the log say."""

    alert_id: str
    rule: str
    scope: str
    scope_key: str
    episode: int = 0
    revision: int = 0
    open: bool = False
    severity: str = "info"
    message: str = ""
    raised_at: datetime | None = None
    acknowledged_by: str | None = None


@dataclass
class _Rig:
    last_seen: datetime
    busy_hours: dict[date, set[int]] = field(default_factory=dict)


@dataclass
class _Mouse:
    stage: str | None = None
    husbandry: Husbandry = field(default_factory=Husbandry)
    last_decision: str | None = None
    warned: dict[str, str] = field(default_factory=dict)  # kind -> decision id it came with


class AlertEngine:
    """The rules of one lab (see the module)."""

    def __init__(self, rules: AlertRules) -> None:
        self.rules = rules
        self.alerts: dict[str, AlertState] = {}
        self.quiet = False
        self.mice: dict[str, _Mouse] = {}
        self.rigs: dict[str, _Rig] = {}
        self.dead_letters: deque[tuple[datetime, str]] = deque(maxlen=DEAD_LETTERS_KEPT)
        self.unanswered_since: datetime | None = None
        self.last_output: datetime | None = None
        self.husbandry_rules: list[Callable[[str, _Mouse, datetime], Iterable[Finding]]] = []
        """Extra husbandry rules: called with the mouse id, its state and the log's time, each
        returns its findings (a rule that finds nothing about a mouse resolves its alert)."""

    # -- the alerts topic ------------------------------------------------------------------------

    def restore(self, event: AlertEvent) -> None:
        """Folds one alert event read back from the alerts topic."""
        state = self._state(event.rule, event.scope, event.scope_key)
        if event.episode < state.episode:
            return
        if isinstance(event, AlertAcknowledged):
            if event.episode == state.episode:
                state.acknowledged_by = event.acknowledged_by
            return
        if event.episode > state.episode:
            state.acknowledged_by = None
        state.episode, state.revision = event.episode, max(event.revision, state.revision)
        state.severity, state.message, state.raised_at = (
            event.severity,
            event.message,
            event.raised_at,
        )
        state.open = not isinstance(event, AlertResolved)

    def open_alerts(self) -> list[AlertState]:
        return [a for a in self.alerts.values() if a.open]

    def _state(self, rule: str, scope: str, key: str) -> AlertState:
        found = alert_id(rule, scope, key)
        if found not in self.alerts:
            self.alerts[found] = AlertState(found, rule, scope, key)
        return self.alerts[found]

    # -- raising and resolving -----------------------------------------------------------------

    def _raise(self, f: Finding, at: datetime, cause: str | None) -> list[AlertEvent]:
        state = self._state(f.rule, f.scope, f.scope_key)
        if self.quiet:
            return []
        if state.open and state.severity == f.severity and state.message == f.message:
            return []
        if state.open:
            state.revision += 1
            cls: type[AlertEvent] = AlertUpdated
        else:
            state.episode += 1
            state.revision = 0
            state.raised_at = at
            state.acknowledged_by = None
            cls = AlertRaised
        state.open, state.severity, state.message = True, f.severity, f.message
        assert state.raised_at is not None
        return [
            cls(
                event_id=alert_event_id(
                    state.alert_id, state.episode, state.revision, cls.__name__
                ),
                mouse_id=subject_id(f.scope, f.scope_key),
                rig_id=f.rig_id,
                session_id=f.session_id,
                occurred_at=at,
                causation_id=cause,
                alert_id=state.alert_id,
                episode=state.episode,
                revision=state.revision,
                rule=f.rule,
                severity=f.severity,  # type: ignore[arg-type]
                scope=f.scope,  # type: ignore[arg-type]
                scope_key=f.scope_key,
                lab=self.rules.lab,
                message=f.message,
                evidence=f.evidence,
                raised_at=state.raised_at,
            )
        ]

    def _resolve(
        self, rule: str, scope: str, key: str, at: datetime, why: str, cause: str | None = None
    ) -> list[AlertEvent]:
        found = self.alerts.get(alert_id(rule, scope, key))
        if found is None or not found.open or self.quiet:
            return []
        found.open = False
        found.revision += 1
        assert found.raised_at is not None
        return [
            AlertResolved(
                event_id=alert_event_id(found.alert_id, found.episode, found.revision, "resolved"),
                mouse_id=subject_id(scope, key),
                occurred_at=at,
                causation_id=cause,
                alert_id=found.alert_id,
                episode=found.episode,
                revision=found.revision,
                rule=rule,
                severity=found.severity,  # type: ignore[arg-type]
                scope=scope,  # type: ignore[arg-type]
                scope_key=key,
                lab=self.rules.lab,
                message=why,
                raised_at=found.raised_at,
            )
        ]

    def _level(
        self,
        rule: str,
        scope: str,
        key: str,
        finding: Finding | None,
        at: datetime,
        why: str,
        cause: str | None = None,
    ) -> list[AlertEvent]:
        """Raises ``finding`` when there is one, else resolves the rule's alert on ``key``."""
        if finding is not None:
            return self._raise(finding, at, cause)
        return self._resolve(rule, scope, key, at, why, cause)

    # -- input ---------------------------------------------------------------------------------

    def observe(self, kind: InputKind, event: Event | None, at: datetime) -> list[AlertEvent]:
        """One record of an input topic (``event`` None: it did not decode), read at broker
        time ``at``."""
        out: list[AlertEvent] = []
        if kind == "events":
            out += self._on_input(event, at)
            return out
        if kind in PROCESSOR_OUTPUTS:
            self.last_output = at
            if self.unanswered_since is not None:
                self.unanswered_since = None
                out += self._resolve(
                    "processor_silent",
                    "service",
                    "processor",
                    at,
                    "the processor answers again",
                )
        if isinstance(event, EventRejected):
            out += self._on_dead_letter(event, at)
        elif isinstance(event, StageTransitioned) and kind == "decisions":
            out += self._on_decision(event, at)
        elif isinstance(event, TrainingWarning) and kind == "decisions":
            out += self._on_warning(event, at)
        elif kind == "accepted" and event is not None:
            out += self._on_fact(event, at)
        return out

    def _mouse(self, mouse_id: str) -> _Mouse:
        return self.mice.setdefault(mouse_id, _Mouse())

    def _on_input(self, event: Event | None, at: datetime) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        if event is not None and event.rig_id is not None and isinstance(event, _RIG_FACTS):
            rig = self.rigs.get(event.rig_id)
            if rig is None:
                rig = self.rigs[event.rig_id] = _Rig(at)
            rig.last_seen = max(rig.last_seen, at)
            local = at.astimezone(self.rules.zone)
            rig.busy_hours.setdefault(local.date(), set()).add(local.hour)
            for day in sorted(rig.busy_hours)[:-RIG_DAYS_KEPT]:
                del rig.busy_hours[day]
            out += self._resolve(
                "rig_silent", "rig", event.rig_id, at, f"rig {event.rig_id} is heard from again"
            )
        needs_answer = event is None or not isinstance(event, NO_ANSWER)
        answered = self.last_output is not None and self.last_output >= at
        if needs_answer and not answered and self.unanswered_since is None:
            self.unanswered_since = at
        return out

    def _on_dead_letter(self, event: EventRejected, at: datetime) -> list[AlertEvent]:
        self.dead_letters.append((at, f"{event.error_kind}: {event.reason}"[:300]))
        return self._dead_letter_rule(at)

    def _on_decision(self, event: StageTransitioned, at: datetime) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        mouse = self._mouse(event.mouse_id)
        previous = mouse.last_decision
        # A warning alert whose kind did not come with the previous decision is over (the
        # warnings of a decision are read after it, so the check waits one decision).
        for kind, decision in list(mouse.warned.items()):
            if previous is not None and decision != previous:
                del mouse.warned[kind]
                out += self._resolve(
                    kind,
                    "mouse",
                    event.mouse_id,
                    at,
                    f"the decision on session {event.session_id or '?'} did not warn of {kind}",
                    event.event_id,
                )
        mouse.last_decision = event.event_id
        mouse.stage = event.to_stage
        rule = self.rules.stuck_at_stage
        if rule is not None:
            finding = None
            limit = rule.limit(event.from_stage)
            if event.decision == "stay" and event.sessions_at_stage >= limit:
                severity = rule.severity
                shown = limit
                if rule.warning_after and event.sessions_at_stage >= rule.warning_after:
                    severity, shown = "warning", rule.warning_after
                finding = Finding(
                    "stuck_at_stage",
                    "mouse",
                    event.mouse_id,
                    severity,
                    f"{event.mouse_id} has stayed at stage {event.from_stage} for {shown} "
                    "sessions or more without progress",
                    {
                        "stage": event.from_stage,
                        "sessions_at_stage": str(event.sessions_at_stage),
                        "limit": str(limit),
                        "curriculum": f"{event.curriculum_name}@{event.curriculum_version}",
                        "decision_id": event.event_id,
                    },
                    event.rig_id,
                    event.session_id,
                )
            out += self._level(
                "stuck_at_stage",
                "mouse",
                event.mouse_id,
                finding,
                at,
                f"{event.mouse_id}: {event.decision} to {event.to_stage}",
                event.event_id,
            )
        if self.rules.stage_labels:
            finding = None
            label = self.rules.stage_labels.get(event.to_stage)
            if label is not None:
                finding = Finding(
                    "stage_label",
                    "mouse",
                    event.mouse_id,
                    label,
                    f"{event.mouse_id} is labelled {event.to_stage}",
                    {"stage": event.to_stage, "decision_id": event.event_id},
                    event.rig_id,
                    event.session_id,
                )
            out += self._level(
                "stage_label",
                "mouse",
                event.mouse_id,
                finding,
                at,
                f"{event.mouse_id} is now at {event.to_stage}",
                event.event_id,
            )
        return out

    def _on_warning(self, event: TrainingWarning, at: datetime) -> list[AlertEvent]:
        severity = self.rules.training_warnings.get(event.kind)
        if severity is None:
            return []
        mouse = self._mouse(event.mouse_id)
        mouse.warned[event.kind] = event.causation_id or ""
        evidence = {"stage": event.stage, "kind": event.kind}
        for evaluation in event.evidence[:4]:
            for obs in evaluation.observations[:6]:
                evidence[obs.metric[:60]] = f"{obs.observed} {obs.comparator} {obs.threshold:g}"
        return self._raise(
            Finding(
                event.kind,
                "mouse",
                event.mouse_id,
                severity,
                f"{event.mouse_id}: {event.message}",
                dict(list(evidence.items())[:32]),
                event.rig_id,
                event.session_id,
            ),
            at,
            event.event_id,
        )

    def _on_fact(self, event: Event, at: datetime) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        mouse_id = event.mouse_id
        if isinstance(event, StageOverridden | MouseMigrated | MouseEjected):
            what = {
                StageOverridden: "overridden",
                MouseMigrated: "migrated",
                MouseEjected: "ejected",
            }[type(event)]
            rules = ["stuck_at_stage", "stage_label", *self.rules.training_warnings]
            if isinstance(event, MouseEjected):
                rules += ["weight", "not_weighed", "water_due"]
            for rule in rules:
                out += self._resolve(
                    rule, "mouse", mouse_id, at, f"{mouse_id} was {what}", event.event_id
                )
            return out
        if isinstance(event, SessionEnded) and earned_water_ml(event) is None:
            return out
        if isinstance(event, _HUSBANDRY):
            mouse = self._mouse(mouse_id)
            mouse.husbandry = _fold(mouse.husbandry, event)
            out += self._husbandry(mouse_id, mouse, at, event.event_id)
        return out

    # -- the log's time ------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[AlertEvent]:
        """Evaluates the rules that depend on time alone, at the log's time ``now``."""
        out: list[AlertEvent] = []
        out += self._rig_rule(now)
        out += self._processor_rule(now)
        if self.dead_letters:
            out += self._dead_letter_rule(now)
        for mouse_id, mouse in self.mice.items():
            if mouse.husbandry.restriction is not None or mouse.husbandry.weights:
                out += self._husbandry(mouse_id, mouse, now, None)
        return out

    def _rig_rule(self, now: datetime) -> list[AlertEvent]:
        rule = self.rules.rig_silent
        if rule is None:
            return []
        out: list[AlertEvent] = []
        local = now.astimezone(self.rules.zone)
        for rig_id, rig in self.rigs.items():
            silent = now - rig.last_seen
            if rule.hours is not None:
                usual = rule.hours[0] <= local.hour < rule.hours[1]
            else:
                usual = any(
                    local.hour in hours
                    for day, hours in rig.busy_hours.items()
                    if day < local.date()
                )
            if usual and silent >= timedelta(minutes=rule.minutes) and silent <= timedelta(days=1):
                minutes = int(silent.total_seconds() // 60)
                out += self._raise(
                    Finding(
                        "rig_silent",
                        "rig",
                        rig_id,
                        rule.severity,
                        f"rig {rig_id} has been silent for {rule.minutes:g} minutes or more "
                        "during its usual hours",
                        {
                            "last_seen": rig.last_seen.isoformat(),
                            "silent_minutes": str(minutes),
                            "limit_minutes": f"{rule.minutes:g}",
                        },
                        rig_id,
                    ),
                    now,
                    None,
                )
        return out

    def _processor_rule(self, now: datetime) -> list[AlertEvent]:
        rule = self.rules.processor_silent
        since = self.unanswered_since
        if rule is None or since is None or now - since < timedelta(minutes=rule.minutes):
            return []
        return self._raise(
            Finding(
                "processor_silent",
                "service",
                "processor",
                rule.severity,
                f"the processor has written nothing for {rule.minutes:g} minutes or more while "
                "input arrives",
                {
                    "input_waiting_since": since.isoformat(),
                    "last_output": self.last_output.isoformat() if self.last_output else "never",
                },
            ),
            now,
            None,
        )

    def _dead_letter_rule(self, now: datetime) -> list[AlertEvent]:
        rule = self.rules.dead_letters
        if rule is None:
            return []
        since = now - timedelta(minutes=rule.minutes)
        while self.dead_letters and self.dead_letters[0][0] < since:
            self.dead_letters.popleft()
        count = len(self.dead_letters)
        finding = None
        if count > rule.count:
            finding = Finding(
                "dead_letters",
                "service",
                "dead-letter",
                rule.severity,
                f"more than {rule.count} dead letters in {rule.minutes:g} minutes",
                {
                    "count": str(count),
                    "window_minutes": f"{rule.minutes:g}",
                    "limit": str(rule.count),
                    "latest": self.dead_letters[-1][1],
                },
            )
        return self._level(
            "dead_letters",
            "service",
            "dead-letter",
            finding,
            now,
            f"{count} dead letters in the last {rule.minutes:g} minutes (limit {rule.count})",
        )

    # -- husbandry -----------------------------------------------------------------------------

    def _husbandry(
        self, mouse_id: str, mouse: _Mouse, at: datetime, cause: str | None
    ) -> list[AlertEvent]:
        out: list[AlertEvent] = []
        findings: dict[str, Finding | None] = {}
        policy = self.rules.welfare
        h = mouse.husbandry
        day = policy.day_of(at)
        status = welfare_status(h, policy, day, at)
        restricted = h.restriction is not None
        if self.rules.weight:
            finding = None
            level = status_of(status.percent, policy) if restricted else "ok"
            if level in ("attention", "warning") and status.percent is not None:
                finding = Finding(
                    "weight",
                    "mouse",
                    mouse_id,
                    self.rules.weight[level],
                    f"{mouse_id} weighs {status.percent:.1f} % of its expected weight "
                    f"({'at or below' if level == 'warning' else 'near'} the minimum of "
                    f"{policy.minimum_percent:g} %)",
                    {
                        "grams": f"{status.latest_grams:g}",
                        "expected_grams": f"{status.expected_grams or 0:.2f}",
                        "percent": f"{status.percent:.1f}",
                        "minimum_percent": f"{policy.minimum_percent:g}",
                        "policy": policy.name,
                    },
                )
            findings["weight"] = finding
        if self.rules.not_weighed is not None:
            findings["not_weighed"] = (
                Finding(
                    "not_weighed",
                    "mouse",
                    mouse_id,
                    self.rules.not_weighed,
                    f"{mouse_id} is on water restriction and was not weighed by "
                    f"{policy.weigh_by_hour}:00 on {day.isoformat()}",
                    {"day": day.isoformat(), "by_hour": str(policy.weigh_by_hour)},
                )
                if restricted and status.weigh_overdue
                else None
            )
        rule = self.rules.water_due
        if rule is not None:
            finding = None
            restriction = h.restriction
            if restriction is not None and not status.free_access:
                last = max(
                    [e.at for e in h.water] + [restriction.started_at],
                    default=restriction.started_at,
                )
                due = status.still_required_ml or 0.0
                if at - last >= timedelta(hours=rule.hours) and due > 0:
                    finding = Finding(
                        "water_due",
                        "mouse",
                        mouse_id,
                        rule.severity,
                        f"{mouse_id} still needs {due:.2f} mL of water today, "
                        f"{rule.hours:g} h or more after its last water",
                        {
                            "last_water": last.isoformat(),
                            "still_required_ml": f"{due:.2f}",
                            "suggested_ml": f"{status.supplement_ml:.2f}",
                        },
                    )
            findings["water_due"] = finding
        for extra in self.husbandry_rules:
            for finding in extra(mouse_id, mouse, at):
                findings[finding.rule] = finding
        for name, finding in findings.items():
            out += self._level(name, "mouse", mouse_id, finding, at, _CLEARED[name], cause)
        return out


class _Cleared(dict[str, str]):
    def __missing__(self, key: str) -> str:
        return f"{key}: the condition cleared"


_CLEARED = _Cleared(
    weight="the newest weight is above the attention threshold, or the restriction ended",
    not_weighed="weighed today, or no longer on water restriction",
    water_due="water given, or no longer on water restriction",
)

_RIG_FACTS = (Event,)
"""Any decoded record of the events topic that names a rig counts as the rig's heartbeat."""

_HUSBANDRY = (WeightRecorded, WaterGiven, RestrictionStarted, RestrictionEnded, SessionEnded)
"""The accepted facts a mouse's husbandry folds (a session's end: the water it earned)."""


def _fold(h: Husbandry, event: Event) -> Husbandry:
    """A mouse's husbandry after one accepted fact (the same record the processor keeps)."""
    if isinstance(event, WeightRecorded):
        weights = (*h.weights, WeightEntry(at=event.occurred_at, grams=event.grams))
        return h.model_copy(update={"weights": weights[-WEIGHTS_KEPT:]})
    if isinstance(event, WaterGiven):
        entry = WaterEntry(
            at=event.occurred_at, ml=event.ml, kind=event.kind, water_type=event.water_type
        )
        return h.model_copy(update={"water": (*h.water, entry)[-WATER_KEPT:]})
    if isinstance(event, SessionEnded):
        # The water its rewards delivered, as the processor folds it (no WaterGiven for it).
        earned = earned_water_ml(event)
        if earned is None:
            return h
        entry = WaterEntry(at=event.occurred_at, ml=earned, kind="earned", water_type="water")
        return h.model_copy(update={"water": (*h.water, entry)[-WATER_KEPT:]})
    if isinstance(event, RestrictionStarted):
        restriction = Restriction(
            started_at=event.occurred_at,
            reference_grams=event.reference_grams,
            reference_method=event.reference_method,
            implant_grams=event.implant_grams,
            birth_date=event.birth_date,
            sex=event.sex,
        )
        return h.model_copy(update={"restriction": restriction})
    if isinstance(event, RestrictionEnded):
        return h.model_copy(update={"restriction": None})
    return h


def replay(
    engine: AlertEngine, records: Iterable[tuple[InputKind, Event | None, datetime]]
) -> None:
    """Feeds records already answered (their alerts are on the log): state only."""
    engine.quiet = True
    try:
        for kind, event, at in records:
            engine.observe(kind, event, at)
    finally:
        engine.quiet = False


__all__ = ["AlertEngine", "AlertState", "Finding", "replay"]
