"""The rigs a mouse may train on (issue 13, item 2, second layer), given/when/then.

An operator's AllowRigs is answered by a RigsAllowed; from then on each rig fact of the mouse
(SessionStarted, TrialCompleted, SessionEnded, MovementDetected) from a rig not on its list is
refused: one dead letter with the reason, and nothing changes in the state or the tables. A
mouse without a list trains on any rig; a new list replaces the one in force.
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.commands import AllowRigs, answer_event_id
from shaping.schemas.events import (
    RIG_EVENTS,
    Event,
    EventRejected,
    MouseEjected,
    MovementDetected,
    RigsAllowed,
    StageTransitioned,
)
from shaping.services.cli import app
from shaping.services.domain import ImpossibleEvent, MouseState, fold, initial_state
from shaping.services.operator import interventions as operator_interventions
from shaping.services.operator.interventions import Outcome, timeline
from shaping.services.operator.queries import open_database
from shaping.services.processor.state_store import (
    READ_FORMATS,
    decode_state,
    encode_state,
    state_json,
)
from shaping.services.processor.step import ProcessorStep
from tests.support.story import T0, core, enrolled, next_id, run, session, trials
from tests.support.wiring import embedded_runtime, sql_store

GOOD = trials(correct=250)


def allow(*rigs: str, mouse: str = "M1", day: float = 0.5) -> RigsAllowed:
    return RigsAllowed(
        event_id=next_id(),
        mouse_id=mouse,
        occurred_at=T0 + timedelta(days=day),
        rig_ids=list(rigs),
        reason="cohort in room B",
        allowed_by="ada",
    )


def on_rig(events: list[Event], rig: str | None) -> list[Event]:
    """The same facts, as if sent by ``rig`` (None: naming no rig)."""
    return [e.model_copy(update={"rig_id": rig}) for e in events]


def movement(rig: str, mouse: str = "M1", day: float = 0) -> MovementDetected:
    return MovementDetected(
        event_id=next_id(),
        mouse_id=mouse,
        rig_id=rig,
        session_id="s-1",
        occurred_at=T0 + timedelta(days=day, seconds=5),
        movement="paw_lift",
        side="left",
        phase="iti",
        trial_index=0,
    )


def refusal(rig: str, allowed: str, mouse: str = "M1") -> str:
    """The reason the processor gives, as an operator reads it."""
    return (
        f"mouse {mouse} is not allowed on rig {rig} (allowed: {allowed}); an operator allows "
        f"it with `shaping rigs allow {mouse} {allowed.replace(', ', ' ')} {rig}`"
    )


# -- the rule in the core -------------------------------------------------------------------------


def test_a_session_on_an_allowed_rig_is_accepted_and_judged() -> None:
    state, out = run(core(), [enrolled("M1"), allow("rig-1", "rig-3"), *session("M1", "s-1", GOOD)])
    assert state.allowed_rigs == ("rig-1", "rig-3")
    [decision] = [e for e in out if isinstance(e, StageTransitioned)]
    assert decision.session_id == "s-1" and state.session_total == 1


def test_a_session_on_another_rig_is_refused_with_the_reason() -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1"), allow("rig-1")])
    start = on_rig(session("M1", "s-1", GOOD), "rig-2")[0]
    with pytest.raises(ImpossibleEvent) as refused:
        engine.handle(state, start)
    assert str(refused.value) == refusal("rig-2", "rig-1")


def test_every_rig_fact_from_another_rig_is_refused_even_mid_session() -> None:
    """A session started on rig-1; rig-2 then sends trials and an end for it."""
    engine = core()
    start, *rest = session("M1", "s-1", GOOD)
    state, _ = run(engine, [enrolled("M1"), allow("rig-1"), start, *rest[:5]])
    for fact in on_rig(rest[5:6] + rest[-1:], "rig-2"):
        with pytest.raises(ImpossibleEvent, match="not allowed on rig rig-2"):
            engine.handle(state, fact)
    with pytest.raises(ImpossibleEvent, match="not allowed on rig rig-2"):
        engine.check_rig(state, movement("rig-2"))
    assert {cls.__name__ for cls in RIG_EVENTS} == {
        "SessionStarted",
        "TrialCompleted",
        "SessionEnded",
        "MovementDetected",
    }


def test_a_fact_naming_no_rig_is_refused_once_the_mouse_has_a_list() -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1"), allow("rig-1")])
    with pytest.raises(ImpossibleEvent, match=r"may train only on rigs rig-1.*names no rig"):
        engine.handle(state, on_rig(session("M1", "s-1", GOOD), None)[0])


def test_without_a_list_a_mouse_trains_on_any_rig() -> None:
    given = [enrolled("M1")]
    given += on_rig(session("M1", "s-1", GOOD), "rig-7")
    given += on_rig(session("M1", "s-2", GOOD, stage="s2_training", day=1), "rig-2")
    state, out = run(core(), given)
    assert state.allowed_rigs == () and state.session_total == 2
    assert len([e for e in out if isinstance(e, StageTransitioned)]) == 2


def test_a_new_list_replaces_the_one_in_force() -> None:
    engine = core()
    state, _ = run(engine, [enrolled("M1"), allow("rig-1"), allow("rig-2", day=0.6)])
    assert state.allowed_rigs == ("rig-2",)
    with pytest.raises(ImpossibleEvent) as refused:
        engine.handle(state, session("M1", "s-1", GOOD)[0])  # rig-1, allowed before
    assert str(refused.value) == refusal("rig-1", "rig-2")
    after, _ = run(engine, [enrolled("M1"), allow("rig-1"), allow("rig-2", day=0.6)])
    for fact in on_rig(session("M1", "s-1", GOOD, day=1), "rig-2"):
        after, _ = engine.handle(after, fact)
    assert after.session_total == 1


def test_the_list_outlives_an_ejection_and_a_re_enrolment() -> None:
    engine = core()
    ejection = MouseEjected(
        event_id=next_id(), mouse_id="M1", occurred_at=T0, reason="ill", ejected_by="ada"
    )
    state, _ = run(engine, [enrolled("M1"), allow("rig-1"), ejection, enrolled("M1")])
    assert state.enrolled and not state.ejected and state.allowed_rigs == ("rig-1",)
    with pytest.raises(ImpossibleEvent, match="not allowed on rig rig-9"):
        engine.check_rig(state, movement("rig-9"))


def test_a_list_for_a_mouse_that_is_not_enrolled_is_impossible() -> None:
    with pytest.raises(ImpossibleEvent, match="cannot allow rigs for mouse 'M404': it is not"):
        core().handle(initial_state("M404"), allow("rig-1", mouse="M404"))


def test_a_redelivered_list_changes_nothing_and_the_state_is_a_fold() -> None:
    engine = core()
    allowed = allow("rig-1")
    state = initial_state("M1")
    log: list[Event] = []  # the inputs, each followed by what it emitted
    for event in [enrolled("M1"), allowed, *session("M1", "s-1", GOOD)]:
        state, out = engine.handle(state, event)
        log.extend([event, *out])
    again, out = engine.handle(state, allowed)
    assert out == [] and again == state
    assert fold(initial_state("M1"), log) == state


@pytest.mark.parametrize(
    ("rigs", "message"),
    [
        ([], "at least one rig"),
        (["rig-1", "rig-1"], "names rig rig-1 twice"),
        (["rig/../1"], "is not allowed"),
        ([f"r{n}" for n in range(65)], "at most 64"),
    ],
)
def test_a_bad_list_breaks_the_contract(rigs: list[str], message: str) -> None:
    for build in (
        lambda: RigsAllowed(mouse_id="M1", occurred_at=T0, rig_ids=rigs),
        lambda: AllowRigs(mouse_id="M1", requested_by="ada", requested_at=T0, rig_ids=rigs),
    ):
        with pytest.raises(ValidationError, match=message):
            build()


# -- the processor's step: one dead letter, no state, nothing on the accepted topic ------------


def _step_through(step: ProcessorStep, events: list[Event]) -> MouseState | None:
    codec = default_codec()
    state: MouseState | None = None
    for offset, event in enumerate(events):
        result = step.process(
            state, encode_key(event.mouse_id), codec.encode(event), "shaping.events", 0, offset
        )
        assert not result.rejected, result.outputs
        state = result.state or state
    return state


@pytest.mark.parametrize("kind", ["SessionStarted", "MovementDetected"])
def test_the_step_refuses_a_fact_from_another_rig_with_one_dead_letter(kind: str) -> None:
    step = ProcessorStep(core(), default_codec())
    state = _step_through(step, [enrolled("M1"), allow("rig-1")])
    assert state is not None
    fact: Event = (
        on_rig(session("M1", "s-1", GOOD), "rig-2")[0]
        if kind == "SessionStarted"
        else movement("rig-2")
    )
    result = step.process(
        state, encode_key("M1"), default_codec().encode(fact), "shaping.events", 0, 99
    )
    assert result.outcome == "rejected" and result.state is None
    [letter] = result.outputs
    assert letter.topic_kind == "dead_letter" and isinstance(letter.event, EventRejected)
    assert letter.event.error_kind == "impossible"
    assert letter.event.reason == refusal("rig-2", "rig-1")
    assert (letter.event.causation_id, letter.event.rig_id) == (fact.event_id, "rig-2")
    # From the allowed rig, a movement is accepted and ignored as before.
    ok = step.process(
        state, encode_key("M1"), default_codec().encode(movement("rig-1")), "shaping.events", 0, 9
    )
    assert ok.outcome == "ignored" and ok.outputs == []


# -- end to end in one process: the command, the tables, the history ---------------------------


def _tables(store: Any) -> dict[str, list[dict[str, Any]]]:
    return store.snapshot()  # type: ignore[no-any-return]


def test_allow_rigs_is_answered_audited_and_refused_facts_change_no_table(tmp_path: Path) -> None:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1")])
    command = AllowRigs(
        mouse_id="M1",
        requested_by="ada",
        requested_at=T0 + timedelta(hours=1),
        rig_ids=["rig-1", "rig-3"],
        reason="cohort in room B",
    )
    runtime.send_commands([command])
    answered = [
        m.event for m in runtime.messages() if m.topic_kind == "events" and m.event is not None
    ]
    assert isinstance(answered[-1], RigsAllowed)
    assert answered[-1].event_id == answer_event_id("M1", command.command_id)
    assert (answered[-1].rig_ids, answered[-1].allowed_by) == (["rig-1", "rig-3"], "ada")
    assert runtime.states["M1"].allowed_rigs == ("rig-1", "rig-3")

    # A whole session from rig-2: every fact is refused, the state and the tables stay.
    state_before, tables_before = runtime.states["M1"], _tables(store)
    foreign = on_rig(session("M1", "s-x", trials(correct=20), day=1), "rig-2")
    runtime.publish([*foreign, movement("rig-2", day=1)])
    assert runtime.states["M1"] == state_before
    tables_after = _tables(store)
    letters = tables_after.pop("rejected_events")
    letters_before = tables_before.pop("rejected_events")
    assert tables_after == tables_before
    new = [r for r in letters if r not in letters_before]
    assert len(new) == len(foreign) + 1
    assert all(r["error_kind"] == "impossible" for r in new)
    assert all(r["reason"] == refusal("rig-2", "rig-1, rig-3") for r in new)

    # The same session from rig-3 is accepted and judged.
    runtime.publish(on_rig(session("M1", "s-y", GOOD, day=2), "rig-3"))
    assert runtime.states["M1"].session_total == 1

    # A refused command (a mouse never enrolled) is audited as refused.
    runtime.send_commands(
        [AllowRigs(mouse_id="M9", requested_by="bob", requested_at=T0, rig_ids=["rig-1"])]
    )
    audit = {r["mouse_id"]: r for r in _tables(store)["interventions"]}
    assert audit["M1"]["kind"] == "allow-rigs" and audit["M1"]["requested_by"] == "ada"
    assert json.loads(audit["M1"]["rig_ids_json"]) == ["rig-1", "rig-3"]
    assert audit["M1"]["honoured_at"] is not None and audit["M1"]["refused_reason"] is None
    assert audit["M9"]["kind"] == "allow-rigs" and "not enrolled" in audit["M9"]["refused_reason"]

    engine = open_database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        [row] = [r for r in timeline(engine, "M1") if r["what"].startswith("allow rigs")]
        [refused] = timeline(engine, "M9")
    finally:
        engine.dispose()
    assert (row["what"], row["by"], row["why"]) == (
        "allow rigs rig-1, rig-3",
        "ada",
        "cohort in room B",
    )
    assert row["outcome"] == "honoured: other rigs are refused"
    assert refused["what"] == "allow rigs rig-1" and refused["outcome"].startswith("refused: ")
    store.close()

    # Both audit views show it: a mouse's history and the operators' listing.
    url = f"sqlite:///{tmp_path / 'p.db'}"
    for args in (["history", "M1", "--db-url", url], ["interventions", "--db-url", url]):
        result = _invoke(*args)
        flat = " ".join(result.output.split())
        assert result.exit_code == 0, result.output
        assert "allow rigs rig-1, rig-3" in flat and "honoured: other rigs are refused" in flat


# -- the stored state ----------------------------------------------------------------------------


def test_states_stored_before_the_list_existed_read_as_unrestricted() -> None:
    """Adding ``allowed_rigs`` with a default keeps the store's format (1): a record without
    it means no restriction, which is what it meant when it was written."""
    state, _ = run(core(), [enrolled("M1"), *session("M1", "s-1", GOOD)])
    record = encode_state(state)
    data = json.loads(state_json(record))
    del data["allowed_rigs"]
    old = b"SMS1" + json.dumps(data).encode()
    assert 1 in READ_FORMATS and decode_state(old) == state
    assert decode_state(old).allowed_rigs == ()
    restricted, _ = run(core(), [enrolled("M1"), allow("rig-1", "rig-3")])
    assert decode_state(encode_state(restricted)).allowed_rigs == ("rig-1", "rig-3")


# -- the command line ------------------------------------------------------------------------------


def _invoke(*args: str) -> Any:
    env = {"SHAPING_OPERATOR": "ada", "SHAPING_BOOTSTRAP": "127.0.0.1:1", "COLUMNS": "200"}
    return CliRunner().invoke(app, list(args), env=env)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["M1", "rig/2"], "rig id 'rig/2' is not allowed"),
        (["M1", "rig-1", "rig-1"], "names rig rig-1 twice"),
        (["M1"], "Missing argument"),
    ],
)
def test_the_command_line_refuses_bad_rigs_before_sending(args: list[str], words: str) -> None:
    result = _invoke("rigs", "allow", *args)
    assert result.exit_code == 2, result.output
    assert words in " ".join(result.output.split())


def _answering(answer: Event | None, sent: list[AllowRigs]) -> Any:
    def fake_send(
        settings: Any, command: Any, codec: Any, wait_s: float, answered_on: Any = ()
    ) -> Outcome:
        assert tuple(answered_on) == ("events", "dead_letter")
        sent.append(command)
        if answer is None:
            return Outcome(2, 41, None)
        reply = answer
        if isinstance(answer, RigsAllowed):
            reply = command.answer()
        return Outcome(2, 41, reply, 2, 77)

    return fake_send


def test_the_command_line_sends_allow_rigs_and_reports_the_answer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[AllowRigs] = []
    monkeypatch.setattr(operator_interventions, "send_command", _answering(allow("x"), sent))
    result = _invoke("rigs", "allow", "M1", "rig-1", "rig-3", "--reason", "room B")
    assert result.exit_code == 0, result.output
    [command] = sent
    assert (command.rig_ids, command.reason, command.requested_by) == (
        ["rig-1", "rig-3"],
        "room B",
        "ada",
    )
    flat = " ".join(result.output.split())
    assert "mouse M1 may now train only on rig-1, rig-3" in flat
    assert f"event {command.answer_id}, shaping.events[2]@77" in flat


def test_the_command_line_reports_a_refusal_with_status_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    letter = EventRejected(
        mouse_id="M1",
        occurred_at=T0,
        reason="cannot allow rigs for mouse 'M1': it is not enrolled",
        error_kind="impossible",
        source_topic="shaping.commands",
        source_partition=0,
        source_offset=1,
        original_value=b"",
        rejected_by="processor",
    )
    monkeypatch.setattr(operator_interventions, "send_command", _answering(letter, []))
    result = _invoke("rigs", "allow", "M1", "rig-1")
    assert result.exit_code == 1
    assert "the processor refused the rigs of M1: cannot allow rigs" in " ".join(
        result.output.split()
    )


@pytest.mark.parametrize("command", [["rigs"], ["rigs", "allow"]])
def test_the_rigs_commands_have_help(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0 and "Usage" in result.output, result.output
    assert "replaces" in " ".join(result.output.split()) or command == ["rigs"]
