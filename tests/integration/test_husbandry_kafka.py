"""Husbandry end to end: real Kafka, the faust processor in its own process, the projector on a
real PostgreSQL, and ``shaping weigh``, ``restrict start``, ``water`` and ``welfare``: each
record is a command the processor answers on the events topic (or refuses on the dead-letter
topic), and the day's welfare is read from the status tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shaping.schemas.topics import TopicNames
from tests.support.processes import wait_until
from tests.support.processor_stack import Stack, fresh_database
from tests.support.story import enrolled

pytestmark = [pytest.mark.kafka, pytest.mark.postgres]

WAIT_S = 120.0


@pytest.fixture
def stack(
    kafka_bootstrap: str, kafka_topics: TopicNames, postgres_url: str, tmp_path: Path
) -> Iterator[Stack]:
    running = Stack(kafka_bootstrap, kafka_topics, fresh_database(postgres_url), tmp_path)
    try:
        yield running
    finally:
        running.close()


def cells(output: str, mouse: str) -> list[str]:
    [row] = [line for line in output.splitlines() if f" {mouse} " in line]
    return [c.strip() for c in row.split("│") if c.strip()]


def test_weight_and_water_through_kafka_and_the_welfare_table(stack: Stack) -> None:
    stack.publish([enrolled("H1")])
    stack.wait_for_status("H1", last_reason="enrolled")

    code, out = stack.shaping("weigh", "H1", "25", "--scale", "scale-1")
    assert code == 0 and "weight of H1 recorded: 25 g" in out, out + stack.tail()
    code, out = stack.shaping("restrict", "start", "H1", "--implant", "2")
    assert code == 0 and "reference 25 g (measured), implant 2 g" in out, out + stack.tail()

    # A jump of 18.4 % is refused by the processor (the policy's 10 %), unless confirmed.
    code, out = stack.shaping("weigh", "H1", "20.4")
    flat = " ".join(out.split())
    assert code == 1 and "18.4 % below the last weight (25 g" in flat, out
    assert "(command RecordWeight " in flat
    code, out = stack.shaping("weigh", "H1", "20.4", "--confirm")
    assert code == 0, out
    code, out = stack.shaping("water", "H1", "0.3", "--kind", "earned")
    assert code == 0 and "0.3 mL water (earned)" in out, out

    # Water for a mouse nobody enrolled: refused before sending, with the closest id.
    code, out = stack.shaping("water", "H11", "1")
    assert code == 2 and "did you mean H1" in out, out

    def projected() -> bool:
        tables = stack.tables()
        return len(tables["husbandry_weights"]) == 2 and len(tables["husbandry_water"]) == 1

    wait_until(projected, WAIT_S, "the weights and water in the status tables")
    tables = stack.tables()
    assert sorted(r["grams"] for r in tables["husbandry_weights"]) == [20.4, 25.0]
    [episode] = tables["husbandry_restrictions"]
    assert (episode["reference_grams"], episode["implant_grams"]) == (25.0, 2.0)
    refused = [r for r in tables["rejected_events"] if "RecordWeight" in r["reason"]]
    assert len(refused) == 1 and refused[0]["error_kind"] == "impossible"

    # 18.4 g net of 23 g expected: 80 %, warning; 0.05 mL/g x 18.4 g = 0.92 mL, at least 1 mL;
    # 0.3 mL earned: 0.7 mL still due, a supplement of 1 mL.
    code, out = stack.shaping("welfare", "H1")
    assert code == 0, out
    row = cells(out, "H1")
    assert row[1] == "20.4" and row[3] == "25.0" and row[4] == "80.0" and row[5] == "warning"
    assert row[7:10] == ["1.00", "0.70", "1.00"], row
