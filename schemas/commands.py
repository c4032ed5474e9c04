"""Operator commands: requests the processor may honour or refuse (part of the contract).

An event is a past-tense fact; a command is an imperative request. A trainer's request
(enrol a mouse, override its stage, eject it, adjust its parameters, migrate it to another
curriculum version, name the rigs it may train on) goes to the ``<prefix>.commands`` topic,
keyed by the mouse id, which rigs never write. The processor judges it against the mouse's
state and answers on the log:

- honoured: the past-tense event the command asks for (:meth:`Command.answer`) is appended to
  the events topic, keyed by the mouse; its ``event_id`` derives from the command's
  (:func:`answer_event_id`), it is dated ``requested_at``, caused by the command
  (``causation_id`` is the ``command_id``) and names who asked. The processor then folds it
  like any event, so the events topic stays the one ordered log that replay folds;
- refused: one EventRejected on the dead-letter topic, caused by the command, with the reason.

The Avro schemas are ``avro/<CommandType>.v<N>.avsc`` beside the events', in their own
namespace (``org.shaping.commands``); these models mirror the newest version of each
(``tests/unit/test_commands_contract.py``). Every command starts with the command envelope
(``schemas/README.md``).
"""

from __future__ import annotations

import uuid
from typing import ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from shaping.schemas.events import (
    NOTE_MAX,
    Event,
    HoldReleased,
    HusbandryNote,
    MouseEjected,
    MouseEnrolled,
    MouseMigrated,
    Parameters,
    ParametersAdjusted,
    Record,
    RestrictionEnded,
    RestrictionStarted,
    RigsAllowed,
    StageOverridden,
    UtcMillis,
    WaterGiven,
    WeightRecorded,
    check_rig_ids,
    finite_positive,
    new_event_id,
)
from shaping.schemas.identifiers import check_id, check_name, check_session_id

_ANSWER_NAMESPACE = uuid.UUID("6a0f3b7e-2c1d-4e58-9b7a-3d2f1c0e5a94")


def answer_event_id(mouse_id: str, command_id: str) -> str:
    """The ``event_id`` of the event that honours a command: a UUID derived from the mouse
    and the command id, so a re-processed command appends the same event (which the processor
    then drops as a duplicate) and the operator knows which id to wait for."""
    return str(uuid.uuid5(_ANSWER_NAMESPACE, f"{mouse_id}/{command_id}"))


class Command(Record):
    """Envelope shared by every command.

    Attributes:
        command_id: UUID of the request; the answering event's id derives from it.
        command_type: stable wire name, equal to the class name.
        schema_version: version of the schema the writer used.
        mouse_id: the mouse the request is about, and the Kafka key.
        requested_by: who asked (kept in the answering event's ``*_by`` field).
        requested_at: when it was asked, UTC, millisecond precision (the answering event's
            ``occurred_at``).
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    ANSWER: ClassVar[type[Event]]
    """The past-tense event that honours this command."""

    NAME_FIELDS: ClassVar[tuple[str, ...]] = (
        "curriculum_name",
        "to_stage",
        "from_stage",
        "start_stage",
    )
    """Fields that hold a curriculum or stage name (schemas.identifiers)."""

    command_id: str = Field(default_factory=new_event_id)
    command_type: str = ""
    schema_version: int = 0
    mouse_id: str
    requested_by: str = Field(min_length=1)
    requested_at: UtcMillis

    @field_validator("command_id")
    @classmethod
    def _valid_command_id(cls, value: str) -> str:
        return check_id(value, "command_id")

    @field_validator("mouse_id")
    @classmethod
    def _valid_mouse_id(cls, value: str) -> str:
        return check_id(value, "mouse_id")

    @model_validator(mode="after")
    def _valid_names(self) -> Command:
        for name in self.NAME_FIELDS:
            value = self.__dict__.get(name)  # a field of this type, or None (fast)
            if value is not None:
                check_name(value, name)
        return self

    def model_post_init(self, context: object) -> None:
        """Fills the wire name and schema version from the class when not given."""
        if not self.command_type:
            object.__setattr__(self, "command_type", type(self).__name__)
        if not self.schema_version:
            object.__setattr__(self, "schema_version", type(self).SCHEMA_VERSION)

    @property
    def answer_id(self) -> str:
        """The ``event_id`` of the event that honours this command."""
        return answer_event_id(self.mouse_id, self.command_id)

    def answer(self) -> Event:
        """The past-tense event that honours this command (a value: no I/O, deterministic)."""
        return self.ANSWER.model_validate(
            {
                "event_id": self.answer_id,
                "mouse_id": self.mouse_id,
                "occurred_at": self.requested_at,
                "causation_id": self.command_id,
                **self._answer_fields(),
            }
        )

    def _answer_fields(self) -> dict[str, object]:
        raise NotImplementedError


class EnrolMouse(Command):
    """Put a mouse on a curriculum (answered by MouseEnrolled)."""

    ANSWER: ClassVar[type[Event]] = MouseEnrolled

    rig_id: str | None = None
    curriculum_name: str
    curriculum_version: str | None = None
    start_stage: str | None = None
    notes: str = ""

    @field_validator("rig_id")
    @classmethod
    def _valid_rig_id(cls, value: str | None) -> str | None:
        return None if value is None else check_id(value, "rig_id")

    def _answer_fields(self) -> dict[str, object]:
        return {
            "rig_id": self.rig_id,
            "curriculum_name": self.curriculum_name,
            "curriculum_version": self.curriculum_version,
            "start_stage": self.start_stage,
            "enrolled_by": self.requested_by,
            "notes": self.notes,
        }


class OverrideStage(Command):
    """Move a mouse to a stage by hand (answered by StageOverridden).

    ``from_stage`` is the stage the trainer saw the mouse at (None: not checked).
    """

    ANSWER: ClassVar[type[Event]] = StageOverridden

    to_stage: str = Field(min_length=1)
    from_stage: str | None = None
    reason: str = Field(min_length=1)

    def _answer_fields(self) -> dict[str, object]:
        return {
            "to_stage": self.to_stage,
            "from_stage": self.from_stage,
            "reason": self.reason,
            "overridden_by": self.requested_by,
        }


class EjectMouse(Command):
    """Take a mouse out of training (answered by MouseEjected)."""

    ANSWER: ClassVar[type[Event]] = MouseEjected

    reason: str = Field(min_length=1)

    def _answer_fields(self) -> dict[str, object]:
        return {"reason": self.reason, "ejected_by": self.requested_by}


class AdjustParameters(Command):
    """Adjust some of a mouse's parameters; a None value clears one (answered by
    ParametersAdjusted)."""

    ANSWER: ClassVar[type[Event]] = ParametersAdjusted

    adjustments: Parameters
    reason: str = Field(min_length=1)

    def _answer_fields(self) -> dict[str, object]:
        return {
            "adjustments": self.adjustments,
            "reason": self.reason,
            "adjusted_by": self.requested_by,
        }


class MigrateMouse(Command):
    """Move a mouse to another version of its curriculum (answered by MouseMigrated).

    ``from_stage`` is the stage the mouse was at when the migration was planned (refused if it
    has moved since); ``to_stage`` its stage in the new version.
    """

    ANSWER: ClassVar[type[Event]] = MouseMigrated

    curriculum_name: str
    from_version: str
    to_version: str
    from_stage: str
    to_stage: str
    content_hash: str = ""
    reason: str = ""

    def _answer_fields(self) -> dict[str, object]:
        return {
            "curriculum_name": self.curriculum_name,
            "from_version": self.from_version,
            "to_version": self.to_version,
            "from_stage": self.from_stage,
            "to_stage": self.to_stage,
            "content_hash": self.content_hash,
            "reason": self.reason,
            "migrated_by": self.requested_by,
        }


class AllowRigs(Command):
    """Name the rigs a mouse may train on; the list replaces the one in force (answered by
    RigsAllowed). Rig facts of the mouse from any other rig are refused from then on."""

    ANSWER: ClassVar[type[Event]] = RigsAllowed

    rig_ids: list[str]
    reason: str = ""

    @field_validator("rig_ids")
    @classmethod
    def _valid_rig_ids(cls, value: list[str]) -> list[str]:
        return check_rig_ids(value)

    def _answer_fields(self) -> dict[str, object]:
        return {
            "rig_ids": list(self.rig_ids),
            "reason": self.reason,
            "allowed_by": self.requested_by,
        }


# -- husbandry ------------------------------------------------------------------------------------
# The event a husbandry command asks for is checked twice: by the processor against the mouse's
# state (a mouse it knows, a restriction to end) and, for a weight, against the lab's welfare
# policy (a plausible weight, no jump from the last one unless ``confirmed``).


class RecordWeight(Command):
    """Record a mouse's weight (answered by WeightRecorded)."""

    ANSWER: ClassVar[type[Event]] = WeightRecorded

    grams: float
    scale_id: str | None = None
    confirmed: bool = False

    @field_validator("grams")
    @classmethod
    def _positive_grams(cls, value: float) -> float:
        return finite_positive(value, "grams")

    def _answer_fields(self) -> dict[str, object]:
        return {
            "grams": self.grams,
            "scale_id": self.scale_id,
            "confirmed": self.confirmed,
            "recorded_by": self.requested_by,
        }


class GiveWater(Command):
    """Record water given to a mouse (answered by WaterGiven); ``session_id`` names the session
    earned water came from."""

    ANSWER: ClassVar[type[Event]] = WaterGiven

    ml: float
    kind: Literal["earned", "supplement", "free_access"] = "supplement"
    water_type: Literal["water", "sucrose", "citric_acid_water", "hydrogel"] = "water"
    session_id: str | None = None

    @field_validator("session_id")
    @classmethod
    def _valid_session_id(cls, value: str | None) -> str | None:
        return None if value is None else check_session_id(value, "session_id")

    def _answer_fields(self) -> dict[str, object]:
        return {
            "ml": self.ml,
            "kind": self.kind,
            "water_type": self.water_type,
            "session_id": self.session_id,
            "given_by": self.requested_by,
        }


class StartRestriction(Command):
    """Put a mouse on water restriction (answered by RestrictionStarted)."""

    ANSWER: ClassVar[type[Event]] = RestrictionStarted

    reference_grams: float
    reference_method: Literal["measured", "entered", "weight_on_date"] = "measured"
    implant_grams: float = 0.0
    birth_date: str | None = None
    sex: Literal["F", "M", "U"] | None = None

    def _answer_fields(self) -> dict[str, object]:
        return {
            "reference_grams": self.reference_grams,
            "reference_method": self.reference_method,
            "implant_grams": self.implant_grams,
            "birth_date": self.birth_date,
            "sex": self.sex,
            "started_by": self.requested_by,
        }


class EndRestriction(Command):
    """End a mouse's water restriction (answered by RestrictionEnded)."""

    ANSWER: ClassVar[type[Event]] = RestrictionEnded

    reason: str = ""

    def _answer_fields(self) -> dict[str, object]:
        return {"reason": self.reason, "ended_by": self.requested_by}


class AddNote(Command):
    """Note something about a mouse's welfare (answered by HusbandryNote)."""

    ANSWER: ClassVar[type[Event]] = HusbandryNote

    text: str = Field(min_length=1, max_length=NOTE_MAX)

    def _answer_fields(self) -> dict[str, object]:
        return {"text": self.text, "noted_by": self.requested_by}


class ReleaseHold(Command):
    """Release a held (or not yet weighed) restricted mouse for the day, with a reason
    (answered by HoldReleased); audited like the other interventions. Refused for a mouse
    that is not on water restriction."""

    ANSWER: ClassVar[type[Event]] = HoldReleased

    reason: str = Field(min_length=1)

    def _answer_fields(self) -> dict[str, object]:
        return {"reason": self.reason, "released_by": self.requested_by}


COMMAND_TYPES: dict[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        EnrolMouse,
        OverrideStage,
        EjectMouse,
        AdjustParameters,
        MigrateMouse,
        AllowRigs,
        RecordWeight,
        GiveWater,
        StartRestriction,
        EndRestriction,
        AddNote,
        ReleaseHold,
    )
}
"""Every command class by its wire name."""

ANSWERS: dict[str, str] = {name: cls.ANSWER.__name__ for name, cls in COMMAND_TYPES.items()}
"""The event type that honours each command type."""
