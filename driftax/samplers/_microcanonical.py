"""Microcanonical samplers: unadjusted MCLMC and the Metropolis-adjusted MAMS.

Both move with the isokinetic (energy-sampling) dynamics of Ver Steeg & Galstyan (2021) and
Robnik et al. (2023): in whitened coordinates the velocity is a unit vector turned towards the
score by the `I` step of the splitting core (`_integrators.isokinetic`), with `A` drifts in
between. MCLMC (Robnik & Seljak 2023) adds a partial velocity refresh after every step, which
makes the dynamics ergodic (a Langevin-like noise with decoherence length `L`), and does not
correct the discretization error (its bias shrinks like `h²`). MAMS (Robnik, Cohn-Gordon &
Seljak 2025) draws a fresh velocity, integrates a trajectory of about `L/h` steps (the number
jittered uniformly) and accepts it by Metropolis on the total energy error, the isokinetic
kinetic-energy change included: it is exact.

The momentum carried by the state is `p = M^{1/2} u` with `u` the whitened unit velocity, so the
position moves at `M⁻¹p = M^{-1/2} u` and any `AbstractMetric` preconditions it.
"""

from __future__ import annotations

from typing import ClassVar

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
    all_finite,
    check_hyper,
    check_int,
    float_leaf,
    init_position,
    safe_energy_error,
    select,
    within_energy_bound,
)
from ._integrators import (
    AbstractIntegrator,
    as_isokinetic_integrator,
    checked_hamiltonian,
    hamiltonian,
    partial_refresh,
    unit_momentum,
)
from ._metrics import AbstractMetric, IdentityMetric
from ._mh import metropolis_hastings
from ._random import draws


def _check_dim(x0: Array) -> None:
    if x0.size < 2:
        raise ValueError(
            "`x0` must have at least 2 coordinates: the isokinetic dynamics of the "
            f"microcanonical samplers need d >= 2, got shape {x0.shape}."
        )


def _unit(metric: AbstractMetric, p: Array) -> Array:
    return p / jnp.sqrt(2.0 * metric.kinetic_energy(p))


class _AbstractMicrocanonical(AbstractAdaptableSampler):
    """The fields MCLMC and MAMS share, in their order: `step_size`, the length `L` (both in
    whitened distance), `metric` and the isokinetic `integrator`."""

    step_size: Array = eqx.field(converter=float_leaf, default=1.0)
    L: Array = eqx.field(converter=float_leaf, default=2.0)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)
    integrator: AbstractIntegrator = eqx.field(
        default="mclachlan", converter=as_isokinetic_integrator
    )

    def __check_init__(self):
        check_hyper(self.L, "L")


class MCLMC(_AbstractMicrocanonical):
    """Microcanonical Langevin Monte Carlo (Robnik & Seljak 2023), unadjusted.

    Each step is one isokinetic integrator step followed by a partial refresh of the whitened
    unit velocity, `u ← normalize(u + ν ξ)` with `ν = √((e^{2h/L} - 1)/d)`. The stationary
    distribution carries an `O(h²)` bias; `energy_error` (`Δ(-log π)` plus the isokinetic
    kinetic-energy change) is the statistic its step size is tuned on: `Var[ΔE]/d ≈ 5·10⁻⁴`
    ([`MCLMCAdaptation`][], the default adaptation of `driftax.sample`). A step to a non-finite
    position, log density or score, or with an energy error above `MAX_ENERGY_ERROR`, is
    rejected and counted divergent: the chain keeps its position and reverses its velocity.

    **Arguments:**

    - `step_size`: integrator step size (in whitened distance: the velocity has unit length).
    - `L`: momentum decoherence length (a positive float; `inf` means no refresh).
    - `metric`: the preconditioner (`IdentityMetric`, `DiagonalMetric`, `DenseMetric`); set
      its inverse mass to the target's (co)variance.
    - `integrator`: `"mclachlan"` (default, 2 gradients per step) or `"leapfrog"` (1).

    Needs at least 2 coordinates. Without adaptation, set `step_size` and `L` for the target
    (for a whitened `d`-dimensional target, `L ≈ √d` and `step_size ≈ √d/4` are a start).
    """

    is_adjusted: ClassVar[bool] = False

    def init(self, energy: AbstractEnergy, x0: Array) -> KineticState:
        x0, logp, score = init_position(energy, x0)
        _check_dim(x0)
        # a deterministic unit velocity; the refresh randomizes it from the first step on
        p = unit_momentum(self.metric, jnp.ones_like(x0))
        return KineticState(position=x0, momentum=p, log_density=logp, score=score)

    def step(self, energy: AbstractEnergy, state: KineticState, *, key: Key):
        dtype = jnp.result_type(state.position)
        h = self.step_size.astype(dtype)
        # unit length under the current metric (adaptation may have changed it)
        state = eqx.tree_at(lambda s: s.momentum, state, _unit(self.metric, state.momentum))
        new, heat = self.integrator.step(energy, self.metric, state, h)
        # NaN unless the new position, velocity, log density and score are all finite
        delta = checked_hamiltonian(self.metric, new) - hamiltonian(self.metric, state) - heat
        ok = within_energy_bound(delta) & all_finite(new.position)
        xi, _ = draws(key, jnp.shape(state.position), 0, dtype)
        new = partial_refresh(new, self.metric, h, self.L.astype(dtype), xi)
        bounced = eqx.tree_at(lambda s: s.momentum, state, -state.momentum)
        info = Info(
            acceptance_rate=ok.astype(dtype),
            is_divergent=~ok,
            energy_error=safe_energy_error(delta),
            num_grad_evals=jnp.asarray(self.integrator.num_grad_evals, jnp.int32),
        )
        return select(ok, new, bounced), info


class MAMS(_AbstractMicrocanonical):
    """The Metropolis-adjusted microcanonical sampler (Robnik, Cohn-Gordon & Seljak 2025).

    Each step draws a uniformly random whitened unit velocity, integrates the isokinetic
    dynamics for `n` steps with `n` uniform on `{1, …, ⌈2L/h⌉}` (mean about `L/h`, capped at
    `max_num_steps`), and accepts the end point by Metropolis on the total energy error
    `Δ(-log π) + ΔK` (the isokinetic kinetic-energy change included). Exact for any step size;
    tune `step_size` to an acceptance of about 0.9 and `L` from the chains' autocorrelation
    with [`MAMSAdaptation`][] (the default adaptation of `driftax.sample`).

    **Arguments:** `step_size`, `L` (mean trajectory length, whitened distance), `metric`,
    `integrator` (`"mclachlan"` default, or `"leapfrog"`), `max_num_steps` (static cap on
    steps per trajectory). Needs at least 2 coordinates.
    """

    max_num_steps: int = eqx.field(static=True, default=1024)

    default_target_acceptance: ClassVar[float] = 0.9

    def __check_init__(self):
        check_int(self.max_num_steps, "max_num_steps", 1)

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        x0, logp, score = init_position(energy, x0)
        _check_dim(x0)
        return MCMCState(position=x0, log_density=logp, score=score)

    def num_integration_steps(self, u, dtype) -> Array:
        """The number of steps of a trajectory from a uniform `u` in (0, 1)."""
        mean = self.L.astype(dtype) / self.step_size.astype(dtype)
        n = jnp.ceil(u * 2.0 * mean)
        # a NaN ratio (never for valid hyperparameters) must not become a huge int
        n = jnp.where(jnp.isfinite(n), n, 1.0)
        return jnp.clip(n, 1, self.max_num_steps).astype(jnp.int32)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        dtype = jnp.result_type(state.position)
        h = self.step_size.astype(dtype)
        xi, u = draws(key, jnp.shape(state.position), 2, dtype)
        n = self.num_integration_steps(u[1], dtype)
        assert state.score is not None  # init gives one
        z0 = KineticState(
            position=state.position,
            momentum=unit_momentum(self.metric, xi),
            log_density=state.log_density,
            score=state.score,
        )

        def body(_, carry):
            z, heat = carry
            z, dh = self.integrator.step(energy, self.metric, z, h)
            return z, heat + dh

        z1, heat = jax.lax.fori_loop(0, n, body, (z0, jnp.zeros((), dtype)))
        # NaN unless the end's position, velocity, log density and score are all finite
        delta = checked_hamiltonian(self.metric, z1) - hamiltonian(self.metric, z0) - heat
        valid = jnp.isfinite(delta) & all_finite(z1.position)
        proposal = MCMCState(position=z1.position, log_density=z1.log_density, score=z1.score)
        new, acc, _, div = metropolis_hastings(-delta, proposal, state, u=u[0], valid=valid)
        info = Info(
            acceptance_rate=acc,
            is_divergent=div,
            energy_error=safe_energy_error(delta),
            num_grad_evals=n * self.integrator.num_grad_evals,
            extras=dict(num_integration_steps=n),
        )
        return new, info
