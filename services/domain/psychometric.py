"""IBL's psychometric fit, with IBL's own ``psychofit`` package, made deterministic.

ibllib (``brainbox.behavior.training.compute_psychometric``, the settings it uses for the
training status) fits ``psychofit.mle_fit_psycho`` to the fraction of rightward choices per
signed contrast with ``P_model='erf_psycho_2gammas'``, ``parstart=[mean(contrasts), 20, 0.05,
0.05]``, ``parmin=[min(contrasts), 0, 0, 0]``, ``parmax=[max(contrasts), 100, 1, 1]`` and the
default ``nfits=5``; the contrasts are the distinct signed contrasts of the trials (sorted, as
``numpy.unique`` gives them), with their trial counts. The result is ``[bias, threshold,
lapse_low, lapse_high]``.

psychofit restarts Nelder-Mead from random points drawn with numpy's global random generator:
after each of its ``nfits`` fits it draws a new start point of 4 uniform numbers (also after
the last, so one fit always takes :data:`DRAWS_PER_FIT` numbers, whatever the data). ibllib
never seeds it, so its values change from run to run in the last digits; its tests seed the
generator once (``np.random.seed(0)``) before each ``get_training_status`` call, and the fits
of that call then share the generator in the order ibllib runs them. For a window of biased
dates that order is the 0.2 block, then the 0.8 block (``compute_bias_info``; a block without
trials is not fitted and draws nothing): the 0.8 fit starts where the 0.2 fit left the
generator, and a different start can land psychofit on another local optimum (a few percent
on the threshold).

Ours reproduce that sequence exactly: a fit is the ``after``-th of its computation (0 for the
first), and it runs with a generator seeded with :data:`SEED` and advanced past the
``after * DRAWS_PER_FIT`` numbers the fits before it drew (:func:`block_fit_position` says
where a block fit stands in ibllib's order). The generator is a local
``numpy.random.RandomState``; psychofit only reads numpy's global one, so its state is put in
place for the fit and the caller's state is put back afterwards (callers' random streams are
untouched). The same trials in the same position always give the same parameters, on every
path (processor, replay, batch). Fits are cached by their data and position.

psychofit (with numpy and scipy) is a dependency of ``shaping[services]`` only: it is imported
when a fit is first needed, so a rig never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import lru_cache

SEED = 0
"""Seed of the generator of one computation's fits (ibllib's tests use 0)."""

NFITS = 5
"""Fits psychofit runs (its default, which ibllib's training status uses)."""

N_PARAMETERS = 4
"""Parameters of erf_psycho_2gammas: bias, threshold, lapse_low, lapse_high."""

DRAWS_PER_FIT = NFITS * N_PARAMETERS
"""Uniform numbers one psychofit fit draws from the generator: a start point after each of
its NFITS fits."""

BLOCK_FIT_ORDER: tuple[float, ...] = (0.2, 0.8)
"""The probabilityLeft blocks ibllib fits for one window, in the order it fits them
(``compute_bias_info``: the 0.2 block, then the 0.8 block)."""

Fit = tuple[float, float, float, float]
"""bias, threshold, lapse_low, lapse_high."""

NAN_FIT: Fit = (math.nan, math.nan, math.nan, math.nan)


def block_fit_position(block: float | None, has_trials: Callable[[float], bool]) -> int:
    """Where a fit stands among the fits of its computation, in ibllib's order.

    The pooled fit (``block=None``) and a block ibllib does not fit are the first (0). A block
    of :data:`BLOCK_FIT_ORDER` comes after the blocks before it there that have trials in the
    window (ibllib returns NaN for an empty block without fitting, so it draws nothing).

    Args:
        block: the probabilityLeft block fitted, or None for every trial.
        has_trials: whether the window has trials in a given block.
    """
    if block is None:
        return 0
    for index, fitted in enumerate(BLOCK_FIT_ORDER):
        if math.isclose(block, fitted, rel_tol=0.0, abs_tol=1e-12):
            return sum(1 for earlier in BLOCK_FIT_ORDER[:index] if has_trials(earlier))
    return 0


def fit_psychometric(
    contrasts: Sequence[float],
    trials: Sequence[int],
    rightward: Sequence[int],
    *,
    after: int = 0,
) -> Fit:
    """IBL's psychometric fit of rightward choices per signed contrast.

    Args:
        contrasts: the distinct signed contrasts (percent), ascending.
        trials: trials at each contrast (misses included).
        rightward: rightward choices at each contrast.
        after: fits of the same computation run before this one (each drew
            :data:`DRAWS_PER_FIT` numbers from the generator seeded with :data:`SEED`).

    Returns:
        (bias, threshold, lapse_low, lapse_high); all NaN when there are no trials.
    """
    if after < 0:
        raise ValueError(f"after must be 0 or more, not {after}")
    if not contrasts or sum(trials) == 0:
        return NAN_FIT
    return _fit(tuple(float(c) for c in contrasts), tuple(trials), tuple(rightward), after)


@lru_cache(maxsize=512)
def _fit(
    contrasts: tuple[float, ...], trials: tuple[int, ...], rightward: tuple[int, ...], after: int
) -> Fit:
    try:
        import numpy as np
        import psychofit
    except ImportError as exc:  # pragma: no cover - psychofit comes with shaping[services]
        raise ImportError(
            "psychometric metrics need IBL's psychofit: pip install 'shaping[services]'"
        ) from exc

    levels = np.array(contrasts, dtype=float)
    counts = np.array(trials, dtype=float)
    proportion = np.array(rightward, dtype=float) / np.where(counts > 0, counts, np.nan)
    data = np.vstack([levels, counts, proportion])
    generator = np.random.RandomState(SEED)
    for _ in range(after * NFITS):
        generator.rand(N_PARAMETERS)  # the start points the earlier fits drew
    saved = np.random.get_state()
    np.random.set_state(generator.get_state())
    try:
        pars, _ = psychofit.mle_fit_psycho(
            data,
            P_model="erf_psycho_2gammas",
            parstart=np.array([np.mean(levels), 20.0, 0.05, 0.05]),
            parmin=np.array([np.min(levels), 0.0, 0.0, 0.0]),
            parmax=np.array([np.max(levels), 100.0, 1.0, 1.0]),
            nfits=NFITS,
        )
    finally:
        np.random.set_state(saved)
    bias, threshold, low, high = (float(v) for v in pars)
    return bias, threshold, low, high
