"""Model-based: random days of a lab, with everything that goes wrong in one, leave tables
that are exactly the fold of the events the processor accepted.

Hypothesis drives sequences of lab actions (enrolments, sessions on time and late, trials,
re-sent events, redeliveries after a crash, overrides, ejections, adjustments, a published
version and migrations, garbage and mutated messages, second session ends, reused ids)
through the embedded runtime, which runs the processor's step and the projector exactly as
the Kafka services do. The check: feeding only the inputs the step accepted, in order, to a
fresh runtime gives the same tables (bar the record of what was refused). So nothing refused,
repeated or redelivered changed a row or a later decision. The model of the lab is
tests/support/lab_model.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.lab_model import ACTION, run_history, tables


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.lists(ACTION, min_size=5, max_size=40))
def test_tables_are_the_fold_of_the_accepted_events(
    tmp_path_factory: Any, actions: list[tuple[Any, ...]]
) -> None:
    folder: Path = tmp_path_factory.mktemp("lab")
    history = run_history(actions, folder)
    try:
        # Every accepted input is accepted again, in the same context.
        accepted = history.accepted()
        assert [o for _, _, o in history.fold_step.seen] == ["accepted"] * len(accepted)
        assert tables(history.fold_store) == tables(history.lab_store)
        assert history.fold.states == history.lab.runtime.states or _same_but_positions(
            history.fold.states, history.lab.runtime.states
        )
    finally:
        history.close()


def _same_but_positions(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """States equal but for the input offsets and digests (the two logs number differently)."""
    strip = {"input_offsets": {}}
    return {k: v.model_copy(update=strip) for k, v in a.items()} == {
        k: v.model_copy(update=strip) for k, v in b.items()
    }
