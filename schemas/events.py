"""The event contract as pydantic models.

The Avro schemas in ``schemas/avro`` are the source of truth; these models mirror the newest
version of each (``tests/unit/test_schema_models.py`` checks field names, order, types and
defaults). Events are immutable, past-tense facts. Every event carries the envelope described in
``schemas/README.md``; the Kafka key of every event is its ``mouse_id``.
"""

from __future__ import annotations

import math
import uuid
from datetime import UTC, date, datetime
from typing import Annotated, ClassVar, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from shaping.schemas.identifiers import check_id, check_name, check_session_id

ParamValue = bool | int | float | str | None
"""A task parameter value: the Avro union ``[null, boolean, long, double, string]``."""

Parameters = dict[str, ParamValue]


def _to_utc_millis(value: datetime) -> datetime:
    """Normalises a timestamp to UTC, millisecond precision (as Avro timestamp-millis)."""
    if value.tzinfo is UTC and not value.microsecond % 1000:
        return value  # as the wire gives it (timestamp-millis): nothing to normalise
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware (UTC)")
    value = value.astimezone(UTC)
    return value.replace(microsecond=(value.microsecond // 1000) * 1000)


UtcMillis = Annotated[datetime, AfterValidator(_to_utc_millis)]

TRIAL_OUTCOMES = ("correct", "incorrect", "miss")
DECISIONS = ("stay", "progress", "rollback", "skip", "graduate")


def new_event_id() -> str:
    """Returns a random event id (UUID4 as text)."""
    return str(uuid.uuid4())


class Record(BaseModel):
    """Base of nested records: immutable, no unknown fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Event(Record):
    """Envelope shared by every event.

    Attributes:
        event_id: UUID of the event; consumers deduplicate on it.
        event_type: stable wire name, equal to the class name.
        schema_version: version of the schema the writer used.
        mouse_id: the mouse the fact is about, and the Kafka key.
        rig_id: rig that produced the event, when one did.
        session_id: training session the event belongs to, when any.
        occurred_at: when the fact happened, UTC, millisecond precision.
        causation_id: event_id of the event that caused this one.
    """

    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: str = Field(default_factory=new_event_id)
    event_type: str = ""
    schema_version: int = 0
    mouse_id: str = Field(min_length=1)
    rig_id: str | None = None
    session_id: str | None = None
    occurred_at: UtcMillis
    causation_id: str | None = None

    NAME_FIELDS: ClassVar[tuple[str, ...]] = (
        "curriculum_name",
        "stage",
        "from_stage",
        "to_stage",
        "start_stage",
    )
    """Fields that hold a curriculum or stage name (schemas.identifiers): checked in every
    event that has them."""

    @field_validator("mouse_id")
    @classmethod
    def _valid_mouse_id(cls, value: str) -> str:
        return cls.check_mouse_id(value)

    @classmethod
    def check_mouse_id(cls, value: str) -> str:
        """The grammar of this event type's ``mouse_id`` (a mouse id; see CurriculumPublished)."""
        return check_id(value, "mouse_id")

    @field_validator("rig_id")
    @classmethod
    def _valid_rig_id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "rig_id")

    @field_validator("session_id")
    @classmethod
    def _valid_session_id(cls, value: str | None) -> str | None:
        return None if value is None else check_session_id(value, "session_id")

    @model_validator(mode="after")
    def _valid_names(self) -> Event:
        for name in self.NAME_FIELDS:
            value = self.__dict__.get(name)  # a field of this type, or None (fast)
            if value is not None:
                check_name(value, name)
        return self

    def model_post_init(self, context: object) -> None:
        """Fills the wire name and schema version from the class when not given."""
        if not self.event_type:
            object.__setattr__(self, "event_type", type(self).__name__)
        if not self.schema_version:
            object.__setattr__(self, "schema_version", type(self).SCHEMA_VERSION)


class MouseEnrolled(Event):
    """An operator put a mouse on a curriculum."""

    curriculum_name: str
    curriculum_version: str | None = None
    start_stage: str | None = None
    enrolled_by: str = ""
    notes: str = ""


def _iso_date(value: str | None) -> str | None:
    """Checks a calendar date is ``YYYY-MM-DD``."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value).isoformat() if len(value) == 10 else _bad_date(value)
    except ValueError:
        return _bad_date(value)


def _bad_date(value: str) -> str:
    raise ValueError(f"session_date must be a date like 2026-03-02, not {value!r}")


class SessionStarted(Event):
    """A rig started a training session with a parameter set.

    ``assignment_id`` names the AssignmentIssued the rig configured itself from, so anyone can
    check that the rig ran exactly what it was told. ``session_date`` is the rig's local
    calendar date (``YYYY-MM-DD``; None: the UTC date of ``occurred_at``): metrics that pool the
    sessions of a date (IBL) and the recompute after a late session go by it.

    Version 3 says whether the rig knew the assignment was not the current one
    (``assignment_stale``: the decision on the previous session had not arrived within the
    rig's bound, or the newest assignment was written with a schema the rig cannot read; the
    words in ``assignment_stale_reason``) and how long it waited for the current assignment
    (``assignment_wait_s``; None: not measured). A writer before v3 reads as not stale, with
    the wait None.
    """

    SCHEMA_VERSION: ClassVar[int] = 3

    stage: str
    curriculum_name: str
    curriculum_version: str
    parameters: Parameters
    assignment_id: str | None = None
    session_date: Annotated[str | None, AfterValidator(_iso_date)] = None
    assignment_stale: bool = False
    assignment_wait_s: float | None = None
    assignment_stale_reason: str | None = None

    @property
    def effective_date(self) -> str:
        """The session's calendar date: ``session_date``, else the UTC date it started."""
        return self.session_date or self.occurred_at.date().isoformat()


class TrialCompleted(Event):
    """One trial of a session finished (schema version 2 added correction trials and
    in-session parameters)."""

    SCHEMA_VERSION: ClassVar[int] = 2

    trial_index: int = Field(ge=0)
    outcome: Literal["correct", "incorrect", "miss"]
    target_side: str | None = None
    response_side: str | None = None
    reaction_time_s: float | None = None
    reward_volume_ul: float = 0.0
    correction_trial: bool = False
    trial_parameters: Parameters = Field(default_factory=dict)


def _finite_or_none(values: dict[str, float | None]) -> dict[str, float | None]:
    """NaN or infinite metric values become None (no value), so every copy compares equal."""
    return {k: v if v is None or math.isfinite(v) else None for k, v in values.items()}


class SessionEnded(Event):
    """A rig finished a training session (schema version 2 added reported session metrics).

    ``metrics`` holds session metrics the rig or an analysis pipeline computed, such as AIND's
    foraging efficiency; curriculum rules read them as reported session metrics.
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    n_trials: int = Field(ge=0)
    end_reason: str
    duration_s: float = Field(ge=0)
    metrics: Annotated[dict[str, float | None], AfterValidator(_finite_or_none)] = Field(
        default_factory=dict
    )


WATER_EARNED_METRIC = "water_earned_ml"
"""The SessionEnded metric in which a rig reports the water its rewards delivered (mL, through
its valves' calibration); the processor records it as the mouse's earned water."""


class MovementDetected(Event):
    """A rig sensor saw the mouse move outside its response to a cue.

    A ``paw_lift`` outside a trial (``phase`` ``iti``, or ``outcome``: during the reward or the
    timeout after a response) is what reach calls a reset, a ``spout_touch`` there a
    spontaneous reach; a ``paw_lift`` in ``phase == "trial"`` is the paw leaving its rest after
    the cue (reach's lift time). The training core does not fold these events; they are kept
    for per-session results and analysis.
    """

    movement: Literal["paw_lift", "spout_touch"]
    side: Literal["left", "right"]
    phase: Literal["iti", "trial", "outcome"]
    trial_index: int = Field(ge=0)
    restarted_iti: bool = False


class Observation(Record):
    """One metric compared with a threshold, as evidence for a rule."""

    metric: str
    observed: float | None
    comparator: str
    threshold: float
    passed: bool


class RuleEvaluation(Record):
    """Evidence for one transition rule: its verdict and every comparison behind it."""

    rule: str
    description: str
    decision: str
    to_stage: str
    verdict: bool
    observations: list[Observation]


class SessionSummary(Record):
    """Counts of the session that was judged."""

    n_trials: int
    n_correct: int
    n_incorrect: int
    n_miss: int
    accuracy: float | None
    duration_s: float
    end_reason: str


class StageTransitioned(Event):
    """The processor judged a finished session.

    One is emitted for every finished session, so the decision log has a row per session;
    ``decision == "stay"`` keeps the stage. ``rule_evaluations`` holds every rule that was
    evaluated, in order, with its evidence; ``rule`` names the first that held. ``metrics``
    holds the values of the curriculum's reported metrics. A decision recomputed after a late
    session names the decision it replaces in ``supersedes`` (the log is never rewritten).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    curriculum_name: str
    curriculum_version: str
    from_stage: str
    to_stage: str
    decision: Literal["stay", "progress", "rollback", "skip", "graduate"]
    rule: str | None = None
    rule_evaluations: list[RuleEvaluation]
    sessions_at_stage: int
    session_total: int
    session_summary: SessionSummary
    supersedes: str | None = None
    session_date: str | None = None
    metrics: Annotated[dict[str, float | None], AfterValidator(_finite_or_none)] = Field(
        default_factory=dict
    )


class AssignmentWelfare(Record):
    """A restricted mouse's welfare as its assignment carries it (AssignmentIssued v3,
    AssignmentHeld): whether the rig may start it today, and the day's water.

    ``cleared_on`` is the lab day (``YYYY-MM-DD``, the welfare policy's time zone, from the
    log's time) on which the mouse was cleared to train: weighed that day above its minimum,
    or released by a trainer; None: not cleared (not weighed yet, or held). ``held_reason``
    says in words, with the figures, why the mouse is held (None: not held). The figures are
    those of :func:`shaping.services.domain.welfare.welfare_status` on the day the assignment
    was issued.
    """

    restricted: bool
    cleared_on: str | None = None
    status: str = ""
    percent_of_expected: float | None = None
    water_required_ml_today: float | None = None
    water_given_ml_today: float = 0.0
    water_still_due_ml: float | None = None
    supplement_ml: float = 0.0
    supplement_exceeds_cap: bool = False
    held_reason: str | None = None

    @field_validator("cleared_on")
    @classmethod
    def _valid_day(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            day = date.fromisoformat(value) if len(value) == 10 else None
        except ValueError:
            day = None
        if day is None:
            raise ValueError(f"cleared_on must be a date like 2026-03-02, not {value!r}")
        return value


class AssignmentIssued(Event):
    """What the mouse's next session must run: its stage and every parameter, resolved.

    ``parameters`` already include the mouse's ``adjustments``. ``evidence``, ``metrics`` and
    ``warnings`` travel with the assignment so the rig can show the trainer why, right after
    the session. ``supersedes`` names the assignment this one replaces after a recompute.

    Version 3 added ``welfare``, set only for a mouse on water restriction (None otherwise, and
    in every older version): whether it is cleared to train today, held, and its water for the
    day (:class:`AssignmentWelfare`). A rig refuses to start a restricted mouse that is held or
    not cleared for its day.
    """

    SCHEMA_VERSION: ClassVar[int] = 3

    stage: str
    parameters: Parameters
    curriculum_name: str
    curriculum_version: str
    reason: str
    reason_detail: str = ""
    sessions_at_stage: int
    session_number: int
    evidence: list[RuleEvaluation] = Field(default_factory=list)
    metrics: Annotated[dict[str, float | None], AfterValidator(_finite_or_none)] = Field(
        default_factory=dict
    )
    supersedes: str | None = None
    adjustments: Parameters = Field(default_factory=dict)
    warnings: list[str] = Field(default_factory=list)
    welfare: AssignmentWelfare | None = None


class AssignmentHeld(Event):
    """The processor holds a restricted mouse: it must not train until it is weighed above its
    minimum weight, or a trainer releases it (ReleaseHold, answered by HoldReleased).

    Published on the assignments topic, so rigs see it; the assignment re-issued right after
    it (not cleared, ``welfare.held_reason`` set) is what a rig runs against. ``reason`` says
    why in words with the figures; ``held_at`` is the log's time of the weighing that held it.
    """

    session_number: int
    reason: str = Field(min_length=1)
    held_at: UtcMillis
    welfare: AssignmentWelfare


ERROR_KINDS = ("undecodable", "invalid", "impossible", "duplicate", "clock", "failed")
"""Why a message was refused: not a Shaping message; breaks the contract; cannot have happened
given the mouse's history; an event id reused with other content; dated outside the accepted
window around the broker's time; or a failure that is a bug, parked after bounded retries."""

ORIGINAL_VALUE_MAX = 65_536
"""A dead letter keeps at most this many bytes of the original value (with its full size and
SHA-256), so that it always fits in a Kafka message."""

ORIGINAL_KEY_MAX = 1_024
"""A dead letter keeps at most this many bytes of the original key."""

REASON_MAX = 2_000
"""A rejection reason is cut to this many characters."""


class EventRejected(Event):
    """A message that could not be accepted, kept with its original bytes (dead letter).

    Schema version 2 bounded the copy: ``original_value`` holds at most
    :data:`ORIGINAL_VALUE_MAX` bytes, and ``original_size`` and ``original_sha256`` describe the
    whole original (None in version 1 data, whose copy is whole).
    """

    SCHEMA_VERSION: ClassVar[int] = 2

    reason: str
    error_kind: Literal["undecodable", "invalid", "impossible", "duplicate", "clock", "failed"]
    source_topic: str
    source_partition: int
    source_offset: int
    original_key: bytes | None = None
    original_value: bytes
    rejected_by: str
    original_size: int | None = None
    original_sha256: str | None = None

    @classmethod
    def check_mouse_id(cls, value: str) -> str:
        """A mouse id, or ``curriculum:<name>`` for a refused curriculum publication."""
        if value.startswith("curriculum:"):
            return CurriculumPublished.check_mouse_id(value)
        return check_id(value, "mouse_id")

    @property
    def original_truncated(self) -> bool:
        """Whether ``original_value`` is only the start of the original."""
        return self.original_size is not None and self.original_size > len(self.original_value)


class CurriculumPublished(Event):
    """A curriculum version was published: its full content and a hash of it.

    It concerns no mouse: ``mouse_id`` is ``curriculum:<name>``. ``shaping curriculum publish``
    writes it to the compacted ``<prefix>.curricula`` topic, keyed ``<name>@<version>``; the
    processor reads that topic whole before it handles any event and follows it afterwards (one
    found on the events topic, as older releases sent it, is still accepted). The version a
    mouse is on stays its own until a MouseMigrated moves it.
    """

    curriculum_name: str
    curriculum_version: str
    content_hash: str
    content: str
    previous_version: str | None = None
    bump: str = ""
    published_by: str = ""
    notes: str = ""

    @classmethod
    def check_mouse_id(cls, value: str) -> str:
        """``curriculum:<name>``: a published version concerns no mouse."""
        prefix = "curriculum:"
        if not value.startswith(prefix):
            raise ValueError(f"mouse_id of a CurriculumPublished must start with {prefix!r}")
        check_name(value[len(prefix) :], "curriculum name in mouse_id")
        return value


class MouseMigrated(Event):
    """An operator moved a mouse to another version of its curriculum.

    ``from_stage`` is the stage the mouse was at when the migration was planned (the processor
    refuses the migration if the mouse has moved since); ``to_stage`` is its stage in the new
    version (the same name, or the new version's stage mapping for a major version).
    """

    curriculum_name: str
    from_version: str
    to_version: str
    from_stage: str
    to_stage: str
    content_hash: str = ""
    reason: str = ""
    migrated_by: str = ""


class TrainingWarning(Event):
    """Something a trainer should know, raised with a decision (a warning rule that held).

    ``kind`` is stable (``untrainable_risk``, ``regression_prevented``,
    ``biased_before_trained``, or a curriculum's own); ``evidence`` holds the warning rule
    with its observations.
    """

    kind: str = Field(min_length=1)
    message: str
    stage: str
    curriculum_name: str
    curriculum_version: str
    evidence: list[RuleEvaluation] = Field(default_factory=list)


class StageOverridden(Event):
    """A trainer moved a mouse to a stage by hand; audited, and honoured by the processor.

    ``from_stage`` is the stage the trainer saw the mouse at (None: not checked); the
    processor refuses the override if the mouse has moved since.
    """

    to_stage: str = Field(min_length=1)
    from_stage: str | None = None
    reason: str = Field(min_length=1)
    overridden_by: str = ""


class MouseEjected(Event):
    """A mouse leaves training: it gets no more assignments and its sessions are refused."""

    reason: str = Field(min_length=1)
    ejected_by: str = ""


class ParametersAdjusted(Event):
    """A trainer adjusted some of a mouse's parameters, within what its curriculum allows.

    A None value clears the adjustment of that parameter (back to the stage's value).
    """

    adjustments: Parameters
    reason: str = Field(min_length=1)
    adjusted_by: str = ""


RIG_IDS_MAX = 64
"""A mouse may be allowed on at most this many rigs (RigsAllowed, AllowRigs)."""


def check_rig_ids(value: list[str], what: str = "rig_ids") -> list[str]:
    """Checks a list of rig ids: 1 to :data:`RIG_IDS_MAX` valid ids, none twice."""
    if not value:
        raise ValueError(f"{what} must name at least one rig")
    if len(value) > RIG_IDS_MAX:
        raise ValueError(f"{what} names {len(value)} rigs; at most {RIG_IDS_MAX} are allowed")
    seen: set[str] = set()
    for rig in value:
        check_id(rig, f"a rig id in {what}")
        if rig in seen:
            raise ValueError(f"{what} names rig {rig} twice")
        seen.add(rig)
    return value


class RigsAllowed(Event):
    """An operator named the rigs a mouse may train on (a restriction, audited).

    From then on a rig fact of the mouse (SessionStarted, TrialCompleted, SessionEnded,
    MovementDetected) whose ``rig_id`` is not in ``rig_ids`` is refused by the processor. The
    list replaces the one in force; a mouse that never had one may train on any rig. The
    envelope's ``rig_id`` stays None: the rigs are in ``rig_ids``.
    """

    rig_ids: list[str]
    reason: str = ""
    allowed_by: str = ""

    @field_validator("rig_ids")
    @classmethod
    def _valid_rig_ids(cls, value: list[str]) -> list[str]:
        return check_rig_ids(value)


# -- husbandry: weights, water, restrictions and notes ------------------------------------------

WATER_KINDS = ("earned", "supplement", "free_access")
"""How water was given: earned in a session, a supplement by hand, or free access (ad lib)."""

WATER_TYPES = ("water", "sucrose", "citric_acid_water", "hydrogel")
"""What was given (Alyx's water types)."""

REFERENCE_METHODS = ("measured", "entered", "weight_on_date")
"""How a restriction's reference weight was set: weighed at the start, typed in, or the weight
recorded on an earlier date."""

SEXES = ("F", "M", "U")
"""A mouse's sex as a restriction records it (U: unknown), for a growth-curve policy."""

NOTE_MAX = 2_000
"""A husbandry note holds at most this many characters."""


def finite_positive(value: float, what: str) -> float:
    """``value`` if it is a finite number above 0.

    Raises:
        ValueError: naming ``what``.
    """
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{what} must be a positive number, not {value!r}")
    return value


class WeightRecorded(Event):
    """A person weighed a mouse (husbandry; answers RecordWeight).

    ``confirmed`` says the person confirmed a weight far from the last one (the processor
    refuses such a jump otherwise, by the lab's welfare policy). ``scale_id`` names the scale,
    when the lab tracks them.
    """

    grams: float
    scale_id: str | None = None
    recorded_by: str = ""
    confirmed: bool = False

    @field_validator("grams")
    @classmethod
    def _positive_grams(cls, value: float) -> float:
        return finite_positive(value, "grams")


class WaterGiven(Event):
    """Water was given to a mouse (husbandry; answers GiveWater).

    ``kind`` is ``earned`` (in a session: ``session_id`` names it), ``supplement`` or
    ``free_access`` (ad lib; ``ml`` may then be 0: not measured).
    """

    ml: float
    kind: Literal["earned", "supplement", "free_access"] = "supplement"
    water_type: Literal["water", "sucrose", "citric_acid_water", "hydrogel"] = "water"
    given_by: str = ""

    @model_validator(mode="after")
    def _measured_volume(self) -> WaterGiven:
        if (
            not math.isfinite(self.ml)
            or self.ml < 0
            or (self.ml == 0 and self.kind != "free_access")
        ):
            raise ValueError(
                f"ml must be a positive number (0 only for free access), not {self.ml!r}"
            )
        return self


class RestrictionStarted(Event):
    """A mouse was put on water restriction (husbandry; answers StartRestriction).

    ``reference_grams`` is the weight its expected weight is computed from, set as
    ``reference_method`` says; ``implant_grams`` is the weight of a head plate or implant,
    which the welfare policy subtracts from every weight. ``birth_date`` (``YYYY-MM-DD``) and
    ``sex`` let a growth-curve policy scale the reference with age.
    """

    reference_grams: float
    reference_method: Literal["measured", "entered", "weight_on_date"] = "measured"
    implant_grams: float = 0.0
    birth_date: str | None = None
    sex: Literal["F", "M", "U"] | None = None
    started_by: str = ""

    @model_validator(mode="after")
    def _sensible_weights(self) -> RestrictionStarted:
        finite_positive(self.reference_grams, "reference_grams")
        if not math.isfinite(self.implant_grams) or self.implant_grams < 0:
            raise ValueError(f"implant_grams must be 0 or more, not {self.implant_grams!r}")
        if self.implant_grams >= self.reference_grams:
            raise ValueError(
                f"implant_grams ({self.implant_grams:g}) must be less than reference_grams "
                f"({self.reference_grams:g})"
            )
        if self.birth_date is not None:
            try:
                born = date.fromisoformat(self.birth_date)
            except ValueError:
                born = None
            if born is None or len(self.birth_date) != 10:
                raise ValueError(
                    f"birth_date must be a date like 2026-01-15, not {self.birth_date!r}"
                )
            if born > self.occurred_at.date():
                raise ValueError(f"birth_date {self.birth_date} is after the restriction starts")
        return self


class RestrictionEnded(Event):
    """A mouse's water restriction ended (husbandry; answers EndRestriction)."""

    reason: str = ""
    ended_by: str = ""


class HusbandryNote(Event):
    """A person noted something about a mouse's welfare (answers AddNote)."""

    text: str = Field(min_length=1, max_length=NOTE_MAX)
    noted_by: str = ""


class HoldReleased(Event):
    """A trainer released a held (or not yet weighed) restricted mouse for the day, with a
    reason (answers ReleaseHold; audited like the other interventions)."""

    reason: str = Field(min_length=1)
    released_by: str = ""


HUSBANDRY_EVENTS = (WeightRecorded, WaterGiven, RestrictionStarted, RestrictionEnded, HusbandryNote)
"""The husbandry facts, which only operators' commands cause."""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.__name__: cls
    for cls in (
        MouseEnrolled,
        SessionStarted,
        TrialCompleted,
        SessionEnded,
        MovementDetected,
        StageTransitioned,
        AssignmentIssued,
        AssignmentHeld,
        EventRejected,
        CurriculumPublished,
        MouseMigrated,
        TrainingWarning,
        StageOverridden,
        MouseEjected,
        ParametersAdjusted,
        RigsAllowed,
        WeightRecorded,
        WaterGiven,
        RestrictionStarted,
        RestrictionEnded,
        HusbandryNote,
        HoldReleased,
    )
}
"""Every event class by its wire name."""

RIG_EVENTS = (SessionStarted, TrialCompleted, SessionEnded, MovementDetected)

# The alert events (schemas/alerts.py) are built on Event and add themselves to EVENT_TYPES when
# that module is imported; importing it here makes the registry whole whichever is read first.
import shaping.schemas.alerts  # noqa: E402, F401
