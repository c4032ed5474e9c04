"""A lab's alert-rules file (YAML), checked like a curriculum: every problem is reported with
the file and the line at fault, and nothing is guessed (an unknown rule, key or severity, or a
threshold out of range, rejects the file).

The file (an example in docs/alerts.md)::

    lab: lab-a                        # the lab these alerts are for (routing goes by it)
    zone: Europe/London               # where the lab's day and hours are (default UTC)
    welfare_policy: ../policies/lab-85.yaml   # husbandry rules read it (default: built-in)
    rules:
      stuck_at_stage: {sessions: 10, warning_after: 20, stages: {"trained 1a": 15}}
      training_warnings: {untrainable_risk: warning, regression_prevented: attention}
      stage_labels: {untrainable: warning, unbiasable: warning}
      rig_silent: {minutes: 30, severity: warning, hours: [8, 20]}
      processor_silent: {minutes: 5, severity: critical}
      dead_letters: {count: 10, minutes: 10, severity: warning}
      weight: {attention: attention, warning: critical}
      not_weighed: {severity: attention}
      water_due: {hours: 23, severity: warning}

A rule left out is off. ``hours`` of ``rig_silent`` is the lab's working day ``[from, to)``;
without it a rig's usual hours are the hours it was busy on the week's earlier days.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, tzinfo
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from shaping.schemas.alerts import SEVERITIES
from shaping.schemas.identifiers import is_id
from shaping.services.alerts.checks import Checker, FileInvalid, read_yaml
from shaping.services.curricula.policy import PolicyInvalid, load_policy
from shaping.services.domain.welfare import DEFAULT_POLICY, WelfarePolicy

WHAT = "alert rules"


@dataclass(frozen=True)
class StuckRule:
    """Raise when a mouse stays at a stage for ``sessions`` decisions in a row (``warning``
    from ``warning_after``); per-stage limits in ``stages``."""

    sessions: int = 10
    warning_after: int | None = None
    stages: Mapping[str, int] = field(default_factory=dict)
    severity: str = "attention"

    def limit(self, stage: str) -> int:
        return self.stages.get(stage, self.sessions)


@dataclass(frozen=True)
class SilenceRule:
    """Raise when something has been silent for ``minutes`` (``hours``: the working day)."""

    minutes: float
    severity: str = "warning"
    hours: tuple[int, int] | None = None


@dataclass(frozen=True)
class DeadLetterRule:
    """Raise when more than ``count`` dead letters arrived within ``minutes``."""

    count: int = 10
    minutes: float = 10.0
    severity: str = "warning"


@dataclass(frozen=True)
class WaterDueRule:
    hours: float = 23.0
    severity: str = "warning"


@dataclass(frozen=True)
class AlertRules:
    """A lab's rules (see the module); None or empty: the rule is off."""

    lab: str
    zone: tzinfo = UTC
    welfare: WelfarePolicy = DEFAULT_POLICY
    stuck_at_stage: StuckRule | None = None
    training_warnings: Mapping[str, str] = field(default_factory=dict)
    stage_labels: Mapping[str, str] = field(default_factory=dict)
    rig_silent: SilenceRule | None = None
    processor_silent: SilenceRule | None = None
    dead_letters: DeadLetterRule | None = None
    weight: Mapping[str, str] = field(default_factory=dict)
    not_weighed: str | None = None
    water_due: WaterDueRule | None = None


RULES: dict[str, tuple[str, ...] | None] = {
    "stuck_at_stage": ("sessions", "warning_after", "stages", "severity"),
    "training_warnings": None,
    "stage_labels": None,
    "rig_silent": ("minutes", "severity", "hours"),
    "processor_silent": ("minutes", "severity"),
    "dead_letters": ("count", "minutes", "severity"),
    "weight": ("attention", "warning"),
    "not_weighed": ("severity",),
    "water_due": ("hours", "severity"),
}
"""Each rule the file may set and its keys (None: a map of names to severities)."""

TOP_LEVEL = ("lab", "zone", "welfare_policy", "rules")


def parse_rules(text: str, file: str = "<alert rules>", base: Path | None = None) -> AlertRules:
    """Parses and checks an alert-rules document.

    Args:
        base: the folder a relative ``welfare_policy`` path is read from.

    Raises:
        FileInvalid: a syntax error, a duplicate key, or any problem of the content, with its
            line.
    """
    data, c = read_yaml(None, text, file, WHAT)
    return _check(data, c, base or Path.cwd())


def load_rules(path: Path) -> AlertRules:
    """Reads and checks a lab's alert-rules file (see :func:`parse_rules`)."""
    data, c = read_yaml(path, None, str(path), WHAT)
    return _check(data, c, path.parent)


def _check(data: Any, c: Checker, base: Path) -> AlertRules:
    top = c.mapping(data, (), TOP_LEVEL)
    values: dict[str, Any] = {}
    lab = top.get("lab")
    if not is_id(lab):
        c.fail(("lab",), f"name the lab: `lab: <name>` (letters, digits, . _ -), not {lab!r}")
        values["lab"] = "lab"
    else:
        values["lab"] = lab
    if "zone" in top:
        try:
            values["zone"] = ZoneInfo(str(top["zone"]))
        except (ZoneInfoNotFoundError, ValueError):
            c.fail(("zone",), f"unknown time zone {top['zone']!r} (e.g. Europe/London, UTC)")
    policy = c.text(top, (), "welfare_policy")
    if policy is not None:
        try:
            values["welfare"] = load_policy((base / policy).resolve())
        except PolicyInvalid as exc:
            first = exc.problems[0] if exc.problems else "rejected"
            c.fail(("welfare_policy",), f"welfare policy {policy!r} is rejected: {first}")
    rules = c.mapping(top.get("rules"), ("rules",), tuple(RULES))
    if "rules" not in top:
        c.fail((), "give the rules: `rules:` and at least one of " + ", ".join(RULES))
    for name, keys in RULES.items():
        if name not in rules:
            continue
        path: tuple[Any, ...] = ("rules", name)
        section = c.mapping(rules[name], path, keys)
        if keys is None:
            values[name] = _severities(c, section, path)
        else:
            values[name] = _RULE_BUILDERS[name](c, section, path)
    c.raise_if_any(WHAT)
    return AlertRules(**values)


def _severity(c: Checker, section: Mapping[str, Any], path: tuple[Any, ...], default: str) -> str:
    return c.choice(section, path, "severity", default, SEVERITIES)


def _severities(c: Checker, section: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, str]:
    out = {}
    for name, severity in section.items():
        if not is_id(name) and path[-1] == "training_warnings":
            c.fail((*path, name), f"{name!r} is not a warning kind (letters, digits, . _ -)")
            continue
        out[str(name)] = c.one_of(severity, (*path, name), SEVERITIES, "warning")
    return out


def _stuck(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> StuckRule:
    sessions = int(c.number(s, path, "sessions", 10, low=1, high=1000, whole=True))
    after = s.get("warning_after")
    warning_after = None
    if after is not None:
        warning_after = int(c.number(s, path, "warning_after", 0, low=1, high=1000, whole=True))
        if warning_after and warning_after <= sessions:
            c.fail((*path, "warning_after"), "warning_after must be more than sessions")
    stages: dict[str, int] = {}
    per_stage = c.mapping(s.get("stages"), (*path, "stages"))
    for stage in per_stage:
        found = c.number(per_stage, (*path, "stages"), stage, 0, low=1, high=1000, whole=True)
        if found:
            stages[str(stage)] = int(found)
    severity = _severity(c, s, path, "attention")
    return StuckRule(sessions, warning_after or None, stages, severity)


def _silence(default_minutes: float, default_severity: str) -> Any:
    def build(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> SilenceRule:
        minutes = c.number(s, path, "minutes", default_minutes, low=1, high=24 * 60)
        hours = None
        if "hours" in s:
            value = s["hours"]
            if (
                isinstance(value, list)
                and len(value) == 2
                and all(isinstance(h, int) and not isinstance(h, bool) for h in value)
                and 0 <= value[0] < value[1] <= 24
            ):
                hours = (value[0], value[1])
            else:
                c.fail(
                    (*path, "hours"),
                    f"{c.where((*path, 'hours'))} must be [from, to] whole hours with "
                    f"0 <= from < to <= 24, not {value!r}",
                )
        return SilenceRule(minutes, _severity(c, s, path, default_severity), hours)

    return build


def _dead_letters(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> DeadLetterRule:
    count = int(c.number(s, path, "count", 10, low=0, high=100_000, whole=True))
    minutes = c.number(s, path, "minutes", 10, low=1, high=24 * 60)
    return DeadLetterRule(count, minutes, _severity(c, s, path, "warning"))


def _weight(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> dict[str, str]:
    return {
        "attention": c.choice(s, path, "attention", "attention", SEVERITIES),
        "warning": c.choice(s, path, "warning", "warning", SEVERITIES),
    }


def _not_weighed(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> str:
    return _severity(c, s, path, "attention")


def _water_due(c: Checker, s: Mapping[str, Any], path: tuple[Any, ...]) -> WaterDueRule:
    hours = c.number(s, path, "hours", 23, low=1, high=72)
    return WaterDueRule(hours, _severity(c, s, path, "warning"))


_RULE_BUILDERS: dict[str, Any] = {
    "stuck_at_stage": _stuck,
    "rig_silent": _silence(30, "warning"),
    "processor_silent": _silence(5, "critical"),
    "dead_letters": _dead_letters,
    "weight": _weight,
    "not_weighed": _not_weighed,
    "water_due": _water_due,
}


def default_rules(
    lab: str = "lab", welfare: WelfarePolicy = DEFAULT_POLICY, heartbeats: bool = False
) -> AlertRules:
    """The rules an install runs when it is given no file: the training and husbandry rules,
    and the dead-letter storm. Without ``heartbeats`` (``shaping demo``, the embedded runtime)
    the heartbeats are off: in one process the processor cannot fall silent, and a simulated
    rig sleeps every night. With them (``shaping alerts run`` without ``--rules``, the local
    stack) a rig silent 30 minutes during the hours it is usually busy is a warning and the
    processor silent 5 minutes is critical (``rig_silent: {minutes: 30}``,
    ``processor_silent: {minutes: 5, severity: critical}``).

    As a file::

        lab: lab
        rules:
          stuck_at_stage: {sessions: 10, warning_after: 20}
          training_warnings: {untrainable_risk: warning, regression_prevented: attention,
                              ran_while_held: warning}
          stage_labels: {untrainable: warning, unbiasable: warning}
          dead_letters: {count: 10, minutes: 10, severity: warning}
          weight: {attention: attention, warning: critical}
          not_weighed: {severity: attention}
          water_due: {hours: 23, severity: warning}
    """
    return AlertRules(
        lab=lab,
        welfare=welfare,
        stuck_at_stage=StuckRule(sessions=10, warning_after=20),
        training_warnings={
            "untrainable_risk": "warning",
            "regression_prevented": "attention",
            "ran_while_held": "warning",
        },
        stage_labels={"untrainable": "warning", "unbiasable": "warning"},
        dead_letters=DeadLetterRule(count=10, minutes=10.0, severity="warning"),
        weight={"attention": "attention", "warning": "critical"},
        not_weighed="attention",
        water_due=WaterDueRule(hours=23.0, severity="warning"),
        rig_silent=SilenceRule(minutes=30.0) if heartbeats else None,
        processor_silent=SilenceRule(minutes=5.0, severity="critical") if heartbeats else None,
    )


__all__ = [
    "AlertRules",
    "DeadLetterRule",
    "FileInvalid",
    "SilenceRule",
    "StuckRule",
    "WaterDueRule",
    "default_rules",
    "load_rules",
    "parse_rules",
]
