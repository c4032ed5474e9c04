"""The event contract: the pydantic models mirror the Avro schemas, the wire bytes are pinned,
and the current schemas read data written with earlier ones; the same for operators'
commands, which share the wire format but never a topic with events."""

from __future__ import annotations

import io
import itertools
import os
import types
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import fastavro
import pytest
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from shaping.schemas.codec import MAGIC, EventCodec, default_codec, load_schema_versions
from shaping.schemas.commands import ANSWERS, COMMAND_TYPES, Command, answer_event_id
from shaping.schemas.errors import SerializationError
from shaping.schemas.events import (
    EVENT_TYPES,
    AssignmentWelfare,
    Event,
    Observation,
    RuleEvaluation,
    SessionStarted,
    SessionSummary,
    TrialCompleted,
)
from tests.support.examples import example_commands, example_events

GOLDEN = Path(__file__).parent.parent / "golden"
ENVELOPE = [
    "event_id",
    "event_type",
    "schema_version",
    "mouse_id",
    "rig_id",
    "session_id",
    "occurred_at",
    "causation_id",
]
ALL_VERSIONS = load_schema_versions()
VERSIONS = [v for v in ALL_VERSIONS if v.event_type in EVENT_TYPES]  # the events' schemas
COMMAND_VERSIONS = [v for v in ALL_VERSIONS if v.event_type in COMMAND_TYPES]
COMMAND_ENVELOPE = [
    "command_id",
    "command_type",
    "schema_version",
    "mouse_id",
    "requested_by",
    "requested_at",
]
NEWEST = {v.event_type: v for v in ALL_VERSIONS}  # sorted by version, so the last one wins


def avro_type_of(annotation: Any) -> Any:
    """The Avro type a pydantic annotation must have, in the shape the .avsc files use."""
    origin = get_origin(annotation)
    if origin in (Union, types.UnionType):
        members = [avro_type_of(a) for a in get_args(annotation)]
        if "null" in members:  # Avro puts null first so the default can be null
            members = ["null"] + [m for m in members if m != "null"]
        return members
    if origin is Literal:
        return "string"
    if origin is list:
        return {"type": "array", "items": avro_type_of(get_args(annotation)[0])}
    if origin is dict:
        return {"type": "map", "values": avro_type_of(get_args(annotation)[1])}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation.__name__
    simple = {
        str: "string",
        int: "int",
        float: "double",
        bool: "boolean",
        bytes: "bytes",
        type(None): "null",
    }
    if annotation in simple:
        return simple[annotation]
    if getattr(annotation, "__origin__", None) is not None:  # Annotated[datetime, ...]
        return avro_type_of(annotation.__origin__)
    import datetime

    if annotation is datetime.datetime:
        return {"type": "long", "logicalType": "timestamp-millis"}
    raise AssertionError(f"no Avro mapping for {annotation!r}")


def schema_shape(avro: Any) -> Any:
    """An .avsc type reduced to what the model can express (records by name, int=long)."""
    if isinstance(avro, list):
        return [schema_shape(a) for a in avro]
    if isinstance(avro, dict):
        if avro["type"] == "record":
            return avro["name"]
        if avro["type"] == "array":
            return {"type": "array", "items": schema_shape(avro["items"])}
        if avro["type"] == "map":
            return {"type": "map", "values": schema_shape(avro["values"])}
        return {k: v for k, v in avro.items() if k in ("type", "logicalType")}
    return avro


def normalise_ints(shape: Any) -> Any:
    """Python has one int: the model's int may be Avro int or long."""
    if shape == "long":
        return "int"
    if isinstance(shape, list):
        return [normalise_ints(s) for s in shape]
    if isinstance(shape, dict):
        return {k: normalise_ints(v) for k, v in shape.items()}
    return shape


def records_in(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Every named record inside a schema, by name."""
    found: dict[str, dict[str, Any]] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if node.get("type") == "record":
                found[node["name"]] = node
                for field in node["fields"]:
                    walk(field["type"])
            for key in ("items", "values"):
                if key in node:
                    walk(node[key])
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(schema)
    return found


def assert_model_matches(model: type[BaseModel], record: dict[str, Any]) -> None:
    fields = list(model.model_fields.items())
    assert [name for name, _ in fields] == [f["name"] for f in record["fields"]], model.__name__
    for (name, info), avro_field in zip(fields, record["fields"], strict=True):
        expected = normalise_ints(schema_shape(avro_field["type"]))
        assert normalise_ints(avro_type_of(info.annotation)) == expected, (model.__name__, name)
        if name in ("event_type", "schema_version", "event_id", "command_type", "command_id"):
            # Filled from the class (checked below) or freshly generated: not schema defaults.
            continue
        has_default = info.default is not PydanticUndefined or info.default_factory is not None
        assert has_default == ("default" in avro_field), (model.__name__, name)
        if "default" in avro_field:
            default = info.get_default(call_default_factory=True)
            assert default == avro_field["default"], (model.__name__, name)


NESTED_MODELS: dict[str, type[BaseModel]] = {
    "AssignmentWelfare": AssignmentWelfare,
    "Observation": Observation,
    "RuleEvaluation": RuleEvaluation,
    "SessionSummary": SessionSummary,
}


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_model_mirrors_newest_schema(event_type: str) -> None:
    newest = NEWEST[event_type]
    model = EVENT_TYPES[event_type]
    assert newest.raw["name"] == event_type
    assert newest.version == model.SCHEMA_VERSION
    assert_model_matches(model, newest.raw)
    for name, record in records_in(newest.raw).items():
        if name != event_type:
            assert_model_matches(NESTED_MODELS[name], record)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
def test_every_schema_carries_the_envelope(version: Any) -> None:
    names = [f["name"] for f in version.raw["fields"]]
    assert names[: len(ENVELOPE)] == ENVELOPE
    by_name = {f["name"]: f for f in version.raw["fields"]}
    assert by_name["event_type"]["default"] == version.event_type
    assert by_name["schema_version"]["default"] == version.version


@pytest.mark.parametrize("event_type", sorted(EVENT_TYPES))
def test_golden_bytes_of_newest_schema(event_type: str) -> None:
    """The encoding of every event type is pinned: a change to the bytes is a contract change."""
    codec = default_codec()
    event = example_events()[event_type]
    path = GOLDEN / f"{event_type}.v{codec.newest(event_type).version}.hex"
    encoded = codec.encode(event)
    if os.environ.get("SHAPING_UPDATE_GOLDEN") == "1" and not path.exists():
        path.write_text(encoded.hex() + "\n")
    assert encoded.hex() == path.read_text().strip()
    assert codec.decode(encoded) == event


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
def test_current_schemas_read_every_committed_version(version: Any) -> None:
    """Data written with any committed schema version decodes with the newest one: fields the
    old writer lacked take their defaults, every other value survives."""
    codec = default_codec()
    golden = bytes.fromhex((GOLDEN / f"{version.event_type}.v{version.version}.hex").read_text())
    assert golden[2:10] == version.fingerprint
    decoded = codec.decode(golden).model_dump()
    example = example_events()[version.event_type]
    written = {f["name"] for f in version.raw["fields"]}
    for name, value in example.model_dump().items():
        if name == "schema_version":
            assert decoded[name] == version.version
        elif name in written:
            assert decoded[name] == value, name
        else:
            default = (
                EVENT_TYPES[version.event_type]
                .model_fields[name]
                .get_default(call_default_factory=True)
            )
            assert decoded[name] == default, name


def test_newer_versions_only_add_fields_with_defaults() -> None:
    """The evolution rule that makes N read N-1: nothing removed, renamed or retyped."""
    by_type: dict[str, list[Any]] = {}
    for version in VERSIONS:
        by_type.setdefault(version.event_type, []).append(version)
    for versions in by_type.values():
        for old, new in itertools.pairwise(versions):
            old_fields = {f["name"]: f for f in old.raw["fields"]}
            new_fields = {f["name"]: f for f in new.raw["fields"]}
            assert set(old_fields) <= set(new_fields)
            for name, field in new_fields.items():
                if name not in old_fields:
                    assert "default" in field, f"{new.event_type} v{new.version} adds {name}"
                elif name != "schema_version":
                    assert field["type"] == old_fields[name]["type"], name


def test_old_writer_reads_as_new_model_with_defaults() -> None:
    """A rig still on TrialCompleted v1 keeps working."""
    v1 = next(v for v in VERSIONS if v.event_type == "TrialCompleted" and v.version == 1)
    record = {
        "event_id": "e1",
        "event_type": "TrialCompleted",
        "schema_version": 1,
        "mouse_id": "M1",
        "rig_id": None,
        "session_id": "s1",
        "occurred_at": 1_700_000_000_000,
        "causation_id": None,
        "trial_index": 3,
        "outcome": "miss",
        "target_side": None,
        "response_side": None,
        "reaction_time_s": None,
        "reward_volume_ul": 0.0,
    }
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, v1.parsed, record)
    event = default_codec().decode(MAGIC + v1.fingerprint + buf.getvalue())
    assert isinstance(event, TrialCompleted)
    assert (event.trial_index, event.correction_trial, event.trial_parameters) == (3, False, {})


@pytest.mark.parametrize(
    ("data", "kind", "words"),
    [
        (None, "undecodable", "empty"),
        (b"", "undecodable", "single-object"),
        (b"\x00garbage-bytes", "undecodable", "single-object"),
        (MAGIC + b"\x01" * 8 + b"\x02", "undecodable", "fingerprint"),
    ],
)
def test_bad_bytes_raise_a_clear_error(data: bytes | None, kind: str, words: str) -> None:
    with pytest.raises(SerializationError) as caught:
        default_codec().decode(data)
    assert caught.value.kind == kind
    assert words in str(caught.value)


def test_truncated_body_is_undecodable() -> None:
    encoded = default_codec().encode(example_events()["SessionEnded"])
    with pytest.raises(SerializationError) as caught:
        default_codec().decode(encoded[:-6])
    assert caught.value.kind == "undecodable"


@pytest.mark.parametrize("name", sorted(example_events()))
def test_a_body_cut_anywhere_is_refused_in_words_a_person_can_read(name: str) -> None:
    """The reason names the event type and what was missing, never a Python object's repr
    (fastavro says "cannot read double from <_io.BytesIO object at 0x...>")."""
    encoded = default_codec().encode(example_events()[name])
    for cut in range(1, len(encoded)):
        try:
            default_codec().decode(encoded[:cut])
        except SerializationError as refused:
            assert " object at 0x" not in str(refused), str(refused)
            assert "<_io." not in str(refused), str(refused)


def test_schema_valid_record_breaking_the_model_is_invalid() -> None:
    """Avro cannot say that an outcome is one of three words; the model can."""
    codec = EventCodec()
    newest = codec.newest("TrialCompleted")
    record = example_events()["TrialCompleted"].model_dump()
    record["outcome"] = "maybe"
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, newest.parsed, record)
    with pytest.raises(SerializationError) as caught:
        codec.decode(MAGIC + newest.fingerprint + buf.getvalue())
    assert caught.value.kind == "invalid"
    assert "outcome" in str(caught.value)


def test_events_are_immutable_and_typed() -> None:
    event = example_events()["SessionEnded"]
    with pytest.raises(Exception):  # noqa: B017 - pydantic raises its own ValidationError
        event.n_trials = 3  # type: ignore[misc]
    assert isinstance(event, Event)
    assert event.event_type == "SessionEnded"


def _golden(event_type: str, version: int) -> bytes:
    return bytes.fromhex((GOLDEN / f"{event_type}.v{version}.hex").read_text())


def test_session_started_v3_reads_v2_data_as_not_stale_and_not_measured() -> None:
    """A rig still writing SessionStarted v2 (before the stale-assignment policy) is read as
    having run its assignment as current, with the wait unknown."""
    event = default_codec().decode(_golden("SessionStarted", 2))
    assert event.schema_version == 2
    assert isinstance(event, SessionStarted)
    assert (event.assignment_stale, event.assignment_wait_s, event.assignment_stale_reason) == (
        False,
        None,
        None,
    )
    assert event.assignment_id == example_events()["SessionStarted"].assignment_id


def test_session_started_v3_carries_a_stale_assignment_on_the_wire() -> None:
    stale = example_events()["SessionStarted"].model_copy(
        update={
            "assignment_stale": True,
            "assignment_wait_s": 12.5,
            "assignment_stale_reason": "no decision on M042-20260301T0930 after 12.5 s",
        }
    )
    codec = default_codec()
    encoded = codec.encode(stale)
    assert encoded[2:10] == codec.newest("SessionStarted").fingerprint
    assert codec.decode(encoded) == stale


def test_a_codec_without_the_newest_schema_is_an_older_release() -> None:
    """``EventCodec(versions=...)`` stands for a release that lacks a schema version: it reads
    what it knows and rejects data written with the version it lacks as undecodable (unknown
    fingerprint), which is what an old rig does with a newer assignment."""
    older = EventCodec(
        v for v in ALL_VERSIONS if not (v.event_type == "AssignmentIssued" and v.version >= 2)
    )
    assert older.newest("AssignmentIssued").version == 1
    assert older.decode(_golden("AssignmentIssued", 1)).event_type == "AssignmentIssued"
    with pytest.raises(SerializationError) as caught:
        older.decode(_golden("AssignmentIssued", 2))
    assert caught.value.kind == "undecodable"
    assert "unknown writer schema fingerprint" in str(caught.value)
    with pytest.raises(SerializationError, match="no Avro schema for event types"):
        EventCodec(v for v in ALL_VERSIONS if v.event_type != "SessionEnded")


RIG_WRITTEN = ("SessionStarted", "TrialCompleted", "SessionEnded", "MovementDetected")


@pytest.mark.parametrize(
    "version",
    [v for v in VERSIONS if v.event_type in RIG_WRITTEN],
    ids=lambda v: f"{v.event_type}.v{v.version}",
)
def test_the_current_service_reads_what_every_older_rig_wrote(version: Any) -> None:
    """Services upgrade first (schemas/README.md): every version a rig of any release writes
    decodes with the current codec, the fields added since taking their defaults."""
    event = default_codec().decode(_golden(version.event_type, version.version))
    assert event.schema_version == version.version
    assert version.version <= type(event).SCHEMA_VERSION


# -- operators' commands ----------------------------------------------------------------------


def test_every_schema_file_is_an_event_or_a_command() -> None:
    assert {v.event_type for v in ALL_VERSIONS} == set(EVENT_TYPES) | set(COMMAND_TYPES)
    assert not set(EVENT_TYPES) & set(COMMAND_TYPES)


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_command_model_mirrors_newest_schema(command_type: str) -> None:
    newest = NEWEST[command_type]
    model = COMMAND_TYPES[command_type]
    assert newest.raw["name"] == command_type
    assert newest.raw["namespace"] == "org.shaping.commands"
    assert newest.version == model.SCHEMA_VERSION
    assert_model_matches(model, newest.raw)


@pytest.mark.parametrize("version", COMMAND_VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
def test_every_command_schema_carries_the_command_envelope(version: Any) -> None:
    names = [f["name"] for f in version.raw["fields"]]
    assert names[: len(COMMAND_ENVELOPE)] == COMMAND_ENVELOPE
    by_name = {f["name"]: f for f in version.raw["fields"]}
    assert by_name["command_type"]["default"] == version.event_type
    assert by_name["schema_version"]["default"] == version.version


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_golden_bytes_of_newest_command_schema(command_type: str) -> None:
    """The encoding of every command type is pinned, like the events'."""
    codec = default_codec()
    command = example_commands()[command_type]
    path = GOLDEN / f"{command_type}.v{codec.newest(command_type).version}.hex"
    encoded = codec.encode(command)
    if os.environ.get("SHAPING_UPDATE_GOLDEN") == "1" and not path.exists():
        path.write_text(encoded.hex() + "\n")
    assert encoded.hex() == path.read_text().strip()
    assert codec.decode_command(encoded) == command
    assert codec.decode_message(encoded) == command


@pytest.mark.parametrize("version", COMMAND_VERSIONS, ids=lambda v: f"{v.event_type}.v{v.version}")
def test_current_schemas_read_every_committed_command_version(version: Any) -> None:
    golden = _golden(version.event_type, version.version)
    assert golden[2:10] == version.fingerprint
    decoded = default_codec().decode_command(golden)
    assert decoded.model_dump() == {
        **example_commands()[version.event_type].model_dump(),
        "schema_version": version.version,
    }


def test_newer_command_versions_only_add_fields_with_defaults() -> None:
    by_type: dict[str, list[Any]] = {}
    for version in COMMAND_VERSIONS:
        by_type.setdefault(version.event_type, []).append(version)
    for versions in by_type.values():
        for old, new in itertools.pairwise(versions):
            old_fields = {f["name"]: f for f in old.raw["fields"]}
            for field in new.raw["fields"]:
                if field["name"] not in old_fields:
                    assert "default" in field, f"{new.event_type} v{new.version} adds {field}"


@pytest.mark.parametrize("command_type", sorted(COMMAND_TYPES))
def test_a_command_is_answered_by_its_past_tense_event(command_type: str) -> None:
    """The answer is a value of the command: the event it names, its id derived from the
    command's, dated when it was asked, caused by it and naming who asked."""
    command = example_commands()[command_type]
    answer = command.answer()
    assert answer.event_type == ANSWERS[command_type]
    assert answer.event_id == command.answer_id == answer_event_id("M042", command.command_id)
    assert command.answer() == answer  # deterministic
    assert (answer.mouse_id, answer.occurred_at, answer.causation_id) == (
        "M042",
        command.requested_at,
        command.command_id,
    )
    who = {k: v for k, v in answer.model_dump().items() if k.endswith("_by")}
    assert list(who.values()) == ["ada"]
    request = command.model_dump(exclude={"command_id", "command_type", "schema_version"})
    request = {k: v for k, v in request.items() if k not in ("requested_by", "requested_at")}
    dumped = answer.model_dump()
    assert {k: dumped[k] for k in request} == request  # the request's fields, mirrored


def test_answer_ids_differ_by_mouse_and_command() -> None:
    ids = {answer_event_id(m, c) for m in ("M1", "M2") for c in ("c1", "c2")}
    assert len(ids) == 4


def test_events_and_commands_do_not_pass_for_each_other() -> None:
    """A command on the events topic, or an event on the commands topic, is invalid, with a
    reason that says where it belongs."""
    codec = default_codec()
    command = codec.encode(example_commands()["EjectMouse"])
    event = codec.encode(example_events()["MouseEjected"])
    with pytest.raises(SerializationError, match="EjectMouse is a command, not an event") as c:
        codec.decode(command)
    assert c.value.kind == "invalid"
    with pytest.raises(SerializationError, match="MouseEjected is an event, not a command") as e:
        codec.decode_command(event)
    assert e.value.kind == "invalid"
    assert isinstance(codec.decode_message(command), Command)
    assert isinstance(codec.decode_message(event), Event)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"requested_by": ""}, "requested_by"),
        ({"mouse_id": "M 1"}, "mouse_id"),
        ({"command_id": ""}, "command_id"),
        ({"to_stage": "bad;stage"}, "to_stage"),
        ({"reason": ""}, "reason"),
        ({"command_type": "EjectMouse"}, "does not match schema"),
    ],
)
def test_a_schema_valid_command_breaking_the_model_is_invalid(
    change: dict[str, Any], words: str
) -> None:
    codec = default_codec()
    newest = codec.newest("OverrideStage")
    record = {**example_commands()["OverrideStage"].model_dump(), **change}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, newest.parsed, record)
    with pytest.raises(SerializationError) as caught:
        codec.decode_command(MAGIC + newest.fingerprint + buf.getvalue())
    assert caught.value.kind == "invalid"
    assert words in str(caught.value)


def test_a_codec_needs_the_command_schemas() -> None:
    with pytest.raises(SerializationError, match="no Avro schema for command types"):
        EventCodec(v for v in ALL_VERSIONS if v.event_type != "EjectMouse")
