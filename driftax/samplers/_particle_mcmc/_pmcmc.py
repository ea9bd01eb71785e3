"""Particle MCMC: conditional SMC, PaRIS particle Gibbs (PPG), particle Gibbs and particle
marginal Metropolis–Hastings (both `AbstractSampler`s that `driftax.sample` runs), and Markov
score climbing for maximum likelihood on the shared training loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._checks import check_choice, check_int
from ..._custom_types import Array, Key
from ..._training import AbstractBatcher, TrainHistory, check_optimizer, train
from ...energies._base import AbstractEnergy
from ...energies._ssm import (
    AbstractProposal,
    AbstractStateSpaceModel,
    _check_model_fn,
)
from .._base import (
    AbstractMetricSampler,
    AbstractSampler,
    AbstractStepSizeSampler,
    Info,
    MCMCState,
    cast_like,
    check_hyper,
    float_leaf,
    init_position,
    log_density_at,
)
from .._hamiltonian import RandomWalk, random_walk_step
from .._metrics import AbstractMetric, IdentityMetric
from .._resampling import RESAMPLING_SCHEMES
from ._filter import (
    ParticleFilterResult,
    check_filter_args,
    run_filter,
)
from ._smoothers import ParisHook, _check_functional, backward_sample

# ----------------------------------------------------------------------------------------------
# conditional SMC


def csmc_step(
    model: AbstractStateSpaceModel,
    ys: Array,
    reference: Array,
    key: Key,
    num_particles: int,
    *,
    proposal: AbstractProposal | None = None,
    backward_sampling: bool = True,
    hook=None,
):
    """One conditional-SMC move (traced): the conditional filter given `reference`, then a new
    trajectory by backward sampling (or by ancestor sampling + tracing the genealogy).
    Returns `(new_trajectory, filter_result, hook_final)`."""
    k_filter, k_draw = jax.random.split(key)
    result, _, final = run_filter(
        model,
        ys,
        k_filter,
        num_particles,
        proposal=proposal,
        reference=reference,
        ancestor_sampling=not backward_sampling,
        hook=hook,
    )
    if backward_sampling:
        new = backward_sample(model, result.particles, result.log_weights, k_draw, 1)[0]
    else:
        new = trace_genealogy(result, k_draw)
    return new, result, final


def trace_genealogy(result: ParticleFilterResult, key: Key) -> Array:
    """A trajectory drawn by picking a final particle by its weight and following its
    ancestors back to `t = 0`."""
    j_last = jax.random.categorical(key, result.log_weights[-1]).astype(jnp.int32)

    def body(j, inputs):
        ancestors_t, particles_prev = inputs
        j_prev = ancestors_t[j]
        return j_prev, particles_prev[j_prev]

    _, xs = jax.lax.scan(body, j_last, (result.ancestors[1:], result.particles[:-1]), reverse=True)
    return jnp.concatenate([xs, result.particles[-1, j_last][None]])


def _check_reference(model, reference, ys) -> Array:
    ref = jnp.asarray(reference)
    expected = (ys.shape[0], *model.state_shape)
    if tuple(ref.shape) != expected:
        raise ValueError(
            f"`reference` must have shape {expected} (T, *state_shape), got {ref.shape}."
        )
    if not isinstance(reference, jax.core.Tracer) and not np.all(
        np.isfinite(np.asarray(reference, dtype=float))
    ):
        raise ValueError("`reference` must be finite.")
    return ref.astype(ys.dtype)


@eqx.filter_jit
def _csmc_jit(model, ys, reference, key, num_particles, proposal, backward_sampling):
    new, result, _ = csmc_step(
        model,
        ys,
        reference,
        key,
        num_particles,
        proposal=proposal,
        backward_sampling=backward_sampling,
    )
    return new, result


def conditional_smc(
    model: AbstractStateSpaceModel,
    observations: Array,
    reference: Array,
    *,
    key: Key,
    num_particles: int,
    backward_sampling: bool = True,
    proposal: AbstractProposal | None = None,
) -> tuple[Array, ParticleFilterResult]:
    """One move of conditional SMC (Andrieu, Doucet & Holenstein, 2010): a particle filter with
    the `reference` trajectory frozen in one slot, then a new trajectory drawn from the particle
    system, by backward sampling (default; Whiteley, 2010) or by ancestor sampling (Lindsten,
    Jordan & Schön, 2014) and the genealogy. The move leaves the smoothing law
    `p(x_{0:T-1} | y_{0:T-1})` invariant for any `num_particles >= 2`: iterate it for a
    Markov chain on trajectories (the state move of [`ParticleGibbs`][]).

    **Arguments:** as [`particle_filter`][] (resampling is multinomial at every step), plus
    `reference` `(T, *state_shape)` and `backward_sampling`.

    **Returns:** `(new_trajectory, filter_result)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    xs, ys = model.simulate(jax.random.key(0), 30)
    path = xs
    for i in range(5):
        path, _ = dx.samplers.conditional_smc(
            model, ys, path, key=jax.random.key(i), num_particles=20
        )
    ```
    """
    ys = check_filter_args(model, observations, num_particles, proposal=proposal)
    _check_auxiliary(proposal)
    ref = _check_reference(model, reference, ys)
    return _csmc_jit(model, ys, ref, key, int(num_particles), proposal, bool(backward_sampling))


def _check_auxiliary(proposal):
    from ...energies._ssm import AbstractAuxiliaryProposal

    if isinstance(proposal, AbstractAuxiliaryProposal):
        raise TypeError(
            "`proposal`: conditional SMC takes a bootstrap or guided proposal, not an auxiliary "
            "one (its look-ahead resampling is not implemented conditionally)."
        )


def _initial_reference(model, ys, key, num_particles, proposal=None):
    """A starting trajectory: a plain particle filter and one backward draw."""
    result, _, _ = run_filter(model, ys, key, num_particles, proposal=proposal, ess_threshold=1.0)
    k = jax.random.fold_in(key, 1)
    return backward_sample(model, result.particles, result.log_weights, k, 1)[0]


# ----------------------------------------------------------------------------------------------
# PaRIS particle Gibbs


class PPGResult(eqx.Module):
    """What [`ppg_smoother`][] returns: `estimate` (the average of the per-iteration
    estimates after burn-in), `estimates` (every iteration's, `(num_iterations, ...)`), and
    `reference` (the last reference trajectory)."""

    estimate: Array
    estimates: Array
    reference: Array


@eqx.filter_jit
def _ppg_jit(model, ys, key, num_particles, num_iterations, num_burnin, hook):
    k_init, k_iter = jax.random.split(key)
    ref0 = _initial_reference(model, ys, k_init, num_particles)

    def body(ref, k):
        new, _, estimate = csmc_step(model, ys, ref, k, num_particles, hook=hook)
        return new, estimate

    ref, estimates = jax.lax.scan(body, ref0, jax.random.split(k_iter, num_iterations))
    return jnp.mean(estimates[num_burnin:], axis=0), estimates, ref


def ppg_smoother(
    model: AbstractStateSpaceModel,
    observations: Array,
    functional: Callable,
    *,
    key: Key,
    num_particles: int,
    num_iterations: int,
    num_burnin: int = 0,
    num_backward: int = 2,
    initial_functional: Callable | None = None,
) -> PPGResult:
    """PaRIS particle Gibbs (Cardoso, Janati, Le Corff, Moulines & Olsson, 2023): PaRIS
    estimates of an additive functional computed inside conditional-SMC sweeps, the reference
    trajectory redrawn by backward sampling each iteration, and the estimates averaged over
    the iterations after `num_burnin`. Each iteration's estimate is unbiased once the reference
    is a draw from the smoothing law (the chain's stationarity), so the average's bias decays
    with the burn-in instead of staying at PaRIS's `O(1/N)`.

    **Arguments:** `model`, `observations`, `functional`, `initial_functional`,
    `num_backward`: as in [`paris_smoother`][]; `num_particles` per sweep; `num_iterations`
    sweeps, of which the first `num_burnin` are dropped from the average.

    **Returns:** a [`PPGResult`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    model = dx.energies.linear_gaussian_ssm(
        0.9 * jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
    )
    _, ys = model.simulate(jax.random.key(0), 30)
    out = dx.samplers.ppg_smoother(
        model, ys, lambda xp, x, t: jnp.sum(xp * x), key=jax.random.key(1),
        num_particles=32, num_iterations=20, num_burnin=4,
    )
    print(out.estimate)
    ```
    """
    ys = check_filter_args(model, observations, num_particles)
    _check_functional(functional, initial_functional, num_backward)
    check_int(num_iterations, "num_iterations")
    check_int(num_burnin, "num_burnin", 0)
    if num_burnin >= num_iterations:
        raise ValueError(
            f"`num_burnin` must be smaller than `num_iterations` ({num_iterations}), got "
            f"{num_burnin}."
        )
    hook = ParisHook(functional, initial_functional, int(num_backward))
    estimate, estimates, ref = _ppg_jit(
        model, ys, key, int(num_particles), int(num_iterations), int(num_burnin), hook
    )
    return PPGResult(estimate=estimate, estimates=estimates, reference=ref)


# ----------------------------------------------------------------------------------------------
# particle Gibbs and PMMH: kernels on θ for `driftax.sample`


class _StatesGivenTheta(AbstractEnergy):
    """`log p(θ) + log p_θ(x, y)` as an energy of θ for fixed states (the θ-move of particle
    Gibbs)."""

    prior: AbstractEnergy
    model_fn: Callable = eqx.field(static=True)
    observations: Array
    states: Array
    event_shape: tuple = eqx.field(static=True)

    def log_density(self, x):
        lp = self.prior.log_density(x)
        lj = self.model_fn(x).log_joint(self.states, self.observations)
        lj = jnp.where(jnp.isnan(lj), -jnp.inf, lj)
        return jnp.where(jnp.isfinite(lp), lp + lj.astype(jnp.result_type(lp)), lp)


class ParticleGibbsState(eqx.Module):
    """The state of [`ParticleGibbs`][]: `position` (θ), its `log_density` (`log p(θ) +
    log p_θ(x, y)` at the current states) and the current state `trajectory` `(T, ...)`."""

    position: Array
    log_density: Array
    trajectory: Array


def _float_observations(observations) -> Array:
    ys = jnp.asarray(observations)
    return ys.astype(jnp.result_type(ys, float))


def _initial_key() -> Key:
    # `init` takes no key: the first trajectory / likelihood estimate uses a fixed one
    return jax.random.key(20230101)


class ParticleGibbs(AbstractSampler):
    """Particle Gibbs for the parameters `θ` and states of a state-space model (Andrieu,
    Doucet & Holenstein, 2010): each step moves the state trajectory by one conditional-SMC
    sweep under `model_fn(θ)` (with backward sampling, or ancestor sampling) and then `θ` by
    `num_theta_steps` steps of `theta_sampler` on `log p(θ) + log p_θ(x_{0:T-1}, y_{0:T-1})`.
    The energy `driftax.sample` is given is the prior `log p(θ)`; the chain's samples are `θ`
    (the trajectory is in the state).

    **Arguments:**

    - `model_fn`: `θ -> AbstractStateSpaceModel` (traced).
    - `observations`: `(T, *observation_shape)`.
    - `num_particles`: per sweep (`>= 2`; a few tens is typical, as the move is exact for any).
    - `theta_sampler`: a driftax kernel for the θ-move (e.g. `RandomWalk`, `MALA`; default
      `RandomWalk(step_size=0.1)`); it is not adapted by `driftax.sample`.
    - `num_theta_steps`: θ-steps per sweep (default 1).
    - `backward_sampling`: draw the new trajectory by backward sampling (default) or by
      ancestor sampling.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    def model_fn(theta):
        return dx.energies.linear_gaussian_ssm(
            theta[:1, None], jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
        )

    _, ys = model_fn(jnp.array([0.7])).simulate(jax.random.key(0), 40)
    prior = dx.energies.gaussian(jnp.zeros(1))
    kernel = dx.samplers.ParticleGibbs(
        model_fn, ys, num_particles=20, theta_sampler=dx.samplers.RandomWalk(step_size=0.2)
    )
    result = dx.sample(kernel, prior, jnp.array([0.5]), key=jax.random.key(1),
                       num_steps=200, num_warmup=0, num_chains=2)
    ```
    """

    model_fn: Callable = eqx.field(static=True)
    observations: Array
    num_particles: int = eqx.field(static=True)
    theta_sampler: AbstractSampler = eqx.field(default=None)
    num_theta_steps: int = eqx.field(static=True, default=1)
    backward_sampling: bool = eqx.field(static=True, default=True)

    def __check_init__(self):
        if not callable(self.model_fn):
            raise TypeError(f"`model_fn` must be a callable θ -> model, got {self.model_fn!r}.")
        check_int(self.num_particles, "num_particles", 2)
        check_int(self.num_theta_steps, "num_theta_steps")
        if self.theta_sampler is not None and not isinstance(self.theta_sampler, AbstractSampler):
            raise TypeError(
                "`theta_sampler` must be a driftax AbstractSampler, got "
                f"{type(self.theta_sampler).__name__}."
            )

    def _kernel(self) -> AbstractSampler:
        if self.theta_sampler is None:
            return RandomWalk(step_size=0.1)
        return self.theta_sampler

    def _theta_target(self, energy: AbstractEnergy, states: Array) -> _StatesGivenTheta:
        """The θ-move's energy at the current `states`."""
        return _StatesGivenTheta(
            prior=energy,
            model_fn=self.model_fn,
            observations=_float_observations(self.observations),
            states=states,
            event_shape=energy.event_shape,
        )

    def init(self, energy: AbstractEnergy, x0: Array) -> ParticleGibbsState:
        theta, _, _ = init_position(energy, x0, with_score=False)
        _check_model_fn(self.model_fn, energy, self.observations)
        ys = _float_observations(self.observations)
        traj = _initial_reference(self.model_fn(theta), ys, _initial_key(), self.num_particles)
        logp = log_density_at(self._theta_target(energy, traj), theta)
        return ParticleGibbsState(
            position=theta, log_density=logp, trajectory=cast_like(theta, traj)
        )

    def step(self, energy: AbstractEnergy, state: ParticleGibbsState, *, key: Key):
        k_csmc, k_theta = jax.random.split(key)
        theta = state.position
        ys = _float_observations(self.observations)
        traj, _, _ = csmc_step(
            self.model_fn(theta),
            ys,
            state.trajectory.astype(ys.dtype),
            k_csmc,
            self.num_particles,
            backward_sampling=self.backward_sampling,
        )
        target = self._theta_target(energy, traj)
        kernel = self._kernel()
        inner = kernel.init(target, theta)

        def body(s, k):
            s, info = kernel.step(target, s, key=k)
            return s, info

        inner, infos = jax.lax.scan(body, inner, jax.random.split(k_theta, self.num_theta_steps))
        info = jax.tree.map(lambda a: a[-1], infos)
        info = Info(
            acceptance_rate=jnp.mean(infos.acceptance_rate),
            is_divergent=jnp.any(infos.is_divergent),
            energy_error=info.energy_error,
            num_grad_evals=jnp.sum(infos.num_grad_evals).astype(jnp.int32),
        )
        new = ParticleGibbsState(
            position=inner.position,
            log_density=inner.log_density.astype(jnp.result_type(theta)),
            trajectory=cast_like(theta, traj),
        )
        return new, info


class PMMH(AbstractStepSizeSampler, AbstractMetricSampler):
    """Particle marginal Metropolis–Hastings (Andrieu, Doucet & Holenstein, 2010): random-walk
    Metropolis on `θ` with the intractable likelihood `p_θ(y)` replaced by a particle filter's
    unbiased estimate; the estimate of the current point is kept with it, so the chain targets
    the exact posterior `p(θ | y)` for any number of particles (more particles: better mixing).

    The energy `driftax.sample` is given is the prior `log p(θ)`; the proposal is `θ +
    step_size · M^{-1/2} ξ` with the `metric` (both tuned by the default window adaptation).
    Noisy likelihoods make chains sticky: choose `num_particles` so that the log-likelihood
    estimate's standard deviation is about 1–1.5 at the posterior (Doucet et al., 2015).

    **Arguments:** `model_fn` (`θ -> model`, traced), `observations`, `num_particles` (`>= 2`),
    `step_size`, `metric` (default identity), `resampling` (default systematic),
    `proposal_fn` (optional `θ -> AbstractProposal`, for a guided or auxiliary filter).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    def model_fn(theta):
        return dx.energies.linear_gaussian_ssm(
            theta[:1, None], jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
        )

    _, ys = model_fn(jnp.array([0.7])).simulate(jax.random.key(0), 40)
    kernel = dx.samplers.PMMH(model_fn, ys, num_particles=50, step_size=0.2)
    result = dx.sample(kernel, dx.energies.gaussian(jnp.zeros(1)), jnp.array([0.5]),
                       key=jax.random.key(1), num_steps=200, num_warmup=100, num_chains=2)
    ```
    """

    model_fn: Callable = eqx.field(static=True)
    observations: Array
    num_particles: int = eqx.field(static=True)
    step_size: Array
    metric: AbstractMetric
    resampling: str = eqx.field(static=True)
    proposal_fn: Callable | None = eqx.field(static=True)

    default_target_acceptance: ClassVar[float] = 0.15

    def __init__(
        self,
        model_fn: Callable,
        observations: Array,
        num_particles: int,
        step_size=0.1,
        metric: AbstractMetric | None = None,
        resampling: str = "systematic",
        proposal_fn: Callable | None = None,
    ):
        self.model_fn = model_fn
        self.observations = jnp.asarray(observations)
        self.num_particles = num_particles
        check_hyper(step_size, "step_size")
        self.step_size = float_leaf(step_size)
        self.metric = IdentityMetric() if metric is None else metric
        self.resampling = check_choice(resampling, "resampling", RESAMPLING_SCHEMES)
        self.proposal_fn = proposal_fn

    def __check_init__(self):
        if not callable(self.model_fn):
            raise TypeError(f"`model_fn` must be a callable θ -> model, got {self.model_fn!r}.")
        check_int(self.num_particles, "num_particles", 2)
        check_hyper(self.step_size, "step_size")
        if self.proposal_fn is not None and not callable(self.proposal_fn):
            raise TypeError(f"`proposal_fn` must be None or a callable, got {self.proposal_fn!r}.")
        if not isinstance(self.metric, AbstractMetric):
            raise TypeError(
                f"`metric` must be an AbstractMetric, got {type(self.metric).__name__}."
            )

    def _log_likelihood(self, theta, key):
        ys = _float_observations(self.observations)
        model = self.model_fn(theta)
        proposal = None if self.proposal_fn is None else self.proposal_fn(theta)
        result, _, _ = run_filter(
            model, ys, key, self.num_particles, proposal=proposal, resampling=self.resampling
        )
        ll = result.log_likelihood
        return jnp.where(jnp.isnan(ll), -jnp.inf, ll).astype(jnp.result_type(theta))

    def _target(self, energy, theta, key):
        lp = log_density_at(energy, theta)
        ll = self._log_likelihood(theta, key)
        return jnp.where(jnp.isfinite(lp), lp + ll, lp)

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        theta, _, _ = init_position(energy, x0, with_score=False)
        _check_model_fn(self.model_fn, energy, self.observations)
        return MCMCState(
            position=theta, log_density=self._target(energy, theta, _initial_key()), score=None
        )

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        # random-walk Metropolis with a fresh likelihood estimate at the proposal only
        k_draw, k_filter = jax.random.split(key)
        return random_walk_step(
            lambda y: self._target(energy, y, k_filter),
            state,
            k_draw,
            self.step_size,
            self.metric,
        )


# ----------------------------------------------------------------------------------------------
# Markov score climbing


class _CSMCBatcher(AbstractBatcher):
    """Batches of state trajectories for the current θ: one conditional-SMC sweep per step
    from the carried reference, then `batch_size` backward-sampled trajectories (the first
    is the next reference)."""

    model_fn: Callable = eqx.field(static=True)
    observations: Array
    initial_reference: Array
    num_particles: int = eqx.field(static=True)
    batch_size: int = eqx.field(static=True)

    def init(self, key):
        del key
        return self.initial_reference

    def next(self, state, model, key, step):
        del step
        theta = jax.lax.stop_gradient(model)
        ssm = self.model_fn(theta)
        k_filter, k_draw = jax.random.split(key)
        result, _, _ = run_filter(
            ssm, self.observations, k_filter, self.num_particles, reference=state
        )
        paths = backward_sample(ssm, result.particles, result.log_weights, k_draw, self.batch_size)
        return jax.lax.stop_gradient(paths), paths[0]

    def update(self, state, model, aux, key):
        del model, aux, key
        return state


class _NegativeCompleteLogLikelihood(eqx.Module):
    """`-mean_b log p_θ(x_b, y) / T`: its gradient is minus the Fisher-identity score estimate."""

    model_fn: Callable = eqx.field(static=True)
    observations: Array

    def __call__(self, theta, batch, *, key):
        del key
        model = self.model_fn(theta)
        lj = jax.vmap(lambda x: model.log_joint(x, self.observations))(batch)
        return -jnp.mean(lj) / self.observations.shape[0]


def score_climbing(
    model_fn: Callable,
    observations: Array,
    theta0: Array,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int = 4,
    num_particles: int = 32,
) -> tuple[Array, TrainHistory]:
    """Maximum-likelihood estimation of a state-space model's parameters by Markov score
    climbing (Naesseth, Lindsten & Blei, 2020) with particle-Gibbs state moves (as in the PPG
    learning scheme of Cardoso et al., 2023): each step runs one conditional-SMC sweep under
    the current `θ` from the carried reference trajectory, draws `batch_size` trajectories by
    backward sampling, and takes an optimizer step on `-Σ log p_θ(x_b, y)` (Fisher's identity:
    its expected gradient is minus the score `∇ log p_θ(y)`). With a decreasing step size the
    iterates converge to a stationary point of the likelihood.

    A fit on the shared training loop: `key, optimizer, num_steps, batch_size` as everywhere.

    **Arguments:** `model_fn` (`θ -> model`, traced), `observations`, `theta0` (the starting
    parameters, any array), `num_particles` per sweep.

    **Returns:** `(theta, history)` (a `TrainHistory` of the losses
    `-mean log p_θ(x_b, y) / T`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import optax
    import driftax as dx

    def model_fn(theta):
        return dx.energies.linear_gaussian_ssm(
            theta[:1, None], jnp.eye(1), jnp.eye(1), jnp.eye(1), jnp.zeros(1), jnp.eye(1)
        )

    _, ys = model_fn(jnp.array([0.7])).simulate(jax.random.key(0), 100)
    theta, history = dx.samplers.score_climbing(
        model_fn, ys, jnp.array([0.2]), key=jax.random.key(1),
        optimizer=optax.adam(0.02), num_steps=200,
    )
    ```
    """
    if not callable(model_fn):
        raise TypeError(f"`model_fn` must be a callable θ -> model, got {model_fn!r}.")
    theta0 = jnp.asarray(theta0)
    if not jnp.issubdtype(theta0.dtype, jnp.floating):
        theta0 = theta0.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(theta0))):
        raise ValueError("`theta0` must be finite.")
    model = model_fn(theta0)
    ys = check_filter_args(model, observations, num_particles)
    batch_size = check_int(batch_size, "batch_size")
    check_int(num_steps, "num_steps")
    check_optimizer(optimizer)
    k_init, k_train = jax.random.split(key)
    ref = jax.jit(_initial_reference, static_argnums=3)(model, ys, k_init, int(num_particles))
    batcher = _CSMCBatcher(model_fn, ys, ref, int(num_particles), batch_size)
    loss = _NegativeCompleteLogLikelihood(model_fn, ys)
    return train(
        theta0,
        loss,
        batcher,
        key=k_train,
        optimizer=optimizer,
        num_steps=num_steps,
        warn_name="score_climbing",
    )
