"""Every metric Shaping computes incrementally (a trial updates its session's statistics, a
SessionEnded makes a record) equals a naive recompute from the raw trial list, on random trial
streams: random sessions, dates (in and out of order), contrasts, blocks, misses, correction
trials, missing reaction times, protocols (habituation included), rigs and start delays."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from statistics import NormalDist
from typing import Any

import numpy as np
import psychofit
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaping.schemas.events import Event, SessionEnded, SessionStarted, TrialCompleted
from shaping.services.domain.core import evolve, initial_state
from shaping.services.domain.metrics import METRICS, SessionMetrics
from shaping.services.domain.state import MAX_TRIAL_WINDOW, MouseState

T0 = datetime(2024, 3, 1, 8, tzinfo=UTC)


@dataclass(frozen=True)
class Trial:
    contrast_left: float | None
    contrast_right: float | None
    probability_left: float | None
    outcome: str
    side: str | None
    target: str | None
    rt: float | None
    correction: bool

    @property
    def signed(self) -> float | None:
        if self.contrast_left is None and self.contrast_right is None:
            return None
        return ((self.contrast_right or 0.0) - (self.contrast_left or 0.0)) * 100


@dataclass(frozen=True)
class Session:
    day: int
    stage: str
    protocol: str | None
    ephys_rig: bool
    delay: float | None
    duration: float
    trials: tuple[Trial, ...]

    @property
    def date(self) -> str:
        return (date(2024, 3, 1) + timedelta(days=self.day)).isoformat()


CONTRASTS = [0.0, 0.0625, 0.125, 0.25, 0.5, 1.0]


@st.composite
def trials(draw: st.DrawFn) -> Trial:
    side_of_stimulus = draw(st.sampled_from(["left", "right", "none", "both"]))
    contrast = draw(st.sampled_from(CONTRASTS))
    left = contrast if side_of_stimulus in ("left", "both") else None
    right = contrast if side_of_stimulus == "right" else None
    if side_of_stimulus == "both":
        right = draw(st.sampled_from(CONTRASTS))
    outcome = draw(st.sampled_from(["correct", "incorrect", "miss"]))
    side = None if outcome == "miss" else draw(st.sampled_from(["left", "right"]))
    rt = draw(st.one_of(st.none(), st.floats(0.05, 4.0, allow_nan=False)))
    return Trial(
        contrast_left=left,
        contrast_right=right,
        probability_left=draw(st.sampled_from([0.2, 0.5, 0.8, None])),
        outcome=outcome,
        side=side,
        target=draw(st.sampled_from(["left", "right", None])),
        rt=rt,
        correction=draw(st.booleans()),
    )


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    return Session(
        day=draw(st.integers(0, 6)),
        stage=draw(st.sampled_from(["a", "b", "c"])),
        protocol=draw(st.sampled_from(["training", "biased", "habituation", None])),
        ephys_rig=draw(st.booleans()),
        delay=draw(st.sampled_from([None, 0.0, 899.0, 900.0, 1800.0])),
        duration=draw(st.floats(10, 4000)),
        trials=tuple(draw(st.lists(trials(), min_size=0, max_size=25))),
    )


def events(session: Session, number: int) -> list[Event]:
    sid = f"S{number}"
    start = T0 + timedelta(days=session.day, minutes=number)
    params: dict[str, Any] = {"ephys_rig": session.ephys_rig}
    if session.protocol is not None:
        params["task_protocol"] = session.protocol
    if session.delay is not None:
        params["session_start_delay_s"] = session.delay
    out: list[Event] = [
        SessionStarted(
            mouse_id="M",
            session_id=sid,
            occurred_at=start,
            stage=session.stage,
            curriculum_name="c",
            curriculum_version="1.0.0",
            parameters=params,
            session_date=session.date,
        )
    ]
    for index, t in enumerate(session.trials):
        parameters: dict[str, Any] = {}
        if t.contrast_left is not None:
            parameters["contrast_left"] = t.contrast_left
        if t.contrast_right is not None:
            parameters["contrast_right"] = t.contrast_right
        if t.probability_left is not None:
            parameters["probability_left"] = t.probability_left
        out.append(
            TrialCompleted(
                mouse_id="M",
                session_id=sid,
                occurred_at=start + timedelta(seconds=index),
                trial_index=index,
                outcome=t.outcome,  # type: ignore[arg-type]
                response_side=t.side,
                target_side=t.target,
                reaction_time_s=t.rt,
                correction_trial=t.correction,
                trial_parameters=parameters,
            )
        )
    out.append(
        SessionEnded(
            mouse_id="M",
            session_id=sid,
            occurred_at=start + timedelta(seconds=session.duration),
            n_trials=len(session.trials),
            end_reason="completed",
            duration_s=session.duration,
        )
    )
    return out


def in_date_order(stream: Sequence[Session]) -> list[Session]:
    """Sessions in the order a rig runs them (a late session is the recompute's business:
    docs/recompute.md)."""
    return sorted(stream, key=lambda s: s.day)


def fold(stream: Sequence[Session]) -> list[MouseState]:
    """The state after each session, folding every event (each trial redelivered once, which
    must change nothing)."""
    state = initial_state("M")
    after = []
    for number, session in enumerate(stream):
        for event in events(session, number):
            state = evolve(state, event)
            if isinstance(event, TrialCompleted):
                state = evolve(state, event)
        after.append(state)
    return after


# -- the naive recompute --------------------------------------------------------------------


def ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def rt_ms(t: Trial) -> int | None:
    return None if t.rt is None else round(t.rt * 1000)


def dprime(ts: Sequence[Trial]) -> float:
    kept = [t for t in ts if t.outcome != "miss" and not t.correction and t.target is not None]
    left = [t for t in kept if t.target == "left"]
    right = [t for t in kept if t.target == "right"]
    hits = sum(t.outcome == "correct" for t in left)
    fas = sum(t.outcome == "incorrect" for t in right)
    z = NormalDist().inv_cdf
    return z((hits + 0.5) / (len(left) + 1)) - z((fas + 0.5) / (len(right) + 1))


def units(
    stream: Sequence[Session], sessions: int | None, dates: int | None
) -> list[list[Session]]:
    if dates is not None:
        judged = stream[-1].date
        eligible = [s for s in stream if s.date <= judged]
        chosen = sorted({s.date for s in eligible})[-dates:]
        groups = [[s for s in eligible if s.date == d] for d in chosen]
    else:
        groups = [[s] for s in stream[-(sessions or 1) :]]
    return [g for g in groups if g[-1].protocol != "habituation"]


def perf_easy(ts: Sequence[Trial]) -> float | None:
    easy = [t for t in ts if t.signed is not None and abs(t.signed) >= 50]
    return ratio(sum(t.outcome == "correct" for t in easy), len(easy))


def flat(group: Sequence[Session]) -> list[Trial]:
    return [t for s in group for t in s.trials]


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


WINDOWS = [{"sessions": 1}, {"sessions": 3}, {"dates": 1}, {"dates": 3}]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sessions(), min_size=1, max_size=8), st.sampled_from([1, 5, 20, 60]))
def test_every_incremental_metric_equals_a_naive_recompute(
    stream: list[Session], window: int
) -> None:
    stream = in_date_order(stream)
    for k, state in enumerate(fold(stream)):
        so_far = stream[: k + 1]
        judged = so_far[-1]
        metrics = SessionMetrics(state)
        every = flat(so_far)
        responded = [t for t in every if t.outcome != "miss"]
        last = every[-window:]
        last_responded = responded[-window:]
        # trial windows across sessions
        assert close(
            metrics.value("accuracy", window),
            ratio(sum(t.outcome == "correct" for t in last_responded), len(last_responded)),
        )
        assert metrics.value("trial_count", window) == len(last)
        right = sum(t.side == "right" for t in last_responded)
        assert close(metrics.value("bias", window), ratio(right, len(last_responded)))
        assert close(
            metrics.value("miss_rate", window),
            ratio(sum(t.outcome == "miss" for t in last), len(last)),
        )
        rts = [ms for t in last if (ms := rt_ms(t)) is not None]
        assert close(metrics.value("rt_median", window), None if not rts else med(rts) / 1000)
        # the judged session
        ts = judged.trials
        done = [t for t in ts if t.outcome != "miss"]
        session_values = {
            "session_trials": float(len(ts)),
            "finished_trials": float(len(done)),
            "session_accuracy": ratio(sum(t.outcome == "correct" for t in done), len(done)),
            "session_miss_rate": ratio(len(ts) - len(done), len(ts)),
            "session_bias": ratio(sum(t.side == "right" for t in done), len(done)),
            "session_perf_easy": perf_easy(ts),
            "session_duration_s": judged.duration,
            "session_start_delay_s": judged.delay,
            "session_dprime": dprime(ts),
        }
        own_rts = [ms for t in ts if (ms := rt_ms(t)) is not None]
        session_values["session_rt_median"] = None if not own_rts else med(own_rts) / 1000
        for name, wanted in session_values.items():
            assert close(metrics.value(name), wanted), name
        # counters
        assert metrics.value("session_total") == k + 1
        streak = 1
        while streak < len(so_far) and so_far[-streak - 1].stage == judged.stage:
            streak += 1
        assert metrics.value("sessions_at_stage") == streak
        assert metrics.value("days_at_stage") == len({s.date for s in so_far[-streak:]})
        for stage in (None, "a", "b"):
            for protocol in (None, "biased", "habituation", ""):
                args = {
                    key: value
                    for key, value in (("stage", stage), ("protocol", protocol))
                    if value is not None
                }
                wanted = sum(
                    (stage is None or s.stage == stage)
                    and (protocol is None or (s.protocol or "") == protocol)
                    for s in so_far
                )
                assert metrics.value("session_count", arguments=args) == wanted, args
        assert metrics.value("session_protocol_is", arguments={"protocol": "biased"}) == float(
            judged.protocol == "biased"
        )
        # windows over sessions and dates
        for spec in WINDOWS:
            groups = units(so_far, spec.get("sessions"), spec.get("dates"))
            pooled = [t for g in groups for t in flat(g)]
            assert metrics.value("window_size", arguments=spec) == len(groups)
            assert metrics.value(
                "window_protocol_count", arguments={**spec, "protocol": "training"}
            ) == sum(g[-1].protocol == "training" for g in groups)
            assert metrics.value("window_ephys_count", arguments=spec) == sum(
                g[-1].ephys_rig for g in groups
            )
            delays = [
                max((s.delay for s in g if s.delay is not None), default=None) for g in groups
            ]
            assert metrics.value(
                "window_delay_count", arguments={**spec, "min_delay_s": 900}
            ) == sum(d is not None and d >= 900 for d in delays)
            assert metrics.value("window_trials", arguments=spec) == len(pooled)
            zero = [t for t in pooled if t.signed == 0]
            assert metrics.value("window_trials", arguments={**spec, "contrast": 0}) == len(zero)
            in_block = [t for t in pooled if t.signed is not None and t.probability_left == 0.2]
            assert metrics.value("window_trials", arguments={**spec, "block": 0.2}) == len(in_block)
            zero_rts = [round(t.rt, 6) for t in zero if t.rt is not None]
            assert close(metrics.value("window_rt_zero", arguments=spec), med(zero_rts))
            pooled_done = [t for t in pooled if t.outcome != "miss"]
            assert close(
                metrics.value("window_accuracy", arguments=spec),
                ratio(sum(t.outcome == "correct" for t in pooled_done), len(pooled_done)),
            )
            assert close(
                metrics.value("window_dprime", arguments=spec), dprime(pooled) if groups else None
            )
            assert list(metrics.series("window_n_trials", spec)) == [
                float(len(flat(g))) for g in groups
            ]
            on_rig = {**spec, "ephys_rig": True}
            assert list(metrics.series("window_n_trials", on_rig)) == [
                float(len(flat(g))) for g in groups if g[-1].ephys_rig
            ]
            got = metrics.series("window_perf_easy", spec)
            assert len(got) == len(groups)
            for value, g in zip(got, groups, strict=True):
                assert close(value, perf_easy(flat(g)))


def ibl_fit(ts: Sequence[Trial], block: float | None) -> tuple[float, ...]:
    """ibllib's compute_psychometric, step by step with numpy, on the naive trial list, after
    ``np.random.seed(0)`` as ibllib's tests seed each get_training_status call: a 0.8 block fit
    comes after the 0.2 block's (when that block has trials), numpy's generator continuing, as
    compute_bias_info runs them."""
    saved = np.random.get_state()
    np.random.seed(0)
    try:
        if block == 0.8:
            fit_block(ts, 0.2)
        return fit_block(ts, block)
    finally:
        np.random.set_state(saved)


def fit_block(ts: Sequence[Trial], block: float | None) -> tuple[float, ...]:
    """One compute_psychometric fit on numpy's global generator as it stands."""
    kept = [
        t for t in ts if t.signed is not None and (block is None or t.probability_left == block)
    ]
    if not kept:
        return (math.nan,) * 4
    signed = np.array([t.signed for t in kept])
    rightward = np.array([t.side == "right" for t in kept])
    contrasts, counts = np.unique(signed, return_counts=True)
    proportion = np.array([np.mean(rightward[signed == c]) for c in contrasts])
    pars, _ = psychofit.mle_fit_psycho(
        np.vstack([contrasts, counts, proportion]),
        P_model="erf_psycho_2gammas",
        parstart=np.array([np.mean(contrasts), 20.0, 0.05, 0.05]),
        parmin=np.array([np.min(contrasts), 0.0, 0.0, 0.0]),
        parmax=np.array([np.max(contrasts), 100.0, 1, 1]),
    )
    return tuple(float(p) for p in pars)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(sessions(), min_size=1, max_size=4), st.sampled_from([None, 0.2, 0.8]))
def test_the_psychometric_fit_equals_ibllibs_procedure_on_the_raw_trials(
    stream: list[Session], block: float | None
) -> None:
    stream = in_date_order(stream)
    state = fold(stream)[-1]
    metrics = SessionMetrics(state)
    spec: dict[str, Any] = {"dates": 3} if block is None else {"dates": 3, "block": block}
    pooled = [t for g in units(stream, None, 3) for t in flat(g)]
    wanted = ibl_fit(pooled, block)
    names = ("psych_bias", "psych_threshold", "psych_lapse_low", "psych_lapse_high")
    for name, value in zip(names, wanted, strict=True):
        got = metrics.value(name, arguments=spec)
        assert (got is None and math.isnan(value)) or got == value, (name, got, value)


def test_old_records_drop_their_trial_strings_and_windows_stay_exact() -> None:
    """Four sessions of 600 trials: the two oldest records no longer keep their per-trial
    strings (the records after each hold a whole MAX_TRIAL_WINDOW), and every window is still
    exact."""
    trial = Trial(0.25, None, 0.5, "correct", "left", "left", 0.4, False)
    wrong = Trial(None, 1.0, 0.8, "incorrect", "left", "right", None, False)
    stream = [
        Session(day, "a", "training", False, None, 3000.0, tuple([trial, wrong, trial] * 200))
        for day in range(4)
    ]
    state = fold(stream)[-1]
    assert [r.stats.detail for r in state.history if r.stats] == [False, False, True, True]
    metrics = SessionMetrics(state)
    every = flat(stream)
    last = every[-MAX_TRIAL_WINDOW:]
    assert metrics.value("accuracy", MAX_TRIAL_WINDOW) == sum(
        t.outcome == "correct" for t in last
    ) / len(last)
    assert metrics.value("session_count", arguments={"stage": "a"}) == 4
    assert metrics.value("window_trials", arguments={"sessions": 4}) == 2400  # summaries stay


def test_every_registered_metric_says_what_it_is_and_where_it_comes_from() -> None:
    for definition in METRICS:
        assert len(definition.description) > 30, definition.name
        assert definition.reported or definition.function is not None
