"""Checks a curriculum document completely when it is loaded, and compiles it.

Everything a curriculum can get wrong is found here, before any mouse depends on it: the
document's shape (pydantic), duplicate names, unknown stages, bases, metrics and parameters,
rule syntax and types, transitions to unknown stages, unreachable stages, stages with no way
out, graduations to non-terminal stages, policies setting unknown parameters, adjustments
outside their own limits. Each problem names the file, the line (when the source has lines),
the stage and the rule.
"""

from __future__ import annotations

import keyword
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from shaping.schemas.events import Parameters, ParamValue
from shaping.services.curricula.engine import (
    CompiledCurriculum,
    CompiledPolicy,
    CompiledReport,
    CompiledRule,
    CompiledStage,
    CompiledWarning,
)
from shaping.services.curricula.errors import CurriculumInvalid, Problem, RuleSyntaxError
from shaping.services.curricula.model import SEMVER, Adjustment, Curriculum, Stage
from shaping.services.curricula.paramtypes import check_parameter_types
from shaping.services.curricula.rules import (
    FUNCTIONS,
    Expression,
    Scope,
    parse_condition,
    parse_report,
    parse_value,
)
from shaping.services.domain.metrics import METRICS, MetricDefinition, MetricRegistry

Path = tuple[str | int, ...]
LineMap = Mapping[Path, int]


class _Report:
    """Collects problems, locating each by its path in the document."""

    def __init__(self, file: str | None, lines: LineMap | None, raw: Any) -> None:
        self.file = file
        self.lines = lines or {}
        self.raw = raw
        self.problems: list[Problem] = []

    def line(self, path: Path) -> int | None:
        for end in range(len(path), -1, -1):
            line = self.lines.get(path[:end])
            if line is not None:
                return line
        return None

    def stage_name(self, index: int) -> str | None:
        try:
            name = self.raw["stages"][index]["name"]
        except (KeyError, IndexError, TypeError):
            return None
        return name if isinstance(name, str) else None

    def item_name(self, path: Path) -> str | None:
        node = self.raw
        try:
            for key in path:
                node = node[key]
            name = node.get("name")
        except (KeyError, IndexError, TypeError, AttributeError):
            return None
        return name if isinstance(name, str) else None

    def add(
        self,
        message: str,
        path: Path = (),
        stage: str | None = None,
        rule: str | None = None,
        severity: str = "error",
    ) -> None:
        self.problems.append(
            Problem(
                message=message,
                file=self.file,
                line=self.line(path),
                stage=stage,
                rule=rule,
                severity="warning" if severity == "warning" else "error",
            )
        )

    @property
    def failed(self) -> bool:
        return any(p.severity == "error" for p in self.problems)


def check_curriculum(
    data: Any,
    *,
    file: str | None = None,
    lines: LineMap | None = None,
    registry: MetricRegistry = METRICS,
) -> tuple[CompiledCurriculum | None, list[Problem]]:
    """Checks a curriculum document and compiles it.

    Args:
        data: the parsed document (dicts and lists, as from YAML or JSON).
        file: where it came from, for messages.
        lines: document path -> line number, when the source has lines.
        registry: the metric definitions rules may use.

    Returns:
        The compiled curriculum (None when there are errors) and every problem found,
        warnings included.
    """
    report = _Report(file, lines, data)
    try:
        document = Curriculum.model_validate(data)
    except ValidationError as exc:
        for error in exc.errors():
            _schema_problem(report, error)
        return None, report.problems
    compiled = _Compiler(document, report, registry).run()
    if report.failed:
        return None, report.problems
    return compiled, report.problems


def compile_curriculum(
    data: Any,
    *,
    file: str | None = None,
    lines: LineMap | None = None,
    registry: MetricRegistry = METRICS,
) -> CompiledCurriculum:
    """Checks and compiles a curriculum document.

    Raises:
        CurriculumInvalid: with every problem, when there is any error.
    """
    compiled, problems = check_curriculum(data, file=file, lines=lines, registry=registry)
    if compiled is None:
        raise CurriculumInvalid(problems)
    return compiled


END_ONLY = frozenset({"session_duration_s"})
"""Computed session metrics that have a value only when the session ends (the duration its
SessionEnded reports): rules evaluated after every trial may not read them."""

_UNION_TAGS = {"str", "int", "float", "bool", "none", "MetricDeclaration"}


def _schema_problem(report: _Report, error: Any) -> None:
    location: Path = tuple(error["loc"])
    # pydantic names the union member it tried (e.g. 'str', 'MetricDeclaration'); drop it.
    clean = tuple(part for part in location if part not in _UNION_TAGS)
    stage = rule = None
    if len(clean) >= 2 and clean[0] == "stages" and isinstance(clean[1], int):
        stage = report.stage_name(clean[1])
        if (
            len(clean) >= 4
            and clean[2] in ("rules", "policies", "warnings")
            and isinstance(clean[3], int)
        ):
            rule = report.item_name(clean[:4]) or f"#{clean[3] + 1}"
    field = ".".join(str(p) for p in clean) or "document"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown key (a typo?)"
    elif error["type"] == "missing":
        message = "required, but missing"
    report.add(f"{field}: {message}", clean, stage=stage, rule=rule)


class _Compiler:
    """Runs every check of one validated document and builds the compiled curriculum."""

    def __init__(self, document: Curriculum, report: _Report, registry: MetricRegistry) -> None:
        self.document = document
        self.report = report
        self.registry = registry
        self.names = [s.name for s in document.stages]
        self.conditions: dict[str, Expression] = {}

    def run(self) -> CompiledCurriculum | None:
        registry = self.metrics()
        self.conditions = self.named_conditions(registry)
        report = self.report_items(registry)
        self.unique_stage_names()
        self.bases()
        resolved = {s.name: self.resolve(s) for s in self.document.stages}
        self.parameter_sets(resolved)
        check_parameter_types(self.document, resolved, self.report.add)
        stages: dict[str, CompiledStage] = {}
        for index, stage in enumerate(self.document.stages):
            stages[stage.name] = CompiledStage(
                stage=stage,
                parameters=resolved[stage.name],
                rules=self.rules(index, stage, registry),
                policies=self.policies(index, stage, registry, resolved[stage.name]),
                adjustable=self.adjustable(index, stage, resolved[stage.name]),
                warnings=self.warnings(index, stage, registry),
            )
        self.start()
        if not self.report.failed:
            self.graph(stages)
            self.declared_metrics(stages, registry)
            self.migrations()
        if self.report.failed:
            return None
        return CompiledCurriculum(
            document=self.document,
            stages=stages,
            registry=registry,
            source=self.report.file,
            conditions=self.conditions,
            report=report,
        )

    # -- names and parameters ------------------------------------------------------------

    def metrics(self) -> MetricRegistry:
        declared = []
        for index, item in enumerate(self.document.metrics):
            path: Path = ("metrics", index)
            if isinstance(item, str):
                if item not in self.registry:
                    self.report.add(
                        f"unknown metric {item!r}: declare a metric the registry lacks as "
                        f"{{name: {item}, kind: session, description: ...}}",
                        path,
                    )
                continue
            known = self.registry.get(item.name)
            if known is not None:
                if known.kind != item.kind:
                    self.report.add(
                        f"metric {item.name!r} is a {known.kind} metric in the registry, not a "
                        f"{item.kind} one",
                        path,
                    )
                continue
            declared.append(MetricDefinition(item.name, item.kind, item.description, reported=True))
        names = [d.name for d in declared]
        for name in {n for n in names if names.count(n) > 1}:
            self.report.add(f"metric {name!r} is declared twice", ("metrics",))
        return self.registry.with_metrics({d.name: d for d in declared}.values())

    def unique_stage_names(self) -> None:
        seen: dict[str, str] = {}
        for index, stage in enumerate(self.document.stages):
            for name in (stage.name, *stage.aliases):
                if name in seen:
                    self.report.add(
                        f"the name {name!r} is used twice (also by stage {seen[name]!r})",
                        ("stages", index, "name"),
                        stage=stage.name,
                    )
                else:
                    seen[name] = stage.name

    def bases(self) -> None:
        for index, stage in enumerate(self.document.stages):
            for base in stage.extends:
                if base not in self.document.bases:
                    known = ", ".join(self.document.bases) or "none"
                    self.report.add(
                        f"extends unknown base {base!r} (bases: {known})",
                        ("stages", index, "extends"),
                        stage=stage.name,
                    )

    def resolve(self, stage: Stage) -> Parameters:
        parameters: Parameters = dict(self.document.defaults)
        for base in stage.extends:
            parameters.update(self.document.bases.get(base, {}))
        parameters.update(stage.parameters)
        return parameters

    def parameter_sets(self, resolved: Mapping[str, Parameters]) -> None:
        every = set().union(*(set(p) for p in resolved.values()))
        for index, (name, parameters) in enumerate(resolved.items()):
            missing = sorted(every - set(parameters))
            if missing:
                self.report.add(
                    f"lacks parameters other stages set: {', '.join(missing)} (a rig needs the "
                    f"full set at every stage)",
                    ("stages", index),
                    stage=name,
                    severity="warning",
                )

    def start(self) -> None:
        start = self.document.start
        if start is not None and start not in self.names:
            self.report.add(
                f"start stage {start!r} does not exist (stages: {', '.join(self.names)})",
                ("start",),
            )

    # -- rules and policies --------------------------------------------------------------

    def parse(
        self,
        text: str,
        scope: Scope,
        path: Path,
        stage: str,
        rule: str,
        condition: bool = True,
    ) -> Expression | None:
        try:
            return parse_condition(text, scope) if condition else parse_value(text, scope)
        except RuleSyntaxError as exc:
            where = f" at column {exc.column}" if exc.column is not None else ""
            self.report.add(f"{exc.message}{where} in: {' '.join(text.split())}", path, stage, rule)
            return None

    def named_conditions(self, registry: MetricRegistry) -> dict[str, Expression]:
        """The curriculum's named conditions, each parsed with the ones before it in scope."""
        compiled: dict[str, Expression] = {}
        for index, condition in enumerate(self.document.conditions):
            path: Path = ("conditions", index)
            name = condition.name
            clash = None
            if not name.isidentifier() or keyword.iskeyword(name):
                clash = "is not a name rules can use (letters, digits and _)"
            elif name in registry:
                clash = "is the name of a metric"
            elif name in FUNCTIONS:
                clash = "is the name of a function"
            elif name in compiled:
                clash = "is defined twice"
            if clash is not None:
                self.report.add(f"condition {name!r} {clash}", (*path, "name"), rule=name)
                continue
            scope = Scope(registry, conditions=dict(compiled))
            try:
                compiled[name] = parse_condition(condition.when, scope)
            except RuleSyntaxError as exc:
                where = f" at column {exc.column}" if exc.column is not None else ""
                text = " ".join(condition.when.split())
                self.report.add(f"{exc.message}{where} in: {text}", (*path, "when"), rule=name)
        return compiled

    def report_items(self, registry: MetricRegistry) -> tuple[CompiledReport, ...]:
        """The curriculum's reported values, parsed."""
        compiled = []
        seen: set[str] = set()
        scope = Scope(registry, conditions=self.conditions)
        for index, item in enumerate(self.document.report):
            path: Path = ("report", index)
            if item.name in seen:
                self.report.add("reported twice", (*path, "name"), rule=item.name)
            seen.add(item.name)
            try:
                expression = parse_report(item.value, scope)
            except RuleSyntaxError as exc:
                where = f" at column {exc.column}" if exc.column is not None else ""
                text = " ".join(item.value.split())
                self.report.add(
                    f"{exc.message}{where} in: {text}", (*path, "value"), rule=item.name
                )
                continue
            compiled.append(CompiledReport(item, expression))
        return tuple(compiled)

    def warnings(
        self, index: int, stage: Stage, registry: MetricRegistry
    ) -> tuple[CompiledWarning, ...]:
        """The stage's warning rules, parsed."""
        compiled = []
        seen: set[str] = set()
        scope = Scope(registry, conditions=self.conditions)
        for position, warning in enumerate(stage.warnings):
            path: Path = ("stages", index, "warnings", position)
            if warning.name in seen:
                self.report.add("duplicate warning", (*path, "name"), stage.name, warning.name)
            seen.add(warning.name)
            condition = self.parse(warning.when, scope, (*path, "when"), stage.name, warning.name)
            if condition is not None:
                compiled.append(CompiledWarning(warning, condition))
        return tuple(compiled)

    def rules(self, index: int, stage: Stage, registry: MetricRegistry) -> tuple[CompiledRule, ...]:
        compiled = []
        seen: set[str] = set()
        scope = Scope(registry, conditions=self.conditions)
        for position, rule in enumerate(stage.rules):
            path: Path = ("stages", index, "rules", position)
            if rule.name in seen:
                self.report.add("duplicate rule name", (*path, "name"), stage.name, rule.name)
            seen.add(rule.name)
            target = next((s for s in self.document.stages if s.name == rule.to), None)
            if target is None:
                self.report.add(
                    f"goes to unknown stage {rule.to!r} (stages: {', '.join(self.names)})",
                    (*path, "to"),
                    stage.name,
                    rule.name,
                )
            elif target.name == stage.name:
                self.report.add(
                    "goes to its own stage: a rule must move the mouse (no rule holding "
                    "already means stay)",
                    (*path, "to"),
                    stage.name,
                    rule.name,
                )
            elif rule.decision == "graduate" and not target.terminal:
                self.report.add(
                    f"graduates to {target.name!r}, which is not a terminal stage",
                    (*path, "decision"),
                    stage.name,
                    rule.name,
                )
            if stage.terminal and rule.trigger == "auto":
                self.report.add(
                    "a terminal stage has no automatic rules (mice stay there); make the rule "
                    "manual or the stage not terminal",
                    path,
                    stage.name,
                    rule.name,
                )
            condition = None
            if rule.when is not None and rule.when.strip():
                condition = self.parse(rule.when, scope, (*path, "when"), stage.name, rule.name)
            if condition is not None and rule.evaluate == "trial":
                self.per_trial(condition.metrics, registry, path, stage.name, rule.name)
            compiled.append(CompiledRule(rule, condition))
        return tuple(compiled)

    def per_trial(
        self,
        metrics: frozenset[str],
        registry: MetricRegistry,
        path: Path,
        stage: str,
        rule: str,
    ) -> None:
        """A rule evaluated after every trial reads only what has a value during the session:
        metrics Shaping computes from trials, and counters; never one the rig or a pipeline
        reports when the session ends (``SessionEnded.metrics``, a session table's column)."""
        for metric in sorted(metrics):
            definition = registry.get(metric)
            if definition is None:
                continue  # an unknown metric is reported by the parser already
            if definition.reported or definition.function is None or metric in END_ONLY:
                self.report.add(
                    f"evaluate: trial, but it reads {metric!r}, which has a value only when the "
                    "session ends (reported with SessionEnded); read metrics Shaping computes "
                    "from trials, or make the rule 'evaluate: session'",
                    (*path, "evaluate"),
                    stage,
                    rule,
                )

    def policies(
        self,
        index: int,
        stage: Stage,
        registry: MetricRegistry,
        parameters: Parameters,
    ) -> tuple[CompiledPolicy, ...]:
        compiled = []
        seen = {r.name for r in stage.rules}
        scope = Scope(registry, frozenset(parameters), self.conditions)
        for position, policy in enumerate(stage.policies):
            path: Path = ("stages", index, "policies", position)
            if policy.name in seen:
                self.report.add(
                    "the name is used twice in the stage", (*path, "name"), stage.name, policy.name
                )
            seen.add(policy.name)
            clash = sorted(parameters.keys() & set(registry.names()))
            if clash:
                self.report.add(
                    f"parameters named like metrics make policy expressions ambiguous: "
                    f"{', '.join(clash)}",
                    path,
                    stage.name,
                    policy.name,
                )
            condition = self.parse(policy.when, scope, (*path, "when"), stage.name, policy.name)
            values: dict[str, Expression | ParamValue] = {}
            for key, value in policy.set.items():
                where: Path = (*path, "set", key)
                if key not in parameters:
                    self.report.add(
                        f"sets unknown parameter {key!r}", where, stage.name, policy.name
                    )
                    continue
                values[key] = self.policy_value(
                    key, value, parameters[key], where, stage, policy.name, scope
                )
            if condition is not None:
                compiled.append(CompiledPolicy(policy, condition, values))
        return tuple(compiled)

    def policy_value(
        self,
        key: str,
        value: ParamValue,
        current: ParamValue,
        path: Path,
        stage: Stage,
        policy: str,
        scope: Scope,
    ) -> Expression | ParamValue:
        if not isinstance(value, str):
            if type(value) is not type(current) and not (
                isinstance(value, int | float)
                and isinstance(current, int | float)
                and not isinstance(value, bool)
                and not isinstance(current, bool)
            ):
                self.report.add(
                    f"sets {key!r} to {value!r}, but the parameter is {current!r}",
                    path,
                    stage.name,
                    policy,
                )
            return value
        expression = self.parse(value, scope, path, stage.name, policy, condition=False)
        if expression is None:
            return value
        if expression.root.kind == "number" and (
            isinstance(current, bool) or not isinstance(current, int | float)
        ):
            self.report.add(
                f"computes a number for {key!r}, which is {current!r}", path, stage.name, policy
            )
        return expression

    def adjustable(self, index: int, stage: Stage, parameters: Parameters) -> dict[str, Adjustment]:
        merged = {**self.document.adjustable, **stage.adjustable}
        for key, rule in merged.items():
            own = key in stage.adjustable
            path: Path = ("stages", index, "adjustable", key) if own else ("adjustable", key)
            if key not in parameters:
                self.report.add(
                    f"adjustable parameter {key!r} is not a parameter", path, stage.name
                )
            elif not rule.allows(parameters[key]):
                self.report.add(
                    f"the stage's own {key} = {parameters[key]!r} is outside the adjustment it "
                    f"allows",
                    path,
                    stage.name,
                )
        return merged

    # -- the whole graph -----------------------------------------------------------------

    def graph(self, stages: Mapping[str, CompiledStage]) -> None:
        start = self.document.start or self.names[0]
        reached = {start}
        frontier = [start]
        while frontier:
            for rule in stages[frontier.pop()].rules:
                if rule.rule.to in stages and rule.rule.to not in reached:
                    reached.add(rule.rule.to)
                    frontier.append(rule.rule.to)
        for index, name in enumerate(self.names):
            stage = stages[name]
            if name not in reached:
                self.report.add(
                    f"unreachable: no rule leads here from the start stage {start!r}",
                    ("stages", index),
                    stage=name,
                )
            if not stage.stage.terminal and not stage.automatic:
                self.report.add(
                    "no way out: a stage that is not terminal needs at least one automatic "
                    "rule (or mark it terminal)",
                    ("stages", index),
                    stage=name,
                )

    def declared_metrics(
        self, stages: Mapping[str, CompiledStage], registry: MetricRegistry
    ) -> None:
        if not self.document.metrics:
            return
        declared = {m if isinstance(m, str) else m.name for m in self.document.metrics}
        used: dict[str, tuple[str, str]] = {}
        for name, condition in self.conditions.items():
            for metric in condition.metrics:
                used.setdefault(metric, ("", name))
        for item in self.document.report:
            for metric in self.report_metrics(item.value, registry):
                used.setdefault(metric, ("", item.name))
        for stage in stages.values():
            for warning in stage.warnings:
                for metric in warning.condition.metrics:
                    used.setdefault(metric, (stage.stage.name, warning.warning.name))
            for rule in stage.rules:
                for metric in rule.condition.metrics if rule.condition else ():
                    used.setdefault(metric, (stage.stage.name, rule.rule.name))
            for policy in stage.policies:
                expressions = [policy.condition, *policy.values.values()]
                for expression in expressions:
                    if isinstance(expression, Expression):
                        for metric in expression.metrics:
                            used.setdefault(metric, (stage.stage.name, policy.policy.name))
        for metric, (stage_name, rule_name) in sorted(used.items()):
            if metric not in declared:
                self.report.add(
                    f"reads metric {metric!r}, which the curriculum's metrics list lacks",
                    ("metrics",),
                    stage_name or None,
                    rule_name,
                )
        for metric in sorted(declared - set(used)):
            self.report.add(
                f"metric {metric!r} is listed but no rule reads it",
                ("metrics",),
                severity="warning",
            )

    def report_metrics(self, text: str, registry: MetricRegistry) -> frozenset[str]:
        try:
            return parse_report(text, Scope(registry, conditions=self.conditions)).metrics
        except RuleSyntaxError:
            return frozenset()

    def migrations(self) -> None:
        for index, migration in enumerate(self.document.migrations):
            path: Path = ("migrations", index)
            version = migration.from_version
            if not (version.isdigit() or SEMVER.match(version)):
                self.report.add(
                    f"from_version {version!r} is neither a major version (1) nor a semantic "
                    f"version (1.2.0)",
                    (*path, "from_version"),
                )
            for old, new in migration.stages.items():
                if new not in self.names:
                    self.report.add(
                        f"maps {old!r} to unknown stage {new!r}", (*path, "stages", old)
                    )
