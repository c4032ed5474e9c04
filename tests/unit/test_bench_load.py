"""The latency bench's load: rigs' event streams merged as rigs running at once send them,
their sessions staggered (bench/latency.py, :func:`staggered`)."""

from __future__ import annotations

from bench.latency import staggered


def test_every_stream_keeps_its_order_and_loses_nothing() -> None:
    streams = [[(rig, n) for n in range(7)] for rig in range(5)]
    merged = staggered(streams, spread=7)
    assert sorted(merged) == sorted(e for s in streams for e in s)
    for rig in range(5):
        assert [e for e in merged if e[0] == rig] == streams[rig]


def test_stream_i_of_n_joins_i_times_spread_over_n_turns_late() -> None:
    streams = [[(rig, n) for n in range(10)] for rig in range(4)]
    merged = staggered(streams, spread=8)
    # Turn t holds one event of every stream that has joined and not ended.
    first = {rig: merged.index((rig, 0)) for rig in range(4)}
    # Streams join at turns 0, 2, 4 and 6: after 2 events of stream 0 (turns 0 and 1), then
    # after 2 more turns of two streams, then of three.
    assert first == {0: 0, 1: 3, 2: 8, 3: 15}
    assert merged[-2:] == [(3, 8), (3, 9)]


def test_no_spread_is_a_plain_round_robin() -> None:
    assert staggered([["a1", "a2"], ["b1"], ["c1", "c2"]], spread=0) == [
        "a1",
        "b1",
        "c1",
        "a2",
        "c2",
    ]
