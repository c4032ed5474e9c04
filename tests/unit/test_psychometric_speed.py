"""The fit engine's faster arithmetic changes no bit (services/domain/psychometric.py).

The likelihood now runs on conditions x runs arrays and sums each run's conditions with one
``numpy.add.reduce`` down the rows; the second point of an iteration is evaluated for every run
at once. These tests pin what that relies on (numpy's row-by-row order of that reduction, the
one-column case summed by hand) and check the engine against psychofit on a spread of windows
shaped like the IBL ladder's (pooled and block fits of 3-date windows, 2 to 11 contrasts,
fits of different widths batched together, runs stopping one by one until a single run is
left), with numpy's global random state untouched.
"""

from __future__ import annotations

import random
from math import erf

import numpy as np
import psychofit
import pytest

from shaping.services.domain import psychometric
from shaping.services.domain.psychometric import FitRequest, fit_request

CONTRASTS = (-100.0, -50.0, -25.0, -12.5, -6.25, 0.0, 6.25, 12.5, 25.0, 50.0, 100.0)


@pytest.mark.parametrize(
    ("conditions", "runs"), [(1, 1), (2, 1), (11, 1), (11, 2), (9, 3), (11, 650), (4, 37)]
)
def test_rows_are_summed_in_pythons_order(conditions: int, runs: int) -> None:
    generator = np.random.default_rng(conditions * 1000 + runs)
    magnitudes = 10.0 ** generator.uniform(-6, 4, (conditions, runs))
    terms = generator.standard_normal((conditions, runs)) * magnitudes
    summed = psychometric._sum_rows(terms)
    assert summed.tolist() == [sum(terms[:, r].tolist()) for r in range(runs)]


def _psychofit(request: FitRequest) -> tuple[float, ...]:
    """psychofit's fit as ibllib runs it, numpy's generator seeded with 0 and advanced by the
    fits before it; the caller's global state is put back."""
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


def _observer_window(seed: int) -> FitRequest:
    """A 3-date window of a simulated observer (erf with two lapses, a bias, 2-11 contrasts,
    100-700 trials a contrast), as the ladder's pooled or block fits see them."""
    rng = random.Random(seed)
    count = rng.choice((2, 4, 6, 8, 9, 11))
    contrasts = sorted(rng.sample(CONTRASTS, count))
    bias = rng.uniform(-20, 20)
    threshold = rng.uniform(3, 40)
    low, high = rng.uniform(0, 0.3), rng.uniform(0, 0.3)
    trials, rightward = [], []
    for contrast in contrasts:
        n = rng.randint(20, 700)
        p = low + (1 - low - high) * (erf((contrast - bias) / threshold) + 1) / 2
        trials.append(n)
        rightward.append(sum(rng.random() < p for _ in range(n)))
    return fit_request(contrasts, trials, rightward, after=rng.choice((0, 0, 1)))


def test_a_spread_of_ladder_windows_fits_as_psychofit_does() -> None:
    requests = [_observer_window(seed) for seed in range(24)]
    state = np.random.get_state()
    wanted = [_psychofit(r) for r in requests]
    saved = psychometric.LOCKSTEP_RUNS
    try:
        psychometric.LOCKSTEP_RUNS = 1  # every batch vectorised, widths mixed
        together = [tuple(f) for f in psychometric._fit_batch(requests)]
        psychometric.LOCKSTEP_RUNS = 10**9  # the per-run simplex logic, three fits a batch
        by_decision = [
            tuple(f) for i in range(0, 24, 3) for f in psychometric._fit_batch(requests[i : i + 3])
        ]
    finally:
        psychometric.LOCKSTEP_RUNS = saved
    assert together == wanted
    assert by_decision == wanted
    after = np.random.get_state()
    assert after[0] == state[0] and np.array_equal(after[1], state[1]) and after[2:] == state[2:]


def test_one_fit_alone_ends_with_a_single_run_and_still_matches() -> None:
    """One fit vectorised: its five runs stop one by one, the last alone (one column)."""
    request = _observer_window(101)
    saved = psychometric.LOCKSTEP_RUNS
    try:
        psychometric.LOCKSTEP_RUNS = 1
        [fit] = psychometric._fit_batch([request])
    finally:
        psychometric.LOCKSTEP_RUNS = saved
    assert tuple(fit) == _psychofit(request)
