"""Parallel tempering (replica exchange): replicas of any kernel at a ladder of temperatures,
with swaps between neighbours, usable through `driftax.sample`; and the warmup adaptation that
moves the ladder toward uniform swap rates and tunes each replica's step size.

Replica `i` targets `exp(β_i · log_density)` (`β_0 = 1 > β_1 > … > β_{R-1} > 0`); the kernel
runs on every replica (vmapped), then neighbours `(i, i+1)` of one parity exchange positions
with probability `min(1, exp((β_i - β_{i+1})(log p(x_{i+1}) - log p(x_i))))`.
"""

from __future__ import annotations

import math
from typing import Any

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_sequence
from .._custom_types import Array, Key, PyTree
from ..energies._base import AbstractEnergy, check_event, check_finite
from ..energies._compose import Tempered
from ..energies._metrics_logz import LogZEstimate, log_z_importance
from ._adaptation import (
    AbstractAdaptation,
    DualAveragingState,
    dual_averaging_init,
    dual_averaging_update,
    step_size_statistic,
)
from ._base import (
    AbstractSampler,
    AbstractStepSizeSampler,
    Info,
    check_fraction,
    check_int,
    log_density_at,
)
from ._result import SampleResult
from ._weighted import WeightedSampleResult

SWAP_SCHEMES = ("deo", "seo")


def geometric_ladder(num_replicas: int, max_temperature: float) -> np.ndarray:
    """Temperatures `1 = T_0 < T_1 < … < T_{R-1} = max_temperature`, equally spaced in
    `log T` (uniform swap rates for Gaussian-like targets)."""
    if isinstance(num_replicas, bool) or not isinstance(num_replicas, int) or num_replicas < 2:
        raise ValueError(f"`num_replicas` must be an int >= 2, got {num_replicas!r}.")
    t = float(check_finite(max_temperature, "max_temperature"))
    if not t > 1.0:
        raise ValueError(f"`max_temperature` must be greater than 1, got {max_temperature!r}.")
    return np.geomspace(1.0, t, num_replicas)


def _check_temperatures(temperatures) -> np.ndarray:
    t = check_sequence(temperatures, "temperatures", "temperatures")
    if np.any(t <= 0):
        raise ValueError(f"`temperatures` must be positive, got {t.tolist()}.")
    if t[0] != 1.0:
        raise ValueError(
            f"`temperatures[0]` must be 1 (the replica that samples the target), got {t[0]!r}."
        )
    if np.any(np.diff(t) <= 0):
        raise ValueError(f"`temperatures` must be strictly increasing, got {t.tolist()}.")
    return t


class PTState(eqx.Module):
    """The state of [`ParallelTempering`][] (one chain: all its replicas).

    - `position`, `log_density`: the target replica's (`β = 1`) position and log density —
      what `driftax.sample` records as the chain's samples.
    - `replicas`: the kernel states of all replicas (leading axis `num_replicas`), each caching
      its tempered log density (and score) at `inverse_temperatures`.
    - `replica_log_density`: the untempered `log_density` of every replica, `(num_replicas,)`.
    - `swap_accepted`, `swap_attempts`: per neighbour pair `(i, i+1)`, the summed swap
      acceptance probabilities and the number of attempts since the ladder last changed
      (`swap_rate` is their ratio).
    - `labels`: which walker sits at each temperature (a permutation; follows the swaps).
    - `iteration`: steps taken (fixes the parity of deterministic even/odd swaps).
    - `stone_log_sum`, `hot_sum`, `hot_sq_sum`, `num_accumulated`: what
      [`tempering_result`][] estimates `log Z` from, accumulated (like the swap counts) since
      the ladder last changed: per neighbour pair `(i, i+1)` the log of the summed
      `exp((β_i - β_{i+1}) log p)` at rung `i+1`, and the sum and summed squares of the
      hottest rung's position.
    """

    position: Array
    log_density: Array
    replicas: PyTree
    replica_log_density: Array
    inverse_temperatures: Array
    swap_accepted: Array
    swap_attempts: Array
    labels: Array
    iteration: Array
    stone_log_sum: Array
    hot_sum: Array
    hot_sq_sum: Array
    num_accumulated: Array

    @property
    def swap_rate(self) -> Array:
        """Mean swap acceptance probability of each neighbour pair (NaN if never attempted)."""
        n = self.swap_attempts.astype(self.swap_accepted.dtype)
        return jnp.where(n > 0, self.swap_accepted / jnp.maximum(n, 1), jnp.nan)


def _retemper(states: PyTree, ratio: Array) -> PyTree:
    """Rescale the cached tempered `log_density` (and `score`) of per-replica kernel states by
    `ratio = β_new / β_old` (exact for `Tempered`, which is linear in β)."""

    def scale(name, states):
        value = getattr(states, name, None)
        if value is None:
            return states
        r = ratio.reshape(ratio.shape + (1,) * (value.ndim - 1)).astype(value.dtype)
        return eqx.tree_at(lambda s: getattr(s, name), states, value * r)

    return scale("score", scale("log_density", states))


def _broadcast_kernel(kernel: AbstractSampler, num_replicas: int) -> AbstractSampler:
    return jax.tree.map(
        lambda a: jnp.broadcast_to(a, (num_replicas, *jnp.shape(a))) if eqx.is_array(a) else a,
        kernel,
    )


class ParallelTempering(AbstractSampler):
    """Parallel tempering: `R` replicas of `kernel`, replica `i` targeting
    `exp(log_density / T_i)` with `T_0 = 1`, and swaps between neighbouring temperatures.

    Every step runs the kernel once on every replica (vmapped), then proposes swaps between
    the neighbour pairs `(i, i+1)` of one parity: alternating even/odd (`swap="deo"`,
    deterministic even-odd, the non-reversible scheme of Syed et al. 2021, default) or a
    parity drawn at random each step (`swap="seo"`). The chain's `position` is the `T = 1`
    replica, so `driftax.sample(ParallelTempering(...), ...)` returns target samples, and
    `result.final_state.swap_rate` the per-pair swap rates. Use
    [`ParallelTemperingAdaptation`][] as the driver's `adaptation` to tune the ladder and the
    per-replica step sizes during warmup (the default `"auto"` adaptation does neither).

    **Arguments:**

    - `kernel`: any driftax `AbstractSampler` (its array hyperparameters get one copy per
      replica, so each temperature can have its own step size).
    - `temperatures`: the ladder, strictly increasing, positive, starting at 1; or
    - `num_replicas` and `max_temperature`: a geometric ladder (see [`geometric_ladder`][]).
    - `swap`: `"deo"` (default) or `"seo"`.

    `init(energy, x0)` takes one point (every replica starts there) or one point per replica
    (`(num_replicas, *event_shape)`; a different count is an error).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian_mixture(
        jnp.array([0.5, 0.5]), jnp.array([[-4.0, 0.0], [4.0, 0.0]]), jnp.array([0.3, 0.3])
    )
    pt = dx.samplers.ParallelTempering(
        dx.samplers.MALA(step_size=0.1), num_replicas=6, max_temperature=30.0
    )
    result = dx.sample(pt, target, jnp.zeros(2), key=jax.random.key(0), num_steps=500,
                       num_warmup=300, num_chains=2,
                       adaptation=dx.samplers.ParallelTemperingAdaptation())
    result.final_state.swap_rate  # (num_chains, num_replicas - 1)
    ```
    """

    kernel: AbstractSampler
    inverse_temperatures: Array
    swap: str = eqx.field(static=True)

    def __init__(
        self,
        kernel: AbstractSampler,
        temperatures=None,
        *,
        num_replicas: int | None = None,
        max_temperature: float | None = None,
        swap: str = "deo",
    ):
        if not isinstance(kernel, AbstractSampler):
            raise TypeError(
                f"`kernel` must be a driftax AbstractSampler, got {type(kernel).__name__}."
            )
        if isinstance(kernel, ParallelTempering):
            raise TypeError("`kernel` cannot itself be a ParallelTempering sampler.")
        if temperatures is None:
            if num_replicas is None or max_temperature is None:
                raise ValueError(
                    "pass `temperatures`, or both `num_replicas` and `max_temperature`."
                )
            temps = geometric_ladder(num_replicas, max_temperature)
        else:
            if num_replicas is not None or max_temperature is not None:
                raise ValueError(
                    "pass either `temperatures` or `num_replicas` and `max_temperature`, not both."
                )
            temps = _check_temperatures(temperatures)
        if swap not in SWAP_SCHEMES:
            raise ValueError(f"`swap` must be one of {SWAP_SCHEMES}, got {swap!r}.")
        self.kernel = _broadcast_kernel(kernel, temps.shape[0])
        self.inverse_temperatures = jnp.asarray(1.0 / temps, dtype=jnp.result_type(float))
        self.swap = swap

    @property
    def num_replicas(self) -> int:
        """The number of replicas (temperatures)."""
        return self.inverse_temperatures.shape[-1]

    @property
    def temperatures(self) -> Array:
        """The ladder `1 / inverse_temperatures` (increasing from 1)."""
        return 1.0 / self.inverse_temperatures

    def _vmap_kernel(self, fn, *args):
        dyn, static = eqx.partition(self.kernel, eqx.is_array)
        return jax.vmap(lambda d, *a: fn(eqx.combine(d, static), *a))(dyn, *args)

    def init(self, energy: AbstractEnergy, x0: Array) -> PTState:
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        r = self.num_replicas
        event_shape = tuple(energy.event_shape)
        x0 = jnp.asarray(x0)
        if tuple(x0.shape) == event_shape:
            x0 = jnp.broadcast_to(check_event(x0, event_shape, "x0"), (r, *event_shape))
        elif x0.ndim == len(event_shape) + 1 and tuple(x0.shape[1:]) == event_shape:
            if x0.shape[0] != r:
                raise ValueError(
                    f"`x0` has {x0.shape[0]} replicas (leading axis) but the ladder has {r} "
                    "temperatures."
                )
            if not jnp.issubdtype(x0.dtype, jnp.floating):
                x0 = x0.astype(jnp.result_type(float))
        else:
            raise ValueError(
                f"`x0` must have the energy's event shape {event_shape} or "
                f"(num_replicas={r}, *{event_shape}), got shape {tuple(x0.shape)}."
            )
        if not isinstance(x0, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(x0))):
            raise ValueError("`x0` must be finite.")
        # the position's dtype decides: the ladder is cast to it (not the reverse)
        betas = self.inverse_temperatures.astype(x0.dtype)
        replicas = self._vmap_kernel(lambda k, b, x: k.init(Tempered(energy, b), x), betas, x0)
        logp = jax.vmap(lambda x: log_density_at(energy, x))(replicas.position)
        dtype = logp.dtype
        return PTState(
            position=replicas.position[0],
            log_density=logp[0],
            replicas=replicas,
            replica_log_density=logp,
            inverse_temperatures=betas,
            swap_accepted=jnp.zeros((r - 1,), dtype),
            swap_attempts=jnp.zeros((r - 1,), jnp.int32),
            labels=jnp.arange(r, dtype=jnp.int32),
            iteration=jnp.zeros((), jnp.int32),
            stone_log_sum=jnp.full((r - 1,), -jnp.inf, dtype),
            hot_sum=jnp.zeros(x0.shape[1:], x0.dtype),
            hot_sq_sum=jnp.zeros(x0.shape[1:], x0.dtype),
            num_accumulated=jnp.zeros((), jnp.int32),
        )

    def step(self, energy: AbstractEnergy, state: PTState, *, key: Key):
        r = self.num_replicas
        betas = self.inverse_temperatures.astype(state.inverse_temperatures.dtype)
        k_local, k_parity, k_swap = jax.random.split(key, 3)
        # a changed ladder (warmup adaptation): re-temper the caches, restart the swap counts
        changed = jnp.any(state.inverse_temperatures != betas)
        replicas = _retemper(state.replicas, betas / state.inverse_temperatures)
        accepted = jnp.where(changed, 0.0, state.swap_accepted)
        attempts = jnp.where(changed, 0, state.swap_attempts)
        stone = jnp.where(changed, -jnp.inf, state.stone_log_sum)
        hot_sum = jnp.where(changed, 0.0, state.hot_sum)
        hot_sq_sum = jnp.where(changed, 0.0, state.hot_sq_sum)
        count = jnp.where(changed, 0, state.num_accumulated)
        # local moves on every replica
        replicas, infos = self._vmap_kernel(
            lambda k, b, st, kk: k.step(Tempered(energy, b), st, key=kk),
            betas,
            replicas,
            jax.random.split(k_local, r),
        )
        logp = replicas.log_density / betas.astype(replicas.log_density.dtype)
        # swaps between neighbours of one parity
        if self.swap == "deo":
            parity = state.iteration % 2
        else:
            parity = jax.random.bernoulli(k_parity).astype(jnp.int32)
        pair = jnp.arange(r - 1)
        attempted = (pair % 2) == parity
        log_ratio = (betas[:-1] - betas[1:]) * (logp[1:] - logp[:-1])
        # a non-finite log density on either side (NaN, +inf or -inf) never swaps
        ok_pair = jnp.isfinite(logp[1:]) & jnp.isfinite(logp[:-1]) & jnp.isfinite(log_ratio)
        log_ratio = jnp.where(ok_pair, log_ratio, -jnp.inf)
        prob = jnp.where(attempted, jnp.exp(jnp.minimum(log_ratio, 0.0)), 0.0)
        u = jax.random.uniform(k_swap, (r - 1,), prob.dtype)
        swapped = attempted & (u < prob)
        no = jnp.zeros((1,), bool)
        up = jnp.concatenate([swapped, no])  # replica i takes i+1's state
        down = jnp.concatenate([no, swapped])  # replica i+1 takes i's state
        perm = jnp.arange(r) + up.astype(jnp.int32) - down.astype(jnp.int32)
        replicas = jax.tree.map(lambda a: a[perm], replicas)
        replicas = _retemper(replicas, betas / betas[perm])
        logp = logp[perm]
        # the stepping stones of every pair (rung i+1's draw) and the hottest rung's moments
        stone_term = (betas[:-1] - betas[1:]).astype(logp.dtype) * logp[1:]
        stone_term = jnp.where(jnp.isfinite(stone_term), stone_term, -jnp.inf)
        hot = replicas.position[-1].astype(state.hot_sum.dtype)
        info = Info(
            acceptance_rate=infos.acceptance_rate[0],
            is_divergent=jnp.any(infos.is_divergent) | jnp.any(attempted & ~ok_pair),
            energy_error=infos.energy_error[0],
            num_grad_evals=jnp.sum(infos.num_grad_evals).astype(jnp.int32),
            extras=dict(
                replica_acceptance=infos.acceptance_rate,
                replica_energy_error=infos.energy_error,
                replica_divergent=infos.is_divergent,
                swap_acceptance=prob,
                swap_attempted=attempted,
            ),
        )
        new = PTState(
            position=replicas.position[0],
            log_density=logp[0],
            replicas=replicas,
            replica_log_density=logp,
            inverse_temperatures=betas,
            swap_accepted=accepted + prob.astype(accepted.dtype),
            swap_attempts=attempts + attempted.astype(jnp.int32),
            labels=state.labels[perm],
            iteration=state.iteration + 1,
            stone_log_sum=jnp.logaddexp(stone, stone_term.astype(stone.dtype)),
            hot_sum=hot_sum + hot,
            hot_sq_sum=hot_sq_sum + hot**2,
            num_accumulated=count + 1,
        )
        return new, info


# ---------------------------------------------------------------------------------------------
# The log-normalizer of a parallel-tempering run: stepping stones along the ladder
# ---------------------------------------------------------------------------------------------


def tempering_result(
    result: SampleResult,
    *,
    key: Key,
    num_reference_samples: int = 4096,
    inflation: float = 2.0,
) -> WeightedSampleResult:
    r"""The [`WeightedSampleResult`][] of a [`ParallelTempering`][] run of `driftax.sample`:
    its `T = 1` draws and an estimate of the target's `log Z` from the whole ladder.

    **Estimator.** With `Z(β) = ∫ p(x)^β dx` and the ladder `1 = β_0 > … > β_{R-1}`,

    `log Z(1) = log Z(β_{R-1}) + Σ_i log Z(β_i) / Z(β_{i+1})`.

    Each ratio is a stepping stone (Xie et al. 2011) from the draws of the hotter rung of the
    pair: `Z(β_i) / Z(β_{i+1}) = E_{β_{i+1}}[exp((β_i - β_{i+1}) log p(x))]`, the mean over
    every step of every chain since the ladder last changed (`PTState` accumulates it, so
    nothing grows with `num_steps`; with [`ParallelTemperingAdaptation`][] the last change
    falls in the first half of warmup, which also drops the transient from `x0`). The hottest
    rung's `Z(β_{R-1})` is an importance-sampling estimate from `num_reference_samples` fresh
    draws of a diagonal Gaussian fitted to that rung's position moments (variances times
    `inflation`, so its tails cover the rung's). The standard error is batch means over
    chains (each chain is an independent run of the ladder: the spread of the per-chain
    stepping-stone sums over `sqrt(num_chains)`), combined in quadrature with the
    delta-method error of the hottest rung's estimate; it is NaN with one chain. Like every
    log-of-mean estimator it is biased low (Jensen), negligibly when neighbouring rungs
    overlap well (swap rates well above 0).

    **Arguments:**

    - `result`: what `driftax.sample(ParallelTempering(...), ...)` returned.
    - `key`: a JAX PRNG key for the reference draws (same key, same estimate).
    - `num_reference_samples`: Gaussian draws for the hottest rung (default 4096).
    - `inflation`: the factor on the fitted variances (default 2, `>= 1`).

    **Returns:** a `WeightedSampleResult` whose `samples` are the `T = 1` draws pooled over
    chains (`(num_chains · num_draws, *event)`, equal `log_weights`, `ess` their count;
    `None` with `store_samples=False`), `log_normalizer` the estimate above,
    `num_grad_evals` / `num_divergent` of the sampling phase, `num_energy_evals` the
    reference draws, and `extras`: `log_ratios` (the `R - 1` stepping stones, pooled),
    `log_z_hottest` (a `LogZEstimate`), `inverse_temperatures`, `swap_rate` (per chain and
    pair) and `chain_log_normalizer` (each chain's estimate).
    """
    if not isinstance(result, SampleResult):
        raise TypeError(
            f"`result` must be the SampleResult of driftax.sample, got {type(result).__name__}."
        )
    state = result.final_state
    if not isinstance(result.initial_sampler, ParallelTempering) or not isinstance(state, PTState):
        raise ValueError(
            "`result` must come from a ParallelTempering run, got a run of "
            f"{type(result.initial_sampler).__name__}."
        )
    num_reference_samples = check_int(num_reference_samples, "num_reference_samples", 2)
    inflation = float(check_finite(inflation, "inflation"))
    if not inflation >= 1.0:
        raise ValueError(f"`inflation` must be >= 1, got {inflation!r}.")
    energy = result.energy
    betas = np.asarray(state.inverse_temperatures, np.float64)[0]  # shared by the chains
    count = np.asarray(state.num_accumulated, np.float64)  # (C,)
    num_chains = count.shape[0]
    if np.any(count < 1):
        raise ValueError("`result` has no steps since its ladder last changed.")
    stone = np.asarray(state.stone_log_sum, np.float64)  # (C, R-1)
    chain_ratios = stone - np.log(count)[:, None]
    m = np.max(stone, axis=0)
    m = np.where(np.isfinite(m), m, 0.0)
    log_ratios = np.log(np.sum(np.exp(stone - m), axis=0)) + m - np.log(np.sum(count))

    # the hottest rung: importance sampling from a diagonal Gaussian fitted to its moments
    shape = tuple(state.position.shape[1:])
    total = float(np.sum(count))
    mean = np.sum(np.asarray(state.hot_sum, np.float64), axis=0).reshape(-1) / total
    sq = np.sum(np.asarray(state.hot_sq_sum, np.float64), axis=0).reshape(-1) / total
    var = np.maximum(sq - mean**2, 0.0)
    var = inflation * var + 1e-12 * (np.mean(var) + 1.0)
    sd = np.sqrt(var)
    dim = mean.shape[0]
    eps = np.asarray(jax.random.normal(key, (num_reference_samples, dim)), np.float64)
    xq = mean + eps * sd
    log_q = -0.5 * np.sum(eps**2, axis=1) - np.sum(np.log(sd)) - 0.5 * dim * math.log(2 * math.pi)
    x_dev = jnp.asarray(xq.reshape(num_reference_samples, *shape), energy.dtype)
    logp_q = np.asarray(jax.vmap(lambda x: log_density_at(energy, x))(x_dev), np.float64)
    log_w = np.where(np.isfinite(logp_q), betas[-1] * logp_q - log_q, -np.inf)
    hottest = log_z_importance(jnp.asarray(log_w))
    log_z_hot = float(hottest.value)

    value = log_z_hot + float(np.sum(log_ratios))
    chain_values = log_z_hot + np.sum(chain_ratios, axis=1)
    if num_chains >= 2 and np.all(np.isfinite(chain_values)):
        se_ladder = float(np.std(chain_values, ddof=1) / math.sqrt(num_chains))
    else:
        se_ladder = math.nan
    stderr = math.sqrt(se_ladder**2 + float(hottest.stderr) ** 2)

    dtype = energy.dtype
    samples = result.samples
    n = num_chains * (result.num_steps // result.thin)
    if samples is not None:
        samples = jax.tree.map(lambda a: a.reshape(n, *a.shape[2:]), samples)
    return WeightedSampleResult(
        samples=samples,
        log_weights=jnp.full((n,), -math.log(n), dtype),
        log_normalizer=LogZEstimate(
            value=jnp.asarray(value, dtype), stderr=jnp.asarray(stderr, dtype)
        ),
        ess=jnp.asarray(float(n), dtype),
        num_grad_evals=result.num_grad_evals,
        num_energy_evals=num_reference_samples,
        num_divergent=result.num_divergent,
        num_nonfinite=0,
        extras=dict(
            log_ratios=jnp.asarray(log_ratios, dtype),
            log_z_hottest=hottest,
            inverse_temperatures=jnp.asarray(betas, dtype),
            swap_rate=state.swap_rate,
            chain_log_normalizer=jnp.asarray(chain_values, dtype),
        ),
    )


# ---------------------------------------------------------------------------------------------
# Warmup adaptation: ladder toward uniform swap rates, per-replica step sizes
# ---------------------------------------------------------------------------------------------


def ladder_schedule(num_warmup: int, fraction: float, first_window: int) -> np.ndarray:
    """Warmup steps (a boolean mask of length `num_warmup`) after which the ladder is updated:
    the ends of doubling windows `first_window, 2·first_window, …` within the first `fraction`
    of warmup (the rest lets the step sizes settle on the final ladder)."""
    ends = np.zeros(num_warmup, bool)
    stop = int(fraction * num_warmup)
    start, size = 0, first_window
    while start + size <= stop:
        ends[start + size - 1] = True
        start, size = start + size, 2 * size
    return ends


def equalize_ladder(inverse_temperatures: Array, rejection: Array, floor: float = 1e-3) -> Array:
    """A new ladder with (approximately) equal swap rejection rates between neighbours.

    The rejection rate of each pair is taken as spread uniformly over its interval in
    `log β`; the cumulative rejection (the communication barrier of Syed et al. 2021) is
    interpolated piecewise linearly and inverted at equal spacing. The end points (`β = 1`
    and the hottest `β`) stay fixed.

    **Arguments:** `inverse_temperatures` (decreasing from 1, `(R,)`), `rejection` (`(R-1,)`:
    `1 -` mean swap acceptance of each pair; floored at `floor`).
    """
    log_b = jnp.log(inverse_temperatures)[::-1]  # increasing, ends at 0
    rej = jnp.clip(jnp.where(jnp.isfinite(rejection), rejection, 1.0), floor, 1.0)[::-1]
    barrier = jnp.concatenate([jnp.zeros((1,), rej.dtype), jnp.cumsum(rej)])
    grid = jnp.linspace(0.0, 1.0, inverse_temperatures.shape[0], dtype=rej.dtype) * barrier[-1]
    new_log_b = jnp.interp(grid, barrier, log_b)
    new_log_b = new_log_b.at[0].set(log_b[0]).at[-1].set(0.0)
    return jnp.exp(new_log_b[::-1]).astype(inverse_temperatures.dtype)


class _PTAdaptState(eqx.Module):
    ends: Array
    accepted: Array  # (R-1,) pooled over chains since the last ladder update
    attempts: Array
    da: DualAveragingState | None  # dual averaging state, leaves (chains, R)


class ParallelTemperingAdaptation(AbstractAdaptation):
    """Warmup adaptation for [`ParallelTempering`][] in `driftax.sample`.

    - Ladder: at the ends of doubling windows (from `first_window` steps) within the first
      `ladder_fraction` of warmup, the temperatures move toward equal swap rates between
      neighbours ([`equalize_ladder`][], the rates pooled over all chains); `T = 1` and the
      hottest temperature stay fixed. All chains share the ladder.
    - Step sizes (kernels with a `step_size`): dual averaging per replica, on the replica's
      acceptance rate pooled over chains (target: `target`, default the kernel's own), restarted
      after every ladder update; the averaged step size is used after warmup.

    **Arguments:** `adapt_ladder`, `adapt_step_size` (bools, default `True`), `target`,
    `ladder_fraction` (default 0.5), `first_window` (default 25).
    """

    adapt_ladder: bool = True
    adapt_step_size: bool = True
    target: float | None = None
    ladder_fraction: float = 0.5
    first_window: int = 25

    def __check_init__(self):
        for name in ("adapt_ladder", "adapt_step_size"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        if self.target is not None:
            check_fraction(self.target, "target")
        check_fraction(self.ladder_fraction, "ladder_fraction", high_open=False)
        check_int(self.first_window, "first_window", 2)

    def prepare(self, sampler, event_shape):
        if not isinstance(sampler, ParallelTempering):
            raise TypeError(
                "`ParallelTemperingAdaptation` adapts `ParallelTempering` samplers only, got "
                f"{type(sampler).__name__}."
            )
        return sampler

    def _steps(self, samplers) -> bool:
        return self.adapt_step_size and isinstance(samplers.kernel, AbstractStepSizeSampler)

    def _target(self, kernel) -> float:
        if self.target is not None:
            return self.target
        return kernel.default_target_acceptance if kernel.is_adjusted else 5e-4

    # `samplers` is a ParallelTempering (checked in prepare) with a step-size kernel
    def init(self, samplers: Any, states, num_warmup):
        num_warmup = check_int(num_warmup, "num_warmup", 0)
        r = samplers.inverse_temperatures.shape[-1]
        dtype = samplers.inverse_temperatures.dtype
        ends = ladder_schedule(num_warmup, self.ladder_fraction, self.first_window)
        if not self.adapt_ladder:
            ends[:] = False
        da = None
        if self._steps(samplers):
            da = dual_averaging_init(
                samplers.kernel.step_size, 10.0 if samplers.kernel.is_adjusted else 2.0
            )
        return _PTAdaptState(
            ends=jnp.asarray(ends),
            accepted=jnp.zeros((r - 1,), dtype),
            attempts=jnp.zeros((r - 1,), dtype),
            da=da,
        )

    def update(self, samplers: Any, astate: _PTAdaptState, states, infos, i):
        ex = infos.extras
        accepted = astate.accepted + jnp.sum(ex["swap_acceptance"], axis=0).astype(
            astate.accepted.dtype
        )
        attempts = astate.attempts + jnp.sum(ex["swap_attempted"], axis=0).astype(
            astate.attempts.dtype
        )
        da = astate.da
        kernel = samplers.kernel
        if da is not None:
            fake = Info(
                acceptance_rate=ex["replica_acceptance"],
                is_divergent=ex["replica_divergent"],  # per replica, like the other two
                energy_error=ex["replica_energy_error"],
                num_grad_evals=infos.num_grad_evals,
            )
            dim = math.prod(states.position.shape[1:])
            stat = step_size_statistic(kernel, fake, self._target(kernel), dim, pooled=False)
            stat = jnp.broadcast_to(jnp.mean(stat, axis=0, keepdims=True), stat.shape)
            da = dual_averaging_update(da, stat)
            kernel = eqx.tree_at(
                lambda k: k.step_size, kernel, jnp.exp(da.log_step).astype(kernel.step_size.dtype)
            )
        end = astate.ends[i]

        shrink = 10.0 if kernel.is_adjusted else 2.0

        def new_ladder(betas, da, accepted, attempts):
            rate = accepted / jnp.maximum(attempts, 1.0)
            new = equalize_ladder(betas[0], 1.0 - rate)
            betas = jnp.broadcast_to(new, betas.shape)
            if da is not None:  # restart dual averaging around the current step sizes
                da = dual_averaging_init(kernel.step_size, shrink)
            return betas, da, jnp.zeros_like(accepted), jnp.zeros_like(attempts)

        def keep(betas, da, accepted, attempts):
            return betas, da, accepted, attempts

        betas, da, accepted, attempts = jax.lax.cond(
            end, new_ladder, keep, samplers.inverse_temperatures, da, accepted, attempts
        )
        samplers = eqx.tree_at(lambda s: s.inverse_temperatures, samplers, betas)
        samplers = eqx.tree_at(lambda s: s.kernel, samplers, kernel)
        return samplers, _PTAdaptState(
            ends=astate.ends, accepted=accepted, attempts=attempts, da=da
        )

    def finalize(self, samplers: Any, astate: _PTAdaptState):
        if astate.da is None:
            return samplers
        kernel = samplers.kernel
        step = jnp.exp(astate.da.log_step_avg).astype(kernel.step_size.dtype)
        return eqx.tree_at(lambda s: s.kernel.step_size, samplers, step)
