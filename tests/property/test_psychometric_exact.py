"""Shaping's psychometric fit is psychofit's, bit for bit, whichever way it runs.

services/domain/psychometric.py does psychofit's ``mle_fit_psycho`` (erf_psycho_2gammas, 5
Nelder-Mead runs of ``scipy.optimize.fmin``) operation for operation, with the runs of many fits
in lockstep: the simplex logic in Python for a few runs, vectorised over runs for many. Each
is checked here against psychofit itself, run on numpy's global generator seeded with 0 and
advanced by the fits before (ibllib's sequence), on random data (Hypothesis) and on windows of
the benchmark mouse where fmin's budget runs out and where the simplex's values tie (the order
then comes from numpy.argsort, as fmin's does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import psychofit
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shaping.services.domain import psychometric
from shaping.services.domain.psychometric import FitRequest, fit_many, fit_request

CONTRASTS = (-100.0, -50.0, -25.0, -12.5, -6.25, 0.0, 6.25, 12.5, 25.0, 50.0, 100.0)

WINDOWS = [
    # fmin's budget (800 evaluations) runs out in some runs, and the values of a simplex tie
    # (points outside the bounds all cost 10,000,000).
    ((-100.0, -50.0, 50.0, 100.0), (497, 459, 410, 434), (127, 116, 264, 315)),
    (
        CONTRASTS,
        (139, 135, 167, 160, 171, 320, 134, 139, 150, 154, 131),
        (14, 10, 29, 43, 64, 136, 70, 91, 123, 142, 126),
    ),
    (
        CONTRASTS,
        (23, 24, 28, 31, 20, 136, 87, 83, 96, 109, 97),
        (2, 0, 0, 2, 13, 95, 77, 78, 95, 107, 94),
    ),
    ((-100.0, -50.0, 50.0, 100.0), (177, 144, 128, 151), (57, 51, 70, 103)),
    # one contrast (parmin = parmax on the bias), and every choice one way (P clipped to eps)
    ((0.0,), (40,), (17,)),
    ((-25.0, 25.0), (30, 30), (0, 30)),
]


def psychofit_fit(request: FitRequest) -> tuple[float, ...]:
    """psychofit's fit as ibllib runs it, after ``np.random.seed(0)`` and ``after`` fits."""
    levels = np.array(request.contrasts)
    counts = np.array(request.trials, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        proportion = np.array(request.rightward) / np.where(counts > 0, counts, np.nan)
    saved = np.random.get_state()
    try:
        np.random.seed(psychometric.SEED)
        np.random.rand(request.after * psychometric.DRAWS_PER_FIT)
        pars, _ = psychofit.mle_fit_psycho(
            np.vstack([levels, counts, proportion]),
            P_model="erf_psycho_2gammas",
            parstart=np.array([np.mean(levels), 20.0, 0.05, 0.05]),
            parmin=np.array([np.min(levels), 0.0, 0.0, 0.0]),
            parmax=np.array([np.max(levels), 100.0, 1.0, 1.0]),
            nfits=psychometric.NFITS,
        )
    finally:
        np.random.set_state(saved)
    return tuple(float(p) for p in pars)


def both_ways(requests: Sequence[FitRequest]) -> tuple[list[tuple[float, ...]], ...]:
    """The batch fitted with the Python simplex logic and with the vectorised one (no cache)."""
    saved = psychometric.LOCKSTEP_RUNS
    try:
        psychometric.LOCKSTEP_RUNS = 10**9
        python = [tuple(f) for f in psychometric._fit_batch(requests)]
        psychometric.LOCKSTEP_RUNS = 1
        vectorised = [tuple(f) for f in psychometric._fit_batch(requests)]
    finally:
        psychometric.LOCKSTEP_RUNS = saved
    return python, vectorised


@pytest.mark.parametrize("window", range(len(WINDOWS)))
@pytest.mark.parametrize("after", [0, 1])
def test_a_window_fits_as_psychofit_does_bit_for_bit(window: int, after: int) -> None:
    contrasts, trials, rightward = WINDOWS[window]
    request = fit_request(contrasts, trials, rightward, after=after)
    wanted = psychofit_fit(request)
    python, vectorised = both_ways([request])
    assert python == [wanted]
    assert vectorised == [wanted]


def test_fits_batched_together_equal_each_fit_alone() -> None:
    requests = [fit_request(c, t, r, after=a) for c, t, r in WINDOWS for a in (0, 1)]
    wanted = [psychofit_fit(r) for r in requests]
    python, vectorised = both_ways(requests)
    assert python == wanted
    assert vectorised == wanted


@st.composite
def windows(draw: st.DrawFn) -> FitRequest:
    chosen = draw(st.lists(st.sampled_from(CONTRASTS), min_size=1, max_size=11, unique=True))
    contrasts = sorted(chosen)
    trials = [draw(st.integers(0, 400)) for _ in contrasts]
    if not any(trials):
        trials[0] = 1
    rightward = [draw(st.integers(0, n)) for n in trials]
    return fit_request(contrasts, trials, rightward, after=draw(st.integers(0, 2)))


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(windows(), min_size=1, max_size=3))
def test_random_windows_fit_as_psychofit_does(requests: list[FitRequest]) -> None:
    wanted = [psychofit_fit(r) for r in requests]
    python, vectorised = both_ways(requests)
    assert python == wanted
    assert vectorised == wanted


def test_the_cache_fits_each_request_once_and_empty_windows_not_at_all() -> None:
    psychometric._fit.cache_clear()
    request = fit_request(*WINDOWS[3])
    empty = fit_request([], [], [])
    first = fit_many([request, empty, request])
    assert first[0] == first[2] == psychofit_fit(request)
    assert all(v != v for v in first[1])  # NaN: nothing to fit
    assert psychometric._fit.cache_info().misses == 1
    assert fit_many([request]) == [first[0]]
    info = psychometric._fit.cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_numpys_global_random_state_is_never_touched() -> None:
    psychometric._fit.cache_clear()
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    fit_many([fit_request(c, t, r, after=1) for c, t, r in WINDOWS[:2]])
    assert (np.random.get_state()[1] == before).all()
