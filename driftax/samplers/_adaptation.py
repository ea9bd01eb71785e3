"""Warmup adaptation of a batch of chains: dual-averaging step size, Stan-style windowed metric
estimation (per chain or pooled across chains), the energy-error criterion of unadjusted
samplers, and ChEES trajectory-length adaptation for `ChEESHMC`.

An adaptation acts on a *batched* sampler (one copy of every array hyperparameter per chain)
inside the compiled warmup loop: `init` → `update` once per warmup step → `finalize`.
"""

from __future__ import annotations

import abc
import math
import warnings
from typing import Any, Literal, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, PyTree
from .._warnings import SamplingWarning
from ._base import (
    AbstractMetricSampler,
    AbstractSampler,
    AbstractStepSizeSampler,
    Info,
    check_fraction,
    check_hyper,
    check_int,
)
from ._hamiltonian import ChEESHMC
from ._metrics import (
    AbstractMetric,
    DenseMetric,
    DiagonalMetric,
    IdentityMetric,
    LowRankMetric,
)

# ---------------------------------------------------------------------------------------------
# Dual averaging (Nesterov 2009; Hoffman & Gelman 2014, Algorithm 5)
# ---------------------------------------------------------------------------------------------


class DualAveragingState(eqx.Module):
    """State of the dual-averaging step-size search (all scalars)."""

    log_step: Array
    log_step_avg: Array
    h_bar: Array
    mu: Array
    count: Array


def _log_step_bounds(dtype) -> tuple[float, float]:
    """Bounds on the log step size: well inside the dtype's normal range, so that no statistic
    can drive the step size to 0 or to infinity (the health checks then report the collapse)."""
    info = jnp.finfo(dtype)
    return 0.5 * math.log(float(info.tiny)), 0.5 * math.log(float(info.max))


def dual_averaging_init(step_size, shrink_factor: float = 10.0) -> DualAveragingState:
    """Start dual averaging at `step_size`, shrinking towards `shrink_factor · step_size`
    (10 as in Stan for adjusted samplers; unadjusted ones use a cautious 2, since a step size
    far too large makes them unstable rather than merely rejected)."""
    if not isinstance(step_size, jax.core.Tracer):
        check_hyper(step_size, "step_size")
    step_size = jnp.asarray(step_size)
    if not jnp.issubdtype(step_size.dtype, jnp.floating):
        step_size = step_size.astype(jnp.result_type(float))
    log_step = jnp.log(step_size)
    zero = jnp.zeros_like(log_step)
    return DualAveragingState(
        log_step=log_step,
        log_step_avg=log_step,
        h_bar=zero,
        mu=math.log(shrink_factor) + log_step,
        count=zero,
    )


def dual_averaging_update(
    state: DualAveragingState, statistic, gamma=0.05, t0=10.0, kappa=0.75
) -> DualAveragingState:
    """One update with `statistic = target - observed` for an acceptance rate (positive: the
    step is too large, it shrinks).

    The statistic is clipped to `[-1, 1]` (the range of a difference of rates) and a non-finite
    one counts as `+1` (shrink: something broke), and the log step size stays within bounds
    set by the dtype, so NaN or infinite statistics can never produce a zero, infinite or NaN
    step size. All arithmetic stays in the state's dtype."""
    dtype = state.log_step.dtype
    statistic = jnp.asarray(statistic).astype(dtype)
    t = state.count + 1.0
    eta = 1.0 / (t + t0)
    statistic = jnp.where(jnp.isfinite(statistic), jnp.clip(statistic, -1.0, 1.0), 1.0)
    h_bar = (1.0 - eta) * state.h_bar + eta * statistic
    lo, hi = _log_step_bounds(dtype)
    log_step = jnp.clip(state.mu - jnp.sqrt(t) / gamma * h_bar, lo, hi)
    w = t ** (-kappa)
    log_step_avg = w * log_step + (1.0 - w) * state.log_step_avg
    return DualAveragingState(
        log_step=log_step, log_step_avg=log_step_avg, h_bar=h_bar, mu=state.mu, count=t
    )


# ---------------------------------------------------------------------------------------------
# Welford moments (diagonal or dense), per chain, combinable across chains
# ---------------------------------------------------------------------------------------------


class WelfordState(eqx.Module):
    """Running count, mean and centred second moment (elementwise or a matrix) of flat points."""

    count: Array
    mean: Array
    m2: Array


def welford_init(dim: int, dense: bool, dtype) -> WelfordState:
    m2 = jnp.zeros((dim, dim) if dense else (dim,), dtype)
    return WelfordState(count=jnp.zeros((), dtype), mean=jnp.zeros(dim, dtype), m2=m2)


def welford_update(state: WelfordState, x: Array, weight: ArrayLike = 1.0) -> WelfordState:
    """Add one flat point `x` (with `weight` 0 or 1)."""
    count = state.count + weight
    delta = x - state.mean
    mean = state.mean + weight * delta / jnp.maximum(count, 1.0)
    delta2 = x - mean
    if state.m2.ndim == 2:
        m2 = state.m2 + weight * jnp.outer(delta2, delta)
    else:
        m2 = state.m2 + weight * delta * delta2
    return WelfordState(count=count, mean=mean, m2=m2)


def welford_pool(states: WelfordState) -> WelfordState:
    """Combine per-chain Welford states (leading chain axis) into one."""
    n = states.count
    total = jnp.sum(n)
    mean = jnp.sum(n[:, None] * states.mean, axis=0) / jnp.maximum(total, 1.0)
    d = states.mean - mean
    if states.m2.ndim == 3:
        m2 = jnp.sum(states.m2, axis=0) + jnp.einsum("c,ci,cj->ij", n, d, d)
    else:
        m2 = jnp.sum(states.m2, axis=0) + jnp.sum(n[:, None] * d**2, axis=0)
    return WelfordState(count=total, mean=mean, m2=m2)


def regularized_covariance(state: WelfordState) -> Array:
    """Stan's regularized estimate: `n/(n+5) · Σ̂ + 10⁻³ · 5/(n+5) · I`."""
    n = state.count
    cov = state.m2 / jnp.maximum(n - 1.0, 1.0)
    shrink = 1e-3 * 5.0 / (n + 5.0)
    if cov.ndim == 2:
        cov = 0.5 * (cov + cov.T)
        return (n / (n + 5.0)) * cov + shrink * jnp.eye(cov.shape[0], dtype=cov.dtype)
    return (n / (n + 5.0)) * cov + shrink


def welford_update_batch(state: WelfordState, xs: Array, weights: Array) -> WelfordState:
    """Add a batch of flat points `xs` `(n, dim)` with per-point `weights` (0 or 1) to ONE
    (pooled) Welford state: Chan et al.'s combination of the batch's moments with the running
    ones. A point with weight 0 may be non-finite (it is replaced by 0 before any sum)."""
    dtype = state.mean.dtype
    w = weights.astype(dtype)
    xs = jnp.where(w[:, None] > 0, xs.astype(dtype), 0.0)
    n_b = jnp.sum(w)
    mean_b = jnp.sum(w[:, None] * xs, axis=0) / jnp.maximum(n_b, 1.0)
    c = w[:, None] * (xs - mean_b)
    m2_b = c.T @ c if state.m2.ndim == 2 else jnp.sum(c * (xs - mean_b), axis=0)
    n = state.count + n_b
    delta = mean_b - state.mean
    frac = n_b / jnp.maximum(n, 1.0)
    mean = state.mean + frac * delta
    scale = state.count * frac
    extra = scale * (jnp.outer(delta, delta) if state.m2.ndim == 2 else delta**2)
    return WelfordState(count=n, mean=mean, m2=state.m2 + m2_b + extra)


_FISHER_CLIP = (1e-20, 1e20)  # nutpie's bounds on the diagonal


def fisher_diagonal(draws: WelfordState, scores: WelfordState, previous: Array) -> Array:
    """The diagonal inverse mass minimising the Fisher divergence (nutpie): `√(Var[x_i] /
    Var[∇log p(x)_i])` from pooled Welford moments of the draws and of their scores (diagonal or
    dense; the dense ones' diagonals are used). Entries that are not finite and positive, or all
    of them with fewer than 3 draws, keep `previous` (flat); the rest are clipped to
    `[1e-20, 1e20]`. For a Gaussian `N(μ, Σ)` with diagonal `Σ` it is exactly `diag(Σ)`."""
    vx, vg = draws.m2, scores.m2
    if vx.ndim == 2:
        vx, vg = jnp.diagonal(vx), jnp.diagonal(vg)
    d = jnp.sqrt(vx / vg)  # the (n - 1) normalisations cancel
    ok = jnp.isfinite(d) & (d > 0) & (draws.count >= 3)
    d = jnp.where(ok, jnp.clip(d, *_FISHER_CLIP), previous.astype(d.dtype))
    return d


def spd_geometric_mean(a: Array, b: Array) -> Array:
    """The SPD solution `Σ` of `Σ b Σ = a` (the geometric mean of `a` and `b⁻¹`):
    `Σ = b^{-1/2} (b^{1/2} a b^{1/2})^{1/2} b^{-1/2}`, by two symmetric eigendecompositions."""
    beta, q = jnp.linalg.eigh(0.5 * (b + b.T))
    tiny = jnp.finfo(beta.dtype).tiny ** 0.5
    beta = jnp.maximum(beta, tiny)
    b_half = (q * jnp.sqrt(beta)) @ q.T
    b_mhalf = (q / jnp.sqrt(beta)) @ q.T
    c = b_half @ a @ b_half
    omega, w = jnp.linalg.eigh(0.5 * (c + c.T))
    c_half = (w * jnp.sqrt(jnp.maximum(omega, tiny))) @ w.T
    sigma = b_mhalf @ c_half @ b_mhalf
    return 0.5 * (sigma + sigma.T)


LOW_RANK_SHRINKAGE = 5.0
"""Prior weight (in draws) of the identity in the scaled covariances of the low-rank estimate."""


def low_rank_estimate(
    draws: WelfordState,
    scores: WelfordState,
    previous: Array,
    rank: int,
    cutoff: float = 2.0,
    min_draws: int | None = None,
) -> tuple[Array, Array, Array]:
    """A low-rank + diagonal inverse mass from pooled dense Welford moments of draws and scores
    (nutpie's estimator, computed in the full space). Returns `(diagonal, eigenvectors,
    eigenvalues)` for [`LowRankMetric`][]:

    1. `diagonal = D`, the Fisher diagonal ([`fisher_diagonal`][]); `S = D^{1/2}`.
    2. In the scaled coordinates `S⁻¹x`: the draws' covariance `A = S⁻¹ Ĉov[x] S⁻¹` and the
       scores' covariance `B = S Ĉov[∇log p] S`, each shrunk towards the identity with a weight
       of `LOW_RANK_SHRINKAGE` draws (`(nA + 5I)/(n + 5)`), so directions no draw has seen
       stay at the diagonal.
    3. `Σ` solves `Σ B Σ = A` (the SPD mean of `A` and `B⁻¹`; for a Gaussian both estimate
       the scaled covariance, and `Σ` minimises the Fisher divergence among Gaussians).
    4. The `rank` eigenpairs of `Σ` farthest from 1 (largest `|log λ|`); an eigenvalue inside
       `[1/cutoff, cutoff]` is set to 1 (no correction), and so are all of them when the
       window has fewer than `min_draws` (default `2·rank`) draws or anything is not finite.
    """
    n = draws.count
    dtype = draws.mean.dtype
    dim = draws.mean.shape[0]
    eye = jnp.eye(dim, dtype=dtype)
    d = fisher_diagonal(draws, scores, previous)
    s = jnp.sqrt(d)
    denom = jnp.maximum(n - 1.0, 1.0)
    ss = s[:, None] * s[None, :]
    a = draws.m2 / denom / ss
    b = scores.m2 / denom * ss
    tau = LOW_RANK_SHRINKAGE
    a = (n * a + tau * eye) / (n + tau)
    b = (n * b + tau * eye) / (n + tau)
    sigma = spd_geometric_mean(0.5 * (a + a.T), b)
    lam_all, vecs = jnp.linalg.eigh(sigma)
    lam_all = jnp.maximum(lam_all, jnp.finfo(dtype).tiny ** 0.5)
    _, idx = jax.lax.top_k(jnp.abs(jnp.log(lam_all)), rank)
    lam, u = lam_all[idx], vecs[:, idx]
    need = 2 * rank if min_draws is None else min_draws
    finite = jnp.all(jnp.isfinite(lam)) & jnp.all(jnp.isfinite(u))
    keep = (lam > cutoff) | (lam < 1.0 / cutoff)
    keep = keep & (n >= need) & finite
    lam = jnp.where(keep, lam, 1.0)
    u = jnp.where(finite, u, eye[:, :rank])
    return d, u, lam


# ---------------------------------------------------------------------------------------------
# Stan's warmup schedule
# ---------------------------------------------------------------------------------------------


def window_schedule(
    num_warmup: int, init_buffer: int = 75, term_buffer: int = 50, base_window: int = 25
) -> tuple[np.ndarray, np.ndarray]:
    """Stan's windowed schedule: `(in_slow_window, window_ends)` boolean arrays of length
    `num_warmup` — a fast initial buffer, slow windows doubling in size, a fast terminal buffer.
    Fewer than 20 steps: no metric windows."""
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    init_buffer = check_int(init_buffer, "init_buffer", 0)
    term_buffer = check_int(term_buffer, "term_buffer", 0)
    base_window = check_int(base_window, "base_window", 1)
    slow = np.zeros(num_warmup, bool)
    ends = np.zeros(num_warmup, bool)
    if num_warmup < 20:
        return slow, ends
    if init_buffer + base_window + term_buffer > num_warmup:
        init_buffer = int(0.15 * num_warmup)
        term_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - init_buffer - term_buffer
    start, size = init_buffer, base_window
    last = num_warmup - term_buffer
    while start < last:
        end = start + size
        if end + 2 * size > last:  # the next window would not fit: stretch this one
            end = last
        slow[start:end] = True
        ends[end - 1] = True
        start, size = end, 2 * size
    return slow, ends


def nutpie_schedule(
    num_warmup: int,
    early: float = 0.3,
    final: float = 0.15,
    early_switch: int = 10,
    late_switch: int = 80,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """nutpie's warmup schedule for the Fisher diagonal: `(update, switch, restart)` boolean
    arrays of length `num_warmup`.

    Two estimators of the draws' and scores' moments run side by side, a foreground and a
    background; every draw goes into both. At a `switch` step the background (the draws since
    the last switch) becomes the foreground and a fresh background starts: every `early_switch`
    steps in the first `early` fraction of the warmup, every `late_switch` steps after. At an
    `update` step (every step from the first switch until the last `final` fraction) the metric
    is set from the foreground, so the metric follows the chains from the first few steps on
    instead of waiting for Stan's doubling windows. The last `final` fraction adapts the step
    size only; dual averaging restarts at the `restart` step (the last metric update). Fewer
    than 20 steps: no metric updates.
    """
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    early_switch = check_int(early_switch, "early_switch", 1)
    late_switch = check_int(late_switch, "late_switch", 1)
    for value, name in ((early, "early"), (final, "final")):
        if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
            raise ValueError(f"`{name}` must be a fraction in [0, 1), got {value!r}.")
    update = np.zeros(num_warmup, bool)
    switch = np.zeros(num_warmup, bool)
    restart = np.zeros(num_warmup, bool)
    last = num_warmup - int(final * num_warmup)  # metric updates at steps < last
    if num_warmup < 20 or last <= early_switch:
        return update, switch, restart
    early_end = int(early * num_warmup)
    i = early_switch
    while i <= last:
        switch[i - 1] = True
        i += early_switch if i < early_end else late_switch
    update[early_switch - 1 : last] = True
    restart[last - 1] = True
    return update, switch, restart


# ---------------------------------------------------------------------------------------------
# Adaptations
# ---------------------------------------------------------------------------------------------


def _flat(x):
    return x.reshape(x.shape[0], -1)


def _event_size(states) -> int:
    return math.prod(states.position.shape[1:])


def step_size_statistic(sampler: AbstractSampler, infos: Info, target, dim: int, pooled: bool):
    """The dual-averaging statistic `target - observed` per chain (or pooled).

    Adjusted samplers: the acceptance rate. Unadjusted samplers: the step size should make the
    energy error's variance per dimension equal to `target`, i.e. `Var[ΔE] = v = d·target`.
    Squared errors are heavy-tailed, so the bounded statistic `exp(-|ΔE|)` is used instead: for
    `ΔE ~ N(0, v)` its mean is `2 e^{v/2} Φ(-√v)`, which is the value aimed at. Divergent
    steps count as acceptance 0 (adjusted) or `2·aim - 1` (unadjusted; see the code).
    """
    if sampler.is_adjusted:
        # kernels report acceptance 0 for a divergent proposal (NUTS: the trajectory's mean)
        acc = infos.acceptance_rate
        observed = jnp.where(jnp.isfinite(acc), acc, 0.0)
        aim = target
    else:
        e = infos.energy_error
        v = dim * target
        aim = jnp.exp(jnp.log(2.0) + 0.5 * v + jax.scipy.special.log_ndtr(-jnp.sqrt(v)))
        # A divergent step counts as `2·aim - 1`: as far below the aim as a perfect step is
        # above it. Divergences push the step size down, but a region the chain may never
        # enter (a NaN hole), which it meets at a rate that falls only like √h, cannot drive the
        # step size to zero (counted as 0, it would: the aim is close to 1).
        ok = jnp.isfinite(e) & ~infos.is_divergent
        observed = jnp.where(ok, jnp.exp(-jnp.abs(e)), 2.0 * aim - 1.0)
    stat = aim - (jnp.mean(observed) if pooled else observed)
    return jnp.broadcast_to(stat, infos.acceptance_rate.shape)


class AbstractAdaptation(eqx.Module):
    """Tunes a batch of chains' hyperparameters during warmup (inside the compiled loop)."""

    def prepare(self, sampler: AbstractSampler, event_shape) -> AbstractSampler:
        """Called eagerly once before compiling: fix the sampler's structure (e.g. give it a
        diagonal metric to adapt). Default: unchanged."""
        return sampler

    @abc.abstractmethod
    def init(self, samplers: AbstractSampler, states: PyTree, num_warmup: int) -> PyTree:
        """The adaptation state for a batched sampler and batched states."""

    @abc.abstractmethod
    def update(
        self, samplers: AbstractSampler, astate: PyTree, states: PyTree, infos: Info, i: Array
    ) -> tuple[AbstractSampler, PyTree]:
        """After warmup step `i`: new batched sampler and adaptation state."""

    def finalize(self, samplers: AbstractSampler, astate: PyTree) -> AbstractSampler:
        """The sampler to use after warmup. Default: the last one."""
        return samplers


class NoAdaptation(AbstractAdaptation):
    """Keep the hyperparameters as given (warmup steps are burn-in only)."""

    def init(self, samplers, states, num_warmup):
        return None

    def update(self, samplers, astate, states, infos, i):
        return samplers, astate


class _WindowState(eqx.Module):
    da: DualAveragingState
    # per-chain WelfordStates, or pooled `_ScoreMoments` (fisher / low_rank), or a pair of
    # them (foreground, background) with the nutpie schedule
    welford: PyTree
    slow: Array  # Stan: in a slow window; nutpie: update the metric
    ends: Array  # Stan: a window ends; nutpie: switch the estimators
    restart: Array | None = None  # nutpie: restart dual averaging


def _shrink(sampler) -> float:
    return 10.0 if sampler.is_adjusted else 2.0


def _set_step_size(samplers, step_size):
    return eqx.tree_at(lambda s: s.step_size, samplers, step_size.astype(samplers.step_size.dtype))


def _metric_from(kind: str, cov: Array, event_shape) -> AbstractMetric:
    if kind == "dense":
        return DenseMetric(cov)
    return DiagonalMetric(cov.reshape(event_shape))


class _ScoreMoments(eqx.Module):
    """Pooled (over chains) Welford moments of the draws and of their scores in a window."""

    draws: WelfordState
    scores: WelfordState


def _scored_batch(states, dtype):
    """The chains' flat draws `x` and a function `add(moments, flag)` that adds the draws and
    their scores to pooled `_ScoreMoments` where `flag` holds. A chain whose draw or score is
    not finite (it should never be: kernels reject such proposals) adds nothing."""
    x = _flat(states.position).astype(dtype)
    g = _flat(states.score).astype(dtype)
    ok = jnp.all(jnp.isfinite(x), axis=1) & jnp.all(jnp.isfinite(g), axis=1)

    def add(moments: _ScoreMoments, flag) -> _ScoreMoments:
        w = (ok & flag).astype(dtype)
        return _ScoreMoments(
            draws=welford_update_batch(moments.draws, x, w),
            scores=welford_update_batch(moments.scores, g, w),
        )

    return x, add


def _fisher_metric(old: DiagonalMetric, moments: _ScoreMoments, event_shape) -> DiagonalMetric:
    """The pooled Fisher diagonal from `moments`, in the dtype of the (batched) `old` metric,
    whose first chain's entries are kept where the estimate is not usable."""
    dtype = moments.draws.mean.dtype
    prev = old.inverse_mass[0].reshape(-1).astype(dtype)
    d = fisher_diagonal(moments.draws, moments.scores, prev)
    return DiagonalMetric(d.reshape(event_shape).astype(old.inverse_mass.dtype))


def _last_window_size(slow: np.ndarray, ends: np.ndarray) -> int:
    """Number of slow steps in the last metric window of a schedule (0: none)."""
    idx = np.flatnonzero(ends)
    if idx.size == 0:
        return 0
    start = idx[-2] + 1 if idx.size > 1 else 0
    return int(np.sum(slow[start : idx[-1] + 1]))


def _broadcast_chains(tree, num_chains: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains, *a.shape)), tree)


class WindowAdaptation(AbstractAdaptation):
    """Stan-style warmup: dual-averaging step size throughout, and the metric re-estimated at
    the end of doubling slow windows, after which dual averaging restarts.

    **Arguments:**

    - `metric`: which metric the windows estimate.
        - `"diagonal"` (default; Stan): inverse mass = the draws' marginal variances.
        - `"dense"` (Stan): inverse mass = the draws' covariance matrix.
        - `"fisher"` (nutpie): a diagonal inverse mass `√(Var[x_i] / Var[∇log p(x)_i])` from
          the draws AND their scores, the diagonal that minimises the Fisher divergence
          between the target and a Gaussian; estimated from all chains.
        - `"low_rank"` (nutpie): the Fisher diagonal plus a rank-`rank` correction, a
          [`LowRankMetric`][driftax.samplers.LowRankMetric]; estimated from all chains (see
          `low_rank_estimate` in `driftax.samplers._adaptation` for the estimator).
        - `None`: step size only, keep the metric.
    - `target`: target acceptance rate (adjusted samplers; default: the sampler's own), or the
      target energy-error variance per dimension (unadjusted samplers; default `5e-4`); in
      (0, 1) either way.
    - `pooled`: share one step size (and, for `"diagonal"` / `"dense"`, one metric) across
      chains, estimated from all of them. `"fisher"` and `"low_rank"` always pool the metric.
    - `rank`: the rank of the `"low_rank"` correction (default 10, capped at the dimension when
      left at its default; an explicit rank above the dimension is an error). A window with
      fewer than `2·rank` draws over all chains keeps the diagonal; when even the last window
      is that small, a `driftax.SamplingWarning` says so at the start.
    - `eigenvalue_cutoff`: `"low_rank"` only: eigenvalues (of the covariance in the coordinates
      scaled by the diagonal) inside `[1/c, c]` are not corrected (default 2).
    - `schedule`: when the metric is re-estimated. `"stan"` (default): at the ends of Stan's
      doubling slow windows (`window_schedule` in `driftax.samplers._adaptation`).
      `"nutpie"` (`metric="fisher"` only): nutpie's schedule (`nutpie_schedule` in
      `driftax.samplers._adaptation`): the metric is set at every step from the draws since
      the last-but-one switch of two estimators that switch every 10 steps in the first 30% of
      the warmup and every 80 after, and kept fixed over the last 15% (step size only).

    The scores are read from the chains' states (`state.score`), so `"fisher"` and
    `"low_rank"` need a gradient-based sampler. Adapts samplers with a step size
    ([`AbstractStepSizeSampler`][]); the metric is adapted only for samplers that have one
    ([`AbstractMetricSampler`][]).
    """

    metric: Literal["diagonal", "dense", "fisher", "low_rank"] | None = "diagonal"
    target: float | None = None
    pooled: bool = False
    rank: int | None = None
    eigenvalue_cutoff: float = 2.0
    schedule: Literal["stan", "nutpie"] = "stan"

    def __check_init__(self):
        if self.metric not in ("diagonal", "dense", "fisher", "low_rank", None):
            raise ValueError(
                "`metric` must be 'diagonal', 'dense', 'fisher', 'low_rank' or None, got "
                f"{self.metric!r}."
            )
        if self.schedule not in ("stan", "nutpie"):
            raise ValueError(f"`schedule` must be 'stan' or 'nutpie', got {self.schedule!r}.")
        if self.schedule == "nutpie" and self.metric != "fisher":
            raise ValueError(
                f"`schedule`='nutpie' is for metric='fisher' only, got metric={self.metric!r}."
            )
        if self.target is not None:
            check_fraction(self.target, "target")
        if not isinstance(self.pooled, bool):
            raise TypeError(f"`pooled` must be a bool, got {self.pooled!r}.")
        if self.rank is not None:
            if self.metric != "low_rank":
                raise ValueError(
                    f"`rank` is for metric='low_rank' only, got metric={self.metric!r}."
                )
            check_int(self.rank, "rank", 1)
        c = self.eigenvalue_cutoff
        if (
            isinstance(c, bool)
            or not isinstance(c, (int, float))
            or not (np.isfinite(c) and c >= 1)
        ):
            raise ValueError(f"`eigenvalue_cutoff` must be a finite number >= 1, got {c!r}.")

    def _target(self, sampler) -> float:
        if self.target is not None:
            return self.target
        return sampler.default_target_acceptance if sampler.is_adjusted else 5e-4

    def _rank(self, size: int) -> int:
        if self.rank is None:
            return min(10, size)
        if self.rank > size:
            raise ValueError(
                f"`rank` ({self.rank}) must not exceed the dimension of the target ({size})."
            )
        return self.rank

    def _adapts_metric(self, sampler) -> bool:
        # a step-size sampler without a metric gets the step size adapted only
        return self.metric is not None and isinstance(sampler, AbstractMetricSampler)

    @property
    def _scored(self) -> bool:
        return self.metric in ("fisher", "low_rank")

    def prepare(self, sampler, event_shape):
        if not isinstance(sampler, AbstractStepSizeSampler):
            raise TypeError(
                f"`{type(self).__name__}` adapts samplers with a step size "
                f"(AbstractStepSizeSampler); {type(sampler).__name__} has none: pass "
                "`adaptation=None`, or the adaptation made for it."
            )
        check_hyper(sampler.step_size, "step_size")
        if self.metric is None or not isinstance(sampler, AbstractMetricSampler):
            return sampler
        m = sampler.metric
        size = math.prod(event_shape)
        # the metric keeps the step size's dtype (hyperparameter dtypes never change in the
        # compiled loop); kernels cast both to the position's dtype when they use them
        dtype = jnp.result_type(sampler.step_size)
        if self.metric in ("diagonal", "fisher") and not isinstance(m, DiagonalMetric):
            if isinstance(m, IdentityMetric):
                return eqx.tree_at(
                    lambda s: s.metric, sampler, DiagonalMetric(jnp.ones(event_shape, dtype))
                )
            raise ValueError(
                f"`WindowAdaptation(metric={self.metric!r})` needs an identity or diagonal metric."
            )
        if self.metric == "dense" and not isinstance(m, DenseMetric):
            if isinstance(m, DiagonalMetric):
                return eqx.tree_at(
                    lambda s: s.metric, sampler, DenseMetric(jnp.diag(m.inverse_mass.reshape(-1)))
                )
            return eqx.tree_at(lambda s: s.metric, sampler, DenseMetric(jnp.eye(size, dtype=dtype)))
        if self.metric == "low_rank":
            k = self._rank(size)
            if isinstance(m, LowRankMetric) and m.rank == k:
                return sampler
            if isinstance(m, IdentityMetric):
                diag = jnp.ones(event_shape, dtype)
            elif isinstance(m, DiagonalMetric):
                diag = m.inverse_mass
            else:
                raise ValueError(
                    "`WindowAdaptation(metric='low_rank')` needs an identity, diagonal or "
                    f"low-rank metric (of rank {k}), got {type(m).__name__}."
                )
            eye = jnp.eye(size, k, dtype=jnp.result_type(diag))
            lr = LowRankMetric(diag, eye, jnp.ones(k, jnp.result_type(diag)))
            return eqx.tree_at(lambda s: s.metric, sampler, lr)
        return sampler

    def init(self, samplers: Any, states, num_warmup):  # a step-size sampler (prepare)
        restart = None
        if self.schedule == "nutpie":
            slow, ends, restart = nutpie_schedule(num_warmup)
        else:
            slow, ends = window_schedule(num_warmup)
        if not self._adapts_metric(samplers):
            slow[:] = False
            ends[:] = False
            restart = None
        num_chains = states.position.shape[0]
        dim = _event_size(states)
        dtype = states.position.dtype
        if self._scored and self._adapts_metric(samplers):
            if getattr(states, "score", None) is None:
                raise TypeError(
                    f"`WindowAdaptation(metric={self.metric!r})` needs the scores of the draws: "
                    "use a gradient-based sampler (its state carries `score`)."
                )
            dense = self.metric == "low_rank"
            welford = _ScoreMoments(
                draws=welford_init(dim, dense, dtype), scores=welford_init(dim, dense, dtype)
            )
            if restart is not None:  # nutpie: foreground and background
                welford = (welford, welford)
            if self.metric == "low_rank":
                k = self._rank(dim)
                n_last = _last_window_size(slow, ends) * num_chains
                if n_last < 2 * k:
                    warnings.warn(
                        f"`WindowAdaptation(metric='low_rank', rank={k})`: the last warmup "
                        f"window has {n_last} draws over all chains, fewer than the {2 * k} "
                        f"that a rank-{k} estimate needs; the metric stays diagonal (Fisher). "
                        "Use more warmup steps or chains, or a smaller `rank`.",
                        SamplingWarning,
                        stacklevel=2,
                    )
        else:
            welford = jax.vmap(lambda _: welford_init(dim, self.metric == "dense", dtype))(
                jnp.arange(num_chains)
            )
        return _WindowState(
            da=jax.vmap(lambda h: dual_averaging_init(h, _shrink(samplers)))(samplers.step_size),
            welford=welford,
            slow=jnp.asarray(slow),
            ends=jnp.asarray(ends),
            restart=None if restart is None else jnp.asarray(restart),
        )

    def update(self, samplers, astate: _WindowState, states, infos, i):
        dim = _event_size(states)
        event_shape = states.position.shape[1:]
        target = self._target(samplers)
        stat = step_size_statistic(samplers, infos, target, dim, self.pooled)
        da = jax.vmap(dual_averaging_update)(astate.da, stat)
        samplers = _set_step_size(samplers, jnp.exp(da.log_step))
        if not self._adapts_metric(samplers):
            return samplers, eqx.tree_at(lambda a: a.da, astate, da)
        if astate.restart is not None:
            return self._update_nutpie(samplers, astate, states, da, i)
        if self._scored:
            return self._update_scored(samplers, astate, states, da, i)
        slow, end = astate.slow[i], astate.ends[i]
        x = _flat(states.position).astype(astate.welford.mean.dtype)
        welford = jax.vmap(lambda w, xi: welford_update(w, xi, slow.astype(xi.dtype)))(
            astate.welford, x
        )

        def new_metric(samplers, welford, da):
            if self.pooled:
                pooled = welford_pool(welford)
                cov = regularized_covariance(pooled)
                cov = jnp.broadcast_to(cov, (x.shape[0], *cov.shape))
            else:
                cov = jax.vmap(regularized_covariance)(welford)
            # the metric keeps its dtype across the compiled loop (positions may differ)
            cov = cov.astype(samplers.metric.inverse_mass.dtype)
            kind = cast(str, self.metric)  # not None: returned early above
            metric = jax.vmap(lambda c: _metric_from(kind, c, event_shape))(cov)
            samplers = eqx.tree_at(lambda s: s.metric, samplers, metric)
            # restart dual averaging around the current step size
            da = jax.vmap(lambda h: dual_averaging_init(h, _shrink(samplers)))(samplers.step_size)
            welford = jax.vmap(lambda w: welford_init(dim, self.metric == "dense", w.mean.dtype))(
                welford
            )
            return samplers, welford, da

        samplers, welford, da = jax.lax.cond(
            end, new_metric, lambda s, w, d: (s, w, d), samplers, welford, da
        )
        return samplers, _WindowState(da=da, welford=welford, slow=astate.slow, ends=astate.ends)

    def _update_scored(self, samplers, astate: _WindowState, states, da, i):
        """The Fisher / low-rank branch: pooled moments of draws and scores, a new metric at
        each window end."""
        slow, end = astate.slow[i], astate.ends[i]
        moments: _ScoreMoments = astate.welford
        dtype = moments.draws.mean.dtype
        num_chains = states.position.shape[0]
        event_shape = states.position.shape[1:]
        x, add = _scored_batch(states, dtype)
        moments = add(moments, slow)
        dense = self.metric == "low_rank"

        def new_metric(samplers, moments, da):
            old = samplers.metric
            if self.metric == "fisher":
                metric = _fisher_metric(old, moments, event_shape)
            else:
                mdtype = old.diagonal.dtype
                prev = old.diagonal[0].reshape(-1).astype(dtype)
                k = old.eigenvalues.shape[-1]
                d, u, lam = low_rank_estimate(
                    moments.draws, moments.scores, prev, k, float(self.eigenvalue_cutoff)
                )
                metric = LowRankMetric(
                    d.reshape(event_shape).astype(mdtype), u.astype(mdtype), lam.astype(mdtype)
                )
            samplers = eqx.tree_at(
                lambda s: s.metric, samplers, _broadcast_chains(metric, num_chains)
            )
            da = jax.vmap(lambda h: dual_averaging_init(h, _shrink(samplers)))(samplers.step_size)
            dim = x.shape[1]
            fresh = _ScoreMoments(
                draws=welford_init(dim, dense, dtype), scores=welford_init(dim, dense, dtype)
            )
            return samplers, fresh, da

        samplers, moments, da = jax.lax.cond(
            end, new_metric, lambda s, m, d: (s, m, d), samplers, moments, da
        )
        return samplers, _WindowState(da=da, welford=moments, slow=astate.slow, ends=astate.ends)

    def _update_nutpie(self, samplers, astate: _WindowState, states, da, i):
        """The Fisher diagonal on nutpie's schedule (`nutpie_schedule`): every draw (and
        score) of every chain goes into a foreground and a background estimator; at a switch
        the background becomes the foreground; at an update the metric is set from the
        foreground (pooled over chains)."""
        restarts = cast(Array, astate.restart)
        update, switch, restart = astate.slow[i], astate.ends[i], restarts[i]
        fg, bg = cast(tuple[_ScoreMoments, _ScoreMoments], astate.welford)
        num_chains = states.position.shape[0]
        event_shape = states.position.shape[1:]
        _, add = _scored_batch(states, fg.draws.mean.dtype)
        # draws are collected from the first step up to the last metric update
        collect = i <= jnp.argmax(restarts)
        fg, bg = add(fg, collect), add(bg, collect)
        # a fresh estimator is all zeros (`welford_init`)
        fg = jax.tree.map(lambda f, b: jnp.where(switch, b, f), fg, bg)
        bg = jax.tree.map(lambda b: jnp.where(switch, jnp.zeros_like(b), b), bg)

        def new_metric(samplers):
            metric = _fisher_metric(samplers.metric, fg, event_shape)
            return eqx.tree_at(lambda s: s.metric, samplers, _broadcast_chains(metric, num_chains))

        samplers = jax.lax.cond(update, new_metric, lambda s: s, samplers)
        da = jax.lax.cond(
            restart,
            lambda d: jax.vmap(lambda h: dual_averaging_init(h, _shrink(samplers)))(
                samplers.step_size
            ),
            lambda d: d,
            da,
        )
        return samplers, _WindowState(
            da=da, welford=(fg, bg), slow=astate.slow, ends=astate.ends, restart=astate.restart
        )

    def finalize(self, samplers, astate: _WindowState):
        return _set_step_size(samplers, jnp.exp(astate.da.log_step_avg))


def StepSizeAdaptation(target: float | None = None, pooled: bool = False) -> WindowAdaptation:
    """Dual-averaging step size only (the metric is kept): `WindowAdaptation(metric=None)`."""
    return WindowAdaptation(metric=None, target=target, pooled=pooled)


class _ChEESState(eqx.Module):
    window: _WindowState
    log_length: Array
    log_length_avg: Array
    adam_m: Array
    adam_v: Array
    count: Array


class ChEESAdaptation(AbstractAdaptation):
    """Joint adaptation of `ChEESHMC` across ALL chains (Hoffman, Radul & Sountsov 2021).

    The step size follows dual averaging on the harmonic mean of the chains' acceptance rates;
    the trajectory length does gradient ascent (Adam) on the ChEES criterion
    `E[(‖x' - x̄‖² - ‖x - x̄‖²)²]/4`, estimated from all chains' proposals; a diagonal metric is
    estimated from all chains in Stan windows when `metric="diagonal"`.

    **Arguments:** `target` (acceptance, default 0.651), `learning_rate` (Adam on log length),
    `metric` (`"diagonal"`, `"fisher"`, `"low_rank"` or `None`, as in [`WindowAdaptation`][]),
    `rank` (for `"low_rank"`).
    """

    target: float = 0.651
    learning_rate: float = 0.025
    metric: Literal["diagonal", "fisher", "low_rank"] | None = "diagonal"
    rank: int | None = None

    def __check_init__(self):
        check_fraction(self.target, "target")
        check_hyper(self.learning_rate, "learning_rate")
        if self.metric not in ("diagonal", "fisher", "low_rank", None):
            raise ValueError(
                f"`metric` must be 'diagonal', 'fisher', 'low_rank' or None, got {self.metric!r}."
            )
        self._window()  # checks `rank`

    def _window(self) -> WindowAdaptation:
        return WindowAdaptation(metric=self.metric, target=self.target, pooled=True, rank=self.rank)

    def prepare(self, sampler, event_shape):
        if not isinstance(sampler, ChEESHMC):
            raise TypeError("`ChEESAdaptation` adapts `ChEESHMC` only.")
        return self._window().prepare(sampler, event_shape)

    def init(self, samplers: Any, states, num_warmup):  # a ChEESHMC (prepare)
        length = samplers.trajectory_length
        zero = jnp.zeros_like(length[0])
        log_len = jnp.log(length[0])
        return _ChEESState(
            window=self._window().init(samplers, states, num_warmup),
            log_length=log_len,
            log_length_avg=log_len,
            adam_m=zero,
            adam_v=zero,
            count=zero,
        )

    def update(self, samplers, astate: _ChEESState, states, infos, i):
        acc = jnp.where(jnp.isfinite(infos.acceptance_rate), infos.acceptance_rate, 0.0)
        ok = ~infos.is_divergent
        # step size: dual averaging on the harmonic mean acceptance over non-divergent chains
        inv = jnp.where(ok, 1.0 / jnp.maximum(acc, 1e-10), 0.0)
        harmonic = jnp.sum(ok) / jnp.maximum(jnp.sum(inv), 1e-10)
        fake = eqx.tree_at(
            lambda f: f.acceptance_rate, infos, jnp.broadcast_to(harmonic, acc.shape)
        )
        samplers, window = self._window().update(samplers, astate.window, states, fake, i)
        # trajectory length: ChEES gradient over all chains
        ex = infos.extras
        x0 = _flat(ex["start_position"])
        # a divergent chain's proposal may be non-finite: it gets weight 0, and 0·NaN must not
        # poison the sums
        ok = ok & jnp.all(jnp.isfinite(_flat(ex["proposed_position"])), axis=1)
        ok = ok & jnp.all(jnp.isfinite(_flat(ex["proposed_momentum"])), axis=1)
        x1 = jnp.where(ok[:, None], _flat(ex["proposed_position"]), x0)
        p1 = jnp.where(ok[:, None], _flat(ex["proposed_momentum"]), 0.0)
        w = jnp.where(ok, acc, 0.0)
        x1_mean = jnp.sum(w[:, None] * x1, axis=0) / jnp.maximum(jnp.sum(w), 1e-10)
        x0_mean = jnp.mean(x0, axis=0)
        event_shape = ex["start_position"].shape[1:]
        c1, c0 = x1 - x1_mean, x0 - x0_mean

        def norm2(metric, c):  # squared norm in the metric's whitened coordinates: cᵀ M c
            return jnp.sum(c * metric.velocity_to_momentum(c.reshape(event_shape)).reshape(-1))

        whiten = jax.vmap(norm2)
        diff = whiten(samplers.metric, c1) - whiten(samplers.metric, c0)
        # <x' - x̄', dx'/dT> with dx'/dT the velocity; in whitened coordinates this pairing is
        # <x' - x̄', p'> for any metric (position and momentum are conjugate).
        g_chain = diff * jnp.sum(c1 * p1, axis=1)
        t = ex["jitter"][0] * jnp.exp(astate.log_length)
        g = t * jnp.sum(jnp.where(ok, w * g_chain, 0.0)) / (jnp.sum(w) + 1e-10)
        g = jnp.where(jnp.isfinite(g), g, 0.0).astype(astate.adam_m.dtype)
        # Adam ascent on log length
        b1, b2 = 0.9, 0.999
        count = astate.count + 1.0
        m = b1 * astate.adam_m + (1 - b1) * g
        v = b2 * astate.adam_v + (1 - b2) * g**2
        m_hat, v_hat = m / (1 - b1**count), v / (1 - b2**count)
        update = jnp.clip(self.learning_rate * m_hat / (jnp.sqrt(v_hat) + 1e-8), -0.35, 0.35)
        # no clipping to the step size here: dual averaging's transient step sizes (×10 at a
        # restart) would drag the length along; `finalize` clips
        log_len = jnp.clip(astate.log_length + update, -20.0, 20.0)
        wavg = count ** (-0.6)
        log_len_avg = wavg * log_len + (1 - wavg) * astate.log_length_avg
        samplers = eqx.tree_at(
            lambda s: s.trajectory_length,
            samplers,
            jnp.broadcast_to(jnp.exp(log_len), samplers.trajectory_length.shape).astype(
                samplers.trajectory_length.dtype
            ),
        )
        # a new metric (the estimated covariance) makes the target roughly isotropic with unit
        # scale: restart the length at π/2 (a quarter period of a unit-frequency oscillation),
        # with a fresh optimizer and average
        restart = astate.window.ends[i] if self.metric is not None else jnp.array(False)
        zero = jnp.zeros_like(m)
        log_len = jnp.where(restart, jnp.log(jnp.pi / 2), log_len)
        samplers = eqx.tree_at(
            lambda s: s.trajectory_length,
            samplers,
            jnp.broadcast_to(jnp.exp(log_len), samplers.trajectory_length.shape).astype(
                samplers.trajectory_length.dtype
            ),
        )
        return samplers, _ChEESState(
            window=window,
            log_length=log_len,
            log_length_avg=jnp.where(restart, log_len, log_len_avg),
            adam_m=jnp.where(restart, zero, m),
            adam_v=jnp.where(restart, zero, v),
            count=jnp.where(restart, zero, count),
        )

    def finalize(self, samplers, astate: _ChEESState):
        samplers = self._window().finalize(samplers, astate.window)
        step = samplers.step_size[0]
        length = jnp.clip(jnp.exp(astate.log_length_avg), step, step * samplers.max_num_steps)
        return eqx.tree_at(
            lambda s: s.trajectory_length,
            samplers,
            jnp.broadcast_to(length, samplers.trajectory_length.shape).astype(
                samplers.trajectory_length.dtype
            ),
        )
