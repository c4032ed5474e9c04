"""The rule language: what it accepts, what it refuses (with a column), how it evaluates and
what evidence it gives."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaping.services.curricula.errors import RuleSyntaxError
from shaping.services.curricula.rules import Scope, numpy_sum, parse_condition, parse_value, unparse
from shaping.services.domain.metrics import METRICS
from tests.support.curricula import FakeMetrics

NAN = math.nan
SCOPE = Scope(METRICS)


def judge(text: str, metrics: FakeMetrics) -> tuple[bool, list[tuple[str, float | None, bool]]]:
    verdict, observations = parse_condition(text, SCOPE).judge(metrics)
    return verdict, [(o.metric, o.observed, o.passed) for o in observations]


def test_a_conjunction_gives_one_observation_per_comparison() -> None:
    metrics = FakeMetrics(
        counters={"sessions_at_stage": 2},
        series={"session_trials": [120]},
        windows={("accuracy", 200): 0.81},
    )
    verdict, evidence = parse_condition(
        "accuracy(window=200) >= 0.8 and session_trials >= 100 and sessions_at_stage >= 2", SCOPE
    ).judge(metrics)
    assert verdict is True
    assert [(o.metric, o.observed, o.comparator, o.threshold, o.passed) for o in evidence] == [
        ("accuracy(window=200)", 0.81, ">=", 0.8, True),
        ("session_trials", 120.0, ">=", 100.0, True),
        ("sessions_at_stage", 2.0, ">=", 2.0, True),
    ]


def test_means_over_slices_and_nested_or_are_recorded_by_their_text() -> None:
    metrics = FakeMetrics(
        counters={"sessions_at_stage": 3},
        series={"finished_trials": [100, 400, 500], "foraging_efficiency": [0.5, 0.9, 0.4]},
    )
    verdict, evidence = judge(
        "(mean(finished_trials[-2:]) < 300 or foraging_efficiency < 0.6)"
        " and sessions_at_stage >= 3",
        metrics,
    )
    assert verdict is True
    assert evidence == [
        ("mean(finished_trials[-2:])", 450.0, False),
        ("foraging_efficiency", 0.4, True),
        ("mean(finished_trials[-2:]) < 300 or foraging_efficiency < 0.6", 1.0, True),
        ("sessions_at_stage", 3.0, True),
    ]


def test_not_and_a_constant_on_the_left_are_recorded_the_right_way_round() -> None:
    metrics = FakeMetrics(series={"response_bias": [0.95]})
    verdict, observations = parse_condition("not (0.1 < response_bias < 0.9)", SCOPE).judge(metrics)
    assert verdict is True
    assert [(o.metric, o.comparator, o.threshold, o.passed) for o in observations] == [
        ("response_bias", ">", 0.1, True),
        ("response_bias", "<", 0.9, False),
    ]


def test_two_metric_expressions_are_compared_through_their_difference() -> None:
    metrics = FakeMetrics(series={"session_accuracy": [0.6, 0.7]})
    verdict, evidence = judge("session_accuracy > session_accuracy[-2]", metrics)
    assert verdict is True
    [(metric, observed, _)] = evidence
    assert metric == "session_accuracy - session_accuracy[-2]"
    assert observed == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("foraging_efficiency >= 0.6", False),
        ("foraging_efficiency < 0.6", False),  # NaN compares false both ways
        ("foraging_efficiency != 0.6", False),
        ("not foraging_efficiency >= 0.6", True),
        ("mean(foraging_efficiency[-3:]) >= 0", False),  # NaN in a mean makes it NaN
        ("finished_trials[-4] >= 0", False),  # before the first session: no value
        ("mean(finished_trials[-10:]) >= 200", True),  # a short history: the sessions there are
        ("mean(peak_dprime[-3:]) >= 0", False),  # mean of nothing is NaN
        ("sum(peak_dprime[-3:]) == 0 and len(peak_dprime[-3:]) == 0", True),
        ("accuracy(window=200) >= 0", False),  # no trials yet
    ],
)
def test_missing_values_fail_every_comparison(text: str, expected: bool) -> None:
    metrics = FakeMetrics(
        series={"foraging_efficiency": [0.7, None, NAN], "finished_trials": [100, 200, 300]}
    )
    assert parse_condition(text, SCOPE).holds(metrics) is expected


def test_a_slice_compared_with_a_number_counts_inside_an_aggregate() -> None:
    metrics = FakeMetrics(series={"peak_dprime": [2.5, 1.0, 2.1, 2.2]})
    assert parse_condition("sum(peak_dprime[-3:] > 2) >= 2", SCOPE).holds(metrics)
    assert not parse_condition("sum(peak_dprime[-3:] > 2) == 3", SCOPE).holds(metrics)
    assert parse_value("mean(peak_dprime[-4:] > 2)", SCOPE).value(metrics) == 0.75


@pytest.mark.parametrize(
    ("text", "words", "column"),
    [
        ("__import__('os').system('true')", "unknown function", 1),
        ("metrics.finished_trials[-1] >= 200", "attribute access", 1),
        ("(lambda: 1)() >= 1", "lambda", 2),
        ("finished_trials[-1] >= 200 if True else False", "conditional expression", 1),
        ("acuracy(window=200) >= 0.8", "did you mean 'accuracy'", 1),
        ("sessions_at_stag >= 2", "did you mean 'sessions_at_stage'", 1),
        ("accuracy >= 0.8", "give its window", 1),
        ("accuracy(window=0) >= 0.8", "between 1 and 1000", 1),
        ("accuracy(window=200, bias=1) >= 0.8", "exactly one argument", 1),
        ("session_total[-1] >= 1", "cannot be indexed", 1),
        ("mean(finished_trials[:]) >= 1", "count back from the latest session", 6),
        ("finished_trials[0] >= 1", "index sessions from the latest", 1),
        ("mean(finished_trials[-50:]) >= 1", "the processor keeps the last 20", 6),
        ("finished_trials[-5:] >= 1", "must be inside mean/sum/len", 1),
        ("mean(finished_trials) >= 1", "needs a slice of sessions", 1),
        ("np.mean(finished_trials[-5:]) >= 1", "unknown function 'np.mean'", 1),
        ("session_total + 1", "must be true or false", 1),
        ("2 >= 1", "compares two constants", 1),
        ("session_total >= 'ten'", "only numbers can be compared", 1),
        ("session_total >= 1 and 3", "must be a condition", 24),
        ("mean(finished_trials[-5:] >= 1", "unbalanced parentheses", None),
        ("session_total >=", "syntax error", None),
        ("", "empty", None),
        ("session_total ** 2 > 4", "only + - * / are allowed", 1),
        ("[1, 2] == session_total", "list literal", 1),
    ],
)
def test_bad_rules_are_refused_with_a_reason_and_where(
    text: str, words: str, column: int | None
) -> None:
    with pytest.raises(RuleSyntaxError) as caught:
        parse_condition(text, SCOPE)
    assert words in caught.value.message
    if column is not None:
        assert caught.value.column == column


def test_nothing_is_ever_evaluated_by_python(tmp_path: Path) -> None:
    """Rules that would have side effects if eval'd are refused before anything runs."""
    target = tmp_path / "pwned"
    for text in (
        f"open({str(target)!r}, 'w').close() or True",
        f"__import__('pathlib').Path({str(target)!r}).touch() or True",
        f"session_total > 1 and (lambda: open({str(target)!r}, 'w'))()",
    ):
        with pytest.raises(RuleSyntaxError):
            parse_condition(text, SCOPE)
    assert not target.exists()


def test_policy_values_read_parameters_and_metrics() -> None:
    scope = Scope(METRICS, frozenset({"delay_s", "mode"}))
    expression = parse_value("min(delay_s + 0.1 * session_accuracy, 2.0)", scope)
    metrics = FakeMetrics(series={"session_accuracy": [0.5]})
    assert expression.value(metrics, {"delay_s": 1.0}) == pytest.approx(1.05)
    assert expression.value(metrics, {"delay_s": 1.99}) == 2.0
    assert expression.parameters == {"delay_s"}
    assert parse_value("'fast'", scope).value(metrics, {}) == "fast"
    with pytest.raises(RuleSyntaxError, match="unknown metric or parameter 'dealy_s'"):
        parse_value("dealy_s + 1", scope)


def test_expressions_report_what_they_read() -> None:
    expression = parse_condition(
        "accuracy(window=150) >= 0.7 and mean(finished_trials[-5:]) > 1 and session_total > 2",
        SCOPE,
    )
    assert expression.metrics == {"accuracy", "finished_trials", "session_total"}
    assert (expression.trial_window, expression.session_lookback) == (150, 5)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(-1e6, 1e6, allow_nan=False),
            st.floats(0, 1).map(lambda v: round(v, 3)),
            st.integers(0, 1000).map(float),
        ),
        max_size=300,
    )
)
def test_mean_decides_as_numpy_does_bit_for_bit(values: list[float]) -> None:
    """AIND's rules use np.mean: a boundary case (mean exactly at a threshold) must decide the
    same way, so the sum follows numpy's pairwise order."""
    if values:
        assert numpy_sum(values) / len(values) == np.mean(np.array(values, dtype=float))
    assert numpy_sum(values) == np.add.reduce(np.array(values, dtype=float))


NAMES = st.sampled_from(["session_total", "sessions_at_stage", "finished_trials"])


@st.composite
def expressions(draw: st.DrawFn, depth: int = 0) -> str:
    """Random well-formed boolean expressions of the language."""
    if depth > 2 or draw(st.booleans()):
        left = draw(
            st.one_of(
                NAMES,
                st.builds(lambda k: f"mean(finished_trials[-{k}:])", st.integers(1, 20)),
                st.builds(lambda n, k: f"{n} - {k}", NAMES, st.integers(0, 9)),
                st.builds(lambda n: f"-{n}", NAMES),
            )
        )
        op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
        return f"{left} {op} {draw(st.integers(-5, 500))}"
    kind = draw(st.sampled_from(["and", "or", "not"]))
    if kind == "not":
        return f"not ({draw(expressions(depth + 1))})"
    parts = draw(st.lists(expressions(depth + 1), min_size=2, max_size=3))
    return f" {kind} ".join(f"({p})" for p in parts)


@settings(max_examples=200, deadline=None)
@given(expressions())
def test_canonical_text_means_the_same_as_the_source(source: str) -> None:
    """The evidence prints expressions without redundant parentheses; the text must parse back
    to the very same tree."""
    text = parse_condition(source, SCOPE).text
    assert ast.dump(ast.parse(text, mode="eval")) == ast.dump(ast.parse(source, mode="eval"))
    assert unparse(ast.parse(text, mode="eval").body) == text
