"""IBL's psychometric fit: psychofit's maximum likelihood fit, reproduced bit for bit, batched.

ibllib (``brainbox.behavior.training.compute_psychometric``, the settings it uses for the
training status) fits ``psychofit.mle_fit_psycho`` to the fraction of rightward choices per
signed contrast with ``P_model='erf_psycho_2gammas'``, ``parstart=[mean(contrasts), 20, 0.05,
0.05]``, ``parmin=[min(contrasts), 0, 0, 0]``, ``parmax=[max(contrasts), 100, 1, 1]`` and the
default ``nfits=5``; the contrasts are the distinct signed contrasts of the trials (sorted, as
``numpy.unique`` gives them), with their trial counts. The result is ``[bias, threshold,
lapse_low, lapse_high]``.

**The fit.** psychofit runs ``scipy.optimize.fmin`` (Nelder-Mead, its default tolerances
``xtol = ftol = 1e-4`` and at most 800 function evaluations) five times: from ``parstart``,
then from four random points, and keeps the run of highest likelihood. Its objective is the
negative log likelihood ``-sum(n * (p * log(P) + (1 - p) * log(1 - P)))`` with ``P =
lapse_low + (1 - lapse_low - lapse_high) * (erf((x - bias) / threshold) + 1) / 2`` (P of
exactly 0 or 1 replaced by eps or 1 - eps), and 10,000,000 for a point outside
``[parmin, parmax]``. Nelder-Mead stops at the first simplex within those tolerances, so its
answer is where *that path* stops, not the exact optimum (they differ by up to about 1e-4,
a 1e-2 relative difference on a lapse of 0.01): a faster optimiser (analytic gradients, a warm
start from the previous date) lands elsewhere within that distance, beyond the conformance
tolerance. Measured on the 130 fits of the benchmark mouse (``python -m bench.ibl``): the exact
optimum (bounded L-BFGS from psychofit's answer, tolerances 1e-15) is more than rtol 1e-3 away
from psychofit's answer on 2 of them (a bias of -4.463 against -4.471, a lapse of 0.0554
against 0.0555), so a warm-started or gradient-based fit, however exact, would fail the
conformance tests there. So Shaping does not fit differently: it runs the very same
computation, faster.

This module does psychofit's and fmin's arithmetic operation for operation (the same IEEE
operations in the same order: the simplex, its centroid summed vertex by vertex, the
reflection, expansion, contractions and shrink with fmin's coefficients, the convergence test,
the vertex order from ``numpy.argsort`` whenever values tie, the likelihood summed contrast by
contrast from 0) and evaluates ``erf`` and ``log`` with the functions psychofit calls
(``scipy.special.erf``, ``numpy.log``), elementwise on arrays. Every run therefore takes
exactly fmin's path and every fit equals psychofit's bit for bit: the tests check it against
psychofit itself on random data and on every window of the generated mice. What changes is
the cost: the runs of many fits go in lockstep, each step evaluating the pending points of
every run in one vectorised call (:func:`fit_many`):

- few runs (one decision's fits): each run's simplex logic in plain Python floats, its
  likelihood evaluated with the other runs' in one numpy call per step;
- many runs (a batch: every window of a trial table): the simplex logic vectorised too, so a
  step costs about the same for one run or a thousand.

The likelihood runs on conditions x runs arrays (one column per run, so the sum over a run's
conditions is one reduction down contiguous rows, in psychofit's order: :func:`_sum_rows`),
in place, and the vectorised runs evaluate an iteration's second point for every run at once
rather than gathering the data of the runs that need it.

**The random restarts.** psychofit draws its start points from numpy's global generator:
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
first), and its start points are the numbers a ``numpy.random.RandomState(SEED)`` gives past
the ``after * DRAWS_PER_FIT`` numbers the fits before it drew (:func:`block_fit_position`
says where a block fit stands in ibllib's order). That generator is a local one: numpy's
global random state is never read or changed. The same trials in the same position always
give the same parameters, on every path (processor, replay, batch).

**The cache.** Fits are cached by their data and position (:data:`_fit`, bounded, least
recently used out). A decision reads each fit once; a recompute, a replay or the batch path
meeting the same window again reads it from the cache. :func:`fit_many` fits all that a batch
needs in one lockstep run and caches them, so a caller that knows the windows ahead
(``shaping evaluate --trials``: every window of a trial table) fits them all at once.

numpy and scipy (which psychofit brings) come with ``shaping[services]`` only: they are
imported when a fit is first needed, so a rig never loads them. psychofit itself is no longer
called at run time; the tests call it as the reference.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import numpy.typing as npt

    Array = npt.NDArray[np.float64]

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

MAX_EVALUATIONS = 200 * N_PARAMETERS
"""fmin's default budget of function evaluations (and of iterations, which never binds first:
every iteration costs at least one evaluation)."""

XATOL = 1e-4
"""fmin's default ``xtol``: the simplex's largest coordinate spread at convergence."""

FATOL = 1e-4
"""fmin's default ``ftol``: the largest spread of the simplex's values at convergence."""

PENALTY = 10000000.0
"""psychofit's value for a point outside [parmin, parmax]."""

LOCKSTEP_RUNS = 50
"""From this many runs in one batch on, the simplex logic is vectorised too (below it, plain
Python per run is cheaper)."""

CACHE_SIZE = 4096
"""Fits kept in the cache (a few hundred bytes each)."""

Fit = tuple[float, float, float, float]
"""bias, threshold, lapse_low, lapse_high."""

NAN_FIT: Fit = (math.nan, math.nan, math.nan, math.nan)


class FitRequest(NamedTuple):
    """One fit: the distinct signed contrasts (percent, ascending), the trials and rightward
    choices at each, and the fit's position in its computation's random sequence."""

    contrasts: tuple[float, ...]
    trials: tuple[int, ...]
    rightward: tuple[int, ...]
    after: int = 0


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


def fit_request(
    contrasts: Sequence[float], trials: Sequence[int], rightward: Sequence[int], *, after: int = 0
) -> FitRequest:
    """A :class:`FitRequest` from sequences (the cache key: the exact data and position)."""
    if after < 0:
        raise ValueError(f"after must be 0 or more, not {after}")
    return FitRequest(
        tuple(float(c) for c in contrasts), tuple(trials), tuple(rightward), int(after)
    )


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
    return fit_many([fit_request(contrasts, trials, rightward, after=after)])[0]


def fit_many(requests: Iterable[FitRequest]) -> list[Fit]:
    """The fits of many requests, in order: cached ones read, all others fitted together in
    one lockstep run (each exactly as :func:`fit_psychometric` would) and cached."""
    wanted = list(requests)
    return _fit.get_many(wanted)


# -- the cache -------------------------------------------------------------------------------


class CacheInfo(NamedTuple):
    """As ``functools.lru_cache``'s: misses are the fits computed."""

    hits: int
    misses: int
    maxsize: int
    currsize: int


class FitCache:
    """Fits by request, least recently used out; thread-safe (fits run outside the lock)."""

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._fits: OrderedDict[FitRequest, Fit] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def __call__(
        self,
        contrasts: tuple[float, ...],
        trials: tuple[int, ...],
        rightward: tuple[int, ...],
        after: int,
    ) -> Fit:
        return self.get_many([FitRequest(contrasts, trials, rightward, after)])[0]

    def get_many(self, requests: Sequence[FitRequest]) -> list[Fit]:
        found: dict[FitRequest, Fit] = {}
        missing: dict[FitRequest, None] = {}  # ordered, without repeats
        with self._lock:
            for request in requests:
                if request in found or request in missing:
                    continue
                if not request.contrasts or sum(request.trials) == 0:
                    found[request] = NAN_FIT  # no trials: nothing to fit
                    continue
                fit = self._fits.get(request)
                if fit is None:
                    missing[request] = None
                    continue
                self._fits.move_to_end(request)
                found[request] = fit
                self.hits += 1
        if missing:
            fitted = dict(zip(missing, _fit_batch(list(missing)), strict=True))
            found.update(fitted)
            with self._lock:
                self.misses += len(missing)
                for request, fit in fitted.items():
                    self._fits[request] = fit
                    self._fits.move_to_end(request)
                while len(self._fits) > self.maxsize:
                    self._fits.popitem(last=False)
        return [found[r] for r in requests]

    def cache_clear(self) -> None:
        """Forgets every fit and resets the counters."""
        with self._lock:
            self._fits.clear()
            self.hits = self.misses = 0

    def cache_info(self) -> CacheInfo:
        with self._lock:
            return CacheInfo(self.hits, self.misses, self.maxsize, len(self._fits))


_fit = FitCache(CACHE_SIZE)
"""The process's fit cache (``_fit.cache_clear()`` empties it, ``_fit.cache_info()`` counts)."""


# -- the computation -------------------------------------------------------------------------

_STARTS: dict[int, Any] = {}
_STARTS_LOCK = threading.Lock()


def _draws(after: int) -> Any:
    """The NFITS - 1 random start draws (4 uniform numbers each) of the ``after``-th fit of a
    computation: a local RandomState(SEED) past the draws of the fits before it."""
    import numpy as np

    with _STARTS_LOCK:
        draws = _STARTS.get(after)
        if draws is None:
            generator = np.random.RandomState(SEED)
            generator.rand(after * DRAWS_PER_FIT)
            draws = generator.rand(NFITS - 1, N_PARAMETERS)
            _STARTS[after] = draws
        return draws


def _fit_batch(requests: Sequence[FitRequest]) -> list[Fit]:
    """psychofit's mle_fit_psycho on each request (at least one trial each), all runs at once."""
    import numpy as np

    fits = len(requests)
    runs = fits * NFITS
    prepared = []
    width = 1
    for request in requests:
        levels = np.array(request.contrasts, dtype=float)
        counts = np.array(request.trials, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            proportion = np.array(request.rightward, dtype=float) / np.where(
                counts > 0, counts, np.nan
            )
        kept = np.isfinite(proportion)  # psychofit fits the conditions that were run
        low = np.array([np.min(levels), 0.0, 0.0, 0.0])
        high = np.array([np.max(levels), 100.0, 1.0, 1.0])
        first = np.array([np.mean(levels), 20.0, 0.05, 0.05])
        starts = np.vstack([first, low + _draws(request.after) * (high - low)])
        prepared.append((levels[kept], counts[kept], proportion[kept], low, high, starts))
        width = max(width, int(kept.sum()))
    # One column per run (conditions x runs: the likelihood's sum over conditions then runs
    # down contiguous rows); fits with fewer contrasts are padded at the end with conditions
    # of no trials, which add -0.0 to the likelihood's sum (no change).
    x = np.empty((width, runs))
    n = np.zeros((width, runs))
    p = np.full((width, runs), 0.5)
    low = np.empty((runs, N_PARAMETERS))
    high = np.empty((runs, N_PARAMETERS))
    start = np.empty((runs, N_PARAMETERS))
    for index, (xx, nn, pp, lo, hi, starts) in enumerate(prepared):
        rows = slice(index * NFITS, (index + 1) * NFITS)
        size = xx.size
        x[:size, rows] = xx[:, None]
        x[size:, rows] = xx[0]
        n[:size, rows] = nn[:, None]
        p[:size, rows] = pp[:, None]
        low[rows] = lo
        high[rows] = hi
        start[rows] = starts
    data = _Data(x, n, p, 1 - p, low, high)
    with np.errstate(all="ignore"):
        runner = _vectorised_runs if runs >= LOCKSTEP_RUNS else _python_runs
        best = runner(start, data)
        likelihood = -_neg_likelihood(best, data).reshape(fits, NFITS)
    chosen = np.argmax(likelihood, axis=1)  # psychofit's likelihoods.argmax()
    pars = best.reshape(fits, NFITS, N_PARAMETERS)[np.arange(fits), chosen]
    return [(float(b), float(t), float(lo), float(hi)) for b, t, lo, hi in pars.tolist()]


class _Data(NamedTuple):
    """Per run (a column): contrasts x, trials n, proportion rightward p and 1 - p
    (conditions x runs); per run (a row): parmin and parmax (runs x 4)."""

    x: Array
    n: Array
    p: Array
    q: Array
    low: Array
    high: Array

    def take(self, runs: Any) -> _Data:
        """The data of some runs (an index array or a boolean mask over the runs)."""
        return _Data(
            self.x[:, runs],
            self.n[:, runs],
            self.p[:, runs],
            self.q[:, runs],
            self.low[runs],
            self.high[runs],
        )


def _neg_likelihood(points: Array, data: _Data) -> Array:
    """psychofit's neg_likelihood for erf_psycho_2gammas, one point per run (row of ``points``,
    column of ``data``).

    The same IEEE operations as psychofit's, in its order, on whole arrays (products are
    commuted, which changes no bit): ``lapse_low + (1 - lapse_low - lapse_high) * (erf((x -
    bias) / threshold) + 1) / 2``, clipped to [eps, 1 - eps] when exactly 0 or 1, then
    ``-sum(n * (p * log(P) + (1 - p) * log(1 - P)))`` summed condition by condition (a
    reduction down the rows of a conditions x runs array is sequential, from the first row,
    as Python's ``sum`` is from 0: its first term is never 0). Callers silence numpy's floating
    point warnings (points outside the bounds divide by a threshold of 0 or less; their value
    is the penalty whatever the arithmetic gives)."""
    import numpy as np
    from scipy.special import erf

    low = points[:, 2]
    probs = data.x - points[:, 0]
    probs /= points[:, 1]
    probs = erf(probs, out=probs)
    probs += 1
    probs *= (1 - low) - points[:, 3]
    probs /= 2
    probs += low
    rest = 1 - probs
    if not (probs * rest).all():  # a probability of exactly 0 or 1 (rare): psychofit's eps
        eps = float(np.finfo(float).eps)
        probs = np.where(probs == 0, eps, probs)
        probs = np.where(probs == 1, 1 - eps, probs)
        rest = 1 - probs
    terms = np.log(probs, out=probs)
    terms *= data.p
    rest = np.log(rest, out=rest)
    rest *= data.q
    terms += rest
    terms *= data.n
    value = _sum_rows(terms)
    value = np.negative(value, out=value)
    outside = (points < data.low) | (points > data.high)
    if outside.any():
        value[np.logical_or.reduce(outside, axis=1)] = PENALTY
    return value


def _sum_rows(terms: Array) -> Array:
    """Each column's sum, row by row from the first (Python's ``sum`` of the column, which
    starts from 0: the same, as a first term is never 0).

    ``numpy.add.reduce`` down the rows of a C-contiguous array with two or more columns adds
    one row at a time into the running sums (its inner loop runs along a row), which is that
    order; over one column its inner loop would run down the column and sum pairwise, so a
    single column is summed row by row here. tests/unit/test_psychometric_speed.py checks both
    against Python's ``sum``."""
    import numpy as np

    if terms.shape[1] >= 2 and terms.flags.c_contiguous:
        summed: Array = np.add.reduce(terms, axis=0)
        return summed
    total = terms[0].copy()
    for row in terms[1:]:
        total += row
    return total


def _order(values: list[float]) -> list[int]:
    """numpy.argsort of a simplex's values (ties and NaN ordered as numpy orders them)."""
    order = sorted(range(5), key=values.__getitem__)
    a, b, c, d, e = [values[i] for i in order]
    if a < b < c < d < e:  # distinct numbers: every sort agrees
        return order
    import numpy as np

    return [int(i) for i in np.argsort(np.array(values))]


Point = tuple[float, float, float, float]
Candidates = tuple[float, ...]
"""Four points flattened (16 numbers): what a run asks values for in one step."""


def _nelder_mead(x0: Point) -> Generator[Candidates, list[float], Point]:
    """fmin(f, x0) for 4 parameters, as a generator: it yields 4 points at a time (flattened)
    and receives their values (``send``); it returns the result (``StopIteration.value``).

    An iteration yields all the points it may need at once (the reflection, the expansion and
    both contractions), then uses the values fmin would have asked for, in fmin's order,
    counting only those against fmin's budget; a shrink yields its 4 vertices.
    """
    a0, a1, a2, a3 = x0
    grow = 1 + 0.05
    sim: list[Point] = [
        x0,
        (grow * a0 if a0 != 0 else 0.00025, a1, a2, a3),
        (a0, grow * a1 if a1 != 0 else 0.00025, a2, a3),
        (a0, a1, grow * a2 if a2 != 0 else 0.00025, a3),
        (a0, a1, a2, grow * a3 if a3 != 0 else 0.00025),
    ]
    fsim = list((yield sim[0] + sim[1] + sim[2] + sim[3]))
    fsim.append((yield sim[4] * 4)[0])
    calls = len(sim)
    order = _order(fsim)
    sim = [sim[i] for i in order]
    fsim = [fsim[i] for i in order]
    distinct = fsim[0] < fsim[1] < fsim[2] < fsim[3] < fsim[4]
    aborted = False  # fmin's budget ran out inside an iteration
    while calls < MAX_EVALUATIONS:
        b0, b1, b2, b3 = sim[0]
        s1, s2, s3, worst = sim[1], sim[2], sim[3], sim[4]
        f0 = fsim[0]
        # fmin: max |f0 - f| <= ftol and max |vertex - best| <= xtol. The values are sorted
        # (NaN last), so the largest |f0 - f| is |f0 - f4| (NaN when there is one).
        if abs(f0 - fsim[4]) <= FATOL and all(
            abs(v[0] - b0) <= XATOL
            and abs(v[1] - b1) <= XATOL
            and abs(v[2] - b2) <= XATOL
            and abs(v[3] - b3) <= XATOL
            for v in (s1, s2, s3, worst)
        ):
            break
        m0 = (((b0 + s1[0]) + s2[0]) + s3[0]) / 4
        m1 = (((b1 + s1[1]) + s2[1]) + s3[1]) / 4
        m2 = (((b2 + s1[2]) + s2[2]) + s3[2]) / 4
        m3 = (((b3 + s1[3]) + s2[3]) + s3[3]) / 4
        w0, w1, w2, w3 = worst
        # reflection, expansion, contraction, inside contraction (fmin's coefficients)
        points = (
            2 * m0 - w0,
            2 * m1 - w1,
            2 * m2 - w2,
            2 * m3 - w3,
            3 * m0 - 2 * w0,
            3 * m1 - 2 * w1,
            3 * m2 - 2 * w2,
            3 * m3 - 2 * w3,
            1.5 * m0 - 0.5 * w0,
            1.5 * m1 - 0.5 * w1,
            1.5 * m2 - 0.5 * w2,
            1.5 * m3 - 0.5 * w3,
            0.5 * m0 + 0.5 * w0,
            0.5 * m1 + 0.5 * w1,
            0.5 * m2 + 0.5 * w2,
            0.5 * m3 + 0.5 * w3,
        )
        fxr, fxe, fxc, fxcc = yield points
        calls += 1
        shrink = False
        if fxr < f0:
            if calls >= MAX_EVALUATIONS:
                aborted = True
                break
            calls += 1
            if fxe < fxr:
                sim[4], fsim[4] = points[4:8], fxe
            else:
                sim[4], fsim[4] = points[0:4], fxr
        elif fxr < fsim[3]:
            sim[4], fsim[4] = points[0:4], fxr
        else:
            if calls >= MAX_EVALUATIONS:
                aborted = True
                break
            calls += 1
            if fxr < fsim[4]:
                if fxc <= fxr:
                    sim[4], fsim[4] = points[8:12], fxc
                else:
                    shrink = True
            elif fxcc < fsim[4]:
                sim[4], fsim[4] = points[12:16], fxcc
            else:
                shrink = True
        if shrink:
            shrunk = [
                (
                    b0 + 0.5 * (v[0] - b0),
                    b1 + 0.5 * (v[1] - b1),
                    b2 + 0.5 * (v[2] - b2),
                    b3 + 0.5 * (v[3] - b3),
                )
                for v in (s1, s2, s3, worst)
            ]
            values = yield shrunk[0] + shrunk[1] + shrunk[2] + shrunk[3]
            for j in range(1, 5):
                sim[j] = shrunk[j - 1]  # fmin moves the vertex, then evaluates it
                if calls >= MAX_EVALUATIONS:
                    aborted = True
                    break
                fsim[j] = values[j - 1]
                calls += 1
            if aborted:
                break
            distinct = False  # sorted in full below
        value = fsim[4]
        if distinct and value == value and value not in (fsim[0], fsim[1], fsim[2], fsim[3]):
            # Only the worst vertex changed, the others are in strict order: insert it.
            k = 4
            while k and value < fsim[k - 1]:
                k -= 1
            if k < 4:
                sim.insert(k, sim.pop())
                fsim.insert(k, fsim.pop())
        else:
            order = _order(fsim)
            sim = [sim[i] for i in order]
            fsim = [fsim[i] for i in order]
            distinct = fsim[0] < fsim[1] < fsim[2] < fsim[3] < fsim[4]
    if aborted:  # fmin sorts the simplex once more after the interrupted iteration
        order = _order(fsim)
        sim = [sim[i] for i in order]
    return sim[0]


def _python_runs(start: Array, data: _Data) -> Array:
    """The runs' simplex logic in Python; one likelihood call per step for all their points."""
    import numpy as np

    count = start.shape[0]
    runs = [_nelder_mead(tuple(row)) for row in start.tolist()]
    pending: list[Candidates] = [next(run) for run in runs]
    results: list[Point | None] = [None] * count
    four = data.take(np.repeat(np.arange(count), 4))
    live = list(range(count))
    while live:
        values = _neg_likelihood(np.array(pending).reshape(-1, N_PARAMETERS), four)
        table = values.reshape(count, 4).tolist()
        still = []
        for r in live:
            try:
                pending[r] = runs[r].send(table[r])
                still.append(r)
            except StopIteration as stop:
                results[r] = stop.value
        live = still
    return np.array(results)


def _vectorised_runs(start: Array, data: _Data) -> Array:
    """The runs' simplex logic vectorised over runs: one iteration of every run per step.

    A step evaluates every run's reflection, then the one point each run's fmin asks for next
    (expansion, contraction or inside contraction), then the shrunk vertices of the runs that
    shrink; each run counts its own evaluations against fmin's budget.
    """
    import numpy as np

    runs = start.shape[0]
    result = np.empty_like(start)
    sim = np.repeat(start[:, None, :], N_PARAMETERS + 1, axis=1)
    for k in range(N_PARAMETERS):
        column = start[:, k]
        sim[:, k + 1, k] = np.where(column != 0, (1 + 0.05) * column, 0.00025)
    fsim = _neg_likelihood(
        sim.reshape(-1, N_PARAMETERS), data.take(np.repeat(np.arange(runs), N_PARAMETERS + 1))
    ).reshape(runs, N_PARAMETERS + 1)
    calls = np.full(runs, N_PARAMETERS + 1)
    _sort_rows(sim, fsim)
    index = np.arange(runs)
    while True:
        # fmin's loop: stop when the budget is spent or the simplex has converged.
        spread = np.abs(sim[:, 1:] - sim[:, :1]).max(axis=(1, 2))
        gap = np.abs(fsim[:, :1] - fsim[:, 1:]).max(axis=1)
        stop = (calls >= MAX_EVALUATIONS) | ((spread <= XATOL) & (gap <= FATOL))
        if stop.any():
            result[index[stop]] = sim[stop, 0]
            go = ~stop
            index, sim, fsim, calls, data = index[go], sim[go], fsim[go], calls[go], data.take(go)
            if not index.size:
                return result
        xbar = (((sim[:, 0] + sim[:, 1]) + sim[:, 2]) + sim[:, 3]) / N_PARAMETERS
        worst = sim[:, 4]
        xr = 2 * xbar - worst
        fxr = _neg_likelihood(xr, data)
        calls += 1
        f4 = fsim[:, 4]
        expand = fxr < fsim[:, 0]
        keep = ~expand & (fxr < fsim[:, 3])
        second = ~keep
        # The budget ran out before the second call: fmin stops the iteration there.
        aborted = second & (calls >= MAX_EVALUATIONS)
        second &= ~aborted
        contract = second & ~expand & (fxr < f4)
        inside = second & ~expand & ~contract
        point = np.where(
            expand[:, None],
            3 * xbar - 2 * worst,
            np.where(contract[:, None], 1.5 * xbar - 0.5 * worst, 0.5 * xbar + 0.5 * worst),
        )
        # The second point of every run at once (the runs that do not ask for it ignore its
        # value): cheaper than gathering the data of the runs that do.
        value = _neg_likelihood(point, data)
        calls += second
        use_point = (
            (expand & second & (value < fxr))
            | (contract & (value <= fxr))
            | (inside & (value < f4))
        )
        use_xr = keep | (expand & second & ~use_point)
        shrink = (contract | inside) & ~use_point
        sim[:, 4] = np.where(use_xr[:, None], xr, np.where(use_point[:, None], point, worst))
        fsim[:, 4] = np.where(use_xr, fxr, np.where(use_point, value, f4))
        if shrink.any():
            rows = np.flatnonzero(shrink)
            best = sim[rows, :1]
            moved = best + 0.5 * (sim[rows, 1:] - best)
            values = _neg_likelihood(
                moved.reshape(-1, N_PARAMETERS), data.take(np.repeat(rows, N_PARAMETERS))
            ).reshape(rows.size, N_PARAMETERS)
            left = MAX_EVALUATIONS - calls[rows]
            vertex = np.arange(1, N_PARAMETERS + 1)
            moves = vertex <= left[:, None] + 1  # fmin moves a vertex, then evaluates it
            evaluated = vertex <= left[:, None]
            sim[rows, 1:] = np.where(moves[:, :, None], moved, sim[rows, 1:])
            fsim[rows, 1:] = np.where(evaluated, values, fsim[rows, 1:])
            calls[rows] += np.minimum(left, N_PARAMETERS)
            aborted[rows] |= left < N_PARAMETERS
        _sort_rows(sim, fsim)
        if aborted.any():
            result[index[aborted]] = sim[aborted, 0]
            go = ~aborted
            index, sim, fsim, calls, data = index[go], sim[go], fsim[go], calls[go], data.take(go)
            if not index.size:
                return result


def _sort_rows(sim: Array, fsim: Array) -> None:
    """fmin's sort of each simplex by value (numpy.argsort), in place."""
    import numpy as np

    order = np.argsort(fsim, axis=1)
    rows = np.arange(fsim.shape[0])[:, None]
    fsim[:] = fsim[rows, order]
    sim[:] = sim[rows, order]
