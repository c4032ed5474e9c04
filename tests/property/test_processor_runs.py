"""The processor's batches fold each mouse's run of trials at once (``FaustProcessor._process``,
``ProcessorStep.admit`` and ``fold_trials``); that must give exactly what the step gives one
message at a time: the same outcome for every message, the same outputs in the same order, the
same state stored for every mouse.

Random logs of a few mice on two partitions, interleaved, cut into random batches: enrolments
on a curriculum judged at the session's end (basic-shaping) or after every trial
(reach-autopilot, whose decisions come in the middle of a run), sessions with their trials,
and what a rig or a network gets wrong: a trial sent twice, a trial from a rig the mouse is not
on, a trial of a session never started, bytes that are no event, an event under another mouse's
key. The one-message-at-a-time side is ``ProcessorStep.process`` with a dict of states.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaping.schemas.codec import encode_key
from shaping.schemas.events import Event, SessionEnded, SessionStarted, TrialCompleted
from shaping.services.domain import MouseState
from shaping.services.processor.app import _broker_time
from shaping.services.processor.step import ProcessorStep
from tests.support.story import T0, core, enrolled, next_id
from tests.unit.test_processor_batches import CODEC, EVENTS, FakeEvent, FakeMessage, make_rig

FIRST_STAGE = {"basic-shaping": "s1_habituation", "reach-autopilot": "free_reaching"}
VERSION = {"basic-shaping": "0.1.0", "reach-autopilot": "1.0.0"}


@dataclass(frozen=True)
class Message:
    key: bytes
    value: bytes


def _session(mouse: str, curriculum: str, number: int, outcomes: list[str]) -> list[Event]:
    start = T0 + timedelta(days=number)
    common = {"mouse_id": mouse, "rig_id": "rig-1", "session_id": f"{mouse}-s{number}"}
    events: list[Event] = [
        SessionStarted(
            event_id=next_id(),
            occurred_at=start,
            stage=FIRST_STAGE[curriculum],
            curriculum_name=curriculum,
            curriculum_version=VERSION[curriculum],
            parameters={},
            **common,  # type: ignore[arg-type]
        )
    ]
    for i, outcome in enumerate(outcomes):
        events.append(
            TrialCompleted(
                event_id=next_id(),
                occurred_at=start + timedelta(seconds=i + 1),
                trial_index=i,
                outcome=outcome,  # type: ignore[arg-type]
                **common,  # type: ignore[arg-type]
            )
        )
    events.append(
        SessionEnded(
            event_id=next_id(),
            occurred_at=start + timedelta(seconds=len(outcomes) + 1),
            n_trials=len(outcomes),
            end_reason="completed",
            duration_s=float(len(outcomes) + 1),
            **common,  # type: ignore[arg-type]
        )
    )
    return events


@st.composite
def mouse_log(draw: st.DrawFn, mouse: str) -> list[Message]:
    """One mouse's messages in its order, with what goes wrong on the way."""
    curriculum = draw(st.sampled_from(sorted(FIRST_STAGE)))
    events: list[Event] = [enrolled(mouse, curriculum_name=curriculum)]
    for number in range(draw(st.integers(1, 3))):
        outcomes = draw(st.lists(st.sampled_from(["correct", "incorrect", "miss"]), max_size=45))
        events.extend(_session(mouse, curriculum, number, outcomes))
    key = encode_key(mouse)
    messages = [Message(key, CODEC.encode(event)) for event in events]
    for _ in range(draw(st.integers(0, 4))):
        place = draw(st.integers(0, len(messages)))
        trials = [e for e in events if isinstance(e, TrialCompleted)]
        kind = draw(st.sampled_from(["again", "rig", "stray", "junk", "key"]))
        if kind == "again" and trials:
            wrong = Message(key, CODEC.encode(draw(st.sampled_from(trials))))
        elif kind == "rig" and trials:
            trial = draw(st.sampled_from(trials))
            moved = trial.model_copy(update={"rig_id": "rig-9", "event_id": next_id()})
            wrong = Message(key, CODEC.encode(moved))
        elif kind == "stray":
            stray = _session(mouse, curriculum, 9, ["correct"])[1]
            wrong = Message(key, CODEC.encode(stray))
        elif kind == "junk":
            wrong = Message(key, draw(st.binary(max_size=40)))
        else:
            wrong = Message(encode_key("someone-else"), messages[-1].value)
        messages.insert(place, wrong)
    return messages


@st.composite
def lab_log(draw: st.DrawFn) -> tuple[list[FakeEvent], list[int]]:
    """The mice's messages interleaved (each mouse's order kept) on two partitions, and where
    the batches end."""
    mice = [f"R{i}" for i in range(draw(st.integers(1, 3)))]
    logs = {mouse: draw(mouse_log(mouse)) for mouse in mice}
    order = draw(st.permutations([m for m in mice for _ in logs[m]]))
    offsets = [0, 0]
    taken = dict.fromkeys(mice, 0)
    log: list[FakeEvent] = []
    broker_time = T0.timestamp()
    for mouse in order:
        message = logs[mouse][taken[mouse]]
        taken[mouse] += 1
        partition = mice.index(mouse) % 2
        where = FakeMessage(EVENTS, partition, offsets[partition], broker_time + len(log))
        offsets[partition] += 1
        log.append(FakeEvent(message.key, message.value, where))
    cuts = sorted(set(draw(st.lists(st.integers(1, len(log) - 1), max_size=6))))
    return log, cuts


Outcomes = list[tuple[str, list[bytes]]]


def one_at_a_time(
    log: list[FakeEvent], cuts: list[int]
) -> tuple[Outcomes, list[dict[bytes, MouseState]]]:
    """Each message's outcome and outputs, and the mice's states at every cut and the end."""
    step = ProcessorStep(core(), CODEC)
    states: dict[bytes, MouseState] = {}
    at_cuts = []
    results = []
    for place, event in enumerate(log):
        if place in cuts:
            at_cuts.append(dict(states))
        m = event.message
        result = step.process(
            states.get(event.key),
            event.key,
            event.value,
            m.topic,
            m.partition,
            m.offset,
            _broker_time(m.timestamp),
        )
        if result.state is not None:
            states[event.key] = result.state
        results.append((result.outcome, [out.value for out in result.outputs]))
    return results, [*at_cuts, states]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lab_log())
def test_batches_with_runs_of_trials_give_what_one_message_at_a_time_gives(
    case: tuple[list[FakeEvent], list[int]],
) -> None:
    log, cuts = case
    expected, states = one_at_a_time(log, cuts)

    rig = make_rig()
    got: Outcomes = []
    for start, end, after in zip([0, *cuts], [*cuts, len(log)], states, strict=True):
        results = asyncio.run(rig.processor.handle_batch(log[start:end]))  # type: ignore[arg-type]
        got.extend((r.outcome, [out.value for out in r.outputs]) for r in results)
        # After every batch: each mouse's state, in memory and stored, as one by one.
        assert set(rig.processor.live) == set(after)
        for key, state in after.items():
            assert rig.processor.live[key].state == state
            assert rig.stored(key.decode()) == state

    assert [outcome for outcome, _ in got] == [outcome for outcome, _ in expected]
    assert got == expected
    assert [value for _, value in rig.sent] == [v for _, values in expected for v in values]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lab_log(), st.data())
def test_deferred_writes_give_the_same_outcomes_and_store_a_state_the_log_reached(
    case: tuple[list[FakeEvent], list[int]], data: st.DataObject
) -> None:
    """The same with writes deferred (``FaustProcessor(defer_s=...)``), the clock moving by a
    random step per batch and an idle stream's empty batch now and then: every outcome and
    output the same; after every batch each mouse's state in memory is the one-by-one state,
    and the stored one is a state it had after some earlier batch; after an empty batch the
    stored states are the one-by-one states."""
    log, cuts = case
    expected, states = one_at_a_time(log, cuts)

    rig = make_rig()
    processor = rig.processor
    processor.defer_s = 1.0
    now = [0.0]
    processor.clock = lambda: now[0]
    got: Outcomes = []
    reached: dict[bytes, list[MouseState]] = {}
    for start, end, after in zip([0, *cuts], [*cuts, len(log)], states, strict=True):
        results = asyncio.run(processor.handle_batch(log[start:end]))  # type: ignore[arg-type]
        got.extend((r.outcome, [out.value for out in r.outputs]) for r in results)
        now[0] += data.draw(st.sampled_from([0.0, 0.3, 1.0]))
        for key, state in after.items():
            reached.setdefault(key, []).append(state)
            waiting = processor.deferred.get(key)
            in_memory = waiting.state if waiting is not None else processor.live[key].state
            assert in_memory == state
            assert rig.stored(key.decode()) in reached[key]
        if data.draw(st.booleans()):
            asyncio.run(processor.handle_batch([]))
            assert not processor.deferred
            for key, state in after.items():
                assert rig.stored(key.decode()) == state

    assert got == expected
    assert [value for _, value in rig.sent] == [v for _, values in expected for v in values]
    asyncio.run(processor.handle_batch([]))
    for key, state in states[-1].items():
        assert rig.stored(key.decode()) == state
