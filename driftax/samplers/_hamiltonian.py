"""Position-only kernels built on the integrator core and the MH module: random-walk
Metropolis, ULA, MALA, HMC and the many-chain ChEES-HMC."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy
from ._base import (
    AbstractAdaptableSampler,
    Info,
    KineticState,
    MCMCState,
    check_hyper,
    check_int,
    float_leaf,
    init_position,
    log_density_at,
    safe_energy_error,
    select,
    within_energy_bound,
)
from ._integrators import (
    AbstractIntegrator,
    Leapfrog,
    as_integrator,
    checked_hamiltonian,
    hamiltonian,
)
from ._metrics import AbstractMetric, IdentityMetric
from ._mh import metropolis_hastings
from ._random import draws


def _hamiltonian_integrator(v):
    return as_integrator(v, stochastic=False)


def hamiltonian_integrator_field():
    """The `integrator` field of the Hamiltonian kernels (HMC, ChEES-HMC, NUTS): a
    deterministic integrator, a name or an instance, default `Leapfrog()`."""
    return eqx.field(default_factory=Leapfrog, converter=_hamiltonian_integrator)


def _check_jitter(value, name: str = "jitter_step_size") -> None:
    if isinstance(value, (bool, str)) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a float in [0, 1), got {value!r}.")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"`{name}` must be in [0, 1), got {value!r}.")


def gradient_init(energy: AbstractEnergy, x0: Array) -> MCMCState:
    """The first state of a gradient-based kernel: `x0` (checked) with its log density and
    score."""
    x0, logp, score = init_position(energy, x0)
    return MCMCState(position=x0, log_density=logp, score=score)


def _to_kinetic(state: MCMCState, momentum: Array) -> KineticState:
    return KineticState(
        position=state.position,
        momentum=momentum,
        log_density=state.log_density,
        score=cast(Array, state.score),  # the gradient samplers' states carry one
    )


def _to_mcmc(z: KineticState) -> MCMCState:
    return MCMCState(position=z.position, log_density=z.log_density, score=z.score)


def integrate(
    integrator: AbstractIntegrator,
    energy: AbstractEnergy,
    metric: AbstractMetric,
    z: KineticState,
    step_size,
    num_steps,
) -> KineticState:
    """`num_steps` integrator steps (a static int, or a traced one for jittered trajectories)."""

    def body(_, z):
        return integrator.step(energy, metric, z, step_size)[0]

    if isinstance(num_steps, int) and num_steps == 1:
        return body(0, z)
    return jax.lax.fori_loop(0, num_steps, body, z)


def hamiltonian_proposal(
    integrator, energy, metric, state: MCMCState, step_size, num_steps, xi: Array
) -> tuple[KineticState, KineticState, Array, Array]:
    """Integrate from the momentum `M^{1/2} xi` (`xi` standard normal, shaped like the
    position): returns `(start, end, energy_error, valid)`."""
    p0 = metric.momentum_noise(xi)
    z0 = _to_kinetic(state, p0)
    z1 = integrate(integrator, energy, metric, z0, step_size, num_steps)
    # NaN unless the end's position, momentum, log density and score are all finite
    delta = checked_hamiltonian(metric, z1) - hamiltonian(metric, z0)
    return z0, z1, delta, jnp.isfinite(delta)


def _adjusted_step(integrator, energy, metric, state, step_size, num_steps, xi, u, n_grad):
    _, z1, delta, valid = hamiltonian_proposal(
        integrator, energy, metric, state, step_size, num_steps, xi
    )
    new, acc, _, div = metropolis_hastings(-delta, _to_mcmc(z1), state, u=u, valid=valid)
    info = Info(
        acceptance_rate=acc,
        is_divergent=div,
        energy_error=safe_energy_error(delta),
        num_grad_evals=jnp.asarray(n_grad, jnp.int32),
    )
    return new, info, z1


class RandomWalk(AbstractAdaptableSampler):
    """Random-walk Metropolis: propose `x + step_size · M^{-1/2} ξ`, accept by Metropolis.

    Gradient-free (`num_grad_evals = 0`); the metric's inverse mass is the proposal covariance
    shape. **Arguments:** `step_size` (proposal scale), `metric` (default identity).
    """

    step_size: Array = eqx.field(converter=float_leaf)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)

    default_target_acceptance: ClassVar[float] = 0.234

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        x0, logp, _ = init_position(energy, x0, with_score=False)
        return MCMCState(position=x0, log_density=logp, score=None)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        return random_walk_step(
            lambda y: log_density_at(energy, y), state, key, self.step_size, self.metric
        )


def random_walk_step(
    log_density: Callable[[Array], Array],
    state: MCMCState,
    key: Key,
    step_size: Array,
    metric: AbstractMetric,
) -> tuple[MCMCState, Info]:
    """One random-walk Metropolis step from `state` on `log_density` (a function of the
    position): [`RandomWalk`][]'s, and PMMH's with a particle filter's noisy log density."""
    dtype = jnp.result_type(state.position)
    xi, u = draws(key, jnp.shape(state.position), 1, dtype)
    y = state.position + step_size.astype(dtype) * metric.position_noise(xi)
    logp_y = log_density(y)
    proposal = MCMCState(position=y, log_density=logp_y, score=None)
    delta = state.log_density - logp_y
    # a non-finite log density (NaN, +inf or -inf) makes `delta` non-finite: divergent
    new, acc, _, div = metropolis_hastings(-delta, proposal, state, u=u[0])
    info = Info(
        acceptance_rate=acc,
        is_divergent=div,
        energy_error=safe_energy_error(delta),
        num_grad_evals=jnp.asarray(0, jnp.int32),
    )
    return new, info


class _AbstractLangevin(AbstractAdaptableSampler):
    """What MALA and ULA share: a step size `h` (the Langevin time step, one leapfrog step of
    size `√(2h)` from a fresh momentum) and a metric; the state carries the score."""

    step_size: Array = eqx.field(converter=float_leaf)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        return gradient_init(energy, x0)

    def _leapfrog_step_size(self, dtype) -> Array:
        return jnp.sqrt(2.0 * self.step_size.astype(dtype))


class MALA(_AbstractLangevin):
    """Metropolis-adjusted Langevin: propose `y = x + h M⁻¹∇log π(x) + √(2h) M^{-1/2} ξ`.

    Built as one leapfrog step of size `√(2h)` from a fresh momentum (the same proposal and the
    same Metropolis ratio), so it shares the integrator and MH code with HMC. 1 gradient/step.
    """

    default_target_acceptance: ClassVar[float] = 0.574

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        dtype = jnp.result_type(state.position)
        eps = self._leapfrog_step_size(dtype)
        xi, u = draws(key, jnp.shape(state.position), 1, dtype)
        new, info, _ = _adjusted_step(Leapfrog(), energy, self.metric, state, eps, 1, xi, u[0], 1)
        return new, info


class ULA(_AbstractLangevin):
    """The unadjusted Langevin algorithm: `x ← x + h M⁻¹∇log π(x) + √(2h) M^{-1/2} ξ`.

    Biased by `O(h)`; no accept/reject, except that a step to a non-finite position, log
    density (NaN, +∞ or -∞) or score, or with an energy error above `MAX_ENERGY_ERROR`, is
    rejected (the chain stays where it is), counted divergent and reported with acceptance 0. `energy_error` is minus the MALA log ratio of the move
    (the statistic its step size is adapted on). 1 gradient per step.
    """

    is_adjusted: ClassVar[bool] = False

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        dtype = jnp.result_type(state.position)
        eps = self._leapfrog_step_size(dtype)
        xi, _ = draws(key, jnp.shape(state.position), 0, dtype)
        _, z1, delta, valid = hamiltonian_proposal(
            Leapfrog(), energy, self.metric, state, eps, 1, xi
        )
        ok = valid & within_energy_bound(delta)
        new = select(ok, _to_mcmc(z1), state)
        info = Info(
            acceptance_rate=ok.astype(dtype),
            is_divergent=~ok,
            energy_error=safe_energy_error(delta),
            num_grad_evals=jnp.asarray(1, jnp.int32),
        )
        return new, info


class HMC(AbstractAdaptableSampler):
    """Hamiltonian Monte Carlo with a static trajectory of `num_integration_steps` steps.

    **Arguments:**

    - `step_size`: integrator step size.
    - `num_integration_steps`: steps per trajectory (static).
    - `metric`: the mass matrix (`IdentityMetric`, `DiagonalMetric`, `DenseMetric`).
    - `integrator`: `"leapfrog"` (default), `"mclachlan"`, `"yoshida"` or an instance.
    - `jitter_step_size`: relative jitter `j`: each trajectory uses `h·U(1-j, 1+j)`.
    - `jitter_num_steps`: if `True`, each trajectory uses `U{1, …, num_integration_steps}` steps.
    """

    step_size: Array = eqx.field(converter=float_leaf)
    num_integration_steps: int = eqx.field(static=True, default=10)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)
    integrator: AbstractIntegrator = hamiltonian_integrator_field()
    jitter_step_size: float = eqx.field(static=True, default=0.0)
    jitter_num_steps: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_int(self.num_integration_steps, "num_integration_steps", 1)
        _check_jitter(self.jitter_step_size)
        if not isinstance(self.jitter_num_steps, bool):
            raise TypeError(f"`jitter_num_steps` must be a bool, got {self.jitter_num_steps!r}.")

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        return gradient_init(energy, x0)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        dtype = jnp.result_type(state.position)
        xi, u = draws(key, jnp.shape(state.position), 3, dtype)
        h = self.step_size.astype(dtype)
        if self.jitter_step_size > 0:
            j = self.jitter_step_size
            h = h * (1.0 - j + 2.0 * j * u[1])
        n = self.num_integration_steps
        if self.jitter_num_steps:
            n = jnp.minimum(1 + jnp.floor(u[2] * n).astype(jnp.int32), n)
        n_grad = n * self.integrator.num_grad_evals
        new, info, _ = _adjusted_step(
            self.integrator, energy, self.metric, state, h, n, xi, u[0], n_grad
        )
        return new, info


class ChEESState(eqx.Module):
    """State of `ChEESHMC`: the chain's position (with cached log density and score) and the
    iteration counter that indexes the trajectory-length jitter (shared by all chains)."""

    position: Array
    log_density: Array
    score: Array
    iteration: Array


def halton(i, base: int = 2, max_bits: int = 20):
    """The `i`-th element (from 1) of the van der Corput / Halton sequence in `base`, in (0, 1)."""
    i = jnp.asarray(i, jnp.int32)
    f, r = 1.0, 0.0

    def body(_, carry):
        i, f, r = carry
        f = f / base
        return i // base, f, r + f * (i % base)

    _, _, r = jax.lax.fori_loop(0, max_bits, body, (i, f, r))
    return r


class ChEESHMC(AbstractAdaptableSampler):
    """Jittered HMC for many chains on an accelerator (Hoffman, Radul & Sountsov 2021).

    Every trajectory has length `u · trajectory_length` with `u` from a Halton sequence of the
    iteration counter, so all chains of a `vmap` take the same number of steps (no control-flow
    divergence). Tune `step_size` and `trajectory_length` jointly across chains with
    `ChEESAdaptation` (the default adaptation in `driftax.sample`).

    **Arguments:** `step_size`, `trajectory_length`, `metric`, `integrator` (Hamiltonian),
    `max_num_steps` (static cap on steps per trajectory).
    """

    step_size: Array = eqx.field(converter=float_leaf)
    trajectory_length: Array = eqx.field(converter=float_leaf, default=1.0)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)
    integrator: AbstractIntegrator = hamiltonian_integrator_field()
    max_num_steps: int = eqx.field(static=True, default=1000)

    default_target_acceptance: ClassVar[float] = 0.651

    def __check_init__(self):
        check_hyper(self.trajectory_length, "trajectory_length")
        check_int(self.max_num_steps, "max_num_steps", 1)

    def init(self, energy: AbstractEnergy, x0: Array) -> ChEESState:
        x0, logp, score = init_position(energy, x0)
        return ChEESState(
            position=x0, log_density=logp, score=score, iteration=jnp.asarray(0, jnp.int32)
        )

    def jitter(self, iteration) -> Array:
        """The trajectory-length fraction `u ∈ (0, 1)` used at `iteration`."""
        return halton(iteration + 1)

    def step(self, energy: AbstractEnergy, state: ChEESState, *, key: Key):
        dtype = jnp.result_type(state.position)
        u = self.jitter(state.iteration).astype(dtype)
        h = self.step_size.astype(dtype)
        n = jnp.ceil(u * self.trajectory_length.astype(dtype) / h)
        # a NaN ratio (never for valid hyperparameters) must not become a huge int
        n = jnp.where(jnp.isfinite(n), n, 1.0)
        n = jnp.clip(n, 1, self.max_num_steps).astype(jnp.int32)
        mcmc = MCMCState(position=state.position, log_density=state.log_density, score=state.score)
        n_grad = n * self.integrator.num_grad_evals
        xi, uu = draws(key, jnp.shape(state.position), 1, dtype)
        new, info, z1 = _adjusted_step(
            self.integrator, energy, self.metric, mcmc, h, n, xi, uu[0], n_grad
        )
        new_state = ChEESState(
            position=new.position,
            log_density=new.log_density,
            score=new.score,
            iteration=state.iteration + 1,
        )
        extras = dict(
            jitter=u,
            start_position=state.position,
            proposed_position=z1.position,
            proposed_momentum=z1.momentum,
        )
        info = Info(
            acceptance_rate=info.acceptance_rate,
            is_divergent=info.is_divergent,
            energy_error=info.energy_error,
            num_grad_evals=info.num_grad_evals,
            extras=extras,
        )
        return new_state, info
