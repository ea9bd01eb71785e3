"""Sequential Monte Carlo samplers along a geometric annealing path, and annealed importance
sampling (AIS) as the special case without resampling.

One SMC stage moves the particles from `π_β ∝ p_ref^{1-β} p^β` to `π_β'` (`β' > β`):

1. choose `β'` (the next entry of a fixed schedule, or by bisection so that the conditional
   ESS of the incremental weights hits `target_ess`);
2. reweight: `log w += (β' - β)(log p(x) - log p_ref(x))`, and accumulate
   `log Z += log Σ_i W_i exp((β' - β)(log p - log p_ref)(x_i))`;
3. resample (multinomial / stratified / systematic) when the ESS falls below
   `resampling_threshold · num_particles`;
4. move: `num_mcmc_steps` steps of any driftax kernel targeting `π_β'`, whose step size is
   adapted across the particle population (and optionally its diagonal metric set to the
   particles' variance).

The loop over stages is a `lax.while_loop`, the whole run ONE `eqx.filter_jit`-compiled call.
Its state is typed: `_SMCCarry` holds the `_Population` (positions, log densities, weights,
initial ancestors, momenta), the kernel with its adapted step size, the counters and the
per-stage `_StageTrace`; a run returns a `WeightedSampleResult`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, cast

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_fraction
from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy, AbstractKnownNormalizer, AbstractSampleable
from ..energies._compose import GeometricPath
from ..energies._gaussian import Gaussian
from ..energies._metrics_logz import LogZEstimate, importance_ess
from ._adaptation import WindowAdaptation, step_size_statistic
from ._base import (
    AbstractMetricSampler,
    AbstractSampler,
    AbstractStepSizeSampler,
    check_hyper,
    float_leaf,
)
from ._resampling import RESAMPLING_SCHEMES, resample
from ._transport import AbstractTransport
from ._weighted import WeightedSampleResult


def _as_schedule(schedule):
    if schedule is None or isinstance(schedule, jax.core.Tracer):
        return schedule
    return jnp.asarray(schedule, dtype=jnp.result_type(float))


def check_schedule(schedule) -> None:
    """Eagerly check an annealing schedule: 1-D, at least two entries, starting at 0, ending
    at 1, strictly increasing. Raises a `ValueError` naming `schedule`."""
    if isinstance(schedule, jax.core.Tracer):
        return
    s = np.asarray(schedule, dtype=float)
    if s.ndim != 1 or s.shape[0] < 2:
        raise ValueError(
            f"`schedule` must be a 1-D array of at least 2 inverse temperatures, got shape {s.shape}."
        )
    if not np.all(np.isfinite(s)):
        raise ValueError("`schedule` must be finite.")
    if s[0] != 0.0:
        raise ValueError(f"`schedule` must start at 0 (the reference), got {s[0]!r}.")
    if s[-1] != 1.0:
        raise ValueError(f"`schedule` must end at 1 (the target), got {s[-1]!r}.")
    if np.any(np.diff(s) <= 0):
        bad = int(np.flatnonzero(np.diff(s) <= 0)[0])
        raise ValueError(
            f"`schedule` must be strictly increasing; entry {bad + 1} ({s[bad + 1]!r}) does not "
            f"exceed entry {bad} ({s[bad]!r})."
        )


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


class SMC(eqx.Module):
    """Sequential Monte Carlo from a normalized reference to the target along the geometric
    path `π_β ∝ p_ref^{1-β} · exp(log_density)^β`; estimates `log Z` and returns weighted
    particles. With `resampling="never"` it is annealed importance sampling (see [`AIS`][]).

    **Arguments:**

    - `kernel`: any driftax `AbstractSampler` (`RandomWalk`, `MALA`, `HMC`, `NUTS`, ...): the
      move applied to every particle at every stage. Unadjusted kernels (`ULA`) bias `log Z`.
    - `schedule`: a fixed increasing array of inverse temperatures from 0 to 1, or `None`
      (default) for ESS-adaptive tempering: each next `β` is found by bisection so that the
      conditional ESS (Zhou, Johansen & Aston 2016) of the incremental weights is
      `target_ess · num_particles`.
    - `num_mcmc_steps`: kernel steps per stage (default 5).
    - `target_ess`: the conditional-ESS fraction adaptive tempering aims at (default 0.5).
    - `max_stages`: the most stages adaptive tempering may take (default 1000); if it has not
      reached `β = 1` by then, the last stage jumps to 1 and `truncated` is reported.
    - `resampling`: `"multinomial"` (default: the single-run error estimate is derived for
      it, and on many_well(32) it measured no worse than systematic), `"systematic"`,
      `"stratified"` or `"never"`.
    - `resampling_threshold`: resample when the ESS falls below this fraction of the particles
      (default 0.5; 1 resamples at every stage).
    - `reference`: the `β = 0` distribution: an energy with exact `sample` and known
      `log_normalizer` (a `gaussian`, a trained flow, ...). Default `N(0, reference_scale² I)`.
    - `reference_scale`: the scale of the default reference (default 3: wide; a reference
      close to the target needs far fewer stages).
    - `adapt_step_size`: adapt the kernel's `step_size` across the particle population after
      every move: `h ← h · exp(-(target - mean acceptance))` (the statistic of
      `driftax.samplers` step-size adaptation, so unadjusted kernels use their energy error).
    - `target_acceptance`: the acceptance aimed at (default: the kernel's own).
    - `adapt_metric`: at every stage set the kernel's diagonal metric (inverse mass) to the
      weighted variance of the particles (kernels with a `metric` field).
    - `transport`: an optional [`AbstractTransport`][]: a map fitted to the particles at every
      stage and applied before the reweighting (annealed flow transport with
      `driftax.flows.FlowTransport`). Default `None`: geometric annealing leaves the particles
      in place.

    **Outputs:** `run` returns a [`WeightedSampleResult`][] (see [`SMC.run`][]): the
    particles (`samples`, in the energy's own structure, so pytree positions come back as
    pytrees) with their normalized `log_weights`, `log_normalizer` (`log Ẑ` and its
    single-run standard error), the final `ess`, evaluation counts, and the per-stage records
    in `extras`.

    **Energies with pytree points** (an energy whose `unravel` gives the user's pytree): the
    reference, the kernel and the transport act on the flat vector of shape `event_shape`
    (so a `reference=` must have that flat event shape); `samples` are unravelled at the end.

    **Annealed flow transport** (Arbel, Matthews & Doucet 2021): with `transport=`, the particles
    are pushed through a map `T_k` fitted at every stage before the reweighting, with the
    incremental weight `π_k(T(x)) |det ∇T(x)| / π_{k-1}(x)` (formed in `_transport_and_reweight`,
    the only place that forms incremental weights).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.ones(2), 0.5)
    smc = dx.samplers.SMC(dx.samplers.MALA(step_size=0.1), reference_scale=1.0)
    result = smc.run(target, key=jax.random.key(0), num_particles=256)
    result.log_normalizer.value, result.log_normalizer.stderr  # log Z = 0 here
    ```
    """

    kernel: AbstractSampler
    schedule: Array | None = eqx.field(default=None, converter=_as_schedule)
    num_mcmc_steps: int = eqx.field(static=True, default=5)
    target_ess: Array = eqx.field(converter=float_leaf, default=0.5)
    max_stages: int = eqx.field(static=True, default=1000)
    resampling: str = eqx.field(static=True, default="multinomial")
    resampling_threshold: Array = eqx.field(converter=float_leaf, default=0.5)
    reference: AbstractEnergy | None = None
    reference_scale: Array = eqx.field(converter=float_leaf, default=3.0)
    adapt_step_size: bool = eqx.field(static=True, default=True)
    target_acceptance: float | None = eqx.field(static=True, default=None)
    adapt_metric: bool = eqx.field(static=True, default=False)
    transport: AbstractTransport | None = None

    def __check_init__(self):
        if not isinstance(self.kernel, AbstractSampler):
            raise TypeError(
                f"`kernel` must be a driftax AbstractSampler, got {type(self.kernel).__name__}."
            )
        if self.schedule is not None:
            check_schedule(self.schedule)
        _positive_int(self.num_mcmc_steps, "num_mcmc_steps")
        _positive_int(self.max_stages, "max_stages")
        check_fraction(self.target_ess, "target_ess", closed_high=False)
        check_fraction(self.resampling_threshold, "resampling_threshold")
        if self.resampling not in (*RESAMPLING_SCHEMES, "never"):
            raise ValueError(
                f"`resampling` must be one of {(*RESAMPLING_SCHEMES, 'never')}, "
                f"got {self.resampling!r}."
            )
        if self.reference is not None and not (
            isinstance(self.reference, AbstractSampleable)
            and isinstance(self.reference, AbstractKnownNormalizer)
        ):
            raise TypeError(
                "`reference` must be an energy with exact `sample` and a known `log_normalizer` "
                f"(AbstractSampleable and AbstractKnownNormalizer), got "
                f"{type(self.reference).__name__}."
            )
        check_hyper(self.reference_scale, "reference_scale")
        if self.target_acceptance is not None:
            check_fraction(self.target_acceptance, "target_acceptance", closed_high=False)
        if self.adapt_step_size and not isinstance(self.kernel, AbstractStepSizeSampler):
            raise ValueError(
                f"`adapt_step_size=True` needs a kernel with a `step_size`; "
                f"{type(self.kernel).__name__} has none (pass adapt_step_size=False)."
            )
        if self.transport is not None and not isinstance(self.transport, AbstractTransport):
            raise TypeError(
                "`transport` must be an AbstractTransport (e.g. driftax.flows.FlowTransport), "
                f"got {type(self.transport).__name__}."
            )
        if self.adapt_metric and not isinstance(self.kernel, AbstractMetricSampler):
            raise ValueError(
                f"`adapt_metric=True` needs a kernel with a `metric`; "
                f"{type(self.kernel).__name__} has none."
            )

    def reference_for(self, energy: AbstractEnergy) -> AbstractEnergy:
        """The `β = 0` reference used for `energy`: the given one, or the default
        `N(0, reference_scale² I)` (a `driftax.energies.Gaussian` on the energy's event shape
        and dtype)."""
        if self.reference is not None:
            return self.reference
        shape, dtype = tuple(energy.event_shape), energy.dtype
        return Gaussian(
            loc=jnp.zeros(shape, dtype),
            scale_diag=jnp.broadcast_to(jnp.asarray(self.reference_scale, dtype), shape),
            scale_tril=None,
            event_shape=shape,
        )

    def run(
        self,
        energy: AbstractEnergy,
        *,
        key: Key,
        num_particles: int,
        num_runs: int | None = None,
    ) -> WeightedSampleResult:
        """Run the sampler on `energy`, compiled once (a second call with the same shapes and
        settings reuses the compiled loop).

        **Arguments:**

        - `energy`: the target, an `AbstractEnergy`.
        - `key`: a JAX PRNG key (same key → identical results).
        - `num_particles`: particles per run (at least 2).
        - `num_runs`: `None` (default) for one run, or a number of independent runs executed
          together (vmapped); every array of the result then has a leading run axis (the
          per-stage records are padded with NaN / False past each run's `num_stages`) and
          `pooled_log_normalizer` combines the runs.

        **Returns:** a [`WeightedSampleResult`][]:

        - `samples`: the particles, `(num_particles, ...)` on every leaf of the energy's
          `unravel`; `log_weights`: their normalized log-weights (uniform right after a
          resampling; use them for estimates); `ess`: their Kish effective sample size.
        - `log_normalizer`: `value` is the SMC estimate of `log Z` (`Ẑ` is unbiased; `log Ẑ`
          is biased low by about half its variance); `stderr` its single-run standard error,
          the square root of the Lee & Whiteley (2018) estimate of the relative variance of
          `Ẑ`, `1 - (n/(n-1))^m (1 - Σ_k S_k²)`, with `S_k` the total final weight of the
          particles descending from initial particle `k` and `m` = 1 + the number of
          resampling events (derived for multinomial resampling; an approximation for the
          other schemes; 0 when it comes out negative; unreliable once all particles descend
          from few initial ones). For AIS it reduces to the importance-sampling delta-method
          error.
        - `elbo`: for AIS (`resampling="never"`), the mean log-weight of the trajectories (a
          lower bound on `log Z`); `None` for SMC with resampling. `eubo`: `None`.
        - `num_grad_evals`: gradients of the target evaluated (all particles, all stages;
          with a transport also the training population and the maps' fits);
          `num_energy_evals`: target log-density evaluations, with or without gradient;
          `num_divergent`: divergent moves; `num_nonfinite`: final particles with a
          non-finite weight or position.
        - `extras`, per stage (`(num_stages,)`): `"stage_ess"` (effective sample size after
          reweighting, before resampling — weight degeneracy is reported, not hidden),
          `"resampled"`, `"acceptance_rate"` (mean over particles and moves), `"step_size"`
          (after the stage's adaptation), `"log_normalizer_increments"`, `"transport_loss"`
          (the final loss of each stage's transport fit; NaN without a transport);
          `"betas"`: `(num_stages + 1,)` from 0 to 1; and the scalars `"num_stages"`,
          `"num_resampling"`, `"truncated"` (the adaptive schedule hit `max_stages` and
          jumped to `β = 1`).
        """
        if not isinstance(energy, AbstractEnergy):
            raise TypeError(
                f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}."
            )
        num_particles = _positive_int(num_particles, "num_particles")
        if num_particles < 2:
            raise ValueError(f"`num_particles` must be at least 2, got {num_particles}.")
        if num_runs is not None:
            num_runs = _positive_int(num_runs, "num_runs")
        reference = self.reference_for(energy)
        if tuple(reference.event_shape) != tuple(energy.event_shape):
            raise ValueError(
                f"`reference` has event shape {tuple(reference.event_shape)}, the energy "
                f"{tuple(energy.event_shape)} (for an energy with pytree points, the flat "
                "vector the kernels act on)."
            )
        smc = self
        if self.adapt_metric:
            kernel = WindowAdaptation(metric="diagonal").prepare(self.kernel, energy.event_shape)
            smc = eqx.tree_at(lambda s: s.kernel, self, kernel)
        out = _run(smc, energy, reference, key, num_particles, num_runs or 0)
        return _finish(out, num_runs)


def AIS(kernel: AbstractSampler, schedule=None, **kwargs) -> SMC:
    """Annealed importance sampling (Neal 2001): [`SMC`][] with `resampling="never"`.

    Each particle is an independent annealing trajectory; its weight is the product of the
    incremental weights, `log Ẑ = log mean exp(log w)`. Takes the same arguments as `SMC`
    (a fixed `schedule`, or `None` for conditional-ESS-adaptive tempering).
    """
    if "resampling" in kwargs:
        raise TypeError("`AIS` never resamples; use `SMC` to choose a resampling scheme.")
    return SMC(kernel=kernel, schedule=schedule, resampling="never", **kwargs)


# ---------------------------------------------------------------------------------------------
# The typed loop state
# ---------------------------------------------------------------------------------------------


class _Population(eqx.Module):
    """The particles of one stage (with a transport: the estimating population `:n` followed
    by the training population `n:`), all on the kernels' flat arrays."""

    position: Array  # (pops * n, *event_shape)
    log_reference: Array  # log p_ref at `position`
    log_target: Array  # the target's log density at `position`
    log_weights: Array  # normalized within each population
    ancestor: Array  # index of each particle's initial ancestor ("Eve"), int32
    momentum: Array | None  # kinetic kernels keep their momentum between stages


class _StageTrace(eqx.Module):
    """Per-stage records, preallocated to the most stages and padded with NaN / False."""

    betas: Array
    ess: Array
    resampled: Array
    acceptance_rate: Array
    step_size: Array
    log_normalizer_increments: Array
    transport_loss: Array

    @classmethod
    def empty(cls, num_stages: int, dtype) -> _StageTrace:
        nan = jnp.full((num_stages,), jnp.nan, dtype)
        return cls(nan, nan, jnp.zeros((num_stages,), bool), nan, nan, nan, nan)

    def record(self, s, *, beta, ess, resampled, acceptance_rate, step_size, increment, loss):
        """The trace with stage `s` filled in."""
        return _StageTrace(
            betas=self.betas.at[s].set(beta),
            ess=self.ess.at[s].set(ess),
            resampled=self.resampled.at[s].set(resampled),
            acceptance_rate=self.acceptance_rate.at[s].set(acceptance_rate),
            step_size=self.step_size.at[s].set(step_size),
            log_normalizer_increments=self.log_normalizer_increments.at[s].set(increment),
            transport_loss=self.transport_loss.at[s].set(loss),
        )


class _SMCCarry(eqx.Module):
    """The carry of the loop over stages."""

    population: _Population
    beta: Array  # the current inverse temperature
    log_normalizer: Array  # log Ẑ so far (estimating population)
    stage: Array  # stages done, int32
    kernel: AbstractSampler  # the move, with its adapted step size / metric
    num_resampling: Array
    num_grad_evals: Array
    num_energy_evals: Array
    num_divergent: Array
    truncated: Array
    trace: _StageTrace


# ---------------------------------------------------------------------------------------------
# The compiled core
# ---------------------------------------------------------------------------------------------


def _nan_to_neg_inf(a):
    return jnp.where(jnp.isnan(a), -jnp.inf, a)


def _log_normalize(logw):
    lse = jax.nn.logsumexp(logw)
    return logw - lse, lse


def _kish_ess(logw):
    return importance_ess(logw).ess


def _conditional_ess_fraction(logw, diff, delta):
    """CESS / n = (Σ W w)² / Σ W w² for incremental log-weights `delta · diff`."""
    inc = _nan_to_neg_inf(delta * diff)
    return jnp.exp(2.0 * jax.nn.logsumexp(logw + inc) - jax.nn.logsumexp(logw + 2.0 * inc))


def _next_beta(logw, diff, beta, target_ess, num_bisection=60):
    """The largest `β' ∈ (β, 1]` whose conditional ESS is at least `target_ess` (bisection)."""
    remaining = 1.0 - beta
    reach_one = _conditional_ess_fraction(logw, diff, remaining) >= target_ess

    def body(_, lohi):
        lo, hi = lohi
        mid = 0.5 * (lo + hi)
        ok = _conditional_ess_fraction(logw, diff, mid) >= target_ess
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo, _ = jax.lax.fori_loop(0, num_bisection, body, (jnp.zeros_like(beta), remaining))
    # always make progress (a degenerate population would otherwise stall)
    delta = jnp.maximum(lo, jnp.asarray(1e-7, beta.dtype) * remaining + 1e-12)
    return jnp.where(reach_one, 1.0, jnp.minimum(beta + delta, 1.0))


def _transport_and_reweight(smc, path, key, stage, beta, beta_new, pop: _Population, n):
    """The stage's incremental log-weights and particles.

    Geometric annealing leaves the particles in place: `log w_inc = (β' - β)(log p(x) -
    log p_ref(x))`. With a transport `T`: `x ← T(x)`, `log w_inc = log π_β'(T(x)) +
    log|det ∇T(x)| - log π_β(x)`, where `T` is fitted on the training population (particles
    `n:`) only and applied to all. Returns `(x, inc, loss)`.
    """
    x, l_ref, l_target = pop.position, pop.log_reference, pop.log_target
    if smc.transport is None:
        inc = _nan_to_neg_inf((beta_new - beta) * (l_target - l_ref))
        return x, inc, jnp.asarray(jnp.nan, l_ref.dtype)
    next_density = path.at(beta_new).log_density
    train_logw, _ = _log_normalize(pop.log_weights[n:])
    y, log_det, loss = smc.transport.fit_and_transport(
        key, x[n:], train_logw, next_density, x, stage
    )
    y = jax.lax.stop_gradient(y).astype(x.dtype)
    ly_ref = jax.vmap(path.initial.log_density)(y).astype(l_ref.dtype)
    ly_target = jax.vmap(path.final.log_density)(y).astype(l_ref.dtype)
    log_next = (1.0 - beta_new) * ly_ref + beta_new * ly_target
    log_prev = (1.0 - beta) * l_ref + beta * l_target
    inc = _nan_to_neg_inf(log_next + log_det.astype(l_ref.dtype) - log_prev)
    return y, inc, jnp.asarray(loss, l_ref.dtype)


def _weighted_variance(x, logw):
    w = jnp.exp(logw)
    flat = x.reshape(x.shape[0], -1)
    mean = jnp.sum(w[:, None] * flat, axis=0)
    var = jnp.sum(w[:, None] * (flat - mean) ** 2, axis=0)
    ok = jnp.isfinite(var) & (var > 0)
    return jnp.where(ok, var, 1.0) + 1e-10


def smc_one_run(smc: SMC, energy, reference, key, num_particles: int) -> WeightedSampleResult:
    """One traceable SMC / AIS run of `num_particles` from `reference` to `energy` (no checks).

    The internal entry point shared by `SMC.run` and callers that trace SMC inside their own
    compiled loop (FAB's AIS step); validation is the caller's job.
    """
    n = num_particles
    # With a transport, a second, independent population of `n` training particles runs
    # alongside (particles `n:`): the maps are fitted on it only, so the estimating population
    # (particles `:n`) is moved by maps independent of itself and `Ẑ` stays unbiased.
    pops = 1 if smc.transport is None else 2
    kernel = smc.kernel
    event_shape = tuple(energy.event_shape)
    dim = math.prod(event_shape)
    fixed = smc.schedule is not None
    num_stages_max = smc.schedule.shape[0] - 1 if smc.schedule is not None else smc.max_stages
    adapt = smc.adapt_step_size
    target_acc = smc.target_acceptance
    if target_acc is None:
        target_acc = kernel.default_target_acceptance if kernel.is_adjusted else 5e-4
    path = GeometricPath(reference, energy, 0.0)
    log_ref = jax.vmap(reference.log_density)
    log_target = jax.vmap(energy.log_density)

    k_init, k_loop = jax.random.split(key)
    x = reference.sample(k_init, (pops * n,))
    dtype = x.dtype
    state_shape = eqx.filter_eval_shape(kernel.init, path, x[0])
    kernel_uses_grad = getattr(state_shape, "score", None) is not None
    # kinetic kernels keep their momentum from stage to stage (re-initialized states start at
    # rest, which would leave the momentum out of equilibrium after a few moves)
    has_momentum = getattr(state_shape, "momentum", None) is not None

    def population(x, logw, ancestor, momentum) -> _Population:
        return _Population(
            position=x,
            log_reference=log_ref(x).astype(dtype),
            log_target=log_target(x).astype(dtype),
            log_weights=logw,
            ancestor=ancestor,
            momentum=momentum,
        )

    int0 = jnp.zeros((), jnp.int32)
    init = _SMCCarry(
        population=population(
            x,
            jnp.full((pops * n,), -jnp.log(n), dtype),
            jnp.arange(pops * n, dtype=jnp.int32),
            jnp.zeros_like(x) if has_momentum else None,
        ),
        beta=jnp.zeros((), dtype),
        log_normalizer=jnp.asarray(reference.log_normalizer, dtype),
        stage=int0,
        kernel=kernel,
        num_resampling=int0,
        num_grad_evals=int0,
        num_energy_evals=jnp.asarray(pops * n, jnp.int32),
        num_divergent=int0,
        truncated=jnp.zeros((), bool),
        trace=_StageTrace.empty(num_stages_max, dtype),
    )

    def cond(c: _SMCCarry):
        return (c.beta < 1.0) & (c.stage < num_stages_max)

    def body(c: _SMCCarry) -> _SMCCarry:
        s = c.stage
        k_stage = jax.random.fold_in(k_loop, s)
        k_res, k_move, k_transport = jax.random.split(k_stage, 3)
        beta = c.beta
        pop = c.population
        diff = _nan_to_neg_inf(pop.log_target - pop.log_reference)
        # 1. the next inverse temperature
        truncated = c.truncated
        if fixed:
            beta_new = cast(Array, smc.schedule)[s + 1].astype(dtype)
        else:
            beta_new = _next_beta(pop.log_weights[:n], diff[:n], beta, smc.target_ess)
            beta_new = beta_new.astype(dtype)
            last = s == num_stages_max - 1
            truncated = last & (beta_new < 1.0)
            beta_new = jnp.where(last, jnp.asarray(1.0, dtype), beta_new)
        # 2. reweight
        x, inc, loss = _transport_and_reweight(smc, path, k_transport, s, beta, beta_new, pop, n)
        logw, log_z_incs = jax.vmap(_log_normalize)((pop.log_weights + inc).reshape(pops, n))
        log_z_inc = log_z_incs[0]
        ess_pops = jax.vmap(_kish_ess)(logw)
        ess = ess_pops[0]
        # 3. resample
        ancestor, momentum = pop.ancestor, pop.momentum
        if smc.resampling == "never":
            do = jnp.asarray(False)
            logw = logw.reshape(-1)
        else:
            do_pops = ess_pops < smc.resampling_threshold * n
            do = do_pops[0]
            idx = jax.vmap(lambda lw, k: resample(lw, key=k, scheme=smc.resampling))(
                logw, jax.random.split(k_res, pops)
            )
            idx = jnp.where(do_pops[:, None], idx, jnp.arange(n, dtype=idx.dtype))
            idx = (idx + n * jnp.arange(pops, dtype=idx.dtype)[:, None]).reshape(-1)
            x, ancestor = x[idx], ancestor[idx]
            momentum = None if momentum is None else momentum[idx]
            logw = jnp.where(do_pops[:, None], jnp.full_like(logw, -jnp.log(n)), logw)
            logw = logw.reshape(-1)
        # 4. move
        kernel = c.kernel
        if smc.adapt_metric:
            metric = cast(Any, kernel).metric  # an AbstractMetricSampler (checked at init)
            var = _weighted_variance(x[:n], logw[:n]).astype(metric.inverse_mass.dtype)
            kernel = eqx.tree_at(lambda k: k.metric.inverse_mass, kernel, var.reshape(event_shape))
        target_b = path.at(beta_new)
        states = jax.vmap(lambda xi: kernel.init(target_b, xi))(x)
        if has_momentum:
            momentum = cast(Array, momentum)  # carried when the kernel has one
            states = eqx.tree_at(lambda st: st.momentum, states, momentum.astype(x.dtype))

        def move(mc, k):
            kern, st = mc
            st, infos = jax.vmap(lambda si, ki: kern.step(target_b, si, key=ki))(
                st, jax.random.split(k, pops * n)
            )
            if adapt:
                stat = step_size_statistic(kern, infos, target_acc, dim, pooled=True)[0]
                stat = jnp.clip(jnp.where(jnp.isfinite(stat), stat, 1.0), -1.0, 1.0)
                h = jnp.clip(kern.step_size * jnp.exp(-stat), 1e-12, 1e12)
                kern = eqx.tree_at(lambda kk: kk.step_size, kern, h.astype(kern.step_size.dtype))
            acc = jnp.mean(jnp.where(jnp.isfinite(infos.acceptance_rate), infos.acceptance_rate, 0))
            grads = jnp.sum(infos.num_grad_evals)
            evals = jnp.sum(jnp.maximum(infos.num_grad_evals, 1))
            return (kern, st), (acc, grads, evals, jnp.sum(infos.is_divergent))

        (kernel, states), (acc, grads, evals, divs) = jax.lax.scan(
            move, (kernel, states), jax.random.split(k_move, smc.num_mcmc_steps)
        )
        x = states.position
        init_grads = pops * n if kernel_uses_grad else 0
        if smc.transport is not None:  # fitting the stage's map evaluates the target too
            init_grads = init_grads + smc.transport.num_grad_evals(n)
        step = kernel.step_size if isinstance(kernel, AbstractStepSizeSampler) else jnp.nan
        return _SMCCarry(
            population=population(x, logw, ancestor, states.momentum if has_momentum else None),
            beta=beta_new,
            log_normalizer=c.log_normalizer + log_z_inc,
            stage=s + 1,
            kernel=kernel,
            num_resampling=c.num_resampling + do.astype(jnp.int32),
            num_grad_evals=c.num_grad_evals + (jnp.sum(grads) + init_grads).astype(jnp.int32),
            # + the kernel init and the new log densities
            num_energy_evals=c.num_energy_evals + (jnp.sum(evals) + 2 * pops * n).astype(jnp.int32),
            num_divergent=c.num_divergent + jnp.sum(divs).astype(jnp.int32),
            truncated=truncated,
            trace=c.trace.record(
                s,
                beta=beta_new,
                ess=ess,
                resampled=do,
                acceptance_rate=jnp.mean(acc).astype(dtype),
                step_size=jnp.asarray(step, dtype),
                increment=log_z_inc,
                loss=loss,
            ),
        )

    c = jax.lax.while_loop(cond, body, init)
    pop = c.population
    x, logw = pop.position[:n], pop.log_weights[:n]
    # Lee & Whiteley (2018) relative-variance estimate from the Eve (initial-ancestor) indices
    eve_mass = jnp.zeros((n,), dtype).at[pop.ancestor[:n]].add(jnp.exp(logw))
    m = 1 + c.num_resampling
    factor = jnp.exp(m.astype(dtype) * (jnp.log(n) - jnp.log(n - 1.0)))
    rel_var = 1.0 - factor * (1.0 - jnp.sum(eve_mass**2))
    elbo = None
    if smc.resampling == "never":
        # AIS: each trajectory's weight `w_i = n Ẑ W_i` is unbiased for Z, so E[log w] <= log Z
        lw = logw + jnp.log(n) + c.log_normalizer
        elbo = LogZEstimate(value=jnp.mean(lw), stderr=jnp.std(lw, ddof=1) / jnp.sqrt(n))
    nonfinite = ~jnp.isfinite(logw) | ~jnp.all(jnp.isfinite(x.reshape(n, -1)), axis=1)
    trace = c.trace
    return WeightedSampleResult(
        samples=jax.vmap(energy.unravel)(x),
        log_weights=logw,
        log_normalizer=LogZEstimate(value=c.log_normalizer, stderr=jnp.sqrt(jnp.clip(rel_var, 0))),
        ess=_kish_ess(logw),
        elbo=elbo,
        num_grad_evals=c.num_grad_evals,
        num_energy_evals=c.num_energy_evals,
        num_divergent=c.num_divergent,
        num_nonfinite=jnp.sum(nonfinite).astype(jnp.int32),
        extras=dict(
            betas=trace.betas,
            stage_ess=trace.ess,
            resampled=trace.resampled,
            acceptance_rate=trace.acceptance_rate,
            step_size=trace.step_size,
            log_normalizer_increments=trace.log_normalizer_increments,
            transport_loss=trace.transport_loss,
            num_stages=c.stage,
            num_resampling=c.num_resampling,
            truncated=c.truncated,
        ),
    )


def _smc_impl(smc, energy, reference, key, num_particles: int, num_runs: int):
    if num_runs == 0:
        return smc_one_run(smc, energy, reference, key, num_particles)
    keys = jax.random.split(key, num_runs)
    return jax.vmap(lambda k: smc_one_run(smc, energy, reference, k, num_particles))(keys)


_run_traced = eqx.debug.assert_max_traces(_smc_impl, max_traces=None)
_run = eqx.filter_jit(_run_traced)

_PER_STAGE = (
    "stage_ess",
    "resampled",
    "acceptance_rate",
    "step_size",
    "log_normalizer_increments",
    "transport_loss",
)


def _finish(out: WeightedSampleResult, num_runs: int | None) -> WeightedSampleResult:
    """Trim the per-stage records to the stages run (the most over runs), prepend `β = 0`, and
    move the counters to NumPy."""
    extras = dict(out.extras)
    num_stages = np.asarray(extras["num_stages"])
    keep = int(np.max(num_stages))
    for name in _PER_STAGE:
        extras[name] = np.asarray(extras[name])[..., :keep]
    betas = np.asarray(extras["betas"])[..., :keep]
    zero = np.zeros((*betas.shape[:-1], 1), betas.dtype)
    extras["betas"] = np.concatenate([zero, betas], axis=-1)
    extras["num_stages"] = num_stages
    extras["num_resampling"] = np.asarray(extras["num_resampling"])
    extras["truncated"] = np.asarray(extras["truncated"])
    return dataclasses.replace(
        out,
        num_grad_evals=np.asarray(out.num_grad_evals, np.int64),
        num_energy_evals=np.asarray(out.num_energy_evals, np.int64),
        num_divergent=np.asarray(out.num_divergent),
        num_nonfinite=np.asarray(out.num_nonfinite),
        extras=extras,
        num_runs=num_runs,
    )
