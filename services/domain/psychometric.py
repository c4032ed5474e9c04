"""IBL's psychometric fit, with IBL's own ``psychofit`` package, made deterministic.

ibllib (``brainbox.behavior.training.compute_psychometric``, the settings it uses for the
training status) fits ``psychofit.mle_fit_psycho`` to the fraction of rightward choices per
signed contrast with ``P_model='erf_psycho_2gammas'``, ``parstart=[mean(contrasts), 20, 0.05,
0.05]``, ``parmin=[min(contrasts), 0, 0, 0]``, ``parmax=[max(contrasts), 100, 1, 1]`` and the
default ``nfits=5``; the contrasts are the distinct signed contrasts of the trials (sorted, as
``numpy.unique`` gives them), with their trial counts. The result is ``[bias, threshold,
lapse_low, lapse_high]``.

psychofit restarts Nelder-Mead from random points drawn with numpy's global random generator,
so ibllib's values change from run to run in the last digits. Ours do not: every fit seeds the
global generator with :data:`SEED` first and puts its previous state back afterwards (callers'
random streams are untouched), so the same trials always give the same parameters, on every
path (processor, replay, batch). Fits are cached by their data.

psychofit (with numpy and scipy) is a dependency of ``shaping[services]`` only: it is imported
when a fit is first needed, so a rig never loads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

SEED = 0
"""Seed of numpy's global generator for psychofit's random restarts (ibllib's tests use 0)."""

NFITS = 5
"""Fits psychofit runs (its default, which ibllib's training status uses)."""

Fit = tuple[float, float, float, float]
"""bias, threshold, lapse_low, lapse_high."""

NAN_FIT: Fit = (math.nan, math.nan, math.nan, math.nan)


def fit_psychometric(
    contrasts: Sequence[float], trials: Sequence[int], rightward: Sequence[int]
) -> Fit:
    """IBL's psychometric fit of rightward choices per signed contrast.

    Args:
        contrasts: the distinct signed contrasts (percent), ascending.
        trials: trials at each contrast (misses included).
        rightward: rightward choices at each contrast.

    Returns:
        (bias, threshold, lapse_low, lapse_high); all NaN when there are no trials.
    """
    if not contrasts or sum(trials) == 0:
        return NAN_FIT
    return _fit(tuple(float(c) for c in contrasts), tuple(trials), tuple(rightward))


@lru_cache(maxsize=512)
def _fit(contrasts: tuple[float, ...], trials: tuple[int, ...], rightward: tuple[int, ...]) -> Fit:
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
    saved = np.random.get_state()
    np.random.seed(SEED)
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
