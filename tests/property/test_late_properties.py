"""Properties of late sessions: any delivery order of whole sessions ends where date order does.

Hypothesis draws a mouse's sessions (dates, several on one date sometimes, how many trials and
how well the mouse does) and the order their rigs deliver them in. Delivered in date order
they are the reference; delivered in the drawn order, the processor recomputes the mouse
whenever a session arrives late. The final training state and the effective history (the
decisions in force, one per session) must be the same.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shaping.schemas.events import StageTransitioned
from shaping.services.domain import fold, initial_state
from tests.support.late_sessions import (
    IBL,
    Plan,
    World,
    delivered,
    effective,
    effective_rows,
    ibl_engine,
    ibl_plan,
    in_order,
    mixed,
    project,
    status_view,
    training_view,
)


@st.composite
def plans(draw: st.DrawFn, max_sessions: int = 6) -> list[Plan]:
    """A mouse's sessions: dates a day or two apart or shared, mixed skill and session size."""
    n = draw(st.integers(2, max_sessions))
    day, out = 0, []
    for index in range(n):
        day += draw(st.sampled_from([0, 1, 1, 1, 2])) if index else 0
        accuracy = draw(st.sampled_from([0.5, 0.7, 0.8, 0.9, 0.97]))
        size = draw(st.sampled_from([0, 40, 120, 160, 210]))
        seed = draw(st.integers(0, 10_000))
        out.append(
            Plan(
                f"s{index}",
                day,
                60 * index,  # sessions of one date start in index order
                mixed(size, accuracy, seed),
                rig_id=draw(st.sampled_from(["rig-A", "rig-B"])),
            )
        )
    return out


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[list[Plan], list[int], bool]:
    """Sessions, the order they arrive in, and whether each session runs the stage it would
    have run in date order (False: the stage assigned when its events arrive)."""
    sessions = draw(plans())
    order = draw(st.permutations(range(len(sessions))))
    return sessions, list(order), draw(st.booleans())


def refused_for_a_reason(world: World) -> bool:
    """Whether the world refused a session; every refusal must name its way out."""
    starts = [reason for event, reason in world.refused if event.event_type == "SessionStarted"]
    for reason in starts:
        assert "a mouse's state keeps its newest" in reason, reason
    return bool(world.refused)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_any_delivery_order_ends_in_the_date_order_state(
    case: tuple[list[Plan], list[int], bool],
) -> None:
    sessions, order, same_stages = case
    reference, stages = in_order("M1", sessions)
    late = delivered("M1", sessions, order, stages if same_stages else None)
    assume(not refused_for_a_reason(late))

    assert effective(late.outputs) == effective(reference.outputs)
    assert training_view(late.state) == training_view(reference.state)
    # Every superseding decision names a decision of the same session, made earlier.
    decisions = [e for e in late.outputs if isinstance(e, StageTransitioned)]
    by_id = {d.event_id: d for d in decisions}
    for decision in decisions:
        if decision.supersedes is not None:
            replaced = by_id[decision.supersedes]
            assert replaced.session_id == decision.session_id
            assert decisions.index(replaced) < decisions.index(decision)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries(), st.data())
def test_redelivered_sessions_change_nothing(
    case: tuple[list[Plan], list[int], bool], data: st.DataObject
) -> None:
    sessions, order, _ = case
    late = delivered("M1", sessions, order)
    assume(not refused_for_a_reason(late))
    view, history = training_view(late.state), effective(late.outputs)
    ids = {e.event_id for e in late.outputs}

    again = data.draw(st.lists(st.sampled_from(sorted(late.sessions)), min_size=1, max_size=3))
    for session_id in again:
        late.send(late.sessions[session_id])

    assert training_view(late.state) == view
    assert effective(late.outputs) == history
    # At most the newest decision and assignment are sent again, with their ids.
    assert {e.event_id for e in late.outputs} == ids


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_the_log_folds_to_the_state_and_reprocessing_gives_the_same_ids(
    case: tuple[list[Plan], list[int], bool],
) -> None:
    sessions, order, _ = case
    first = delivered("M1", sessions, order)
    second = delivered("M1", sessions, order)
    assert fold(initial_state("M1"), first.accepted) == first.state
    assert [e.event_id for e in first.outputs] == [e.event_id for e in second.outputs]
    assert first.outputs == second.outputs


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(deliveries())
def test_the_tables_of_any_delivery_order_equal_date_order_tables(
    case: tuple[list[Plan], list[int], bool],
) -> None:
    sessions, order, _ = case
    assume(not refused_for_a_reason(delivered("M1", sessions, order)))
    by_date = sorted(range(len(sessions)), key=lambda i: sessions[i].key)
    with tempfile.TemporaryDirectory() as folder:
        reference = project(sessions, by_date, Path(folder) / "ref.db")
        late = project(sessions, order, Path(folder) / "late.db")
    assert effective_rows(late) == effective_rows(reference)
    assert status_view(late) == status_view(reference)


@st.composite
def ibl_deliveries(draw: st.DrawFn) -> tuple[list[Plan], list[int]]:
    """IBL sessions on 3 to 5 dates (two on one date sometimes), learning at drawn speeds."""
    n = draw(st.integers(3, 5))
    day, sessions = 0, []
    for index in range(n):
        day += draw(st.sampled_from([0, 1, 1, 2])) if index else 0
        plan = ibl_plan(
            f"s{index}",
            day,
            draw(st.sampled_from([150, 260, 420])),
            draw(st.sampled_from([0.3, 1.5, 3.0])),
            seed=draw(st.integers(0, 10_000)),
        )
        # Sessions of one date start in index order.
        sessions.append(Plan(**{**plan.__dict__, "minute": 60 * index}))
    return sessions, list(draw(st.permutations(range(n))))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ibl_deliveries())
def test_the_ibl_ladder_ends_in_the_date_order_state(case: tuple[list[Plan], list[int]]) -> None:
    sessions, order = case
    engine = ibl_engine()
    reference, _ = in_order("M1", sessions, IBL, engine)
    late = delivered("M1", sessions, order, None, IBL, engine)
    assume(not refused_for_a_reason(late))
    assert effective(late.outputs) == effective(reference.outputs)
    assert training_view(late.state) == training_view(reference.state)
