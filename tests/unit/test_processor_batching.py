"""How the processor cuts its input stream into batches (``services.processor.app.batches``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from shaping.services.processor.app import batches


class Stream:
    """Stands in for a faust stream: ``events()`` yields the script's items in order; a number
    is a pause in seconds, an exception is raised where it stands."""

    def __init__(self, *script: Any) -> None:
        self.script = script
        self.read = 0

    async def events(self) -> AsyncIterator[Any]:
        for item in self.script:
            if isinstance(item, float):
                await asyncio.sleep(item)
            elif isinstance(item, BaseException):
                raise item
            else:
                self.read += 1
                yield item
        await asyncio.sleep(3600)  # a live stream never ends


async def take(stream: Stream, n: int, max_: int = 3, within: float = 0.5, idle: float = 0.05):
    out: list[list[Any]] = []
    source = batches(stream, max_, within, idle)  # type: ignore[arg-type]
    try:
        async for batch in source:
            out.append(batch)
            if len(out) == n:
                break
    finally:
        await source.aclose()
    return out


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 10))


def test_a_backlog_comes_in_full_batches_in_order() -> None:
    assert run(take(Stream(*range(7)), 3)) == [[0, 1, 2], [3, 4, 5], [6]]


def test_a_lone_message_is_not_held_back_once_the_stream_is_idle() -> None:
    # 1 and 2 come 0.2 s apart: past the idle time, so each is a batch of its own
    assert run(take(Stream(1, 0.2, 2), 2, max_=10, within=5.0)) == [[1], [2]]


def test_a_batch_ends_at_its_time_limit_even_while_messages_keep_coming() -> None:
    script = [x for i in range(12) for x in (i, 0.02)]
    batches_ = run(take(Stream(*script), 2, max_=100, within=0.09, idle=0.05))
    assert 1 < len(batches_[0]) < 12 and batches_[0] == list(range(len(batches_[0])))
    assert batches_[1][0] == len(batches_[0])


def test_reading_stays_at_most_one_batch_ahead() -> None:
    stream = Stream(*range(50))

    async def first_then_look() -> int:
        source = batches(stream, 5, 0.5, 0.05)  # type: ignore[arg-type]
        try:
            await source.__anext__()
            await asyncio.sleep(0.1)
            return stream.read
        finally:
            await source.aclose()

    assert run(first_then_look()) <= 5 + 5 + 1


def test_a_failure_comes_after_the_events_read_before_it() -> None:
    async def until_failure() -> list[list[Any]]:
        got: list[list[Any]] = []
        with pytest.raises(RuntimeError, match="broker gone"):
            async for batch in batches(
                Stream(1, 2, 0.1, RuntimeError("broker gone")),  # type: ignore[arg-type]
                10,
                1.0,
                0.05,
            ):
                got.append(batch)
        return got

    assert run(until_failure()) == [[1, 2]]


def test_an_idle_stream_gives_an_empty_batch_every_tick_when_asked_to() -> None:
    """The processor writes its deferred mice on an empty batch (test_processor_deferral.py):
    with ``tick``, a stream idle that long yields one; without it, none ever comes."""

    async def collect(tick: float | None) -> list[list[Any]]:
        got: list[list[Any]] = []
        source = batches(Stream(1, 0.35, 2), 10, 0.5, 0.02, tick=tick)  # type: ignore[arg-type]
        try:
            async for batch in source:
                got.append(batch)
                if batch == [2]:
                    break
        finally:
            await source.aclose()
        return got

    ticked = run(collect(0.1))
    assert ticked[0] == [1] and ticked[-1] == [2]
    assert 2 <= len(ticked) - 2 <= 4 and all(batch == [] for batch in ticked[1:-1])
    assert run(collect(None)) == [[1], [2]]


def test_a_batch_closes_as_soon_as_it_holds_a_message_a_rig_waits_for() -> None:
    """With ``closes``, the rest of the collection time is not waited for once such a message
    is in the batch; what was read by then still joins it."""

    async def collect(closes: Any) -> list[list[Any]]:
        got: list[list[Any]] = []
        source = batches(Stream(1, 2, "end", 0.05, 3), 10, 5.0, 0.3, closes=closes)  # type: ignore[arg-type]
        try:
            async for batch in source:
                got.append(batch)
                if 3 in batch:
                    break
        finally:
            await source.aclose()
        return got

    assert run(collect(lambda event: event == "end")) == [[1, 2, "end"], [3]]
    assert run(collect(None)) == [[1, 2, "end", 3]]


def test_only_a_trial_by_its_schema_fingerprint_lets_a_batch_keep_collecting() -> None:
    from shaping.schemas.codec import default_codec
    from shaping.services.processor.app import decides
    from tests.support.story import enrolled, session

    codec = default_codec()
    started, trial, *_, ended = session("M1", "s-1", ["correct"])

    def message(value: Any) -> Any:
        return type("Event", (), {"value": value})()

    assert not decides(message(codec.encode(trial)))
    for event in (started, ended, enrolled("M1")):
        assert decides(message(codec.encode(event)))
    for junk in (b"", b"\xc3\x01", b"\x00" * 64, None, codec.encode(trial)[:9]):
        assert decides(message(junk))
