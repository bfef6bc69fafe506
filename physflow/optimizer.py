"""``suggest_parameters``: a sequential optimizer over every result of the campaign so far.

It gives even a small model good numbers to propose, and fills free simulation slots while the
agents still think (backfill). Simulations cost seconds to hours, a suggestion milliseconds, so
the optimizer spends its effort on needing few simulations:

1. Start-up (fewer than ``startup`` finished results): points of a scrambled Sobol sequence,
   seeded by ``seed``, in the unit cube of the parameters (log parameters on a log scale). They
   cover the box more evenly than independent draws, and a batch spreads out by construction.
2. Then Bayesian optimisation with a Gaussian process (numpy + scipy only) on a warped objective
   (``warp``: the log of a positive metric such as a chi2, which turns its steep walls and flat
   floor into a surface a GP fits well). The kernel is Matern-5/2 with one length scale per
   parameter (ARD), and for up to ``max_rotated`` parameters a rotating metric as well, so that a
   degenerate valley running diagonally across the parameters is long along and narrow across
   (``Hyper``); a constant mean and a noise term. Hyperparameters maximise the log marginal
   likelihood times weak priors (``PRIOR``): with a handful of results plain maximum likelihood
   often picks absurdly short length scales, and the search then degenerates into sampling the
   box's edges. The next point maximises log expected improvement over a few thousand
   quasi-random candidates and clouds around the best results, polished with L-BFGS-B, never
   closer than ``min_distance`` to a known point (a deterministic simulation repeated teaches
   nothing). Simulations still running (and earlier points of the same batch) enter as "kriging
   believer" fantasies, noise-free observations equal to the GP mean, which shrink the uncertainty
   around them, and a fantasy below the best result becomes the best the next point must beat,
   so parallel suggestions spread out.
3. From ``GP_MAX_OBSERVATIONS`` results on, a multivariate TPE (``parzen_batch``, numpy: one
   density fit for a whole batch, ~1 ms a point where Optuna's TPE, used before, cost 20-40 ms,
   and as sample-efficient on the stand-in below: 50 against 60.5 simulations to chi2_hmf 0.15
   with 16 in flight, 11 against 11 to 1.0 with 2; ``bench/optimizer_offline.py``): the exact GP costs
   O(n^3) per fit and a few fits per suggestion; TPE stays cheap, and with hundreds of results
   the sample efficiency of a GP matters less than the loop's speed; likewise while
   ``Optimizer.gp_max_pending`` simulations or more are in flight, or while a GP point costs
   more than the campaign can give it (``Optimizer.point_seconds``: its slots free faster than
   the GP can choose their points). TPE sees the best results
   and a sample of the others, at most ``Optimizer.tpe_max_observations``, and a call sees at
   most ``Optimizer.max_pending`` pending points, so that a call's cost is bounded however many
   results a campaign has and however many simulations it keeps in flight.

On an offline stand-in of the shipped cosmology problem (``bench/optimizer_offline.py``, 100
seeds) the GP needs 8 simulations (median) to reach the tolerance where TPE needed 11 and
uniform random search 15. Without the priors it needed 11-12; with an axis-aligned metric only,
9 (mean 9.7 against 8.6, 150 seeds). A suggestion follows from the ``seed``, the results, the
pending points and ``n`` alone, not from the calls made before it (below ``restart_below``
results; from there the GP's hyperparameters are warm-started from its last fit): a planner that
asks for candidates beside the loop leaves the loop's points as they were, and a resumed campaign
draws what an uninterrupted one would. The start-up design's points are an exception only in
that two calls never hand out the same design point.
"""

from __future__ import annotations

import math
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
from scipy import linalg, optimize, special
from scipy.stats import qmc

from physflow.vocabulary import ranking
from physflow.vocabulary.steering import Advice, Candidate
from physflow.vocabulary.workflow import ParameterSpec

#: From this many finished results on, suggestions come from TPE instead of the GP. The GP's
#: cost grows as n^3: a suggestion took about 0.05 s at 50 results, 0.15 s at 200 and 0.35 s at
#: 300 on one core (``bench/optimizer_offline.py``), so above this the campaign loop would wait
#: seconds on every call, while with hundreds of results TPE's weaker model matters little.
GP_MAX_OBSERVATIONS = 300
#: The surrogate the planner is shown (``Optimizer.advice``) is fitted on at most this many results
#: (the best half and the latest half): its cost must not grow with the campaign.
ADVICE_MAX_OBSERVATIONS = 200
#: Bounds on the GP hyperparameters, in units of the unit cube (length scales) and of the
#: standardised warped objective (signal and noise variance).
LENGTH_BOUNDS = (0.01, 10.0)
SIGNAL_BOUNDS = (0.05, 20.0)
NOISE_BOUNDS = (1e-6, 0.5)
MEAN_BOUNDS = (-5.0, 5.0)
#: Weak priors that keep a fit to a handful of results sensible (it maximises the marginal
#: likelihood times these): name -> (centre, width) of a normal distribution for the mean and
#: the off-diagonal metric entries, of a log-normal (width in e-folds) for the rest.
PRIOR = {"length": (0.3, 1.0), "off": (0.0, 3.0), "signal": (1.0, 1.0),
         "noise": (1e-3, 3.0), "mean": (0.0, 2.0)}
SQRT5 = math.sqrt(5.0)


# -- objective warping --------------------------------------------------------------------------
def warp(values: np.ndarray, goal: Literal["minimize", "maximize"]) -> np.ndarray:
    """The values as a standardised quantity to *minimise*, on a log scale.

    ``log(v - lo + c)`` with ``v`` the values (negated to maximise), ``lo`` their minimum and
    ``c = max(lo, 1% of median - lo)``: exactly ``log(v)`` for a positive metric whose best value
    is not tiny, otherwise the log of the distance from the best with a floor, so zero, negative
    or constant values are fine. Monotone, so the minimiser is unchanged.
    """
    return Warp.of(values, goal).apply(values)


@dataclass(frozen=True)
class Warp:
    """The transform ``warp`` applies: ``y = (log(sign v - lo + c) - centre) / scale``; kept so a
    prediction on the warped scale can be said again in the metric's own units (``unwarp``)."""

    sign: float
    lo: float
    c: float
    centre: float
    scale: float

    @classmethod
    def of(cls, values: np.ndarray, goal: Literal["minimize", "maximize"]) -> Warp:
        sign = 1.0 if goal == "minimize" else -1.0
        v = sign * np.asarray(values, dtype=float)
        lo = float(v.min())
        floor = 0.01 * float(np.median(v) - lo)
        c = max(lo, floor) if max(lo, floor) > 0 else 1.0
        z = np.log(v - lo + c)
        std = float(z.std())
        return cls(sign, lo, c, float(z.mean()), std if std > 0 else 1.0)

    def apply(self, values: np.ndarray) -> np.ndarray:
        return (np.log(self.sign * np.asarray(values, dtype=float) - self.lo + self.c) - self.centre) / self.scale

    def unwarp(self, mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A warped prediction (mean, sd) in the metric's units: the median of the log-normal it
        implies, and the half width of its central 68% interval (asymmetric on the metric's scale;
        one number is what a prompt can show)."""
        z = self.centre + self.scale * np.asarray(mean)
        s = self.scale * np.asarray(sd)
        value = lambda zz: self.sign * (np.exp(zz) + self.lo - self.c)  # noqa: E731 - local shorthand
        return value(z), 0.5 * np.abs(value(z + s) - value(z - s))


# -- Gaussian process ---------------------------------------------------------------------------
def _distances(a: np.ndarray, b: np.ndarray, metric: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points of a (n, d) and b (m, d) in the kernel's metric, a @ metric and b @ metric, and
    the distances between them (n, m): r = |(a_i - b_j) @ metric|."""
    pa, pb = a @ metric, b @ metric
    r2 = (pa * pa).sum(axis=1)[:, None] + (pb * pb).sum(axis=1)[None, :] - 2.0 * pa @ pb.T
    return pa, pb, np.sqrt(np.maximum(r2, 0.0))


def matern52(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Matern-5/2 correlation at scaled distance r, (1 + sqrt5 r + 5 r^2 / 3) exp(-sqrt5 r), and
    its slope -(1/r) d/dr = 5/3 (1 + sqrt5 r) exp(-sqrt5 r) (finite at r = 0)."""
    decay = np.exp(-SQRT5 * r)
    linear = 1.0 + SQRT5 * r
    return (linear + 5.0 / 3.0 * r**2) * decay, 5.0 / 3.0 * linear * decay


@dataclass
class Hyper:
    """GP hyperparameters: the Matern kernel's metric and variance, the noise variance and the
    constant mean (variances and mean in units of the standardised warped objective).

    The covariance is ``signal * matern52(|(x - x') A|) + noise * [x = x']``. The metric A is
    lower-triangular: diagonal, A = diag(1 / length scales) (ARD); with off-diagonal entries it
    also rotates, so a valley running diagonally across the parameters, as a degeneracy between
    them makes, gets a long length scale along it and a short one across.
    """

    metric: np.ndarray
    signal: float
    noise: float
    mean: float

    @property
    def lengths(self) -> np.ndarray:
        """Length scale of each parameter alone (unit cube): 1 / the metric's row norms."""
        return 1.0 / np.linalg.norm(self.metric, axis=1)


@dataclass(frozen=True)
class Kernel:
    """The form of a GP's covariance: ``d`` parameters, a rotating metric or not (``full``). Packs
    hyperparameters into the vector the fit optimises: log diagonal of the metric, its
    off-diagonal entries (if ``full``), log signal, log noise, mean."""

    d: int
    full: bool

    @property
    def _off(self) -> tuple[np.ndarray, np.ndarray]:
        return np.tril_indices(self.d, -1) if self.full else (np.array([], int), np.array([], int))

    def pack(self, h: Hyper) -> np.ndarray:
        return np.concatenate([np.log(np.diag(h.metric)), h.metric[self._off],
                               [math.log(h.signal), math.log(h.noise), h.mean]])

    def unpack(self, theta: np.ndarray) -> Hyper:
        d, n_off = self.d, len(self._off[0])
        metric = np.diag(np.exp(theta[:d]))
        metric[self._off] = theta[d:d + n_off]
        return Hyper(metric, float(np.exp(theta[-3])), float(np.exp(theta[-2])), float(theta[-1]))

    def bounds(self) -> list[tuple[float, float]]:
        diag = (-math.log(LENGTH_BOUNDS[1]), -math.log(LENGTH_BOUNDS[0]))
        off = (-1.0 / LENGTH_BOUNDS[0], 1.0 / LENGTH_BOUNDS[0])
        log = [tuple(math.log(b) for b in bounds) for bounds in (SIGNAL_BOUNDS, NOISE_BOUNDS)]
        return [diag] * self.d + [off] * len(self._off[0]) + log + [MEAN_BOUNDS]

    def default(self) -> np.ndarray:
        """A start for the fit: the prior's centre."""
        return self.prior()[0]

    def prior(self) -> tuple[np.ndarray, np.ndarray]:
        """Centre and width of the Gaussian prior on each packed coordinate (``PRIOR``)."""
        p = PRIOR
        centre = self.pack(Hyper(np.diag(np.full(self.d, 1 / p["length"][0])), p["signal"][0], p["noise"][0],
                                 p["mean"][0]))
        widths = [p["length"][1]] * self.d + [p["off"][1]] * len(self._off[0])
        return centre, np.array(widths + [p["signal"][1], p["noise"][1], p["mean"][1]])


def covariance(h: Hyper, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Prior covariance (n, m) between the points a (n, d) and b (m, d), without noise."""
    return h.signal * matern52(_distances(a, b, h.metric)[2])[0]


def neg_log_posterior(theta: np.ndarray, x: np.ndarray, y: np.ndarray, kernel: Kernel) -> tuple[float, np.ndarray]:
    """Negative log marginal likelihood of a GP plus the hyperparameters' negative log prior, and its
    gradient, in the ``Kernel.pack`` coordinates."""
    n, d = x.shape
    h = kernel.unpack(theta)
    px, _, r = _distances(x, x, h.metric)
    corr, slope = matern52(r)
    k_matern = h.signal * corr
    try:
        chol = linalg.cho_factor(k_matern + (h.noise + 1e-8) * np.eye(n), lower=True)
    except linalg.LinAlgError:
        return 1e10, np.zeros_like(theta)
    resid = y - h.mean
    alpha = linalg.cho_solve(chol, resid)
    nll = 0.5 * resid @ alpha + np.log(np.diag(chol[0])).sum() + 0.5 * n * math.log(2 * math.pi)
    w = np.outer(alpha, alpha) - linalg.cho_solve(chol, np.eye(n))
    # dK_nm / dA_jk = -signal slope(r_nm) (x_n - x_m)_j (px_n - px_m)_k; summed against -w / 2
    # (symmetric) that is 2 x^T (diag(rowsums) - v) px with v = w signal slope(r) / 2.
    v = 0.5 * w * h.signal * slope
    g_metric = 2.0 * x.T @ (v.sum(axis=1)[:, None] * px - v @ px)
    n_off = len(kernel._off[0])
    grad = np.empty_like(theta)
    grad[:d] = np.diag(g_metric) * np.diag(h.metric)  # log-diagonal coordinates
    grad[d:d + n_off] = g_metric[kernel._off]
    grad[-3] = -0.5 * np.sum(w * k_matern)
    grad[-2] = -0.5 * h.noise * np.trace(w)
    grad[-1] = -alpha.sum()
    centre, width = kernel.prior()
    return float(nll + 0.5 * np.sum(((theta - centre) / width) ** 2)), grad + (theta - centre) / width**2


def fit_hyper(x: np.ndarray, y: np.ndarray, kernel: Kernel, starts: list[np.ndarray]) -> Hyper:
    """Hyperparameters maximising marginal likelihood times prior: L-BFGS-B from each start, the
    best kept."""
    bounds = kernel.bounds()
    lo, hi = np.array(bounds).T
    best_theta, best_nll = np.clip(starts[0], lo, hi), math.inf
    for start in starts:
        res = optimize.minimize(neg_log_posterior, np.clip(start, lo, hi), args=(x, y, kernel), jac=True,
                                method="L-BFGS-B", bounds=bounds, options={"maxiter": 200})
        if np.isfinite(res.fun) and res.fun < best_nll:
            best_theta, best_nll = res.x, float(res.fun)
    return kernel.unpack(best_theta)


class GaussianProcess:
    """Exact GP posterior on inputs x (n, d) in the unit cube and targets y (n,)."""

    def __init__(self, x: np.ndarray, y: np.ndarray, hyper: Hyper, noise: np.ndarray | None = None) -> None:
        self.x, self.y, self.hyper = x, y, hyper
        #: Noise variance of each observation: the fitted one, or (fantasies) almost none.
        self.noise = np.full(len(x), hyper.noise) if noise is None else noise
        k = covariance(hyper, x, x) + np.diag(self.noise + 1e-8)
        self.chol = linalg.cho_factor(k, lower=True)
        self.alpha = linalg.cho_solve(self.chol, y - hyper.mean)

    def with_points(self, x_new: np.ndarray, y_new: np.ndarray, noise: float | None = None) -> GaussianProcess:
        """The same GP conditioned on extra (fantasy) observations too, each with ``noise``
        variance (default: the fitted noise)."""
        extra = np.full(len(x_new), self.hyper.noise if noise is None else noise)
        return GaussianProcess(np.vstack([self.x, x_new]), np.concatenate([self.y, y_new]), self.hyper,
                               np.concatenate([self.noise, extra]))

    def predict(self, xs: np.ndarray, grad: bool = False) -> tuple[np.ndarray, ...]:
        """Posterior mean and standard deviation (m,) at xs (m, d); with ``grad`` their
        derivatives (m, d) too."""
        h = self.hyper
        pxs, px, r = _distances(xs, self.x, h.metric)
        corr, slope = matern52(r)
        k = h.signal * corr
        mean = h.mean + k @ self.alpha
        if not grad:
            # k K^-1 k = |L^-1 k|^2: one triangular solve, half the work of K^-1 k (which only
            # the gradient needs), on the thousands of acquisition candidates of every suggestion.
            w = linalg.solve_triangular(self.chol[0], k.T, lower=self.chol[1])
            var = np.maximum(h.signal - np.einsum("nm,nm->m", w, w), 1e-12 * h.signal)
            return mean, np.sqrt(var)
        v = linalg.cho_solve(self.chol, k.T)  # (n, m) = K^-1 k
        var = np.maximum(h.signal - np.einsum("mn,nm->m", k, v), 1e-12 * h.signal)
        std = np.sqrt(var)
        def contract(c: np.ndarray) -> np.ndarray:
            """sum_i c_mi (px_m - px_i) A^T: with c = -signal slope(r) alpha, d mean / dx."""
            return (c.sum(axis=1)[:, None] * pxs - c @ px) @ h.metric.T

        dmean = contract(-h.signal * slope * self.alpha[None, :])
        dstd = contract(h.signal * slope * v.T) / std[:, None]
        return mean, std, dmean, dstd


# -- acquisition --------------------------------------------------------------------------------
def log_h(z: np.ndarray) -> np.ndarray:
    """log(z Phi(z) + phi(z)), the log expected improvement of a unit normal beyond -z, accurate
    for very negative z (where it is about log phi(z) - 2 log|z|)."""
    z = np.asarray(z, dtype=float)
    out = np.empty_like(z)
    mid = z > -1.0
    zm = z[mid]
    out[mid] = np.log(zm * special.ndtr(zm) + np.exp(-0.5 * zm**2) / math.sqrt(2 * math.pi))
    zt = np.maximum(z[~mid], -1e6)
    # phi(z) (1 + z Phi(z)/phi(z)), Phi(z)/phi(z) = sqrt(pi/2) erfcx(-z/sqrt2)
    tail = zt * math.sqrt(math.pi / 2) * special.erfcx(-zt / math.sqrt(2))
    out[~mid] = -0.5 * zt**2 - 0.5 * math.log(2 * math.pi) + np.log1p(np.maximum(tail, -1 + 1e-300))
    return out


def log_ei(gp: GaussianProcess, xs: np.ndarray, best: float, grad: bool = False) -> tuple[np.ndarray, ...]:
    """log expected improvement below ``best`` at xs (m, d), with its gradient (m, d) if asked."""
    if not grad:
        mean, std = gp.predict(xs)
        return (np.log(std) + log_h((best - mean) / std),)
    mean, std, dmean, dstd = gp.predict(xs, grad=True)
    z = (best - mean) / std
    lh = log_h(z)
    ratio = np.exp(special.log_ndtr(z) - lh)  # Phi(z) / h(z) = d log h / dz
    dz = (-dmean - z[:, None] * dstd) / std[:, None]
    return np.log(std) + lh, dstd / std[:, None] + ratio[:, None] * dz


def _far_from(points: np.ndarray, taken: np.ndarray, distance: float) -> np.ndarray:
    """Which of points (m, d) are farther than ``distance`` (max norm) from every taken point."""
    if len(taken) == 0:
        return np.ones(len(points), dtype=bool)
    return np.abs(points[:, None, :] - taken[None, :, :]).max(axis=-1).min(axis=1) > distance


def maximise_log_ei(gp: GaussianProcess, best: float, candidates: np.ndarray, polish: int,
                    min_distance: float) -> np.ndarray:
    """The point (d,) of largest log EI, the best candidates each polished by L-BFGS-B, at least
    ``min_distance`` (unit cube, max norm) from the GP's points: a deterministic simulation
    repeated teaches nothing, yet a GP with a noise term may rate its best point worth another run."""
    far = _far_from(candidates, gp.x, min_distance)
    candidates = candidates[far] if far.any() else candidates  # (all near: a dense 1-D search)
    values = log_ei(gp, candidates, best)[0]
    order = np.argsort(-values)[:polish]
    d = candidates.shape[1]

    def negative(u: np.ndarray) -> tuple[float, np.ndarray]:
        val, g = log_ei(gp, u[None, :], best, grad=True)
        return -float(val[0]), -g[0]

    best_u, best_val = candidates[order[0]], values[order[0]]
    for start in candidates[order]:
        res = optimize.minimize(negative, start, jac=True, method="L-BFGS-B", bounds=[(0.0, 1.0)] * d,
                                options={"maxiter": 50})
        u = np.clip(res.x, 0.0, 1.0)
        if np.isfinite(res.fun) and -res.fun > best_val and _far_from(u[None, :], gp.x, min_distance)[0]:
            best_u, best_val = u, -float(res.fun)
    return best_u


# -- the optimizer ------------------------------------------------------------------------------
class Optimizer:
    """Suggests parameter sets for a campaign from the results so far (see the module docstring).

    ``parameters``: the campaign's parameters and bounds; ``goal``: of the objective metric;
    ``seed``: makes suggestions reproducible; ``startup``: results before the GP takes over
    (default ``max(4, 2 * number of parameters)``).
    """

    #: Quasi-random candidates for the acquisition, local ones (per good point) and polished starts.
    candidates: int = 2048
    local_candidates: int = 128
    local_centres: int = 5
    polish: int = 4
    #: No suggestion comes closer than this to a result or a pending point (unit cube, max norm).
    min_distance: float = 0.005
    #: Random restarts of the hyperparameter fit (besides the previous fit and the prior's centre)
    #: while there are fewer than ``restart_below`` results; later the previous fit is a good start
    #: and the restarts would double the time of a suggestion.
    restarts: int = 2
    restart_below: int = 50
    #: From ``restart_below`` results on, the hyperparameters are fitted again only once the
    #: results have grown by this fraction since the last fit, and reused in between: a fit was
    #: 20-180 ms of a 30-270 ms suggestion at 50-280 results (1 parameter), one result more barely
    #: moves it, and the campaign's loop waits for suggestions when simulations are short.
    refit_growth: float = 0.1
    #: Up to this many parameters the kernel's metric may rotate (``Hyper``); above, ARD only.
    max_rotated: int = 4
    #: A batch's points (and the simulations still running) enter the GP as kriging-believer
    #: fantasies: observed at the GP's mean, believed exactly (no noise term: a believer that
    #: keeps the noise leaves the EI beside it almost as high as before), and a believed value
    #: below the best so far becomes the best the next point must improve on. Without the latter
    #: a batch of 4 lined up within 0.01 of each other along the valley (each fantasy improved on
    #: the old best, so its neighbours still promised that improvement at zero uncertainty).
    fantasy_noiseless: bool = True
    fantasy_best: bool = True
    #: Results from which TPE replaces the GP (class attribute so a benchmark may change it).
    gp_max_observations: int = GP_MAX_OBSERVATIONS
    #: Simulations in flight from which TPE replaces the GP as well: a GP point costs 100-200 ms
    #: at 100-300 results whatever is pending (``bench/suggest_cost.py``), so a loop that keeps
    #: hundreds of simulations in flight would get 5-10 points a second while its slots free
    #: faster (``bench/scaling_model.py``, 256 workers: 0.31 busy); a TPE point costs ~1 ms.
    gp_max_pending: int = 32
    #: A call sees at most this many pending points, the latest submitted (those the next point
    #: would crowd first): each is a GP fantasy or a TPE liar trial, and with thousands of
    #: simulations in flight a call that saw them all would cost seconds (``bench/suggest_cost.py``).
    max_pending: int = 128
    #: TPE sees at most ``tpe_max_observations`` results: the best ``tpe_best`` (its "good"
    #: group is at most the best 25 of what it sees) and a seeded uniform sample of the others,
    #: so a call's cost (densities over every result it sees) stops growing with the campaign.
    #: Keep it at 250 or more: from there the good group is the best 25 overall, as with every result.
    tpe_max_observations: int = 1000
    tpe_best: int = 100
    #: TPE's draws from the good density per point, the best of which it takes.
    tpe_candidates: int = 24

    def __init__(self, parameters: dict[str, ParameterSpec], goal: Literal["minimize", "maximize"] = "minimize",
                 seed: int = 0, startup: int | None = None) -> None:
        self.parameters = parameters
        self.goal = goal
        self.seed = seed
        self.startup = startup if startup is not None else max(4, 2 * len(parameters))
        self.observed: list[tuple[dict[str, float], float]] = []
        self._sobol_next = 0  # the start-up design's next point (see suggest)
        self._theta: np.ndarray | None = None  # last fitted hyperparameters: a warm start
        self._fitted_at = 0  # results the last fit saw
        #: One suggestion at a time: the campaign asks from a worker thread while an agent's
        #: suggest_parameters tool may ask from another, and the start-up design's next point and
        #: the GP's last fit are shared state.
        self._lock = threading.Lock()
        #: What a point may cost (s), set by the campaign from how fast its slots free (None: no
        #: limit); what the GP's last calls cost a point (``gp_point_seconds``).
        self.point_seconds: float | None = None
        self._gp_costs: deque[float] = deque(maxlen=3)

    def observe(self, params: dict[str, float], value: float) -> None:
        """Record a finished simulation's objective value (non-finite values are skipped)."""
        if math.isfinite(value) and set(params) >= set(self.parameters):
            self.observed.append(({k: params[k] for k in self.parameters}, value))

    @property
    def gp_point_seconds(self) -> float:
        """What a GP point costs (s): the least of the last 3 calls' costs a point, 0 before 2
        calls. Once it is more than ``point_seconds``, TPE chooses the points; the least, so that
        one fit slowed by a busy machine (a model's turn on the same cores) does not hand over a
        campaign whose slots free every few seconds."""
        return min(self._gp_costs) if len(self._gp_costs) >= 2 else 0.0

    def best(self) -> tuple[dict[str, float], float] | None:
        """The best result observed, as (parameters, value); None before the first."""
        return ranking.best(self.observed, lambda pv: pv[1], self.goal)

    def suggest(self, n: int = 1, pending: list[dict[str, float]] | None = None) -> list[dict[str, float]]:
        """``n`` parameter sets to try next, each within bounds, avoiding the ``pending`` ones.

        Thread-safe: calls are serialised, and each fits on a copy of the results taken at its
        start, so ``observe`` may go on from another thread meanwhile."""
        running = len(pending or [])  # before the cut to max_pending: the design's next point counts them all
        pending = [p for p in (pending or [])[-self.max_pending:] if set(p) >= set(self.parameters)]
        with self._lock:
            observed = list(self.observed)
            if n <= 0:
                return []
            if len(observed) < self.startup:
                start = max(self._sobol_next, len(observed) + running)
                self._sobol_next = start + n
                return [self._from_unit(u) for u in self._sobol_points(start, n)]
            rng = self._rng(1, len(observed), len(pending))
            if len(observed) >= self.gp_max_observations or len(pending) >= self.gp_max_pending or (
                    self.point_seconds is not None and self.gp_point_seconds > self.point_seconds):
                return self._suggest_tpe(self._tpe_sample(observed, rng), n, pending, rng)
            started = time.perf_counter()
            try:
                points = self._suggest_gp(observed, n, pending, rng)
            except (linalg.LinAlgError, ValueError, FloatingPointError):
                return self._suggest_tpe(observed, n, pending, self._rng(1, len(observed), len(pending)))
            self._gp_costs.append((time.perf_counter() - started) / n)
            return points

    def advice(self, n: int, pending: list[dict[str, float]] | None = None) -> Advice:
        """``n`` candidates (``suggest``'s points, in its order) with the surrogate's prediction of
        each, what it learned of each parameter and the simulations' scatter: what the planner
        reads (see ``vocabulary.steering.Advice``).

        The surrogate is a GP fitted here on a copy of the results (the suggestion's own fit is
        not reused: TPE has none, and sharing it would make suggestions depend on whether the
        planner asked), on at most ``ADVICE_MAX_OBSERVATIONS`` of them, started as a suggestion's
        fit is (``_hyper_starts``). It needs 3 results; before, the candidates carry NaN predictions.
        """
        points = self.suggest(n, pending)
        with self._lock:
            observed = list(self.observed)
            # started as a suggestion's fit is, so that the same results give the planner the same numbers
            starts = self._hyper_starts(len(observed), self._rng(2))
        if len(observed) > ADVICE_MAX_OBSERVATIONS:
            half = ADVICE_MAX_OBSERVATIONS // 2
            order = sorted(range(len(observed)), key=lambda i: (1 if self.goal == "minimize" else -1) * observed[i][1])
            keep = set(order[:half]) | set(range(len(observed) - half, len(observed)))
            observed = [observed[i] for i in sorted(keep)]
        if len(observed) < 3:
            return Advice.unpredicted(points, len(observed))
        x = np.array([self._to_unit(p) for p, _ in observed])
        values = np.array([v for _, v in observed])
        shape = Warp.of(values, self.goal)
        y = shape.apply(values)
        try:
            gp = GaussianProcess(x, y, fit_hyper(x, y, self._kernel, starts))
            mean, sd = gp.predict(np.array([self._to_unit(p) for p in points])) if points else (np.array([]),) * 2
        except (linalg.LinAlgError, ValueError, FloatingPointError):
            return Advice.unpredicted(points, len(observed))
        mean, sd = shape.unwarp(mean, sd)
        _, spread = shape.unwarp(np.array([float(y.min())]), np.array([math.sqrt(gp.hyper.noise)]))
        lengths = dict(zip(self.parameters, (float(v) for v in gp.hyper.lengths), strict=True))
        return Advice([Candidate(p, float(m), float(s), i) for i, (p, m, s) in enumerate(zip(points, mean, sd,
                                                                                              strict=True))],
                      lengths, float(spread[0]), len(observed))

    # -- unit cube -----------------------------------------------------------------------------
    def _rng(self, *key: int) -> np.random.Generator:
        """A generator for this seed and ``key``: (0,) scrambles the start-up design, (1, results,
        pending points) draws a suggestion's candidates, restarts and samples, so that a call's
        randomness follows from the data it sees, not from the calls before it."""
        return np.random.default_rng([self.seed % 2**64, *key])

    def _to_unit(self, params: dict[str, float]) -> np.ndarray:
        """Parameters as a point of [0, 1]^d (log parameters on a log scale)."""
        out = []
        for name, p in self.parameters.items():
            value = min(max(float(params[name]), p.min), p.max)
            lo, hi, v = (math.log(p.min), math.log(p.max), math.log(value)) if p.log else (p.min, p.max, value)
            out.append((v - lo) / (hi - lo))
        return np.array(out)

    def _from_unit(self, u: np.ndarray) -> dict[str, float]:
        """A point of [0, 1]^d as parameters, clamped to the bounds against rounding."""
        out = {}
        for ui, (name, p) in zip(np.clip(u, 0.0, 1.0), self.parameters.items(), strict=True):
            if p.log:
                value = math.exp(math.log(p.min) + float(ui) * (math.log(p.max) - math.log(p.min)))
            else:
                value = p.min + float(ui) * (p.max - p.min)
            out[name] = min(max(value, p.min), p.max)
        return out

    def _sobol_points(self, start: int, n: int) -> np.ndarray:
        """Points ``start`` to ``start + n - 1`` (n, d) of this optimizer's scrambled Sobol sequence."""
        sobol = qmc.Sobol(len(self.parameters), scramble=True, rng=self._rng(0))
        if start:  # (scipy refuses to skip 0 points)
            sobol.fast_forward(start)
        with warnings.catch_warnings():  # balance warnings for n not a power of 2: irrelevant here
            warnings.simplefilter("ignore", UserWarning)
            return sobol.random(n)

    # -- GP path -------------------------------------------------------------------------------
    @property
    def _kernel(self) -> Kernel:
        d = len(self.parameters)
        return Kernel(d, full=d <= self.max_rotated)

    def _suggest_gp(self, observed: list[tuple[dict[str, float], float]], n: int,
                    pending: list[dict[str, float]], rng: np.random.Generator) -> list[dict[str, float]]:
        """n points of largest log EI, each added as a kriging-believer fantasy before the next."""
        x = np.array([self._to_unit(p) for p, _ in observed])
        y = warp(np.array([v for _, v in observed]), self.goal)
        if self._theta is not None and self.restart_below <= len(observed) < self._fitted_at * (1 + self.refit_growth):
            hyper = self._kernel.unpack(self._theta)
        else:
            hyper = fit_hyper(x, y, self._kernel, self._hyper_starts(len(observed), rng))
            self._theta, self._fitted_at = self._kernel.pack(hyper), len(observed)
        gp = GaussianProcess(x, y, hyper)
        best = float(y.min())
        out = []
        points = [self._to_unit(p) for p in pending] + [None] * n
        for i, u in enumerate(points):
            if u is None:
                u = maximise_log_ei(gp, best, self._candidates(x, y, hyper, rng), self.polish, self.min_distance)
                out.append(self._from_unit(u))
            if i + 1 < len(points):  # a fantasy only for the points still to choose
                believed = gp.predict(u[None, :])[0]
                gp = gp.with_points(u[None, :], believed, 0.0 if self.fantasy_noiseless else None)
                if self.fantasy_best:
                    best = min(best, float(believed[0]))
        return out

    def _hyper_starts(self, n_observed: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Starts of the hyperparameter fit: the prior's centre and, while there are few results (a
        multimodal likelihood), ``restarts`` draws from the prior; from ``restart_below`` results
        on, the previous fit and the centre.

        The previous fit is no start below ``restart_below``: with a handful of results the fit
        it lands in decides the next point, and a start carried over from the calls before (a
        planner's round asks for candidates beside the loop's own calls) made two campaigns with
        the same results draw different points (``bench/agent_value.py``, seeds 12-14: parted at the
        7th simulation)."""
        centre, width = self._kernel.prior()
        if n_observed >= self.restart_below:
            return ([self._theta] if self._theta is not None else []) + [centre]
        return [centre] + [centre + width * rng.standard_normal(centre.size) for _ in range(self.restarts)]

    def _candidates(self, x: np.ndarray, y: np.ndarray, hyper: Hyper, rng: np.random.Generator) -> np.ndarray:
        """Acquisition candidates: scrambled Sobol points over the cube, plus Gaussian clouds
        (a fifth of a length scale wide) around the best points so far, where a narrow valley's
        improvements are."""
        d = x.shape[1]
        spread = qmc.Sobol(d, scramble=True, rng=rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cloud = [spread.random(self.candidates)]
        for centre in x[np.argsort(y)[: self.local_centres]]:
            width = np.minimum(0.2 * hyper.lengths, 0.2)
            cloud.append(centre + width * rng.standard_normal((self.local_candidates, d)))
        return np.clip(np.vstack(cloud), 0.0, 1.0)

    # -- TPE path (many results) ---------------------------------------------------------------
    def _tpe_sample(self, observed: list[tuple[dict[str, float], float]],
                    rng: np.random.Generator) -> list[tuple[dict[str, float], float]]:
        """The results TPE sees (``tpe_max_observations``): all while they are few, else the best
        ``tpe_best`` and a uniform sample of the others drawn for this call, in their order."""
        if len(observed) <= self.tpe_max_observations:
            return observed
        values = np.array([v for _, v in observed]) * (1.0 if self.goal == "minimize" else -1.0)
        best = np.argpartition(values, self.tpe_best)[: self.tpe_best]
        others = np.setdiff1d(np.arange(len(observed)), best)
        drawn = rng.choice(others, self.tpe_max_observations - self.tpe_best, replace=False)
        return [observed[i] for i in np.sort(np.concatenate([best, drawn]))]

    def _suggest_tpe(self, observed: list[tuple[dict[str, float], float]], n: int,
                     pending: list[dict[str, float]], rng: np.random.Generator) -> list[dict[str, float]]:
        """Multivariate TPE over the results (``parzen_batch``); running simulations (and earlier
        points of the batch) count as the worst value so far (a pessimistic constant liar)."""
        x = np.array([self._to_unit(p) for p, _ in observed])
        y = np.array([v for _, v in observed]) * (1.0 if self.goal == "minimize" else -1.0)
        held = np.array([self._to_unit(p) for p in pending]).reshape(len(pending), len(self.parameters))
        points = parzen_batch(x, y, held, n, rng, self.tpe_candidates)
        return [self._from_unit(u) for u in points]


# -- TPE ----------------------------------------------------------------------------------------
#: A TPE point is kept away from at most this many of its batch's earlier points (the latest), as
#: a call sees at most ``Optimizer.max_pending`` running simulations: a batch of 1,000 would
#: otherwise cost as its square.
LIARS_SEEN = 128


def tpe_good_count(n: int) -> int:
    """How many of ``n`` results form TPE's "good" group: a tenth, at most 25 (the usual split)."""
    return max(1, min(math.ceil(0.1 * n), 25))


class Parzen:
    """A Parzen density on the unit cube: a truncated Gaussian at each point plus a wide prior
    component at the centre, one bandwidth for all points (Scott's rule shape, 0.2 (m + 1)^(-1/(d+4))
    of the box for m points in d dimensions, as multivariate TPE uses)."""

    #: Rows x components x dimensions evaluated at once by ``log_sum`` (memory: 8 bytes each).
    CHUNK = 2_000_000

    def __init__(self, centres: np.ndarray, m: int | None = None) -> None:
        """``m``: the points the bandwidth is chosen for (default: the centres'), so that points
        added later (``parzen_batch``'s liars) share it."""
        d = centres.shape[1]
        self.width = 0.2 * ((m if m is not None else len(centres)) + 1) ** (-1.0 / (d + 4))
        self.centres = np.vstack([centres, np.full((1, d), 0.5)])
        #: One width per component, a column (the prior's 1: keeps l/g finite far from every point).
        self.sigma = np.full((len(self.centres), 1), self.width)
        self.sigma[-1] = 1.0
        self._lo = special.ndtr(-self.centres / self.sigma)
        self._mass = special.ndtr((1.0 - self.centres) / self.sigma) - self._lo

    def sample(self, k: int, rng: np.random.Generator) -> np.ndarray:
        """``k`` points drawn from the density (a component, then its truncated Gaussian)."""
        which = rng.integers(0, len(self.centres), k)
        u = self._lo[which] + rng.random((k, self.centres.shape[1])) * self._mass[which]
        return np.clip(self.centres[which] + self.sigma[which] * special.ndtri(u), 0.0, 1.0)

    def log_sum(self, xs: np.ndarray) -> np.ndarray:
        """log of the sum of the components' densities at each row of ``xs`` (k, d); the density
        is this less log(components). Squared distances by one matrix product, and the sum of
        exponentials without a log-sum-exp's passes: the prior's term (width 1 on the unit cube)
        is at least exp(-d/2) of its peak, so the sum never underflows."""
        norm = np.log(self.sigma * self._mass * math.sqrt(2 * math.pi)).sum(axis=1)
        weight = np.exp(norm.min() - norm)
        inv2 = 0.5 / self.sigma[:, 0] ** 2
        c2 = (self.centres ** 2).sum(axis=1)
        rows = max(1, self.CHUNK // self.centres.size)
        out = np.empty(len(xs))
        for a in range(0, len(xs), rows):
            part = xs[a:a + rows]
            d2 = np.maximum((part ** 2).sum(axis=1)[:, None] + c2[None] - 2.0 * part @ self.centres.T, 0.0)
            out[a:a + rows] = np.log(np.exp(-d2 * inv2[None]) @ weight)
        return out - norm.min()

    def log_pdf(self, xs: np.ndarray) -> np.ndarray:
        return self.log_sum(xs) - math.log(len(self.centres))


def parzen_batch(x: np.ndarray, y: np.ndarray, pending: np.ndarray, n: int, rng: np.random.Generator,
                 candidates: int = 24) -> np.ndarray:
    """``n`` points (n, d) of the unit cube by TPE, one density fit for the whole batch.

    ``x`` (m, d) are the results' points and ``y`` their values to minimise; ``pending`` (p, d)
    the simulations still running. The best ``tpe_good_count(m)`` results form the good density
    l(x), the rest with the pending points the bad one g(x); each point is the best of its own
    ``candidates`` draws from l by log l - log g, where g also holds the batch's earlier points (a
    constant liar at the worst value), so the next spreads away from it. The densities are
    evaluated once for every draw of the batch, and each point adds only its predecessors' terms:
    ~0.1 ms a point at 1,000 results, where rebuilding Optuna's study for each point cost 20-40 ms
    (``bench/suggest_cost.py``)."""
    d = x.shape[1]
    order = np.argsort(y, kind="stable")
    split = tpe_good_count(len(y))
    good = Parzen(x[order[:split]])
    bad = Parzen(np.vstack([x[order[split:]], pending]), len(y) - split + len(pending) + n)
    drawn = good.sample(n * candidates, rng)
    score = good.log_pdf(drawn)
    base = bad.log_sum(drawn)
    out = np.empty((n, d))
    norm = math.log(bad.width * math.sqrt(2 * math.pi)) * d
    for i in range(n):
        pool = slice(i * candidates, (i + 1) * candidates)
        g = base[pool]
        liars = out[max(0, i - LIARS_SEEN):i]  # the batch's latest points, as components of g
        if len(liars):  # (their truncation's mass ignored: a liar only needs to push the next away)
            d2 = ((drawn[pool, None, :] - liars[None]) ** 2).sum(axis=2)
            g = np.logaddexp(g, np.log(np.exp(-0.5 * d2 / bad.width ** 2).sum(axis=1) + 1e-300) - norm)
        out[i] = drawn[pool][int(np.argmax(score[pool] - g))]
    return out
