"""Late sessions: a session that arrives after later ones is judged in date order.

Given a mouse's sessions, delivering them in date order is the reference. Delivering them in
another order (a rig that was offline drains its outbox late) must end in the same training
state and the same effective history (the decisions not superseded, one per session), through
new events that supersede the earlier decisions. The helpers (tests/support/late_sessions.py)
are shared with ``tests/property/test_late_properties.py`` and
``tests/integration/test_late_kafka.py``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from shaping.schemas.codec import default_codec, encode_key
from shaping.schemas.events import (
    AssignmentIssued,
    EventRejected,
    SessionEnded,
    SessionStarted,
    StageOverridden,
    StageTransitioned,
    TrialCompleted,
)
from shaping.schemas.topics import TopicNames
from shaping.services.domain import (
    CurriculumCatalog,
    TrainingCore,
    fold,
    initial_state,
)
from shaping.services.domain.state import MAX_SESSION_HISTORY
from shaping.services.processor.state_store import decode_state, encode_state
from shaping.services.processor.step import ProcessorStep
from shaping.services.projector.store import ProjectedMessage
from tests.support.late_sessions import (
    BASIC,
    IBL,
    T0,
    Plan,
    World,
    catalog,
    delivered,
    effective,
    effective_rows,
    eid,
    enrolment,
    ibl_engine,
    ibl_plan,
    in_order,
    mixed,
    project,
    session_events,
    status_view,
    training_view,
)
from tests.support.wiring import embedded_runtime, sql_store


def assert_same_training(late: World, reference: World) -> None:
    assert late.refused == [], late.refused
    assert effective(late.outputs) == effective(reference.outputs)
    assert training_view(late.state) == training_view(reference.state)


def story_plans() -> list[Plan]:
    """Five sessions on five dates that walk basic-shaping's ladder to graduation."""
    return [
        Plan("d1", 0, 0, mixed(150, 0.9, seed=1)),  # s1 -> s2
        Plan("d2", 1, 0, mixed(180, 0.95, seed=2)),  # s2 -> s3
        Plan("d3", 2, 0, mixed(220, 0.95, seed=3)),  # s3, first session: stays
        Plan("d4", 3, 0, mixed(220, 0.95, seed=4)),  # s3, second: graduates
        Plan("d5", 4, 0, mixed(220, 0.95, seed=5)),  # graduated
    ]


# -- the core ---------------------------------------------------------------------------------


def test_a_late_session_is_judged_in_date_order_and_supersedes_later_decisions() -> None:
    plans = story_plans()
    reference, stages = in_order("M1", plans)
    assert [stages[p.session_id] for p in plans] == [
        "s1_habituation",
        "s2_training",
        "s3_full_task",
        "s3_full_task",
        "graduated",
    ]

    # d1's rig was offline: d2 and d3 ran on another rig with what it was told, then d1 drains.
    world = World("M1")
    world.send([enrolment("M1")])
    world.run(plans[1])
    world.run(plans[2])
    before = {d.session_id: d for d in world.outputs if isinstance(d, StageTransitioned)}
    assert before["d2"].from_stage == "s1_habituation"  # judged without d1, at what it ran
    assignment_before = world.state.last_assignment
    assert assignment_before is not None

    caused = world.run(plans[0], stage="s1_habituation")

    decisions = [e for e in caused if isinstance(e, StageTransitioned)]
    assignments = [e for e in caused if isinstance(e, AssignmentIssued)]
    assert [d.session_id for d in decisions] == ["d1", "d2", "d3"]
    late, *rejudged = decisions
    assert late.supersedes is None
    assert [d.supersedes for d in rejudged] == [before["d2"].event_id, before["d3"].event_id]
    assert [(d.from_stage, d.to_stage) for d in decisions] == [
        ("s1_habituation", "s2_training"),
        ("s2_training", "s3_full_task"),  # judged from d1's recomputed stage
        ("s3_full_task", "s3_full_task"),
    ]
    assert [d.session_total for d in decisions] == [1, 2, 3]
    assert [d.session_date for d in decisions] == ["2026-03-02", "2026-03-03", "2026-03-04"]
    assert {d.causation_id for d in decisions} == {eid("M1/d1/ended")}
    [assignment] = assignments
    assert caused[-1] == assignment
    assert assignment.supersedes == assignment_before.event_id
    assert (assignment.stage, assignment.session_number) == ("s3_full_task", 4)
    assert assignment.causation_id == decisions[-1].event_id
    assert "late session 'd1'" in assignment.reason_detail

    world.run(plans[3])
    world.run(plans[4])
    assert_same_training(world, reference)


def test_the_log_with_the_corrections_folds_to_the_same_state() -> None:
    plans = story_plans()
    world = delivered("M1", plans, [1, 3, 0, 4, 2])
    assert fold(initial_state("M1"), world.accepted) == world.state


def test_sessions_of_one_date_are_judged_in_the_order_they_started() -> None:
    plans = [
        Plan("a", 0, 0, mixed(150, 0.9, seed=11)),
        Plan("b-morning", 1, 0, mixed(170, 0.95, seed=12)),
        Plan("b-afternoon", 1, 300, mixed(230, 0.95, seed=13), rig_id="rig-2"),
        Plan("c", 2, 0, mixed(230, 0.95, seed=14)),
    ]
    reference, _ = in_order("M1", plans)
    # The afternoon session of day 1 arrives first: the morning one is late though same-dated.
    world = delivered("M1", plans, [0, 2, 1, 3])
    assert_same_training(world, reference)
    rejudged = [
        d for d in world.outputs if isinstance(d, StageTransitioned) and d.supersedes is not None
    ]
    assert [d.session_id for d in rejudged] == ["b-afternoon"]
    assert {d.session_date for d in rejudged} == {"2026-03-03"}


def test_redelivering_the_late_session_changes_nothing() -> None:
    plans = story_plans()
    world = delivered("M1", plans, [1, 2, 0])
    state, outputs = world.state, list(world.outputs)

    again = world.send(world.sessions["d1"])

    assert again == []
    assert world.state == state
    assert world.outputs == outputs
    # The start and end are known ids; the trials are of a session that already ended.
    assert {reason for _, reason in world.refused} == {
        "trial for session 'd1', which already ended"
    }
    assert effective(world.outputs) == effective(delivered("M1", plans, [0, 1, 2]).outputs)


def test_a_redelivered_late_session_end_after_a_lost_state_sends_the_same_events() -> None:
    """The processor stopped after publishing but before storing the state: the redelivery
    meets the old state and sends the same corrections, with the same ids."""
    plans = story_plans()
    world = delivered("M1", plans, [1, 2])
    late = session_events("M1", plans[0], "s1_habituation")
    world.send(late[:-1])
    before = decode_state(encode_state(world.state))

    first_state, first = world.engine.handle(before, late[-1])
    second_state, second = world.engine.handle(before, late[-1])

    assert first == second
    assert first_state == second_state
    # Once stored, the same end is a judged session's: nothing new.
    assert world.engine.handle(first_state, late[-1]) == (first_state, [])


def test_a_late_session_while_the_mouse_runs_on_another_rig() -> None:
    """The late rig's session drains while another session of the mouse is in progress: both
    are kept by session id and each counts its own trials."""
    plans = [
        Plan("d1", 0, 0, mixed(150, 0.9, seed=21), rig_id="rig-A"),
        Plan("d2", 1, 0, mixed(180, 0.95, seed=22), rig_id="rig-B"),
        Plan("d3", 2, 0, mixed(220, 0.95, seed=23), rig_id="rig-B"),
    ]
    reference, stages = in_order("M1", plans)
    world = World("M1")
    world.send([enrolment("M1")])
    world.run(plans[1], stages["d2"])
    live = session_events("M1", plans[2], stages["d3"])
    late = session_events("M1", plans[0], stages["d1"])
    # d3 starts and runs 100 trials; d1 drains whole; d3 goes on and ends.
    world.send(live[:101])
    assert world.state.open_session is not None
    assert world.state.open_session.session_id == "d3"
    world.send(late)
    assert world.state.open_session is None
    [parked] = world.state.parked_sessions
    assert (parked.session_id, parked.n_trials) == ("d3", 100)
    world.send(live[101:])

    assert_same_training(world, reference)
    summaries = {
        d.session_id: d.session_summary.n_trials
        for d in world.outputs
        if isinstance(d, StageTransitioned)
    }
    assert summaries == {"d1": 150, "d2": 180, "d3": 220}


def test_interleaved_trials_of_two_open_sessions_are_counted_apart() -> None:
    plans = [
        Plan("d1", 0, 0, mixed(120, 0.9, seed=31), rig_id="rig-A"),
        Plan("d2", 1, 0, mixed(140, 0.5, seed=32), rig_id="rig-B"),
    ]
    reference, stages = in_order("M1", plans)
    late = session_events("M1", plans[0], stages["d1"])
    live = session_events("M1", plans[1], stages["d2"])
    # d2 starts, then d1 starts late and their trials interleave; d1 ends, then d2.
    head = [live[0], late[0]]
    mixed_trials = [t for pair in zip(live[1:-1], late[1:-1], strict=False) for t in pair]
    rest = live[len(late) - 1 : -1]
    world = World("M1")
    world.send([enrolment("M1")])
    world.send([*head, *mixed_trials, *rest, late[-1], live[-1]])

    assert world.refused == []
    assert effective(world.outputs) == effective(reference.outputs)
    assert training_view(world.state) == training_view(reference.state)


def test_an_override_between_sessions_stays_in_force_through_a_recompute() -> None:
    plans = story_plans()[:3]
    override = StageOverridden(
        event_id=eid("M1/override"),
        mouse_id="M1",
        occurred_at=T0 + timedelta(days=1, hours=12),
        to_stage="s3_full_task",
        reason="the trainer saw it is ready",
        overridden_by="trainer",
    )
    reference = World("M1")
    reference.send([enrolment("M1")])
    reference.run(plans[0])
    reference.run(plans[1])
    reference.send([override])
    reference.run(plans[2])

    world = World("M1")
    world.send([enrolment("M1")])
    world.run(plans[1])
    world.send([override])
    world.run(plans[2])
    assert world.state.judged[-1].operator_stage == "s3_full_task"
    world.run(plans[0], stage="s1_habituation")

    assert world.refused == []
    assert effective(world.outputs) == effective(reference.outputs)
    assert effective(world.outputs)["d3"]["from_stage"] == "s3_full_task"


def ibl_story() -> list[Plan]:
    """Six dates on which a mouse learns: IBL's status goes from in training to trained 1a,
    then trained 1b, over its 3-date windows."""
    sizes_and_skill = [(300, 0.3), (450, 1.0), (500, 2.0), (520, 3.0), (550, 3.0), (560, 3.0)]
    return [
        ibl_plan(f"d{n}", n, size, skill, seed=n) for n, (size, skill) in enumerate(sizes_and_skill)
    ]


def test_the_ibl_ladder_recomputes_late_dates_like_in_order_delivery() -> None:
    plans = ibl_story()
    engine = ibl_engine()
    reference, stages = in_order("M1", plans, IBL, engine)
    assert [stages[p.session_id] for p in plans] == [
        "in training",
        "in training",
        "in training",
        "trained 1a",
        "trained 1b",
        "trained 1b",
    ]
    # d1 and d3 drain late (d3 after d4 ran, d1 last of all).
    late = delivered("M1", plans, [0, 2, 4, 3, 5, 1], None, IBL, engine)
    assert_same_training(late, reference)
    rejudged = [
        (d.session_id, d.from_stage, d.to_stage)
        for d in late.outputs
        if isinstance(d, StageTransitioned) and d.supersedes is not None
    ]
    assert rejudged[-4:] == [
        ("d2", "in training", "trained 1a"),
        ("d3", "trained 1a", "trained 1b"),
        ("d4", "trained 1b", "trained 1b"),
        ("d5", "trained 1b", "trained 1b"),
    ]
    # The reported criterion values travel with the corrected decisions (window of d2).
    d2 = effective(late.outputs)["d2"]
    assert d2["metrics"]["window_dates"] == 3
    assert d2["metrics"] == effective(reference.outputs)["d2"]["metrics"]


def test_the_ibl_status_table_keeps_the_first_date_of_each_status(tmp_path: Path) -> None:
    plans = ibl_story()
    reached = {}
    for name, order in (("in-order", [0, 1, 2, 3, 4, 5]), ("late", [1, 3, 2, 5, 4, 0])):
        store = sql_store(f"sqlite:///{tmp_path / name}.db")
        try:
            runtime = embedded_runtime(store=store, catalog=catalog("training-status.yaml"))
            runtime.publish([enrolment("M1", IBL)])
            for index in order:
                stage = runtime.states["M1"].stage
                assert stage is not None
                runtime.publish(session_events("M1", plans[index], stage, IBL))
            reached[name] = [
                (r["stage"], r["first_date"], r["session_id"])
                for r in store.snapshot()["stage_reached"]
            ]
        finally:
            store.close()
    assert (
        reached["late"]
        == reached["in-order"]
        == [
            ("in training", "2026-03-02", "d0"),
            ("trained 1a", "2026-03-04", "d2"),
            ("trained 1b", "2026-03-05", "d3"),
        ]
    )


# -- bounds: what is kept -------------------------------------------------------------------


def test_a_session_older_than_the_kept_history_is_refused_naming_the_limit() -> None:
    plans = [
        Plan(f"d{n:02d}", n + 1, 0, mixed(120, 0.6, seed=100 + n))
        for n in range(MAX_SESSION_HISTORY + 3)
    ]
    world = World("M1")
    world.send([enrolment("M1")])
    for plan in plans:
        world.run(plan)
    assert len(world.state.judged) == MAX_SESSION_HISTORY
    outputs = list(world.outputs)

    too_old = Plan("d-old", 0, 0, mixed(120, 0.9, seed=99))
    world.run(too_old, stage="s1_habituation")

    assert world.outputs == outputs
    started, reason = world.refused[0]
    assert isinstance(started, SessionStarted)
    assert "keeps its newest 20 sessions" in reason
    assert "older than the 20 judged sessions kept" in reason
    assert all(isinstance(e, TrialCompleted | SessionEnded) for e, _ in world.refused[1:])


def test_a_late_session_whose_trial_window_is_no_longer_kept_is_refused() -> None:
    # 300 responded trials a session: records keep their trials one by one while the newer
    # ones hold fewer than 1000, so the fifth newest has lost them; accuracy(window=200) of a
    # session inserted before the four newest would need them.
    plans = [Plan(f"d{n}", 2 * n + 1, 0, ("correct",) * 300) for n in range(6)]
    world = World("M1")
    world.send([enrolment("M1")])
    for plan in plans:
        world.run(plan)

    before_four = Plan("late-4", 2 * 2, 0, ("correct",) * 150)
    world.run(before_four, stage="s1_habituation")
    _, reason = world.refused[0]
    assert "read the last 200 trials" in reason and "about its last 1000 trials" in reason

    before_three = Plan("late-3", 2 * 3, 0, ("correct",) * 150)
    refused = len(world.refused)
    world.run(before_three, stage="s1_habituation")
    assert len(world.refused) == refused
    assert world.state.session_total == 7


class DateWindowed:
    """A curriculum that says its rules read ``dates`` dates back (as IBL's 3-date window)
    and no trial window, over basic-shaping's rules."""

    def __init__(self, inner: Any, dates: int) -> None:
        self._inner = inner
        self.date_lookback = dates
        self.trial_window = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def test_a_late_session_whose_date_window_is_no_longer_kept_is_refused() -> None:
    windowed = CurriculumCatalog([DateWindowed(catalog().get(*BASIC), dates=3)])
    world = World("M1", TrainingCore(windowed))
    world.send([enrolment("M1")])
    days = [1, 2, 3, *range(5, MAX_SESSION_HISTORY + 3)]  # 21 dates, day 4 left out
    for day in days:
        world.run(Plan(f"d{day}", day, 0, mixed(60, 0.6, seed=day)))
    kept = sorted({entry.session_date for entry in world.state.judged})
    assert (len(kept), kept[0]) == (MAX_SESSION_HISTORY, "2026-03-04")  # day 1 was dropped

    # Day 4, late: days 2 and 3 are kept before it, its window is whole.
    world.run(Plan("late-day4", 4, 0, mixed(60, 0.6, seed=40)))
    assert world.refused == []
    # Day 2 in the afternoon: its window would need day 0 and day 1, no longer kept.
    world.run(Plan("late-day2", 2, 300, mixed(60, 0.6, seed=20)))
    _, reason = world.refused[0]
    assert "read 3 dates back but the sessions kept before it cover 0 earlier date(s)" in reason


def test_the_processor_step_dead_letters_a_too_late_session_with_its_reason() -> None:
    codec = default_codec()
    step = ProcessorStep(TrainingCore(catalog()), codec)
    state = World("M1")
    state.send([enrolment("M1")])
    for n in range(MAX_SESSION_HISTORY + 1):
        state.run(Plan(f"d{n:02d}", n + 1, 0, mixed(110, 0.6, seed=n)))
    started = session_events("M1", Plan("old", 0, 0, ("correct",)), "s1_habituation")[0]
    result = step.process(
        state.state, encode_key("M1"), codec.encode(started), "shaping.events", 0, 42
    )
    [letter] = [o.event for o in result.outputs]
    assert isinstance(letter, EventRejected)
    assert letter.error_kind == "impossible"
    assert "older than the 20 judged sessions kept" in letter.reason


# -- the projector --------------------------------------------------------------------------


def test_the_tables_follow_the_effective_decisions(tmp_path: Path) -> None:
    plans = story_plans()
    reference = project(plans, [0, 1, 2, 3, 4], tmp_path / "in-order.db")
    late = project(plans, [1, 2, 0, 3, 4], tmp_path / "late.db")

    superseded = [r for r in late["decision_log"] if r["superseded_by"] is not None]
    assert sorted(r["session_id"] for r in superseded) == ["d2", "d3"]
    by_id = {r["event_id"]: r for r in late["decision_log"]}
    for row in superseded:
        assert by_id[row["superseded_by"]]["supersedes"] == row["event_id"]
        assert by_id[row["superseded_by"]]["session_id"] == row["session_id"]
    assert effective_rows(late) == effective_rows(reference)
    assert status_view(late) == status_view(reference)
    # Without d1, d2 moved the mouse to s2 and d3 to s3: both stage entries are superseded.
    stale = [r for r in late["stage_history"] if r["superseded_by"] is not None]
    assert sorted((r["stage"], r["entered_at_session"]) for r in stale) == [
        ("s2_training", 1),
        ("s3_full_task", 2),
    ]
    assert status_view(late)["reached"] == [
        ("graduated", "2026-03-05", "d4", 4),
        ("s1_habituation", "2026-03-02", "d1", 1),
        ("s2_training", "2026-03-02", "d1", 1),
        ("s3_full_task", "2026-03-03", "d2", 2),
    ]


def test_the_first_date_a_stage_was_reached_moves_back_after_a_recompute(
    tmp_path: Path,
) -> None:
    plans = story_plans()[:3]
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        runtime = embedded_runtime(store=store, catalog=catalog())
        runtime.publish([enrolment("M1")])
        runtime.publish(session_events("M1", plans[1], "s1_habituation"))
        runtime.publish(session_events("M1", plans[2], "s2_training"))
        reached = {r["stage"]: r["first_date"] for r in store.snapshot()["stage_reached"]}
        assert reached == {
            "s1_habituation": "2026-03-03",
            "s2_training": "2026-03-03",
            "s3_full_task": "2026-03-04",
        }
        runtime.publish(session_events("M1", plans[0], "s1_habituation"))
        reached = {r["stage"]: r["first_date"] for r in store.snapshot()["stage_reached"]}
        assert reached == {
            "s1_habituation": "2026-03-02",
            "s2_training": "2026-03-02",
            "s3_full_task": "2026-03-03",
        }
    finally:
        store.close()


def late_messages() -> list[ProjectedMessage]:
    """The messages of a story with a recompute, numbered per topic (one partition each)."""
    runtime = embedded_runtime(topics=TopicNames.with_prefix("late"), catalog=catalog())
    runtime.publish([enrolment("M1")])
    plans = story_plans()
    for index in (1, 2, 0, 3):
        stage = runtime.states["M1"].stage
        assert stage is not None
        runtime.publish(session_events("M1", plans[index], stage))
    return [
        message
        for message in runtime.messages()
        if message.topic_kind != "events" or not isinstance(message.event, TrialCompleted)
    ]


def test_the_projection_of_a_recompute_does_not_depend_on_topic_interleaving(
    tmp_path: Path,
) -> None:
    messages = late_messages()
    store = sql_store(f"sqlite:///{tmp_path / 'p.db'}")
    try:
        store.apply_batch("projector", messages)
        reference = store.snapshot()
        assert any(r["superseded_by"] for r in reference["decision_log"])
        rank = {"dead_letter": 0, "assignments": 1, "decisions": 2, "accepted": 3, "events": 4}
        for reverse in (False, True):
            store.reset()
            reordered = sorted(messages, key=lambda m: rank[m.topic_kind], reverse=reverse)
            store.apply_batch("projector", reordered)
            assert store.snapshot() == reference
        # Replaced decisions projected after those that replace them (as if re-published in
        # reverse: new offsets on a partition of their own).
        decisions = [m for m in messages if m.topic_kind == "decisions"]
        others = [m for m in messages if m.topic_kind != "decisions"]
        republished = [
            ProjectedMessage(m.topic, 1, offset, m.event, m.topic_kind)
            for offset, m in enumerate(reversed(decisions))
        ]
        store.reset()
        store.apply_batch("projector", [*others, *republished])
        assert store.snapshot() == reference
    finally:
        store.close()


@pytest.mark.parametrize("order", [[2, 0, 1, 3, 4], [4, 3, 2, 1, 0], [0, 4, 1, 3, 2]])
def test_any_delivery_order_gives_the_in_order_tables(tmp_path: Path, order: list[int]) -> None:
    plans = story_plans()
    reference = project(plans, [0, 1, 2, 3, 4], tmp_path / "ref.db")
    late = project(plans, order, tmp_path / "late.db")
    assert effective_rows(late) == effective_rows(reference)
    assert status_view(late) == status_view(reference)
