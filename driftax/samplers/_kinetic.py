"""Unadjusted kinetic-Langevin kernels: `UnderdampedLangevin` (BAOAB / OBABO / UBU) and the
`RandomizedMidpoint` method (overdamped and kinetic)."""

from __future__ import annotations

from typing import ClassVar, Literal, cast

import equinox as eqx
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
    float_leaf,
    init_position,
    safe_energy_error,
    select,
    value_and_score_at,
    within_energy_bound,
)
from ._integrators import (
    AbstractIntegrator,
    as_integrator,
    checked_hamiltonian,
    hamiltonian,
    kick,
    linear_flow,
    linear_flow_coefficients,
    refresh,
)
from ._metrics import AbstractMetric, IdentityMetric
from ._random import draws


def _langevin_integrator(v):
    return as_integrator(v, stochastic=True)


def _kinetic_init(metric: AbstractMetric, energy: AbstractEnergy, x0) -> KineticState:
    x0, logp, score = init_position(energy, x0)
    # momentum starts at zero; the first O / U step draws it.
    return KineticState(position=x0, momentum=jnp.zeros_like(x0), log_density=logp, score=score)


def _reject_kinetic(ok, new: KineticState, state: KineticState) -> KineticState:
    """`new` where `ok`, else the previous state with its momentum negated: a chain that hit a
    non-finite region bounces back instead of pushing into it step after step (which would
    freeze it there and drive the step-size adaptation to zero)."""
    return select(ok, new, eqx.tree_at(lambda s: s.momentum, state, -state.momentum))


def _unadjusted_info(state, new, metric, heat, n_grad, extra_ok=None):
    # a non-finite position, momentum, log density (NaN, +inf or -inf) or score makes delta
    # non-finite
    delta = checked_hamiltonian(metric, new) - hamiltonian(metric, state) - heat
    ok = within_energy_bound(delta)
    if extra_ok is not None:
        ok = ok & extra_ok
    info = Info(
        acceptance_rate=ok.astype(jnp.result_type(state.position)),
        is_divergent=~ok,
        energy_error=safe_energy_error(delta),
        num_grad_evals=jnp.asarray(n_grad, jnp.int32),
    )
    return _reject_kinetic(ok, new, state), info


class _AbstractLangevinDynamics(AbstractAdaptableSampler):
    """The fields the unadjusted Langevin kernels share, in their order: `step_size`, the
    `friction` `γ` (checked positive) and `metric`."""

    step_size: Array = eqx.field(converter=float_leaf)
    friction: Array = eqx.field(converter=float_leaf, default=1.0)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)

    is_adjusted: ClassVar[bool] = False

    def __check_init__(self):
        check_hyper(self.friction, "friction")


class UnderdampedLangevin(_AbstractLangevinDynamics):
    """Unadjusted underdamped (kinetic) Langevin dynamics.

    `dx = M⁻¹p dt`, `dp = ∇log π(x) dt - γ p dt + √(2γ) M^{1/2} dW`, discretized by `integrator`
    (`"BAOAB"` default, `"OBABO"` or `"UBU"`), one gradient per step. The stationary bias is
    `O(h²)`; `energy_error` (the integration error of the Hamiltonian parts) is what the step
    size is adapted on. A step to a non-finite position, log density (NaN, +∞ or -∞) or score,
    or with an energy error above `MAX_ENERGY_ERROR`, is rejected and counted divergent (with
    acceptance 0): the chain keeps its position and its momentum is negated, so it moves away
    from the bad region.

    **Arguments:** `step_size`, `friction` (`γ`, in units of inverse time), `metric`,
    `integrator`.
    """

    integrator: AbstractIntegrator = eqx.field(default="BAOAB", converter=_langevin_integrator)

    def init(self, energy: AbstractEnergy, x0: Array) -> KineticState:
        return _kinetic_init(self.metric, energy, x0)

    def step(self, energy: AbstractEnergy, state: KineticState, *, key: Key):
        # the integrator casts the step size and friction to the position's dtype
        new, heat = self.integrator.step(
            energy, self.metric, state, self.step_size, friction=self.friction, key=key
        )
        return _unadjusted_info(state, new, self.metric, heat, self.integrator.num_grad_evals)


class RandomizedMidpoint(_AbstractLangevinDynamics):
    """The randomized midpoint method (Shen & Lee 2019; Yu, Karagulyan & Dalalyan 2024).

    Each step draws `α ~ U(0, 1)` and evaluates the force at a random point `αh` of the step,
    with the exact Gaussian increments of the underlying SDE (those at `αh` and at `h` come from
    ONE Brownian path, so they are correlated). 2 gradients per step.

    - `dynamics="kinetic"` (default): underdamped Langevin; the step is
      `U(αh) · B(h; ∇log π(x_mid)) · U((1-α)h)` where `U` is the exact linear flow of
      (x, p) and `x_mid` is the position at `αh` with the force frozen at the start.
    - `dynamics="overdamped"`: `x_mid = x + αh M⁻¹∇log π(x) + √2 M^{-1/2} W_{αh}`,
      `x' = x + h M⁻¹∇log π(x_mid) + √2 M^{-1/2} W_h`.

    A step that meets a non-finite log density or score (at the midpoint or the end) is
    rejected and counted divergent, as in [`UnderdampedLangevin`][] (kinetic: the momentum is
    negated; overdamped: the position is kept).

    **Arguments:** `step_size`, `friction` (kinetic only), `metric`, `dynamics`.
    """

    dynamics: Literal["kinetic", "overdamped"] = eqx.field(static=True, default="kinetic")

    def __check_init__(self):
        if self.dynamics not in ("kinetic", "overdamped"):
            raise ValueError(
                f"`dynamics` must be 'kinetic' or 'overdamped', got {self.dynamics!r}."
            )

    def init(self, energy: AbstractEnergy, x0: Array):
        if self.dynamics == "kinetic":
            return _kinetic_init(self.metric, energy, x0)
        x0, logp, score = init_position(energy, x0)
        return MCMCState(position=x0, log_density=logp, score=score)

    def step(self, energy: AbstractEnergy, state, *, key: Key):
        if self.dynamics == "kinetic":
            return self._kinetic_step(energy, state, key)
        return self._overdamped_step(energy, state, key)

    def _kinetic_step(self, energy, state: KineticState, key):
        dtype = jnp.result_type(state.position)
        metric, h, gamma = self.metric, self.step_size.astype(dtype), self.friction.astype(dtype)
        xi, u = draws(key, (4, *jnp.shape(state.position)), 1, dtype)
        a = h * u[0]
        free = linear_flow(state, metric, a, gamma, xi[:2])  # exact flow to αh, no force
        # the force integral over [0, αh] with the force frozen at the start:
        # ∫₀^a (1 - e^{-γ(a-s)})/γ ds = (a - (1 - e^{-γa})/γ)/γ
        _, x_from_v, *_ = linear_flow_coefficients(a, gamma)
        x_mid = free.position + ((a - x_from_v) / gamma) * metric.velocity(state.score)
        logp_mid, score_mid = value_and_score_at(energy, x_mid)
        # the midpoint force acts as an impulse h·∇log π(x_mid) at time αh
        z = kick(free, h, score_mid)
        z = refresh(energy, linear_flow(z, metric, h - a, gamma, xi[2:]))
        # energy error: ΔH minus the kinetic energy exchanged in the exact linear flows, with
        # the kick's energy counted for the trapezoidal impulse h·(∇log π(x) + ∇log π(x'))/2.
        # The randomized midpoint's own impulse is unbiased but noisy (O(h^{3/2})); its noise
        # averages out over steps, so it should not drive the step size down the way a
        # systematic (O(h³)) integration error does.
        k_free = metric.kinetic_energy(free.momentum)
        g_trap = 0.5 * (state.score + z.score)
        heat = (
            k_free
            - metric.kinetic_energy(state.momentum)
            + metric.kinetic_energy(z.momentum)
            - metric.kinetic_energy(free.momentum + h * g_trap)
        )
        # a non-finite midpoint score already makes z's momentum (hence delta) non-finite
        return _unadjusted_info(state, z, metric, heat, 2, extra_ok=jnp.isfinite(logp_mid))

    def _overdamped_step(self, energy, state: MCMCState, key):
        x = state.position
        shape, dtype = jnp.shape(x), jnp.result_type(x)
        metric, h = self.metric, self.step_size.astype(dtype)
        xi, u = draws(key, (2, *shape), 1, dtype)
        a = h * u[0]
        w_a = jnp.sqrt(a) * xi[0]
        w_h = w_a + jnp.sqrt(h - a) * xi[1]
        sqrt2 = jnp.sqrt(jnp.asarray(2.0, dtype))
        x_mid = (
            x + a * metric.velocity(cast(Array, state.score)) + sqrt2 * metric.position_noise(w_a)
        )
        logp_mid, score_mid = value_and_score_at(energy, x_mid)
        y = x + h * metric.velocity(score_mid) + sqrt2 * metric.position_noise(w_h)
        logp_y, score_y = value_and_score_at(energy, y)

        # energy error: minus the Langevin (MALA-type) log ratio of the move x -> y
        def log_q(to, frm, score_frm):
            r = to - frm - h * metric.velocity(score_frm)
            return -metric.kinetic_energy(metric.velocity_to_momentum(r)) / (2.0 * h)  # -rᵀMr/(4h)

        delta = -(logp_y - state.log_density + log_q(x, y, score_y) - log_q(y, x, state.score))
        ok = all_finite(y, logp_y, score_y, logp_mid) & within_energy_bound(delta)
        new = select(ok, MCMCState(position=y, log_density=logp_y, score=score_y), state)
        return new, Info(
            acceptance_rate=ok.astype(dtype),
            is_divergent=~ok,
            energy_error=safe_energy_error(delta),
            num_grad_evals=jnp.asarray(2, jnp.int32),
        )
