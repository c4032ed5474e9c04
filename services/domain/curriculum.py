"""Curricula: stages, their parameters, and the ordered rules that move a mouse between them.

This module holds the evaluation interface the rest of the domain depends on
(:class:`CurriculumEngine`) and one small implementation (:class:`Curriculum`) whose rules are
conjunctions of metric thresholds. The rule language proper replaces the implementation, not
the interface.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from schemas.events import Observation, Parameters, RuleEvaluation
from services.domain.errors import CurriculumError

Comparator = Literal[">=", ">", "<=", "<", "=="]
Decision = Literal["stay", "progress", "rollback", "skip", "graduate"]

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}


class MetricSource(Protocol):
    """Gives the value of a named metric at decision time (None when not computable)."""

    def value(self, metric: str, window: int | None = None) -> float | None:
        """Returns the metric's current value."""
        ...


@dataclass(frozen=True)
class Condition:
    """One comparison of a metric with a threshold, e.g. ``accuracy(window=200) >= 0.8``.

    A metric that cannot be computed (None) fails every comparison.
    """

    metric: str
    comparator: Comparator
    threshold: float
    window: int | None = None

    @property
    def label(self) -> str:
        """The metric as rules and evidence name it."""
        return f"{self.metric}(window={self.window})" if self.window else self.metric

    def observe(self, metrics: MetricSource) -> Observation:
        """Evaluates the comparison and returns it as evidence."""
        observed = metrics.value(self.metric, self.window)
        passed = observed is not None and _COMPARE[self.comparator](observed, self.threshold)
        return Observation(
            metric=self.label,
            observed=observed,
            comparator=self.comparator,
            threshold=self.threshold,
            passed=passed,
        )


@dataclass(frozen=True)
class Rule:
    """A transition rule: when every condition holds, the mouse moves to ``to_stage``."""

    name: str
    decision: Decision
    to_stage: str
    conditions: tuple[Condition, ...]
    description: str

    def evaluate(self, metrics: MetricSource) -> RuleEvaluation:
        """Evaluates every condition (no short-circuit, so the evidence is complete)."""
        observations = [c.observe(metrics) for c in self.conditions]
        return RuleEvaluation(
            rule=self.name,
            description=self.description,
            decision=self.decision,
            to_stage=self.to_stage,
            verdict=all(o.passed for o in observations),
            observations=observations,
        )


@dataclass(frozen=True)
class Stage:
    """A shaping step: its task parameters and its ordered rules (first true rule wins)."""

    name: str
    parameters: Mapping[str, bool | int | float | str | None]
    rules: tuple[Rule, ...] = ()
    terminal: bool = False
    description: str = ""


@dataclass(frozen=True)
class Evaluation:
    """The outcome of judging one finished session: the decision and all its evidence."""

    decision: Decision
    from_stage: str
    to_stage: str
    rule: str | None
    rule_evaluations: list[RuleEvaluation]


class CurriculumEngine(Protocol):
    """What the domain needs from a curriculum, whatever its format."""

    @property
    def name(self) -> str:
        """Curriculum name."""
        ...

    @property
    def version(self) -> str:
        """Semantic version."""
        ...

    @property
    def first_stage(self) -> str:
        """Stage a newly enrolled mouse starts at."""
        ...

    @property
    def trial_window(self) -> int:
        """Largest trial window any rule reads (how many recent outcomes to keep)."""
        ...

    def has_stage(self, stage: str) -> bool:
        """Whether the stage exists."""
        ...

    def parameters(self, stage: str) -> Parameters:
        """The stage's full, resolved parameter set."""
        ...

    def evaluate(self, stage: str, metrics: MetricSource) -> Evaluation:
        """Judges a finished session at ``stage``."""
        ...


@dataclass(frozen=True)
class Curriculum:
    """A curriculum whose rules are conjunctions of metric thresholds.

    Attributes:
        name: curriculum name.
        version: semantic version (``MAJOR.MINOR.PATCH``).
        stages: stages in training order; the first is where mice start.
        description: what the curriculum trains.
    """

    name: str
    version: str
    stages: tuple[Stage, ...]
    description: str = ""
    _by_name: dict[str, Stage] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_name: dict[str, Stage] = {}
        for stage in self.stages:
            if stage.name in by_name:
                raise CurriculumError(f"{self.name}: duplicate stage {stage.name!r}")
            by_name[stage.name] = stage
        for stage in self.stages:
            for rule in stage.rules:
                if rule.to_stage not in by_name:
                    raise CurriculumError(
                        f"{self.name}: stage {stage.name!r} rule {rule.name!r} goes to unknown "
                        f"stage {rule.to_stage!r}"
                    )
        if not self.stages:
            raise CurriculumError(f"{self.name}: a curriculum needs at least one stage")
        object.__setattr__(self, "_by_name", by_name)

    @property
    def first_stage(self) -> str:
        """Stage a newly enrolled mouse starts at."""
        return self.stages[0].name

    @property
    def trial_window(self) -> int:
        """Largest trial window any rule reads."""
        windows = [c.window for s in self.stages for r in s.rules for c in r.conditions if c.window]
        return max(windows, default=0)

    def stage(self, name: str) -> Stage:
        """Returns a stage by name."""
        try:
            return self._by_name[name]
        except KeyError:
            raise CurriculumError(f"{self.name} has no stage {name!r}") from None

    def has_stage(self, stage: str) -> bool:
        """Whether the stage exists."""
        return stage in self._by_name

    def parameters(self, stage: str) -> Parameters:
        """The stage's full parameter set."""
        return dict(self.stage(stage).parameters)

    def evaluate(self, stage: str, metrics: MetricSource) -> Evaluation:
        """Evaluates the stage's rules in order; the first that holds decides.

        Every rule is evaluated, even after one holds, so the evidence shows the whole picture.
        A terminal stage, or no rule holding, means the mouse stays.
        """
        current = self.stage(stage)
        evaluations = [rule.evaluate(metrics) for rule in current.rules]
        for rule, evaluation in zip(current.rules, evaluations, strict=True):
            if evaluation.verdict:
                return Evaluation(rule.decision, stage, rule.to_stage, rule.name, evaluations)
        return Evaluation("stay", stage, stage, None, evaluations)


class CurriculumCatalog:
    """The curricula the processor knows, by name and version."""

    def __init__(self, curricula: Sequence[CurriculumEngine] = ()) -> None:
        self._versions: dict[str, dict[str, CurriculumEngine]] = {}
        for curriculum in curricula:
            self.add(curriculum)

    def add(self, curriculum: CurriculumEngine) -> None:
        """Registers a curriculum version."""
        self._versions.setdefault(curriculum.name, {})[curriculum.version] = curriculum

    def names(self) -> list[str]:
        """Known curriculum names."""
        return sorted(self._versions)

    def get(self, name: str, version: str | None = None) -> CurriculumEngine:
        """Returns a version of a curriculum (the newest when ``version`` is None).

        Raises:
            CurriculumError: when the curriculum or version is unknown.
        """
        versions = self._versions.get(name)
        if not versions:
            known = ", ".join(self.names()) or "none"
            raise CurriculumError(f"unknown curriculum {name!r} (known: {known})")
        if version is None:
            return versions[max(versions, key=_version_key)]
        if version not in versions:
            raise CurriculumError(
                f"curriculum {name!r} has no version {version!r} "
                f"(known: {', '.join(sorted(versions, key=_version_key))})"
            )
        return versions[version]


def _version_key(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
