"""The curriculum file format, as pydantic models.

A curriculum is a YAML or JSON document::

    name: basic-shaping
    version: 0.1.0                    # semantic version
    description: ...
    metrics: [accuracy, session_trials, sessions_at_stage]   # what its rules read
    defaults: {iti_min_s: 2.0, ...}   # parameters every stage starts from
    bases:                            # named parameter sets a stage can extend
      easy: {reward_volume_ul: 4.0}
    adjustable:                       # per-mouse changes a trainer may make on-curriculum
      max_trials: {minimum: 100, maximum: 1000}
    stages:                           # in training order; mice start at the first
      - name: s1_habituation
        extends: [easy]
        parameters: {max_trials: 200} # overrides, applied last
        rules:                        # in order; the first that holds decides
          - name: engaged_and_accurate
            decision: progress        # progress, rollback, skip or graduate
            to: s2_training
            when: accuracy(window=200) >= 0.65 and session_trials >= 100
            description: Accuracy over the last 200 trials is at least 65% and ...
        policies:                     # in-stage parameter changes while the mouse stays
          - name: lengthen_delay
            when: session_accuracy >= 0.8
            set: {delay_s: "min(delay_s + 0.1, 2.0)"}
            description: ...
      - name: graduated
        terminal: true

The stage's full parameter set is resolved at load: ``defaults``, then each base it extends in
order, then its own ``parameters`` (YAML anchors and merge keys, as mtrain regimens use them,
are resolved by the YAML reader before that). Rules are checked when the file is loaded (see
:mod:`shaping.services.curricula.validate`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from shaping.schemas.events import ParamValue

SEMVER = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(-[0-9A-Za-z.-]+)?$")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _.()/+-]*$")

Name = Annotated[str, Field(min_length=1, max_length=120)]


class FormatModel(BaseModel):
    """Base of the format's models: unknown keys are errors (a typo is not ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


def _check_parameters(values: dict[str, Any]) -> dict[str, Any]:
    for key, value in values.items():
        if value is not None and not isinstance(value, bool | int | float | str):
            raise ValueError(
                f"parameter {key!r} must be a number, true/false, a string or null, "
                f"not {type(value).__name__}"
            )
    return values


class MetricDeclaration(FormatModel):
    """A metric the curriculum needs that the registry does not define: a reported session
    metric (a column of the lab's session table, or a value in ``SessionEnded.metrics``).

    Attributes:
        name: the name rules use.
        kind: ``session`` (one value per session) or ``counter``.
        description: what it means and where it comes from.
    """

    name: Name
    kind: Literal["session", "counter"] = "session"
    description: str = Field(min_length=1)


class Rule(FormatModel):
    """A transition rule: when ``when`` holds, the mouse moves to ``to``.

    Attributes:
        name: unique within the stage; named by meaning, not by threshold.
        decision: ``progress``, ``rollback``, ``skip`` or ``graduate`` (to a terminal stage).
        to: the stage to move to.
        when: the condition, in the rule language (required unless ``trigger`` is manual).
        description: the criterion in plain language.
        trigger: ``auto`` (evaluated after every session) or ``manual`` (a move an operator may
            make; documented and drawn, never evaluated).
        evaluate: when an automatic rule is evaluated: ``session`` (when the session ends, the
            default) or ``trial`` (after every trial of the session as well, on the metrics so
            far: the mouse may move during the session, as Autopilot graduates a subject after
            any trial; docs/curricula-ops.md). A rule evaluated after trials reads only what
            Shaping computes from trials and counters, never a metric reported at the end.
    """

    name: Name
    decision: Literal["progress", "rollback", "skip", "graduate"]
    to: Name
    when: str | None = None
    description: str = Field(min_length=1)
    trigger: Literal["auto", "manual"] = "auto"
    evaluate: Literal["session", "trial"] = "session"

    @model_validator(mode="after")
    def _condition_present(self) -> Rule:
        if self.trigger == "auto" and not (self.when or "").strip():
            raise ValueError("an automatic rule needs a condition ('when')")
        if self.trigger == "manual" and self.evaluate == "trial":
            raise ValueError(
                "a manual rule is never evaluated: 'evaluate: trial' needs 'trigger: auto'"
            )
        return self


class Policy(FormatModel):
    """An in-stage policy: while the mouse stays at the stage, after each session whose
    ``when`` holds, set parameters to new values (AIND's in-stage Policies).

    Attributes:
        name: unique within the stage.
        when: the condition (rule language); ``True`` applies after every session.
        set: parameter -> new value: a constant, or a number expression (a string) over
            metrics and the stage's current parameter values, e.g. ``min(delay_s + 0.1, 2)``.
        description: what it does, in plain language.
    """

    name: Name
    when: str = "True"
    set: dict[str, ParamValue] = Field(min_length=1)
    description: str = Field(min_length=1)


class Condition(FormatModel):
    """A named condition: a boolean expression defined once and used by name in rules,
    warnings, reports and later conditions (IBL: ``crit_1b``, ``all_training``).

    Attributes:
        name: how the rules refer to it (an identifier, unlike any metric).
        when: the expression (rule language); it may use the conditions defined before it.
        description: what it means, in plain language.
    """

    name: Name
    when: str = Field(min_length=1)
    description: str = Field(min_length=1)


class ReportedValue(FormatModel):
    """A value the curriculum reports at every decision (``Evaluation.metrics``, then the
    StageTransitioned and AssignmentIssued ``metrics``), whatever the stage: the evidence a
    trainer reads.

    Attributes:
        name: the label (a key of ``metrics``); a window series is reported as ``name[-1]``
            (the newest session or date), ``name[-2]``...
        value: a number expression, a condition (reported as 1 or 0) or a window series.
        description: what it is.
    """

    name: Name
    value: str = Field(min_length=1)
    description: str = ""


class WarningRule(FormatModel):
    """A warning: when ``when`` holds after a session at the stage, the decision carries it
    (``Evaluation.warnings``; the processor emits a TrainingWarning event).

    Attributes:
        name: the warning's kind (``untrainable_risk``, ``regression_prevented``...).
        when: the condition (rule language).
        description: the message a trainer reads.
    """

    name: Name
    when: str = Field(min_length=1)
    description: str = Field(min_length=1)


class Adjustment(FormatModel):
    """A per-mouse parameter change a trainer may make without going off-curriculum.

    Attributes:
        minimum: lowest allowed value (numbers).
        maximum: highest allowed value (numbers).
        choices: the allowed values (any type).
        description: why a trainer would change it.
    """

    minimum: float | None = None
    maximum: float | None = None
    choices: list[ParamValue] | None = None
    description: str = ""

    @model_validator(mode="after")
    def _bounds(self) -> Adjustment:
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum} is above maximum {self.maximum}")
        if self.minimum is None and self.maximum is None and not self.choices:
            raise ValueError("give minimum and/or maximum, or choices")
        return self

    def allows(self, value: ParamValue) -> bool:
        """Whether ``value`` is within the allowed range or choices."""
        if self.choices is not None and value not in self.choices:
            return False
        if self.minimum is None and self.maximum is None:
            return True
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.minimum is not None and value < self.minimum:
            return False
        return not (self.maximum is not None and value > self.maximum)


class Stage(FormatModel):
    """A shaping stage.

    Attributes:
        name: unique in the curriculum.
        description: what the mouse learns here.
        extends: names of ``bases`` applied, in order, after ``defaults``.
        parameters: this stage's own values, applied last.
        rules: transition rules in order (first that holds wins; none: stay).
        policies: in-stage parameter policies.
        terminal: an absorbing stage (graduated): no rules, the mouse stays.
        aliases: other names of the stage (e.g. AIND's ``STAGE_1``), accepted in session
            tables.
        adjustable: per-mouse adjustments allowed at this stage, beyond the curriculum's.
        warnings: warning rules checked after every session at this stage (they never move
            the mouse).
    """

    name: Name
    description: str = ""
    extends: list[str] = Field(default_factory=list)
    parameters: dict[str, ParamValue] = Field(default_factory=dict)
    rules: list[Rule] = Field(default_factory=list)
    policies: list[Policy] = Field(default_factory=list)
    terminal: bool = False
    aliases: list[str] = Field(default_factory=list)
    adjustable: dict[str, Adjustment] = Field(default_factory=dict)
    warnings: list[WarningRule] = Field(default_factory=list)

    @field_validator("parameters", mode="before")
    @classmethod
    def _parameters(cls, value: Any) -> Any:
        return _check_parameters(value) if isinstance(value, dict) else value


class Migration(FormatModel):
    """How mice on an earlier major version move to this one.

    Attributes:
        from_version: the earlier version (``1.2.0``) or major version (``1``) it applies to.
        stages: old stage name -> new stage name; an old stage missing here cannot migrate.
        description: why the stages changed.
    """

    from_version: str = Field(min_length=1)
    stages: dict[str, str] = Field(min_length=1)
    description: str = ""


class Origin(FormatModel):
    """Where an imported curriculum came from.

    Attributes:
        system: ``aind`` or ``mtrain``.
        file: the file it was converted from (its name).
        name: the name it had there.
        version: the version it had there (AIND versions such as ``2.2.1rwdDelay159`` are not
            semantic versions).
        notes: anything the conversion changed.
    """

    system: str
    file: str
    name: str | None = None
    version: str | None = None
    notes: list[str] = Field(default_factory=list)


class ParameterType(FormatModel):
    """The type of one task parameter, as a JSON Schema of the task gives it.

    Attributes:
        type: ``number``, ``integer``, ``boolean`` or ``string``.
        choices: the only values allowed (the schema's ``enum`` or ``const``), if limited.
        minimum: lowest allowed value (numbers), if any.
        maximum: highest allowed value (numbers), if any.
        nullable: whether null is allowed.
        required: whether every stage must set it.
        description: what it is (the schema's title or description).
    """

    type: Literal["number", "integer", "boolean", "string"]
    choices: list[ParamValue] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False
    required: bool = False
    description: str = ""


class ParameterSchema(FormatModel):
    """The schema a curriculum's task parameters follow (an imported AIND curriculum records
    the JSON Schema of its task here). Every stage's resolved parameters, and every per-mouse
    adjustment, are checked against it (:mod:`shaping.services.curricula.paramtypes`).

    Attributes:
        name: the schema's name (the JSON Schema's ``title``, e.g. DynamicForagingCurriculum).
        version: its version, when known (e.g. ``1.0`` from ``..._v1.0.json``).
        source: the file it was read from (its name).
        types: parameter name -> its type.
        additional: whether stages may set parameters the schema does not declare.
    """

    name: Name
    version: str | None = None
    source: str | None = None
    types: dict[str, ParameterType] = Field(min_length=1)
    additional: bool = True


class Curriculum(FormatModel):
    """A whole curriculum file (see the module docstring for an example).

    Attributes:
        name: curriculum name (what MouseEnrolled names).
        version: semantic version ``MAJOR.MINOR.PATCH``: major when stage names or rules'
            logic change (mice need a stage mapping), minor when parameters or thresholds
            change, patch for fixes that change no decision.
        description: what the curriculum trains.
        metrics: the metrics its rules read: registry names, or declarations of reported
            metrics the registry lacks; empty means "whatever the rules read" (still checked).
        defaults: parameters every stage starts from.
        bases: named parameter sets stages extend.
        adjustable: per-mouse parameter adjustments allowed at every stage.
        start: the stage mice start at (default: the first).
        stages: the stages, in training order.
        conditions: named conditions rules, warnings and reports use by name.
        report: values reported at every decision, whatever the stage.
        migrations: stage mappings from earlier major versions.
        origin: provenance of an imported curriculum.
        parameter_schema: the types of its task parameters, when known (an imported AIND
            curriculum records its task's JSON Schema).
    """

    name: Name
    version: str
    description: str = ""
    metrics: list[str | MetricDeclaration] = Field(default_factory=list)
    defaults: dict[str, ParamValue] = Field(default_factory=dict)
    bases: dict[str, dict[str, ParamValue]] = Field(default_factory=dict)
    adjustable: dict[str, Adjustment] = Field(default_factory=dict)
    start: str | None = None
    stages: list[Stage] = Field(min_length=1)
    conditions: list[Condition] = Field(default_factory=list)
    report: list[ReportedValue] = Field(default_factory=list)
    migrations: list[Migration] = Field(default_factory=list)
    origin: Origin | None = None
    parameter_schema: ParameterSchema | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(
                f"{value!r} is not a curriculum name (letters, digits, spaces and _ . ( ) / + -)"
            )
        return value

    @field_validator("version")
    @classmethod
    def _semver(cls, value: str) -> str:
        if not SEMVER.match(value):
            raise ValueError(f"{value!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.2.0)")
        return value

    @field_validator("defaults", mode="before")
    @classmethod
    def _defaults(cls, value: Any) -> Any:
        return _check_parameters(value) if isinstance(value, dict) else value

    @field_validator("bases", mode="before")
    @classmethod
    def _bases(cls, value: Any) -> Any:
        if isinstance(value, dict):
            for base in value.values():
                if isinstance(base, dict):
                    _check_parameters(base)
        return value


def semver(version: str) -> tuple[int, int, int]:
    """``MAJOR.MINOR.PATCH`` as numbers (pre-release suffix ignored)."""
    match = SEMVER.match(version)
    if match is None:
        raise ValueError(f"{version!r} is not a semantic version")
    return int(match.group(1)), int(match.group(2)), int(match.group(3))
