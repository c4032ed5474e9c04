"""The faust handler's answer to a curriculum version it does not know yet.

A lookup in a :class:`FollowingCatalog` never does I/O: it misses and remembers the miss. The
handler then runs the catch-up (the curricula topic read to its end) off the event loop, once,
and processes the same message again. Here the handler runs for real on small stand-ins for
faust's table, topics and producer (the real ones need a broker: tests/curricula covers
reading the topic itself).
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, get_args

import yaml

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import AssignmentIssued, Event, EventRejected
from shaping.schemas.topics import TopicKind
from shaping.services.adapters.curricula_topic import FollowingCatalog
from shaping.services.curricula.catalog import default_catalog
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain import TrainingCore
from shaping.services.processor.app import FaustProcessor
from shaping.services.processor.step import ProcessorStep
from tests.support.scripts import REPO
from tests.support.story import enrolled

NEW = (
    (REPO / "curricula" / "basic-shaping.yaml")
    .read_text()
    .replace("version: 0.1.0", "version: 0.2.0")
)


class _Topic:
    def __init__(self, sent: list[bytes]) -> None:
        self.sent = sent

    async def send(self, key: bytes, value: bytes, headers: Any) -> asyncio.Future[None]:
        self.sent.append(value)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


@dataclass
class _CatchUp:
    """Stands in for CurriculaFollower.catch_up: offers the versions the topic would hold."""

    catalog: FollowingCatalog
    on_topic: list[Any]
    threads: list[str] = field(default_factory=list)

    def __call__(self) -> None:
        self.threads.append(threading.current_thread().name)
        for engine in self.on_topic:
            self.catalog.offer(engine)


def _handler(on_topic: list[Any]) -> tuple[FaustProcessor, _CatchUp, list[bytes]]:
    catalog = FollowingCatalog.copy_of(default_catalog([]))
    sent: list[bytes] = []
    catch_up = _CatchUp(catalog, on_topic)
    app = SimpleNamespace(producer=SimpleNamespace(buffer=SimpleNamespace(size=0)))
    step = ProcessorStep(TrainingCore(catalog), default_codec())
    outputs: dict[TopicKind, Any] = {kind: _Topic(sent) for kind in get_args(TopicKind)}
    handler = FaustProcessor(app, step, {}, outputs, catch_up=catch_up)  # type: ignore[arg-type]
    return handler, catch_up, sent


def _message(event: Event, offset: int = 0) -> Any:
    message = SimpleNamespace(
        topic="shaping.events", partition=0, offset=offset, timestamp=None, tp=None
    )
    return SimpleNamespace(
        message=message, key=encode_key(event.mouse_id), value=default_codec().encode(event)
    )


def _decoded(sent: list[bytes]) -> list[Event]:
    return [default_codec().decode(value) for value in sent]


def test_a_version_published_a_moment_ago_is_read_off_the_loop_and_the_message_decided_again() -> (
    None
):
    newer = compile_curriculum(yaml.safe_load(NEW))
    handler, catch_up, sent = _handler([newer])
    enrolment = enrolled("M1", curriculum_version="0.2.0")

    result = asyncio.run(handler.handle(_message(enrolment)))

    assert result.outcome == "accepted", result
    [assignment] = [e for e in _decoded(sent) if isinstance(e, AssignmentIssued)]
    assert assignment.curriculum_version == "0.2.0"
    assert not [e for e in _decoded(sent) if isinstance(e, EventRejected)]
    # once, and not on the event loop's thread
    assert len(catch_up.threads) == 1
    assert catch_up.threads[0] != threading.main_thread().name
    assert result.state is not None and result.state.curriculum_version == "0.2.0"
    assert handler.table[encode_key("M1")]  # the state was stored


def test_a_version_nobody_published_is_a_dead_letter_after_one_catch_up_and_no_loop() -> None:
    handler, catch_up, sent = _handler([])
    enrolment = enrolled("M2", curriculum_version="9.9.9")

    result = asyncio.run(handler.handle(_message(enrolment)))

    [rejection] = [e for e in _decoded(sent) if isinstance(e, EventRejected)]
    assert "9.9.9" in rejection.reason
    assert not [e for e in _decoded(sent) if isinstance(e, AssignmentIssued)]
    assert len(catch_up.threads) == 1
    assert result.state is None or result.state.mouse_id == "M2"

    # The miss was taken: a following message for a known version reads nothing.
    known = enrolled("M3")
    asyncio.run(handler.handle(_message(known, offset=1)))
    assert len(catch_up.threads) == 1
