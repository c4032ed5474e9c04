"""Which changelog partitions the processor reads again when table recovery stalls."""

from __future__ import annotations

from faust.types import TP

from shaping.services.processor.app import STALLED_AFTER_S, stalled_partitions

A, B = TP("p-mouse_state-changelog", 2), TP("p-mouse_state-changelog", 3)
START = 1000.0


def test_nothing_stalls_before_the_time_is_up() -> None:
    assert stalled_partitions({A, B}, {}, START, {}, START + STALLED_AFTER_S - 0.1) == set()


def test_a_partition_silent_since_the_start_stalls() -> None:
    assert stalled_partitions({A, B}, {}, START, {}, START + STALLED_AFTER_S) == {A, B}


def test_a_partition_that_gave_records_lately_does_not() -> None:
    later = START + STALLED_AFTER_S + 1.0
    received = {A: later - 1.0, B: START + 0.5}
    assert stalled_partitions({A, B}, received, START, {}, later) == {B}


def test_a_partition_read_again_gets_the_whole_time_before_the_next_try() -> None:
    kicked = {A: START + STALLED_AFTER_S}
    now = START + STALLED_AFTER_S + 5.0
    assert stalled_partitions({A}, {}, START, kicked, now) == set()
    assert stalled_partitions({A}, {}, START, kicked, now + STALLED_AFTER_S) == {A}


def test_only_partitions_with_records_left_and_a_started_recovery_count() -> None:
    now = START + 10 * STALLED_AFTER_S
    assert stalled_partitions(set(), {}, START, {}, now) == set()
    assert stalled_partitions({A}, {}, None, {}, now) == set()
