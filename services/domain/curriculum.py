"""What the domain needs from a curriculum, and the catalog of curriculum versions.

The domain depends only on :class:`CurriculumEngine`: stages, their parameters, and a pure
``evaluate`` that judges a finished session. The curriculum format, the rule language and the
loaders live in ``services/curricula``, outside the domain (loading files is I/O); the
processor and the embedded runner hand the core a :class:`CurriculumCatalog` of loaded
curricula.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from shaping.schemas.events import Parameters, ParamValue, RuleEvaluation
from shaping.services.domain.errors import CurriculumError

Decision = Literal["stay", "progress", "rollback", "skip", "graduate"]


class MetricSource(Protocol):
    """Metric values at decision time (see :mod:`shaping.services.domain.metrics` for the kinds)."""

    def value(
        self,
        metric: str,
        window: int | None = None,
        arguments: Mapping[str, ParamValue] | None = None,
    ) -> float | None:
        """A counter's, trial-window or window metric's value (with the rule's keyword
        ``arguments``), or the judged session's value of a session metric; None when it cannot
        be computed."""
        ...

    def series(
        self, metric: str, arguments: Mapping[str, ParamValue] | None = None
    ) -> Sequence[float | None]:
        """A session metric's values, oldest first, ending with the judged session; or a
        window-series metric's values over its window (``arguments``)."""
        ...


@dataclass(frozen=True)
class Evaluation:
    """The outcome of judging one finished session: the decision and all its evidence.

    Attributes:
        decision: what the first rule that held decided (``stay`` when none held).
        from_stage: the stage the session ran.
        to_stage: the stage of the next session.
        rule: name of the rule that held, or None.
        rule_evaluations: every transition rule of the stage, in order, with its evidence,
            followed (when the mouse stays) by the stage's in-stage policies.
        parameters: the next session's full parameter set, when the curriculum computed one
            (in-stage policies); None means the stage's own parameters.
        changes: parameters the policies changed, with their new values.
        warnings: the stage's warning rules that held (``rule`` is the warning's kind,
            ``description`` its message), with their observations.
        metrics: values of the curriculum's reported metrics at the decision.
    """

    decision: Decision
    from_stage: str
    to_stage: str
    rule: str | None
    rule_evaluations: list[RuleEvaluation]
    parameters: Parameters | None = None
    changes: dict[str, ParamValue] = field(default_factory=dict)
    warnings: list[RuleEvaluation] = field(default_factory=list)
    metrics: dict[str, float | None] = field(default_factory=dict)


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

    def evaluate(
        self,
        stage: str,
        metrics: MetricSource,
        current: Mapping[str, ParamValue] | None = None,
    ) -> Evaluation:
        """Judges a finished session at ``stage``.

        Args:
            stage: the stage the session actually ran.
            metrics: metric values at decision time.
            current: the parameters the session ran with, which in-stage policies start from
                when the mouse stays (None: the stage's own parameters).
        """
        ...


def evaluates_after_trials(curriculum: CurriculumEngine, stage: str) -> bool:
    """Whether ``curriculum`` judges sessions at ``stage`` after every trial too (rules marked
    ``evaluate: trial``). An engine judges during sessions when it has the two methods
    ``evaluates_after_trials(stage) -> bool`` (cheap: asked on every trial) and
    ``evaluate_after_trial(stage, metrics) -> Evaluation | None`` (the compiled curricula of
    ``services/curricula`` have them); any other engine judges only at the session's end."""
    check = getattr(curriculum, "evaluates_after_trials", None)
    return bool(check(stage)) if callable(check) else False


def evaluate_after_trial(
    curriculum: CurriculumEngine, stage: str, metrics: MetricSource
) -> Evaluation | None:
    """The decision of ``stage``'s per-trial rules on the metrics so far, None when none holds
    or the engine has no such rules (see :func:`evaluates_after_trials`)."""
    evaluate = getattr(curriculum, "evaluate_after_trial", None)
    if not callable(evaluate):
        return None
    result = evaluate(stage, metrics)
    return result if isinstance(result, Evaluation) else None


Compiler = Callable[[str], CurriculumEngine]
"""Turns a published curriculum's content (JSON text) into an engine; raises CurriculumError."""


class CurriculumCatalog:
    """The curricula the processor knows, by name and version.

    Args:
        curricula: the versions known from the start (shipped files, a lab's folder).
        compiler: how to turn the content of a CurriculumPublished event into an engine; with
            none, published versions cannot be added from the log.
    """

    def __init__(
        self, curricula: Sequence[CurriculumEngine] = (), compiler: Compiler | None = None
    ) -> None:
        self._versions: dict[str, dict[str, CurriculumEngine]] = {}
        self.compiler = compiler
        for curriculum in curricula:
            self.add(curriculum)

    def has(self, name: str, version: str) -> bool:
        """Whether this version of the curriculum is known."""
        return version in self._versions.get(name, {})

    def add(self, curriculum: CurriculumEngine) -> None:
        """Registers a curriculum version (the same name and version again replaces it)."""
        self._versions.setdefault(curriculum.name, {})[curriculum.version] = curriculum

    def names(self) -> list[str]:
        """Known curriculum names."""
        return sorted(self._versions)

    def versions(self, name: str) -> list[str]:
        """Known versions of a curriculum, oldest first (none: empty)."""
        return sorted(self._versions.get(name, {}), key=version_key)

    def __iter__(self) -> Iterator[CurriculumEngine]:
        for name in self.names():
            for version in self.versions(name):
                yield self._versions[name][version]

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
            return versions[max(versions, key=version_key)]
        if version not in versions:
            raise CurriculumError(
                f"curriculum {name!r} has no version {version!r} "
                f"(known: {', '.join(sorted(versions, key=version_key))})"
            )
        return versions[version]


def version_key(version: str) -> tuple[int, ...]:
    """Sort key of a version string: its numeric parts (``2.10.0`` after ``2.9.1``)."""
    parts = []
    for part in version.split("+")[0].split("-")[0].split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)
