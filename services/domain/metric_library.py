"""The metrics Shaping ships: definitions, sources, and the functions computing them.

Every computed metric reads a session's sufficient statistics
(:class:`~services.domain.session_stats.SessionStats`) through a
:class:`~services.domain.metric_registry.MetricView`; see docs/metrics.md for the list with
examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from statistics import NormalDist
from typing import Any

from shaping.services.domain.metric_registry import (
    Argument,
    FinishedSession,
    MetricDefinition,
    MetricKind,
    MetricView,
    Unit,
    median,
    ratio,
)
from shaping.services.domain.psychometric import (
    FitRequest,
    block_fit_position,
    fit_many,
    fit_request,
)
from shaping.services.domain.session_stats import SessionStats, block_key

_NORMAL = NormalDist()


def log_linear_dprime(hits: int, signal: int, false_alarms: int, noise: int) -> float:
    """d' = z(H) - z(FA) with the log-linear correction (Hautus 1995): each rate is
    ``(count + 0.5) / (trials + 1)``, so it is defined for any counts."""
    hit_rate = (hits + 0.5) / (signal + 1)
    false_alarm_rate = (false_alarms + 0.5) / (noise + 1)
    return _NORMAL.inv_cdf(hit_rate) - _NORMAL.inv_cdf(false_alarm_rate)


# -- session metrics: computed once, when the session ends --------------------------------


def _session_trials(s: FinishedSession) -> float:
    return float(s.stats.n_trials)


def _finished_trials(s: FinishedSession) -> float:
    return float(s.stats.n_responded)


def _session_accuracy(s: FinishedSession) -> float | None:
    return ratio(s.stats.n_correct, s.stats.n_responded)


def _session_miss_rate(s: FinishedSession) -> float | None:
    return ratio(s.stats.n_miss, s.stats.n_trials)


def _session_bias(s: FinishedSession) -> float | None:
    return ratio(s.stats.n_right, s.stats.n_right + s.stats.n_left)


def _session_rt_median(s: FinishedSession) -> float | None:
    value = median([rt for rt in s.stats.rts_ms if rt is not None])
    return None if value is None else value / 1000


def _session_perf_easy(s: FinishedSession) -> float | None:
    return ratio(s.stats.n_easy_correct, s.stats.n_easy)


def _session_duration(s: FinishedSession) -> float | None:
    return s.duration_s


def _session_start_delay(s: FinishedSession) -> float | None:
    return s.start_delay_s


def _session_dprime(s: FinishedSession) -> float:
    left, hits, right, false_alarms = s.stats.dprime_counts
    return log_linear_dprime(hits, left, false_alarms, right)


# -- counters ---------------------------------------------------------------------------


def _session_total(view: MetricView) -> float:
    return float(view.session_total)


def _sessions_at_stage(view: MetricView) -> float:
    return float(view.sessions_at_stage)


def _days_at_stage(view: MetricView) -> float:
    run = view.history[-view.sessions_at_stage :] if view.sessions_at_stage else []
    return float(len({r.session_date for r in run}))


def _session_count(
    view: MetricView, stage: str | None = None, protocol: str | None = None
) -> float:
    total = 0
    for stage_name, by_protocol in view.session_counts.items():
        if stage is not None and stage_name != stage:
            continue
        for protocol_name, count in by_protocol.items():
            if protocol is None or protocol_name == protocol:
                total += count
    return float(total)


def _session_protocol_is(view: MetricView, protocol: str) -> float | None:
    judged = view.judged
    if judged is None:
        return None
    return 1.0 if judged.task_protocol == protocol else 0.0


# -- trial windows ------------------------------------------------------------------------


def _accuracy(view: MetricView, window: int) -> float | None:
    trials = view.recent_trials(window, responded=True)
    return ratio(sum(1 for t in trials if t[0].lower() == "c"), len(trials))


def _trial_count(view: MetricView, window: int) -> float:
    return float(len(view.recent_trials(window)))


def _bias(view: MetricView, window: int) -> float | None:
    trials = view.recent_trials(window, responded=True)
    right = sum(1 for t in trials if t[1] == "r")
    left = sum(1 for t in trials if t[1] == "l")
    return ratio(right, right + left)


def _miss_rate(view: MetricView, window: int) -> float | None:
    trials = view.recent_trials(window)
    return ratio(sum(1 for t in trials if t[0].lower() == "m"), len(trials))


def _rt_median(view: MetricView, window: int) -> float | None:
    value = median([t[2] for t in view.recent_trials(window) if t[2] is not None])
    return None if value is None else value / 1000


# -- windows over sessions or dates -------------------------------------------------------


def _stats(units: Sequence[Unit]) -> list[SessionStats]:
    return [s for unit in units for s in unit.stats]


def _window_size(view: MetricView, **window: Any) -> float:
    return float(len(view.window(window)))


def _window_protocol_count(view: MetricView, protocol: str, **window: Any) -> float:
    return float(sum(1 for u in view.window(window) if u.protocol == protocol))


def _window_ephys_count(view: MetricView, **window: Any) -> float:
    return float(sum(1 for u in view.window(window) if u.ephys_rig))


def _window_delay_count(view: MetricView, min_delay_s: float = 900.0, **window: Any) -> float:
    delays = [u.start_delay_s for u in view.window(window)]
    return float(sum(1 for d in delays if d is not None and d >= min_delay_s))


def _cells(
    units: Sequence[Unit], block: float | None, contrast: float | None = None
) -> dict[float, list[int]]:
    """Pooled [trials, rightward] per signed contrast, in one block (None: every trial)."""
    wanted = None if block is None else block_key(block)
    pooled: dict[float, list[int]] = {}
    for stats in _stats(units):
        for cell_block, cell_contrast, n, right in stats.psych.cells():
            if wanted is not None and block_key(cell_block) != wanted:
                continue
            if contrast is not None and cell_contrast != contrast:
                continue
            total = pooled.setdefault(cell_contrast, [0, 0])
            total[0] += n
            total[1] += right
    return pooled


def _window_trials(
    view: MetricView, contrast: float | None = None, block: float | None = None, **window: Any
) -> float:
    units = view.window(window)
    if contrast is None and block is None:
        return float(sum(s.n_trials for s in _stats(units)))
    return float(sum(n for n, _ in _cells(units, block, contrast).values()))


def _window_accuracy(view: MetricView, **window: Any) -> float | None:
    stats = _stats(view.window(window))
    return ratio(sum(s.n_correct for s in stats), sum(s.n_responded for s in stats))


def _window_rt_zero(view: MetricView, **window: Any) -> float | None:
    return median([rt for s in _stats(view.window(window)) for rt in s.rt_zero])


def _window_dprime(view: MetricView, **window: Any) -> float | None:
    stats = _stats(view.window(window))
    if not stats:
        return None
    left, hits, right, false_alarms = (sum(s.dprime_counts[i] for s in stats) for i in range(4))
    return log_linear_dprime(hits, left, false_alarms, right)


_PSYCH_READ: dict[tuple[tuple[str, Any], ...], list[float | None]] = {}
"""Per window (its arguments), the blocks whose psychometric fit a decision has read in this
process (None: every trial), in the order first read. The IBL ladder reads the pooled fit and
both block fits at every decision."""


def _psych_request(units: Sequence[Unit], block: float | None) -> FitRequest:
    """The fit of one block of a window (None: every trial): its data and its position in
    ibllib's sequence of the window's fits."""
    cells = _cells(units, block)
    contrasts = sorted(cells)
    # ibllib fits a window's blocks in one sequence of its random generator (0.2, then
    # 0.8): the position of this fit in it (services/domain/psychometric.py).
    after = block_fit_position(
        block, lambda other: any(n for n, _ in _cells(units, other).values())
    )
    return fit_request(
        contrasts, [cells[c][0] for c in contrasts], [cells[c][1] for c in contrasts], after=after
    )


def _psych(view: MetricView, block: float | None, window: dict[str, Any]) -> tuple[float, ...]:
    """The window's fit of one block (None: every trial).

    The fits of a window that decisions read are fitted together, in one lockstep run
    (psychometric.fit_many): the first fit a decision asks of a window brings the window's
    other fits that earlier decisions read (the blocks in ``_PSYCH_READ``), so a decision of
    the IBL ladder fits its pooled, 0.2 and 0.8 fits at once, and a curriculum that reads one
    fit fits only that one. Each fit is exactly what it would be alone."""
    spec = tuple(sorted(window.items()))
    key = ("psych", block, spec)
    if key not in view.cache:
        read = _PSYCH_READ.setdefault(spec, [])
        if block not in read:
            read.append(block)
        blocks = [block, *(b for b in read if b != block and ("psych", b, spec) not in view.cache)]
        units = view.window(window)
        fits = fit_many([_psych_request(units, b) for b in blocks])
        for other, fit in zip(blocks, fits, strict=True):
            view.cache[("psych", other, spec)] = fit
    found: tuple[float, ...] = view.cache[key]
    return found


def _psych_bias(view: MetricView, block: float | None = None, **window: Any) -> float:
    return _psych(view, block, window)[0]


def _psych_threshold(view: MetricView, block: float | None = None, **window: Any) -> float:
    return _psych(view, block, window)[1]


def _psych_lapse_low(view: MetricView, block: float | None = None, **window: Any) -> float:
    return _psych(view, block, window)[2]


def _psych_lapse_high(view: MetricView, block: float | None = None, **window: Any) -> float:
    return _psych(view, block, window)[3]


def _selected(units: list[Unit], ephys_rig: bool | None) -> list[Unit]:
    return units if ephys_rig is None else [u for u in units if u.ephys_rig == ephys_rig]


def _window_n_trials(
    view: MetricView, ephys_rig: bool | None = None, **window: Any
) -> list[float | None]:
    units = _selected(view.window(window), ephys_rig)
    return [float(sum(s.n_trials for s in u.stats)) for u in units]


def _window_perf_easy(
    view: MetricView, ephys_rig: bool | None = None, **window: Any
) -> list[float | None]:
    units = _selected(view.window(window), ephys_rig)
    return [
        ratio(sum(s.n_easy_correct for s in u.stats), sum(s.n_easy for s in u.stats)) for u in units
    ]


# -- the registry -------------------------------------------------------------------------

_PROTOCOL = Argument("protocol", "text", description="a task_protocol, e.g. training or biased")
_BLOCK = Argument(
    "block",
    "number",
    minimum=0,
    maximum=1,
    description="only trials of this probabilityLeft block (IBL: 0.2, 0.5, 0.8)",
)
_EPHYS = Argument(
    "ephys_rig", "bool", description="only sessions/dates on (True) or off an ephys rig"
)

_IBL = "ibllib brainbox.behavior.training"
_WINDOW = (
    " Pooled over the window: sessions=k (the last k sessions) or dates=k (the judged date and "
    "the k-1 dates before it that have sessions; a date's sessions are concatenated, as IBL "
    "does; habituation sessions carry no data)."
)


def _psych_definition(name: str, what: str) -> MetricDefinition:
    functions = {
        "psych_bias": _psych_bias,
        "psych_threshold": _psych_threshold,
        "psych_lapse_low": _psych_lapse_low,
        "psych_lapse_high": _psych_lapse_high,
    }
    return MetricDefinition(
        name,
        "window",
        f"{what} of IBL's psychometric fit (psychofit erf_psycho_2gammas, maximum likelihood, "
        f"{_IBL}.compute_psychometric's training-status settings) of the fraction of rightward "
        f"choices per signed contrast, misses counted as not rightward; block=p fits only "
        f"trials with probabilityLeft p. Deterministic: psychofit's random restarts draw from "
        f"a generator seeded with 0 per window, shared by the block fits in ibllib's order "
        f"(0.2, then 0.8), as in ibllib's tests (services/domain/psychometric.py). NaN when "
        f"the window has no trials." + _WINDOW,
        function=functions[name],
        arguments=(_BLOCK,),
    )


def builtin_metrics() -> list[MetricDefinition]:
    """Every metric Shaping ships."""
    session: MetricKind = "session"
    return [
        # counters
        MetricDefinition(
            "session_total",
            "counter",
            "The judged session's number (AIND's session_total, which upstream sets to the "
            "session number): on the event path the mouse's sessions run in all, including the "
            "judged one (the session_number of the assignment a rig runs); in a session table "
            "(shaping evaluate --sessions) the session column's number, which can skip numbers "
            "(sessions 1-7 then 10: 10 on the 8th row).",
            function=_session_total,
        ),
        MetricDefinition(
            "sessions_at_stage",
            "counter",
            "Sessions in a row run at the judged session's stage, including it; it restarts "
            "at 1 when a session runs another stage than the one before (a progress, a "
            "rollback or a trainer's override). AIND's session_at_current_stage.",
            function=_sessions_at_stage,
        ),
        MetricDefinition(
            "days_at_stage",
            "counter",
            "Distinct session dates among the sessions_at_stage sessions in a row at the "
            "judged session's stage (read from the kept history, so at most "
            "MAX_SESSION_HISTORY sessions back).",
            function=_days_at_stage,
        ),
        MetricDefinition(
            "session_count",
            "counter",
            "Sessions run in all, including the judged one, at stage=S and/or with "
            "task_protocol=P (both optional); a counter kept however long the history (IBL's "
            "40-session untrainable and unbiasable limits).",
            function=_session_count,
            arguments=(Argument("stage", "text", description="a stage name"), _PROTOCOL),
        ),
        MetricDefinition(
            "session_protocol_is",
            "counter",
            "1 when the judged session ran with task_protocol=P (its SessionStarted "
            "parameters), else 0.",
            function=_session_protocol_is,
            arguments=(Argument("protocol", "text", required=True, description="a task_protocol"),),
        ),
        # session metrics computed from trial events
        MetricDefinition(
            "session_trials",
            session,
            "Trials in a session, misses included (IBL's n_trials for one session).",
            function=_session_trials,
        ),
        MetricDefinition(
            "finished_trials",
            session,
            "Responded (correct or incorrect) trials in a session; AIND's finished_trials, "
            "the trials that were not ignored.",
            function=_finished_trials,
        ),
        MetricDefinition(
            "session_accuracy",
            session,
            "Fraction correct among a session's responded trials (none responded: no value).",
            function=_session_accuracy,
        ),
        MetricDefinition(
            "session_miss_rate",
            session,
            "Fraction of a session's trials with no response (ignored / no-go).",
            function=_session_miss_rate,
        ),
        MetricDefinition(
            "session_bias",
            session,
            "Fraction of a session's responses that went to the right.",
            function=_session_bias,
        ),
        MetricDefinition(
            "session_rt_median",
            session,
            "Median reaction time (s) of a session's trials that have one (1 ms resolution).",
            function=_session_rt_median,
        ),
        MetricDefinition(
            "session_perf_easy",
            session,
            "Fraction correct among a session's easy trials, |signed contrast| >= 50% (misses "
            f"count as errors): IBL's perf_easy ({_IBL}.compute_performance_easy). No value "
            "without easy trials.",
            function=_session_perf_easy,
        ),
        MetricDefinition(
            "session_duration_s",
            session,
            "Session duration in seconds, as SessionEnded.duration_s reports it.",
            function=_session_duration,
        ),
        MetricDefinition(
            "session_start_delay_s",
            session,
            "Delay before the session's first trial (s): its session_start_delay_s parameter "
            "(IBL's SESSION_START_DELAY_SEC).",
            function=_session_start_delay,
        ),
        MetricDefinition(
            "session_dprime",
            session,
            "d' of a session with the log-linear correction (Hautus 1995): hits are correct "
            "responses on left-target trials, false alarms incorrect responses on right-target "
            "trials; misses and correction trials (TrialCompleted.correction_trial) excluded; "
            "reach's definition (rig/reach.py).",
            function=_session_dprime,
        ),
        # session metrics reported by the rig or an analysis pipeline
        MetricDefinition(
            "foraging_efficiency",
            session,
            "Rewards earned over the rewards an ideal forager would earn (AIND dynamic "
            "foraging); reported per session by the rig or the analysis pipeline in "
            "SessionEnded.metrics.",
            reported=True,
        ),
        MetricDefinition(
            "peak_dprime",
            session,
            "Highest rolling d' of a session (mtrain / AllenSDK: go vs catch trials in a "
            "rolling window); needs lick-level data, so reported per session.",
            reported=True,
        ),
        MetricDefinition(
            "engaged_trials",
            session,
            "Trials of a session in an engaged period (mtrain / AllenSDK engagement: reward "
            "rate above threshold); needs lick-level data, so reported per session. mtrain's "
            "engagement criterion reads it with peak_dprime over the last 3 sessions.",
            reported=True,
        ),
        MetricDefinition(
            "response_bias",
            session,
            "Fraction of a session's responses that were licks, go or not (mtrain / "
            "AllenSDK); reported.",
            reported=True,
        ),
        MetricDefinition(
            "contingent_trials",
            session,
            "Trials of a session whose outcome depended on the response (mtrain); reported.",
            reported=True,
        ),
        MetricDefinition(
            "aborted_fraction",
            session,
            "Fraction of a session's trials aborted by an early lick (mtrain); reported.",
            reported=True,
        ),
        # rolling trial windows
        MetricDefinition(
            "accuracy",
            "trials",
            "Fraction correct among the last `window` responded trials, across sessions "
            "(misses excluded); Autopilot's Accuracy(threshold, window).",
            function=_accuracy,
        ),
        MetricDefinition(
            "trial_count",
            "trials",
            "Trials among the last `window` trials across sessions (fewer only while the mouse "
            "has done fewer); Autopilot's NTrials with a cap.",
            function=_trial_count,
        ),
        MetricDefinition(
            "bias",
            "trials",
            "Fraction of rightward choices among the last `window` responded trials.",
            function=_bias,
        ),
        MetricDefinition(
            "miss_rate",
            "trials",
            "Fraction of missed (ignored) trials among the last `window` trials.",
            function=_miss_rate,
        ),
        MetricDefinition(
            "rt_median",
            "trials",
            "Median reaction time (s) of the last `window` trials that have one (1 ms resolution).",
            function=_rt_median,
        ),
        # windows over sessions or dates
        MetricDefinition(
            "window_size",
            "window",
            "Sessions or dates in the window that carry data (habituation ones do not)." + _WINDOW,
            function=_window_size,
        ),
        MetricDefinition(
            "window_protocol_count",
            "window",
            "Sessions or dates in the window whose task_protocol is P (a date's is its last "
            "session's, as ibllib reads it)." + _WINDOW,
            function=_window_protocol_count,
            arguments=(Argument("protocol", "text", required=True, description="a task_protocol"),),
        ),
        MetricDefinition(
            "window_ephys_count",
            "window",
            "Sessions or dates in the window run on an ephys rig (the ephys_rig parameter; a "
            "date's is its last session's): IBL's n_ephys." + _WINDOW,
            function=_window_ephys_count,
        ),
        MetricDefinition(
            "window_delay_count",
            "window",
            "Sessions or dates in the window whose start delay (the longest of a date's) is at "
            "least min_delay_s (default 900 s): IBL's n_delay." + _WINDOW,
            function=_window_delay_count,
            arguments=(Argument("min_delay_s", "number", minimum=0, description="seconds"),),
        ),
        MetricDefinition(
            "window_trials",
            "window",
            "Trials in the window, misses included; contrast=c counts only trials at signed "
            "contrast c (percent; IBL's 0%-contrast-present check is contrast=0), block=p only "
            "trials with probabilityLeft p." + _WINDOW,
            function=_window_trials,
            arguments=(Argument("contrast", "number", description="signed contrast (%)"), _BLOCK),
        ),
        MetricDefinition(
            "window_accuracy",
            "window",
            "Fraction correct among the window's responded trials." + _WINDOW,
            function=_window_accuracy,
        ),
        MetricDefinition(
            "window_rt_zero",
            "window",
            "Median reaction time (s) of the window's 0% contrast trials (IBL's rt: "
            f"{_IBL}.compute_median_reaction_time(contrast=0), response_times - stimOn_times, "
            "NaN skipped); no value without such trials." + _WINDOW,
            function=_window_rt_zero,
        ),
        MetricDefinition(
            "window_dprime",
            "window",
            "d' of the window's trials pooled (as session_dprime)." + _WINDOW,
            function=_window_dprime,
        ),
        _psych_definition("psych_bias", "Bias (the 50% point, in % contrast)"),
        _psych_definition("psych_threshold", "Threshold (the erf's width, in % contrast)"),
        _psych_definition("psych_lapse_low", "Lapse rate on the left (lower asymptote)"),
        _psych_definition("psych_lapse_high", "Lapse rate on the right (1 - upper asymptote)"),
        MetricDefinition(
            "window_n_trials",
            "window_series",
            "Trials per session or date of the window, oldest first (IBL's n_trials list); "
            "ephys_rig=True keeps only those on an ephys rig." + _WINDOW,
            function=_window_n_trials,
            arguments=(_EPHYS,),
        ),
        MetricDefinition(
            "window_perf_easy",
            "window_series",
            "Easy-trial performance (|contrast| >= 50%) per session or date of the window, "
            f"oldest first (IBL's perf_easy list, {_IBL}.compute_performance_easy per date); "
            "ephys_rig=True keeps only those on an ephys rig." + _WINDOW,
            function=_window_perf_easy,
            arguments=(_EPHYS,),
        ),
    ]
