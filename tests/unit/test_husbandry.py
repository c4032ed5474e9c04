"""Husbandry on the log (issue 15, item 1), given/when/then: weights, water, restrictions and
notes are commands answered by events, folded into the mouse's state and projected into their
tables; bad input is refused with a clear reason and changes nothing."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shaping.schemas.commands import (
    AddNote,
    Command,
    EndRestriction,
    GiveWater,
    RecordWeight,
    StartRestriction,
    answer_event_id,
)
from shaping.schemas.events import (
    EventRejected,
    HusbandryNote,
    RestrictionStarted,
    WaterGiven,
    WeightRecorded,
)
from shaping.services.cli import app
from shaping.services.domain import MouseState
from shaping.services.domain.state import WEIGHTS_KEPT
from shaping.services.domain.welfare import WelfarePolicy
from shaping.services.embedded.runtime import EmbeddedRuntime
from shaping.services.operator.husbandry import (
    HusbandryError,
    HusbandryRefused,
    build_water,
    build_weight,
    embedded_sender,
    known_from_states,
    submit,
    welfare_from_states,
    welfare_from_tables,
)
from shaping.services.operator.queries import open_database
from shaping.services.processor.state_store import decode_state, encode_state, state_json
from tests.support.story import T0, enrolled
from tests.support.wiring import embedded_runtime, sql_store

AT = T0 + timedelta(hours=1)


def ask(command_type: type[Command], mouse: str = "M1", minutes: int = 0, **fields: Any) -> Any:
    return command_type(
        mouse_id=mouse, requested_by="ada", requested_at=AT + timedelta(minutes=minutes), **fields
    )


def answers(runtime: EmbeddedRuntime) -> list[Any]:
    return [m.event for m in runtime.messages() if m.event is not None]


def refusals(runtime: EmbeddedRuntime) -> list[str]:
    return [e.reason for e in answers(runtime) if isinstance(e, EventRejected)]


@pytest.fixture
def lab(tmp_path: Path) -> tuple[EmbeddedRuntime, Any]:
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    runtime = embedded_runtime(store)
    runtime.publish([enrolled("M1"), enrolled("M2")])
    return runtime, store


def test_a_weight_is_answered_folded_and_projected(lab: tuple[EmbeddedRuntime, Any]) -> None:
    runtime, store = lab
    command = ask(RecordWeight, grams=24.5, scale_id="scale-1")
    runtime.send_commands([command])
    event = answers(runtime)[-1]
    assert isinstance(event, WeightRecorded)
    assert event.event_id == answer_event_id("M1", command.command_id)
    assert (event.grams, event.recorded_by, event.scale_id) == (24.5, "ada", "scale-1")
    assert [w.grams for w in runtime.states["M1"].husbandry.weights] == [24.5]
    [row] = store.snapshot()["husbandry_weights"]
    assert (row["mouse_id"], row["grams"], row["recorded_by"], row["command_id"]) == (
        "M1",
        24.5,
        "ada",
        command.command_id,
    )


def test_a_restriction_water_and_a_note(lab: tuple[EmbeddedRuntime, Any]) -> None:
    runtime, store = lab
    runtime.send_commands(
        [
            ask(RecordWeight, grams=25.0),
            ask(StartRestriction, minutes=1, reference_grams=25.0, implant_grams=2.0),
            ask(GiveWater, minutes=2, ml=0.4, kind="earned", session_id="s-1"),
            ask(GiveWater, minutes=3, ml=0.6, water_type="hydrogel"),
            ask(AddNote, minutes=4, text="alert, coat fine"),
        ]
    )
    assert refusals(runtime) == []
    husbandry = runtime.states["M1"].husbandry
    assert husbandry.restriction is not None and husbandry.restriction.implant_grams == 2.0
    assert [(w.ml, w.kind) for w in husbandry.water] == [(0.4, "earned"), (0.6, "supplement")]
    assert isinstance(answers(runtime)[-1], HusbandryNote)
    tables = store.snapshot()
    assert sorted(
        (r["ml"], r["kind"], r["water_type"], r["session_id"]) for r in tables["husbandry_water"]
    ) == [(0.4, "earned", "water", "s-1"), (0.6, "supplement", "hydrogel", None)]
    [episode] = tables["husbandry_restrictions"]
    assert episode["reference_grams"] == 25.0 and episode["ended_at"] is None
    assert tables["husbandry_notes"][0]["text"] == "alert, coat fine"

    runtime.send_commands([ask(EndRestriction, minutes=5, reason="end of study")])
    assert runtime.states["M1"].husbandry.restriction is None
    [episode] = store.snapshot()["husbandry_restrictions"]
    assert episode["end_reason"] == "end of study" and episode["ended_by"] == "ada"


def _refused_changes_nothing(runtime: EmbeddedRuntime, store: Any, command: Command) -> str:
    before_state, before_tables = runtime.states.get(command.mouse_id), store.snapshot()
    runtime.send_commands([command])
    assert runtime.states.get(command.mouse_id) == before_state
    after = store.snapshot()
    letters = after.pop("rejected_events")
    letters_before = before_tables.pop("rejected_events")
    assert after == before_tables
    [new] = [r for r in letters if r not in letters_before]
    assert new["error_kind"] in ("impossible", "invalid")
    return str(new["reason"])


def test_bad_input_is_refused_and_changes_nothing(lab: tuple[EmbeddedRuntime, Any]) -> None:
    runtime, store = lab
    runtime.send_commands([ask(RecordWeight, grams=24.0)])

    # A jump of more than the policy's 10 % from the last weight, unless confirmed.
    reason = _refused_changes_nothing(runtime, store, ask(RecordWeight, minutes=1, grams=20.0))
    assert "20 g is 16.7 % below the last weight (24 g" in reason and "--confirm" in reason
    runtime.send_commands([ask(RecordWeight, minutes=2, grams=20.0, confirmed=True)])
    assert runtime.states["M1"].husbandry.weights[-1].grams == 20.0

    # An implausible weight, confirmed or not.
    reason = _refused_changes_nothing(
        runtime, store, ask(RecordWeight, minutes=3, grams=200.0, confirmed=True)
    )
    assert "200 g is not a plausible weight" in reason

    # A negative weight breaks the contract.
    raw = RecordWeight.model_construct(
        **ask(RecordWeight, minutes=4, grams=1.0).model_dump()
    ).model_copy(update={"grams": -3.0})
    reason = _refused_changes_nothing(runtime, store, raw)
    assert "grams must be a positive number" in reason

    # Water for a mouse the processor does not know, and huge water.
    reason = _refused_changes_nothing(runtime, store, ask(GiveWater, mouse="M9", ml=1.0))
    assert "mouse 'M9' is not known to the processor" in reason
    reason = _refused_changes_nothing(runtime, store, ask(GiveWater, minutes=5, ml=50.0))
    assert "50 mL of supplement water in one entry is more than policy default accepts" in reason

    # A restriction twice, an end without one.
    reason = _refused_changes_nothing(runtime, store, ask(EndRestriction, minutes=6))
    assert reason.startswith("mouse 'M1' is not on water restriction")
    runtime.send_commands([ask(StartRestriction, minutes=7, reference_grams=24.0)])
    reason = _refused_changes_nothing(
        runtime, store, ask(StartRestriction, minutes=8, reference_grams=23.0)
    )
    assert "already on water restriction" in reason


def test_an_ejected_mouse_is_still_weighed(lab: tuple[EmbeddedRuntime, Any]) -> None:
    from shaping.schemas.commands import EjectMouse

    runtime, _ = lab
    runtime.send_commands([ask(EjectMouse, reason="end"), ask(RecordWeight, minutes=1, grams=22.0)])
    assert refusals(runtime) == []
    assert runtime.states["M1"].husbandry.weights[-1].grams == 22.0


def test_the_lab_policy_decides_what_is_refused(tmp_path: Path) -> None:
    runtime = EmbeddedRuntime(
        None,
        catalog=embedded_runtime().step.core.catalog,
        codec=embedded_runtime().codec,
        welfare=WelfarePolicy(name="strict", max_jump_percent=5.0),
    )
    runtime.publish([enrolled("M1")])
    runtime.send_commands([ask(RecordWeight, grams=24.0), ask(RecordWeight, minutes=1, grams=22.5)])
    [reason] = refusals(runtime)
    assert "6.2 % below" in reason and "policy strict accepts at most 5 %" in reason


def test_the_state_keeps_a_compact_husbandry_and_its_store_format() -> None:
    runtime = embedded_runtime()
    runtime.publish([enrolled("M1")])
    runtime.send_commands(
        [
            ask(RecordWeight, minutes=i, grams=24.0 + 0.1 * (i % 3), confirmed=True)
            for i in range(20)
        ]
    )
    runtime.send_commands([ask(GiveWater, minutes=60 * 24 * day, ml=1.0) for day in range(1, 5)])
    husbandry = runtime.states["M1"].husbandry
    assert len(husbandry.weights) == WEIGHTS_KEPT
    assert len(husbandry.water) == 3  # days 2, 3 and 4: within 48 h of the newest
    state = runtime.states["M1"]
    assert decode_state(encode_state(state)) == state
    # A record stored before husbandry existed (no field) reads as an empty one.
    import json

    data = json.loads(state_json(encode_state(state)))
    del data["husbandry"]
    old = encode_state(MouseState.model_validate(data))
    assert decode_state(old).husbandry.weights == ()


def test_replay_folds_the_same_husbandry(lab: tuple[EmbeddedRuntime, Any]) -> None:
    runtime, _ = lab
    runtime.send_commands(
        [ask(RecordWeight, grams=24.0), ask(StartRestriction, minutes=1, reference_grams=24.0)]
    )
    again = EmbeddedRuntime.resume(
        runtime.log, catalog=runtime.step.core.catalog, codec=runtime.codec
    )
    assert again.states == runtime.states


def test_use_cases_suggest_the_closest_mouse_and_read_the_day(
    lab: tuple[EmbeddedRuntime, Any], tmp_path: Path
) -> None:
    runtime, _ = lab
    send = embedded_sender(runtime)
    known = known_from_states(runtime.states)
    with pytest.raises(HusbandryError, match="no mouse 'M11' is enrolled; did you mean M1"):
        submit(build_water("M11", 1.0, "ada", requested_at=AT), send, known)
    with pytest.raises(HusbandryError, match="ml must be a positive number"):
        build_water("M1", 0.0, "ada")
    submit(build_weight("M1", 25.0, "ada", requested_at=AT), send, known)
    with pytest.raises(HusbandryRefused, match=r"16\.0 % below the last weight"):
        submit(build_weight("M1", 21.0, "ada", requested_at=AT), send, known)
    runtime.send_commands(
        [
            ask(StartRestriction, minutes=1, reference_grams=25.0, implant_grams=2.0),
            ask(RecordWeight, minutes=2, grams=20.4, confirmed=True),
            ask(GiveWater, minutes=3, ml=0.3, kind="earned"),
        ]
    )
    day = AT.date()
    [from_states] = welfare_from_states(runtime.states, WelfarePolicy(), day, mouse_id="M1")
    engine = open_database(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        from_tables = {w.mouse_id: w for w in welfare_from_tables(engine, WelfarePolicy(), day)}
    finally:
        engine.dispose()
    assert from_tables["M1"].status == from_states.status
    status = from_states.status
    # 18.4/23 = 80 %: warning; 0.05 mL/g x 18.4 g = 0.92 mL, below the 1 mL minimum: 1 mL;
    # 0.3 mL earned, 0.7 mL still due, a supplement of 1 mL (the smallest)
    assert (status.status, round(status.percent or 0, 2)) == ("warning", 80.0)
    assert (status.requirement_ml, status.still_required_ml, status.supplement_ml) == (
        1.0,
        0.7,
        1.0,
    )
    assert from_tables["M2"].status.status == "unrestricted"


def test_the_commands_on_an_embedded_install(tmp_path: Path) -> None:
    """``shaping weigh``, ``water``, ``restrict``, ``note`` and ``welfare`` on the folder of
    ``shaping demo`` (its event log and status tables)."""
    runner = CliRunner()
    demo = runner.invoke(
        app,
        [
            "demo",
            "--out",
            str(tmp_path),
            "--mice",
            "2",
            "--rigs",
            "1",
            "--days",
            "1",
            "--no-husbandry",
        ],
    )
    assert demo.exit_code == 0, demo.output
    lines_before = len((tmp_path / "events.jsonl").read_text().splitlines())
    where = ["--embedded", str(tmp_path), "--by", "ada"]

    def run(*args: str) -> Any:
        return runner.invoke(app, [*args, *where[:2]] if args[0] == "welfare" else [*args, *where])

    result = run("weigh", "M001", "25")
    assert result.exit_code == 0 and "weight of M001 recorded: 25 g" in result.output, result.output
    result = run("restrict", "start", "M001", "--implant", "2")
    assert result.exit_code == 0 and "reference 25 g (measured), implant 2 g" in result.output
    result = run("weigh", "M001", "20.4")
    assert result.exit_code == 1 and "18.4 % below the last weight" in result.output
    assert run("weigh", "M001", "20.4", "--confirm").exit_code == 0
    result = run("water", "M001", "0.3", "--kind", "earned", "--type", "sucrose")
    assert result.exit_code == 0 and "0.3 mL sucrose (earned)" in result.output
    result = run("water", "M0001", "1")
    assert result.exit_code == 2 and "did you mean M001" in result.output
    result = run("water", "M001", "1", "--kind", "bucket")
    assert result.exit_code == 2 and "kind" in result.output
    assert run("note", "M001", "coat fine").exit_code == 0
    result = runner.invoke(app, ["welfare", "--embedded", str(tmp_path), "--day", _today(tmp_path)])
    assert result.exit_code == 0, result.output
    [row] = [line for line in result.output.splitlines() if "M001" in line]
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[1] == "20.4" and cells[4] == "80.0" and cells[5] == "warning", cells
    assert cells[7:10] == ["1.00", "0.70", "1.00"], cells
    # The same from the status tables.
    tables = runner.invoke(
        app,
        [
            "welfare",
            "M001",
            "--db-url",
            f"sqlite:///{tmp_path / 'shaping.sqlite'}",
            "--day",
            _today(tmp_path),
        ],
    )
    assert tables.exit_code == 0, tables.output
    [again] = [line for line in tables.output.splitlines() if "M001" in line]
    assert [c.strip() for c in again.split("│") if c.strip()][:10] == cells[:10]
    # Every record is on the saved log: 8 commands and their 8 answers, and a refusal; and the
    # welfare gate's (issue 15, item 2): the assignment re-issued when the restriction started,
    # and the hold at 80.0 % (an AssignmentHeld and the assignment re-issued held).
    lines_after = len((tmp_path / "events.jsonl").read_text().splitlines())
    assert lines_after - lines_before == 2 * 8 + 1 + 3


def _today(folder: Path) -> str:
    import json

    last = (folder / "events.jsonl").read_text().splitlines()[-1]
    return str(json.loads(last)["event"]["occurred_at"])[:10]


def test_restriction_event_checks() -> None:
    with pytest.raises(ValueError, match="implant_grams"):
        RestrictionStarted(mouse_id="M1", occurred_at=AT, reference_grams=2.0, implant_grams=3.0)
    with pytest.raises(ValueError, match="birth_date"):
        RestrictionStarted(
            mouse_id="M1", occurred_at=AT, reference_grams=20.0, birth_date="2026-13-01"
        )
    with pytest.raises(ValueError, match="ml must be a positive number"):
        WaterGiven(mouse_id="M1", occurred_at=AT, ml=float("nan"))
    assert WaterGiven(mouse_id="M1", occurred_at=AT, ml=0.0, kind="free_access").ml == 0.0
