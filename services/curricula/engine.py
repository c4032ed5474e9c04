"""A loaded, checked curriculum: the domain's :class:`CurriculumEngine`, over the file format.

Build one with :func:`shaping.services.curricula.validate.compile_curriculum` (or a loader); this
module only evaluates. Evaluation is pure: the same metrics give the same decision and the same
evidence, whichever path (processor, embedded runner, batch table) asks.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shaping.schemas.events import Parameters, ParamValue, RuleEvaluation
from shaping.services.curricula.model import (
    Adjustment,
    Curriculum,
    Policy,
    ReportedValue,
    Rule,
    Stage,
    WarningRule,
)
from shaping.services.curricula.paramtypes import same_kind, value_problem
from shaping.services.curricula.rules import Expression
from shaping.services.domain.curriculum import Evaluation, MetricSource
from shaping.services.domain.errors import CurriculumError
from shaping.services.domain.metrics import MetricRegistry


@dataclass(frozen=True)
class CompiledRule:
    """A rule with its parsed condition (None for a manual rule)."""

    rule: Rule
    condition: Expression | None

    def evaluate(self, metrics: MetricSource) -> RuleEvaluation:
        """The rule's verdict and every observation behind it."""
        assert self.condition is not None
        verdict, observations = self.condition.judge(metrics)
        return RuleEvaluation(
            rule=self.rule.name,
            description=self.rule.description,
            decision=self.rule.decision,
            to_stage=self.rule.to,
            verdict=verdict,
            observations=observations,
        )


@dataclass(frozen=True)
class CompiledWarning:
    """A warning rule with its parsed condition."""

    warning: WarningRule
    condition: Expression

    def evaluate(self, metrics: MetricSource, stage: str) -> RuleEvaluation:
        """The warning's verdict and its observations (rule = kind, description = message)."""
        verdict, observations = self.condition.judge(metrics)
        return RuleEvaluation(
            rule=self.warning.name,
            description=self.warning.description,
            decision="warning",
            to_stage=stage,
            verdict=verdict,
            observations=observations,
        )


@dataclass(frozen=True)
class CompiledReport:
    """A reported value with its parsed expression."""

    item: ReportedValue
    expression: Expression

    def values(self, metrics: MetricSource) -> dict[str, float | None]:
        """The reported values: one, or one per element of a window series (``name[-1]`` is
        the newest)."""
        value = self.expression.value(metrics)
        name = self.item.name
        if isinstance(value, list):
            count = len(value)
            return {f"{name}[{i - count}]": _reported(v) for i, v in enumerate(value)}
        return {name: _reported(value)}


def _reported(value: Any) -> float | None:
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, int | float) and math.isfinite(value):
        return float(value)
    return None


@dataclass(frozen=True)
class CompiledPolicy:
    """A policy with its parsed condition and value expressions."""

    policy: Policy
    condition: Expression
    values: dict[str, Expression | ParamValue]


@dataclass(frozen=True)
class CompiledStage:
    """A stage with its resolved parameters and compiled rules and policies."""

    stage: Stage
    parameters: Parameters
    rules: tuple[CompiledRule, ...]
    policies: tuple[CompiledPolicy, ...]
    adjustable: dict[str, Adjustment]
    warnings: tuple[CompiledWarning, ...] = ()

    @property
    def automatic(self) -> tuple[CompiledRule, ...]:
        """Rules evaluated after each session, in order."""
        return tuple(r for r in self.rules if r.rule.trigger == "auto")

    @property
    def per_trial(self) -> tuple[CompiledRule, ...]:
        """Automatic rules also evaluated after every trial (``evaluate: trial``), in order."""
        return tuple(
            r for r in self.rules if r.rule.trigger == "auto" and r.rule.evaluate == "trial"
        )


@dataclass(frozen=True)
class CompiledCurriculum:
    """A curriculum ready to judge sessions.

    Attributes:
        document: the curriculum as written (bases not yet applied).
        stages: compiled stages by name, in training order.
        registry: the metric definitions its rules were checked against.
        source: the file it came from, if any.
        conditions: its named conditions, compiled, by name.
        report: its reported values, compiled.
    """

    document: Curriculum
    stages: dict[str, CompiledStage]
    registry: MetricRegistry
    source: str | None = None
    conditions: dict[str, Expression] = field(default_factory=dict)
    report: tuple[CompiledReport, ...] = ()
    _aliases: dict[str, str] = field(default_factory=dict, repr=False, compare=False)
    _per_trial: dict[str, tuple[CompiledRule, ...]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        aliases = {alias: s.stage.name for s in self.stages.values() for alias in s.stage.aliases}
        object.__setattr__(self, "_aliases", aliases)
        per_trial = {name: s.per_trial for name, s in self.stages.items() if s.per_trial}
        object.__setattr__(self, "_per_trial", per_trial)

    @property
    def name(self) -> str:
        """Curriculum name."""
        return self.document.name

    @property
    def version(self) -> str:
        """Semantic version."""
        return self.document.version

    @property
    def description(self) -> str:
        """What the curriculum trains."""
        return self.document.description

    @property
    def first_stage(self) -> str:
        """Stage a newly enrolled mouse starts at."""
        return self.document.start or self.document.stages[0].name

    @property
    def stage_names(self) -> list[str]:
        """Stage names in training order."""
        return list(self.stages)

    @property
    def trial_window(self) -> int:
        """Largest trial window any rule or policy reads."""
        return max((e.trial_window for e in self._expressions()), default=0)

    @property
    def session_lookback(self) -> int:
        """How many recent sessions any rule or policy reads."""
        return max((e.session_lookback for e in self._expressions()), default=0)

    @property
    def date_lookback(self) -> int:
        """How many recent dates any window metric pools (IBL's 3-date window: 3)."""
        return max((e.date_lookback for e in self._expressions()), default=0)

    @property
    def metrics_used(self) -> list[str]:
        """Every metric its rules and policies read, sorted."""
        return sorted({m for e in self._expressions() for m in e.metrics})

    def _expressions(self) -> list[Expression]:
        found: list[Expression] = [*self.conditions.values()]
        found.extend(r.expression for r in self.report)
        for stage in self.stages.values():
            found.extend(r.condition for r in stage.rules if r.condition is not None)
            found.extend(w.condition for w in stage.warnings)
            for policy in stage.policies:
                found.append(policy.condition)
                found.extend(v for v in policy.values.values() if isinstance(v, Expression))
        return found

    def has_stage(self, stage: str) -> bool:
        """Whether the stage exists (by its name)."""
        return stage in self.stages

    def resolve(self, name: str) -> str:
        """A stage's name from its name or one of its aliases.

        Raises:
            CurriculumError: when nothing is called so.
        """
        if name in self.stages:
            return name
        if name in self._aliases:
            return self._aliases[name]
        raise CurriculumError(
            f"{self.name} {self.version} has no stage {name!r} (stages: {', '.join(self.stages)})"
        )

    def stage(self, name: str) -> CompiledStage:
        """A compiled stage by name or alias."""
        return self.stages[self.resolve(name)]

    def parameters(self, stage: str) -> Parameters:
        """The stage's full, resolved parameter set."""
        return dict(self.stage(stage).parameters)

    def evaluate(
        self,
        stage: str,
        metrics: MetricSource,
        current: Mapping[str, ParamValue] | None = None,
    ) -> Evaluation:
        """Judges a finished session at ``stage``: the first automatic rule that holds decides,
        none means stay (then the stage's policies run).

        Every rule is evaluated, even after one holds, so the evidence shows the whole picture.
        The stage's warnings that hold and the curriculum's reported values come with the
        decision.
        """
        bind = getattr(metrics, "bind", None)
        if callable(bind):
            metrics = bind(self.registry)  # a lab's metric functions, if it registered some
        compiled = self.stage(stage)
        name = compiled.stage.name
        rules = compiled.automatic
        evaluations = [rule.evaluate(metrics) for rule in rules]
        warnings = [w.evaluate(metrics, name) for w in compiled.warnings]
        held = [w for w in warnings if w.verdict]
        reported = self.report_values(metrics)
        for rule, evaluation in zip(rules, evaluations, strict=True):
            if evaluation.verdict:
                return Evaluation(
                    rule.rule.decision,
                    name,
                    rule.rule.to,
                    rule.rule.name,
                    evaluations,
                    warnings=held,
                    metrics=reported,
                )
        if not compiled.policies:
            return Evaluation(
                "stay", name, name, None, evaluations, warnings=held, metrics=reported
            )
        parameters, changes, policy_evaluations = self._apply_policies(compiled, metrics, current)
        return Evaluation(
            "stay",
            name,
            name,
            None,
            evaluations + policy_evaluations,
            parameters=parameters,
            changes=changes,
            warnings=held,
            metrics=reported,
        )

    def evaluates_after_trials(self, stage: str) -> bool:
        """Whether the stage has rules evaluated after every trial (``evaluate: trial``); a
        dictionary lookup, asked on every trial."""
        return stage in self._per_trial

    def evaluate_after_trial(self, stage: str, metrics: MetricSource) -> Evaluation | None:
        """Judges the session in progress at ``stage`` after a trial, by the stage's
        ``evaluate: trial`` rules only, on the metrics so far: the first that holds decides,
        None when none holds (the session goes on; its end judges it by every rule).

        The evidence lists the per-trial rules, in order, each with its observations; the
        stage's warnings that hold and the curriculum's reported values come with a decision,
        as with :meth:`evaluate`.
        """
        rules = self._per_trial.get(stage, ())
        if not rules:
            return None
        bind = getattr(metrics, "bind", None)
        if callable(bind):
            metrics = bind(self.registry)
        for position, rule in enumerate(rules):
            evaluation = rule.evaluate(metrics)
            if not evaluation.verdict:
                continue
            evaluations = [r.evaluate(metrics) for r in rules[:position]]
            evaluations.append(evaluation)
            evaluations.extend(r.evaluate(metrics) for r in rules[position + 1 :])
            warnings = [w.evaluate(metrics, stage) for w in self.stages[stage].warnings]
            return Evaluation(
                rule.rule.decision,
                stage,
                rule.rule.to,
                rule.rule.name,
                evaluations,
                warnings=[w for w in warnings if w.verdict],
                metrics=self.report_values(metrics),
            )
        return None

    def report_values(self, metrics: MetricSource) -> dict[str, float | None]:
        """The curriculum's reported values for these metrics, by label."""
        values: dict[str, float | None] = {}
        for item in self.report:
            values.update(item.values(metrics))
        return values

    def _apply_policies(
        self,
        compiled: CompiledStage,
        metrics: MetricSource,
        current: Mapping[str, ParamValue] | None,
    ) -> tuple[Parameters, dict[str, ParamValue], list[RuleEvaluation]]:
        base = compiled.parameters
        working = dict(base)
        targeted = {key for p in compiled.policies for key in p.values}
        for key in targeted:
            if current is not None and key in current:
                working[key] = current[key]
        changes: dict[str, ParamValue] = {}
        evaluations = []
        for policy in compiled.policies:
            verdict, observations = policy.condition.judge(metrics, working)
            evaluations.append(
                RuleEvaluation(
                    rule=policy.policy.name,
                    description=policy.policy.description,
                    decision="policy",
                    to_stage=compiled.stage.name,
                    verdict=verdict,
                    observations=observations,
                )
            )
            if not verdict:
                continue
            updates = {}
            for key, value in policy.values.items():
                new = (
                    _typed(value.value(metrics, working), base.get(key))
                    if isinstance(value, Expression)
                    else value
                )
                if new is not None and new != working.get(key):
                    updates[key] = new
            working.update(updates)
            changes.update(updates)
        return working, changes, evaluations

    # -- per-mouse adjustments -------------------------------------------------------------

    def adjustment_problem(self, stage: str, name: str, value: ParamValue | None) -> str | None:
        """Why setting ``name`` to ``value`` for one mouse at ``stage`` is not allowed (None
        when it is); the rules are those of :meth:`check_adjustment`.

        Raises:
            CurriculumError: when the stage does not exist.
        """
        compiled = self.stage(stage)
        if value is None:
            return None
        rule = compiled.adjustable.get(name)
        if rule is None:
            allowed = ", ".join(sorted(compiled.adjustable)) or "none"
            return (
                f"{name} is not adjustable at {compiled.stage.name} (adjustable there: {allowed})"
            )
        schema = self.document.parameter_schema
        if schema is not None and name in schema.types:
            problem = value_problem(schema.types[name], value)
            if problem is not None:
                return f"{name} {problem} ({schema.name})"
        else:
            own = compiled.parameters.get(name)
            if not same_kind(value, own):
                return f"{name} = {value!r} is not of the type of its value {own!r}"
        if not rule.allows(value):
            return f"{name} = {value!r} is outside {_describe_adjustment(rule)}"
        return None

    def check_adjustment(self, stage: str, name: str, value: ParamValue | None) -> None:
        """Checks one per-mouse parameter adjustment a trainer asks for, at the mouse's stage.

        A trainer may change a parameter for one mouse without going off-curriculum when:

        * the parameter is adjustable at the stage: listed in the curriculum's ``adjustable``
          or in the stage's own ``adjustable`` (the stage's entry wins);
        * ``value`` has the parameter's type: its type in the curriculum's
          ``parameter_schema`` when it has one (then also within the schema's choices and
          bounds), otherwise the type of the stage's own value (an integer parameter takes
          whole numbers, a number takes numbers, a flag true/false, a string a string);
        * ``value`` lies within the adjustment's ``minimum``/``maximum`` and ``choices``.

        ``None`` clears the mouse's adjustment of that parameter (the stage's own value holds
        again) and is always allowed.

        Args:
            stage: the stage the mouse is at (name or alias).
            name: the parameter to adjust.
            value: the value asked for, or None to clear the adjustment.

        Raises:
            CurriculumError: saying what is wrong, with the parameter, the stage and what is
                allowed, e.g. ``max_trials = 5000 is outside the allowed >= 100 and <= 1000``
                or ``difficulty is not adjustable at s2_training (adjustable there:
                max_trials, session_minutes)``; also when the stage does not exist.
        """
        problem = self.adjustment_problem(stage, name, value)
        if problem is not None:
            raise CurriculumError(problem)

    def check_adjustments(self, stage: str, requested: Mapping[str, ParamValue | None]) -> None:
        """Checks several adjustments at once (see :meth:`check_adjustment`).

        Raises:
            CurriculumError: naming every adjustment that is not allowed, separated by ``; ``.
        """
        refused = [
            problem
            for key, value in requested.items()
            if (problem := self.adjustment_problem(stage, key, value)) is not None
        ]
        if refused:
            raise CurriculumError("; ".join(refused))

    def adjusted_parameters(
        self,
        stage: str,
        adjustments: Mapping[str, ParamValue | None],
        parameters: Parameters | None = None,
    ) -> tuple[Parameters, Parameters, dict[str, str]]:
        """A session's parameters at ``stage`` with a mouse's adjustments applied on top.

        Adjustments stay with the mouse from stage to stage, but each applies only where
        :meth:`check_adjustment` allows it: at a stage where the parameter is not adjustable,
        or where the value is outside that stage's limits, the stage's own value holds.
        Adjustments are applied last, after in-stage policies.

        Args:
            stage: the stage of the session.
            adjustments: the mouse's adjustments (None values are ignored: cleared).
            parameters: the parameters to adjust (default: the stage's own; pass what the
                in-stage policies computed, if any).

        Returns:
            The adjusted parameters, the adjustments applied, and for each adjustment not
            applied, why.
        """
        result = dict(self.parameters(stage) if parameters is None else parameters)
        applied: Parameters = {}
        skipped: dict[str, str] = {}
        for key in sorted(adjustments):
            value = adjustments[key]
            if value is None:
                continue
            problem = self.adjustment_problem(stage, key, value)
            if problem is None:
                applied[key] = value
            else:
                skipped[key] = problem
        result.update(applied)
        return result, applied, skipped

    def adjust(
        self, stage: str, parameters: Parameters, requested: Mapping[str, Any]
    ) -> Parameters:
        """Applies a trainer's per-mouse adjustments, if the curriculum allows them all (see
        :meth:`check_adjustment`); a None value puts back the stage's own value.

        Raises:
            CurriculumError: naming every adjustment that is not allowed.
        """
        self.check_adjustments(stage, requested)
        own = self.parameters(stage)
        result = dict(parameters)
        for key, value in requested.items():
            if value is not None:
                result[key] = value
            elif key in own:
                result[key] = own[key]
            else:
                result.pop(key, None)
        return result

    def content(self) -> dict[str, Any]:
        """The curriculum as plain data (JSON-compatible), as written."""
        return self.document.model_dump(mode="json", exclude_defaults=True)

    @property
    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON of :meth:`content` (``sha256:<hex>``)."""
        canonical = json.dumps(self.content(), sort_keys=True, separators=(",", ":"))
        return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    def resolved(self, stage: str | None = None) -> dict[str, Any]:
        """Resolved parameters: of one stage, or of every stage by name."""
        if stage is not None:
            return self.parameters(stage)
        return {name: dict(s.parameters) for name, s in self.stages.items()}


def _typed(value: Any, like: ParamValue) -> ParamValue:
    """A policy's computed number in the parameter's own type (None when not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value if isinstance(value, str | bool) else None
    if math.isnan(value) or math.isinf(value):
        return None
    if isinstance(like, int) and not isinstance(like, bool):
        return round(value)
    return float(value)


def _describe_adjustment(rule: Adjustment) -> str:
    parts = []
    if rule.minimum is not None:
        parts.append(f">= {rule.minimum:g}")
    if rule.maximum is not None:
        parts.append(f"<= {rule.maximum:g}")
    if rule.choices is not None:
        parts.append(f"one of {rule.choices!r}")
    return "the allowed " + " and ".join(parts)
