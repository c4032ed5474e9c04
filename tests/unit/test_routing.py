"""The contract's routing table (schemas/topics.py) is the one every path follows."""

from __future__ import annotations

from shaping.schemas.events import EVENT_TYPES
from shaping.schemas.topics import OUTPUT_KINDS, PROJECTED_KINDS, ROUTES, TopicNames
from shaping.services.processor.step import INPUT_TYPES, OUTPUT_TOPIC
from shaping.services.projector.store import _NOT_PROJECTED, SqlProjectionStore


def test_the_routing_table_names_only_event_types_of_the_contract() -> None:
    for kind, names in ROUTES.items():
        assert names, kind
        assert set(names) <= set(EVENT_TYPES), kind


def test_the_processor_takes_and_sends_what_the_table_says() -> None:
    assert {cls.__name__ for cls in INPUT_TYPES} == set(ROUTES["events"])
    assert dict(OUTPUT_TOPIC) == dict(OUTPUT_KINDS)
    assert set(OUTPUT_KINDS.values()) | {"accepted"} == set(PROJECTED_KINDS)


def test_the_projector_handles_every_type_routed_to_it() -> None:
    store = SqlProjectionStore("sqlite://")
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
    assert sorted(kinds.values()) == sorted(ROUTES)
    assert set(names.kinds(PROJECTED_KINDS)) == set(names.all()) - {"lab.events", "lab.curricula"}
