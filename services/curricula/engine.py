"""A loaded, checked curriculum: the domain's :class:`CurriculumEngine`, over the file format.

Build one with :func:`services.curricula.validate.compile_curriculum` (or a loader); this
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

from schemas.events import Parameters, ParamValue, RuleEvaluation
from services.curricula.model import Adjustment, Curriculum, Policy, Rule, Stage
from services.curricula.rules import Expression
from services.domain.curriculum import Evaluation, MetricSource
from services.domain.errors import CurriculumError
from services.domain.metrics import MetricRegistry


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

    @property
    def automatic(self) -> tuple[CompiledRule, ...]:
        """Rules evaluated after each session, in order."""
        return tuple(r for r in self.rules if r.rule.trigger == "auto")


@dataclass(frozen=True)
class CompiledCurriculum:
    """A curriculum ready to judge sessions.

    Attributes:
        document: the curriculum as written (bases not yet applied).
        stages: compiled stages by name, in training order.
        registry: the metric definitions its rules were checked against.
        source: the file it came from, if any.
    """

    document: Curriculum
    stages: dict[str, CompiledStage]
    registry: MetricRegistry
    source: str | None = None
    _aliases: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        aliases = {alias: s.stage.name for s in self.stages.values() for alias in s.stage.aliases}
        object.__setattr__(self, "_aliases", aliases)

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
    def metrics_used(self) -> list[str]:
        """Every metric its rules and policies read, sorted."""
        return sorted({m for e in self._expressions() for m in e.metrics})

    def _expressions(self) -> list[Expression]:
        found: list[Expression] = []
        for stage in self.stages.values():
            found.extend(r.condition for r in stage.rules if r.condition is not None)
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
        """
        compiled = self.stage(stage)
        name = compiled.stage.name
        rules = compiled.automatic
        evaluations = [rule.evaluate(metrics) for rule in rules]
        for rule, evaluation in zip(rules, evaluations, strict=True):
            if evaluation.verdict:
                return Evaluation(
                    rule.rule.decision, name, rule.rule.to, rule.rule.name, evaluations
                )
        if not compiled.policies:
            return Evaluation("stay", name, name, None, evaluations)
        parameters, changes, policy_evaluations = self._apply_policies(compiled, metrics, current)
        return Evaluation(
            "stay",
            name,
            name,
            None,
            evaluations + policy_evaluations,
            parameters=parameters,
            changes=changes,
        )

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

    def adjust(
        self, stage: str, parameters: Parameters, requested: Mapping[str, Any]
    ) -> Parameters:
        """Applies a trainer's per-mouse adjustments, if the curriculum allows them.

        Raises:
            CurriculumError: naming every adjustment that is not allowed.
        """
        compiled = self.stage(stage)
        refused = []
        for key, value in requested.items():
            rule = compiled.adjustable.get(key)
            if rule is None:
                refused.append(f"{key} is not adjustable at {compiled.stage.name}")
            elif not rule.allows(value):
                refused.append(f"{key} = {value!r} is outside {_describe_adjustment(rule)}")
        if refused:
            raise CurriculumError("; ".join(refused))
        return {**parameters, **requested}

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
