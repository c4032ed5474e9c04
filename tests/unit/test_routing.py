"""The contract's routing table (schemas/topics.py) is the one every path follows."""

from __future__ import annotations

from shaping.schemas.commands import ANSWERS, COMMAND_TYPES
from shaping.schemas.events import EVENT_TYPES
from shaping.schemas.topics import (
    ANSWER_KIND,
    COMMAND_ANSWERS,
    OUTPUT_KINDS,
    PROJECTED_KINDS,
    ROUTES,
    TopicNames,
    topic_specs,
)
from shaping.services.processor.step import INPUT_TYPES, OUTPUT_TOPIC
from shaping.services.projector.store import _NOT_PROJECTED
from tests.support.wiring import sql_store


def test_the_routing_table_names_only_event_types_of_the_contract() -> None:
    for kind, names in ROUTES.items():
        assert names, kind
        if kind == "commands":
            assert set(names) == set(COMMAND_TYPES)
        else:
            assert set(names) <= set(EVENT_TYPES), kind


def test_the_processor_takes_and_sends_what_the_table_says() -> None:
    assert {cls.__name__ for cls in INPUT_TYPES} == set(ROUTES["events"])
    assert dict(OUTPUT_TOPIC) == dict(OUTPUT_KINDS)
    # The projector reads the processor's outputs, and the alerts (the alerts service's).
    assert set(OUTPUT_KINDS.values()) | {"accepted", "alerts"} == set(PROJECTED_KINDS)


def test_every_command_is_answered_by_an_event_of_the_events_topic() -> None:
    """The answer to a command is appended to the events topic and folded from there, so it
    must be an input the processor takes; it is republished on ``accepted`` like any other."""
    assert ANSWER_KIND == "events"
    assert dict(COMMAND_ANSWERS) == ANSWERS
    assert set(COMMAND_ANSWERS) == set(ROUTES["commands"])
    for answer in COMMAND_ANSWERS.values():
        assert answer in ROUTES["events"] and answer in ROUTES["accepted"], answer
    assert "commands" not in PROJECTED_KINDS  # only the processor reads commands


def test_the_projector_handles_every_type_routed_to_it() -> None:
    store = sql_store("sqlite://")
    try:
        for kind in PROJECTED_KINDS:
            for name in ROUTES[kind]:
                cls = EVENT_TYPES[name]
                assert cls in store._handlers or cls in _NOT_PROJECTED, (kind, name)
    finally:
        store.close()


def test_topic_names_map_each_kind_under_the_prefix() -> None:
    names = TopicNames.with_prefix("lab")
    kinds = names.kinds()
    assert kinds["lab.dead-letter"] == "dead_letter"
    assert kinds["lab.commands"] == "commands"
    assert sorted(kinds.values()) == sorted(ROUTES)
    assert set(names.kinds(PROJECTED_KINDS)) == set(names.all()) - {
        "lab.events",
        "lab.curricula",
        "lab.commands",
    }


def test_names_built_by_hand_get_the_commands_topic_under_their_prefix() -> None:
    names = TopicNames(
        events="lab.events",
        decisions="lab.decisions",
        assignments="lab.assignments",
        dead_letter="lab.dead-letter",
        curricula="lab.curricula",
    )
    assert (names.accepted, names.commands) == ("lab.accepted", "lab.commands")


def test_the_commands_topic_is_laid_out_like_the_events_topic() -> None:
    """Same partitions (a mouse's commands are read where its state is), kept forever, dated
    by the broker."""
    specs = {spec.name: spec for spec in topic_specs(TopicNames.with_prefix("lab"), 6)}
    commands, events = specs["lab.commands"], specs["lab.events"]
    assert commands.partitions == events.partitions == 6
    assert commands.configs == events.configs
