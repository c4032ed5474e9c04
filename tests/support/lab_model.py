"""A model of a lab's days for tests: random lab actions (enrolments, sessions on time and late,
re-sent events, redeliveries after a crash, overrides, ejections, adjustments, a published
version and migrations, garbage and mutated messages, second session ends, reused ids) run
through the embedded runtime, and the fold of what it accepted run through a fresh one.

Used by tests/property/test_lab_model.py (embedded) and
tests/integration/test_lab_model_kafka.py (a real processor and PostgreSQL).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    Event,
    MouseEjected,
    ParametersAdjusted,
    SessionEnded,
    StageOverridden,
)
from shaping.services.curricula.catalog import default_catalog, shipped_curricula
from shaping.services.curricula.migrate import published_event
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.processor.step import ProcessorStep, StepResult
from shaping.services.projector.store import SqlProjectionStore
from tests.support.story import T0, enrolled, next_id, session, trials
from tests.support.wiring import embedded_runtime, sql_store

CODEC = default_codec()
MICE = ("M1", "M2", "M3")
STAGES = ("s1_habituation", "s2_training", "s3_full_task", "s9_unknown")


class RecordingStep(ProcessorStep):
    """The processor's step, remembering each input it saw and what became of it."""

    def __init__(self, base: ProcessorStep) -> None:
        super().__init__(base.core, base.codec, base.service, base.clock)
        self.seen: list[tuple[bytes | None, bytes | None, str]] = []

    def process(self, state: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> StepResult:
        result = super().process(state, key, value, *args, **kwargs)
        self.seen.append((key, value, result.outcome))
        return result


@dataclass
class Lab:
    """What the generator needs to know to make the next action plausible (or not)."""

    runtime: EmbeddedRuntime
    step: RecordingStep
    day: dict[str, int] = field(default_factory=dict)
    sessions: list[list[Event]] = field(default_factory=list)
    sent: list[tuple[bytes, bytes]] = field(default_factory=list)
    pin: str | None = None  # the version enrolments name (None: the newest the processor knows)

    def send(self, events: list[Event]) -> None:
        for event in events:
            key, value = encode_key(event.mouse_id), CODEC.encode(event)
            self.sent.append((key, value))
            self.runtime.publish_raw(key, value)

    def raw(self, key: bytes, value: bytes) -> None:
        self.sent.append((key, value))
        self.runtime.publish_raw(key, value)


ACTION = st.one_of(
    st.tuples(st.just("enrol"), st.sampled_from(MICE)),
    st.tuples(
        st.just("session"),
        st.sampled_from(MICE),
        st.integers(0, 120),
        st.integers(0, 60),
        st.sampled_from([1, 1, 1, 2, -1, -3]),  # days after the mouse's last; negative: late
        st.sampled_from(STAGES[:3]),
    ),
    st.tuples(st.just("partial_session"), st.sampled_from(MICE), st.integers(1, 30)),
    st.tuples(st.just("resend"), st.integers(0, 10_000)),
    st.tuples(st.just("redeliver"), st.integers(1, 400)),
    st.tuples(st.just("override"), st.sampled_from(MICE), st.sampled_from(STAGES)),
    st.tuples(st.just("eject"), st.sampled_from(MICE)),
    st.tuples(st.just("adjust"), st.sampled_from(MICE), st.integers(-5, 900)),
    st.tuples(st.just("publish_and_migrate"), st.sampled_from(MICE), st.sampled_from(STAGES[:3])),
    st.tuples(st.just("garbage"), st.binary(max_size=64)),
    st.tuples(st.just("mutate"), st.integers(0, 10_000), st.integers(0, 400), st.integers(0, 255)),
    st.tuples(st.just("second_end"), st.integers(0, 1000)),
    st.tuples(st.just("reuse_id"), st.integers(0, 10_000)),
)


def act(lab: Lab, action: tuple[Any, ...]) -> None:
    kind = action[0]
    if kind == "enrol":
        pin = {"curriculum_version": lab.pin} if lab.pin else {}
        lab.send([enrolled(action[1], **pin).model_copy(update={"occurred_at": T0})])
    elif kind == "session":
        _, mouse, correct, incorrect, step, stage = action
        day = lab.day.get(mouse, 0) + step
        if step > 0:
            lab.day[mouse] = day
        events = session(mouse, f"{mouse}-{next_id()}", trials(correct, incorrect), stage, day)
        lab.sessions.append(events)
        lab.send(events)
    elif kind == "partial_session":
        # A session whose end never came (the rig died): its trials stay open.
        _, mouse, n = action
        day = lab.day.get(mouse, 0) + 1
        lab.day[mouse] = day
        events = session(mouse, f"{mouse}-{next_id()}", trials(n), day=day)[:-1]
        lab.send(events)
    elif kind == "resend" and lab.sent:
        lab.raw(*lab.sent[action[1] % len(lab.sent)])
    elif kind == "redeliver":
        # The processor died before committing: the last inputs come again, same offsets.
        runtime = lab.runtime
        runtime._processed = max(0, runtime._processed - action[1])
        runtime.process_pending()
        runtime.project_pending()
    elif kind == "override":
        _, mouse, stage = action
        at = T0 + timedelta(days=lab.day.get(mouse, 0), hours=20)
        lab.send([StageOverridden(
            event_id=next_id(), mouse_id=mouse, occurred_at=at, to_stage=stage,
            reason="lost weight", overridden_by="ada",
        )])  # fmt: skip
    elif kind == "eject":
        at = T0 + timedelta(days=lab.day.get(action[1], 0), hours=21)
        lab.send([MouseEjected(
            event_id=next_id(), mouse_id=action[1], occurred_at=at, reason="end", ejected_by="ada",
        )])  # fmt: skip
    elif kind == "adjust":
        _, mouse, max_trials = action
        at = T0 + timedelta(days=lab.day.get(mouse, 0), hours=22)
        lab.send([ParametersAdjusted(
            event_id=next_id(), mouse_id=mouse, occurred_at=at,
            adjustments={"max_trials": max_trials}, reason="tires early", adjusted_by="ada",
        )])  # fmt: skip
    elif kind == "publish_and_migrate":
        _, mouse, stage = action
        old = next(c for c in shipped_curricula() if c.name == "basic-shaping")
        content = {**old.content(), "version": "0.1.1", "description": "patched wording"}
        new = compile_curriculum(json.loads(json.dumps(content)), file="<test>")
        at = T0 + timedelta(days=lab.day.get(mouse, 0), hours=23)
        published = published_event(new, old, at).model_copy(update={"event_id": next_id()})
        from shaping.schemas.events import MouseMigrated

        lab.send([published, MouseMigrated(
            event_id=next_id(), mouse_id=mouse, occurred_at=at, curriculum_name=new.name,
            from_version=old.version, to_version=new.version, from_stage=stage, to_stage=stage,
            content_hash=new.content_hash, migrated_by="ada",
        )])  # fmt: skip
    elif kind == "garbage":
        lab.raw(b"M1", action[1])
    elif kind == "mutate" and lab.sent:
        key, value = lab.sent[action[1] % len(lab.sent)]
        data = bytearray(value)
        if data:  # a garbage message sent before may be empty: nothing to flip, send it again
            data[action[2] % len(data)] = action[3]
        lab.raw(key, bytes(data))
    elif kind == "second_end" and lab.sessions:
        events = lab.sessions[action[1] % len(lab.sessions)]
        end = events[-1]
        assert isinstance(end, SessionEnded)
        lab.send([end.model_copy(update={"event_id": next_id(), "end_reason": "aborted"})])
    elif kind == "reuse_id" and lab.sessions:
        events = lab.sessions[action[1] % len(lab.sessions)]
        lab.send([events[0].model_copy(update={"rig_id": "rig-9"})])


def tables(store: SqlProjectionStore) -> dict[str, list[dict[str, Any]]]:
    """The tables, without the record of what was refused (only the lab that sent the
    refused input has it)."""
    snapshot = store.snapshot()
    snapshot.pop("rejected_events")
    snapshot["interventions"] = [
        row for row in snapshot["interventions"] if row["refused_reason"] is None
    ]
    return snapshot


@dataclass
class History:
    """A lab history run on the embedded path, and the fold of what it accepted."""

    lab: Lab
    lab_store: SqlProjectionStore
    fold: EmbeddedRuntime
    fold_step: RecordingStep
    fold_store: SqlProjectionStore

    def accepted(self) -> list[tuple[bytes | None, bytes | None]]:
        return [(k, v) for k, v, outcome in self.lab.step.seen if outcome == "accepted"]

    def close(self) -> None:
        self.lab_store.close()
        self.fold_store.close()


def run_history(actions: list[tuple[Any, ...]], folder: Path, pin: str | None = None) -> History:
    """Runs the actions (after enrolling two mice) through a recording embedded runtime, then
    feeds only the inputs it accepted, in order, to a fresh one."""
    lab_store = sql_store(f"sqlite:///{folder / 'lab.sqlite'}")
    runtime = embedded_runtime(lab_store, catalog=default_catalog())
    step = RecordingStep(runtime.step)
    runtime.step = step
    lab = Lab(runtime, step, pin=pin)
    for mouse in MICE[:2]:
        act(lab, ("enrol", mouse))
    for action in actions:
        act(lab, action)
    fold_store = sql_store(f"sqlite:///{folder / 'fold.sqlite'}")
    fold = embedded_runtime(fold_store, catalog=default_catalog())
    fold_step = RecordingStep(fold.step)
    fold.step = fold_step
    history = History(lab, lab_store, fold, fold_step, fold_store)
    for key, value in history.accepted():
        fold.publish_raw(key, value)  # type: ignore[arg-type]
    return history
