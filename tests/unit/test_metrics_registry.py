"""The metric registry and what the curriculum format does with it: a lab's own metric, metric
arguments checked when a curriculum loads, named conditions, reported values and warnings."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from shaping.schemas.events import (
    MouseEnrolled,
    SessionEnded,
    SessionStarted,
    StageTransitioned,
    TrialCompleted,
)
from shaping.services.curricula.errors import CurriculumInvalid
from shaping.services.curricula.validate import compile_curriculum
from shaping.services.domain import CurriculumCatalog, TrainingCore, initial_state
from shaping.services.domain.metrics import METRICS, MetricView, SessionMetrics

T0 = datetime(2024, 5, 1, 9, tzinfo=UTC)


def curriculum(**changes: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": "t",
        "version": "1.0.0",
        "conditions": [
            {
                "name": "engaged",
                "when": "window_trials(sessions=2) >= 10",
                "description": "At least 10 trials over the last 2 sessions.",
            }
        ],
        "report": [
            {"name": "trials", "value": "window_n_trials(sessions=2)"},
            {"name": "engaged", "value": "engaged"},
            {"name": "accuracy", "value": "accuracy(window=50)"},
        ],
        "stages": [
            {
                "name": "one",
                "rules": [
                    {
                        "name": "go",
                        "decision": "progress",
                        "to": "two",
                        "when": "engaged and all(window_perf_easy(sessions=2) > 0.5)",
                        "description": "Engaged and good on easy trials.",
                    }
                ],
                "warnings": [
                    {
                        "name": "many_misses",
                        "when": "miss_rate(window=20) > 0.4",
                        "description": "More than 40% of the last 20 trials were missed.",
                    }
                ],
            },
            {"name": "two", "terminal": True},
        ],
    }
    document.update(changes)
    return document


def run_session(core: TrainingCore, state: Any, number: int, outcomes: str) -> Any:
    """One session of easy trials (c: correct, i: incorrect, m: miss)."""
    sid = f"S{number}"
    start = T0 + timedelta(days=number)
    events: list[Any] = [
        SessionStarted(
            mouse_id="M",
            session_id=sid,
            occurred_at=start,
            stage=state.stage,
            curriculum_name="t",
            curriculum_version="1.0.0",
            parameters={},
        )
    ]
    codes = {"c": "correct", "i": "incorrect", "m": "miss"}
    for index, code in enumerate(outcomes):
        events.append(
            TrialCompleted(
                mouse_id="M",
                session_id=sid,
                occurred_at=start + timedelta(seconds=index + 1),
                trial_index=index,
                outcome=codes[code],  # type: ignore[arg-type]
                response_side=None if code == "m" else "left",
                trial_parameters={"contrast_left": 1.0},
            )
        )
    events.append(
        SessionEnded(
            mouse_id="M",
            session_id=sid,
            occurred_at=start + timedelta(hours=1),
            n_trials=len(outcomes),
            end_reason="completed",
            duration_s=3600.0,
        )
    )
    outputs = []
    for event in events:
        state, out = core.handle(state, event)
        outputs.extend(out)
    return state, next(o for o in outputs if isinstance(o, StageTransitioned))


def test_decisions_carry_reported_values_and_the_warnings_that_held() -> None:
    compiled = compile_curriculum(curriculum())
    core = TrainingCore(CurriculumCatalog([compiled]))
    state, _ = core.handle(
        initial_state("M"),
        MouseEnrolled(
            mouse_id="M", occurred_at=T0, curriculum_name="t", curriculum_version="1.0.0"
        ),
    )
    state, first = run_session(core, state, 1, "cccmmmc")
    assert first.to_stage == "one"  # 7 trials: not engaged yet
    assert first.metrics == {"trials[-1]": 7.0, "engaged": 0.0, "accuracy": 1.0}
    evaluation = compiled.evaluate("one", SessionMetrics(state))
    assert [w.rule for w in evaluation.warnings] == ["many_misses"]
    assert evaluation.warnings[0].observations[0].observed == pytest.approx(3 / 7)
    state, second = run_session(core, state, 2, "ccccci")
    assert second.to_stage == "two"
    assert second.metrics["trials[-2]"] == 7.0 and second.metrics["trials[-1]"] == 6.0
    evidence = [o.metric for o in second.rule_evaluations[0].observations]
    assert "engaged" in evidence and "min(window_perf_easy(sessions=2))" in evidence


def test_a_lab_registers_its_own_metric_and_curricula_use_it() -> None:
    registry = METRICS.with_metrics([])

    @registry.metric("sessions_with_misses", "counter", "Sessions of the window with a miss.")
    def sessions_with_misses(view: MetricView) -> float:
        return float(sum(1 for r in view.history if r.stats and r.stats.n_miss))

    document = curriculum()
    document["stages"][0]["rules"][0]["when"] = "sessions_with_misses >= 1"
    compiled = compile_curriculum(document, registry=registry)
    with pytest.raises(CurriculumInvalid, match="unknown metric 'sessions_with_misses'"):
        compile_curriculum(document)  # the shipped registry does not know it
    core = TrainingCore(CurriculumCatalog([compiled]))
    state, _ = core.handle(
        initial_state("M"),
        MouseEnrolled(
            mouse_id="M", occurred_at=T0, curriculum_name="t", curriculum_version="1.0.0"
        ),
    )
    state, decision = run_session(core, state, 1, "cm")
    assert decision.to_stage == "two"


@pytest.mark.parametrize(
    ("when", "words"),
    [
        ("psych_bias(dates=3, blok=0.2) > 1", "psych_bias has no argument 'blok'"),
        ("psych_bias(block=0.2) > 1", "give exactly one of sessions=k or dates=k"),
        ("psych_bias(dates=3, sessions=2) > 1", "give exactly one of sessions=k or dates=k"),
        ("psych_bias(dates=30) > 1", "dates must be between 1 and 7"),
        ("psych_bias(dates=3, block=2) > 1", "block must be between 0 and 1"),
        ("psych_bias > 1", "pools a window: call it with sessions=k or dates=k"),
        ("session_count(stage=3) > 1", "stage must be a quoted string"),
        ("session_protocol_is == 1", "needs arguments"),
        ("window_ephys_count(dates=session_total) > 1", "must be a constant"),
        ("all(window_n_trials(dates=3)) ", "needs a slice of sessions or a window series"),
        ("window_n_trials(dates=3) > 400", "must be inside mean/sum/len"),
        ("engagd", "did you mean 'engaged'"),
    ],
)
def test_metric_arguments_are_checked_when_the_curriculum_loads(when: str, words: str) -> None:
    document = curriculum()
    document["stages"][0]["rules"][0]["when"] = when
    with pytest.raises(CurriculumInvalid) as caught:
        compile_curriculum(document)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("condition", "words"),
    [
        ({"name": "accuracy", "when": "session_total > 1"}, "is the name of a metric"),
        ({"name": "engaged", "when": "session_total > 1"}, "is defined twice"),
        ({"name": "early", "when": "later"}, "unknown metric 'later'"),
    ],
)
def test_named_conditions_are_checked(condition: dict[str, str], words: str) -> None:
    document = curriculum()
    document["conditions"].append({**condition, "description": "x"})
    document["conditions"].append(
        {"name": "later", "when": "session_total > 2", "description": "y"}
    )
    with pytest.raises(CurriculumInvalid) as caught:
        compile_curriculum(document)
    assert words in str(caught.value)


def test_every_shipped_metric_is_usable_as_its_usage_says() -> None:
    """Each registered metric's usage line parses as a rule (the docs list these)."""
    for definition in METRICS:
        usage = definition.usage()
        example = (
            usage.replace("sessions=<int> | dates=<int>", "dates=3")
            .replace("window=<int>", "window=10")
            .replace("[", "")
            .replace("]", "")
        )
        for argument in definition.arguments:
            value = {"int": "1", "number": "0.5", "text": '"x"', "bool": "True"}[argument.type]
            example = example.replace(
                f"{argument.name}=<{argument.type}>", f"{argument.name}={value}"
            )
        rule = f"{example} >= 0" if definition.kind != "window_series" else f"all({example} >= 0)"
        document = curriculum()
        document["stages"][0]["rules"][0]["when"] = rule
        compile_curriculum(document)
