"""Energy-guided entropic neural optimal transport (EgNEOT; Mokrov, Korotin, Kolesov,
Gushchin, Burnaev 2024).

Entropic OT between `p0` and `p1` with cost `|x - y|^2 / 2` and regularization `epsilon`, posed
through a potential `f(y)`: the conditional plan is the energy-based model

    pi_f(y | x) ∝ exp((f(y) - |x - y|^2 / 2) / epsilon),

and `f` minimises the weak dual `-E_{p1} f(Y) + epsilon E_{p0} log int exp((f(y) - |x - y|^2 /
2) / epsilon) dy`, whose gradient is the contrastive difference `-E_{p1} ∇f(Y) + E_{x ~ p0,
y ~ pi_f(.|x)} ∇f(y)`: the negative samples come from MCMC on the conditional energy, which is an
`AbstractEnergy` so that every kernel of `driftax.samplers` runs on it. With `epsilon = sigma^2`
the optimal plan is the static Schrödinger bridge of `GaussianBridge(..., sigma)`.
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_int
from ..._custom_types import Array, Key, Point, Scalar, Shape
from ...energies._base import AbstractEnergy
from ...samplers._base import AbstractSampler
from ...samplers._hamiltonian import ULA
from ._gaussian import check_sigma


class EgNEOTConditional(AbstractEnergy):
    """The conditional plan `pi_f(y | x) ∝ exp((f(y) - |x - y|^2 / 2) / epsilon)` at one
    source point `x`, as an `AbstractEnergy` in `y` (sample it with any `driftax.samplers`
    kernel)."""

    potential: Callable
    x: Array
    epsilon: Array | float
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, y: Point) -> Scalar:
        return (self.potential(y) - 0.5 * jnp.sum((self.x - y) ** 2)) / self.epsilon


class QuadraticPotential(eqx.Module):
    """`f(y) = -1/2 y^T (L L^T - I) y + b^T y` with `L` lower triangular: the family that
    contains the entropic-OT potential between two Gaussians, whose conditional plan is
    `N(P^{-1} (x + b), epsilon P^{-1})` with `P = L L^T` (always a proper density). Starts at
    `L = I`, `b = 0` (`f = 0`, the plan `N(x, epsilon I)`)."""

    chol: Array
    shift: Array

    def __init__(self, dim: int):
        d = check_int(dim, "dim")
        self.chol = jnp.eye(d, dtype=jnp.result_type(float))
        self.shift = jnp.zeros(d, jnp.result_type(float))

    def precision(self) -> Array:
        """`P = L L^T` (the conditional plan's precision times `epsilon`)."""
        lo = jnp.tril(self.chol)
        return lo @ lo.T

    def __call__(self, y: Point) -> Scalar:
        p = self.precision()
        return -0.5 * y @ (p @ y) + 0.5 * y @ y + self.shift @ y


class EgNEOT(eqx.Module):
    """An entropic OT plan given by a potential network `potential(y) -> scalar` and the
    regularization `epsilon` (cost `|x - y|^2 / 2`).

    - `conditional(x)`: the conditional plan at `x`, an [`EgNEOTConditional`][] energy.
    - `sample_conditional(key, x, ...)`: MCMC draws from it (ULA by default), started at `x`.

    Train with [`fit_bridge`][] and [`EgNEOTLoss`][]. A [`QuadraticPotential`][] makes the plan
    Gaussian (exact between Gaussian marginals); any scalar network (e.g. an MLP with a
    scalar output) gives a general energy-based plan.

    **Arguments:** `potential`, `epsilon` (`> 0`), `dim` (the data dimension).
    """

    potential: Callable
    epsilon: float
    dim: int = eqx.field(static=True)

    def __init__(self, potential: Callable, epsilon: float, dim: int):
        if not callable(potential):
            raise TypeError("`potential` must be a callable y -> scalar.")
        self.potential = potential
        self.epsilon = check_sigma(epsilon, "epsilon")
        self.dim = check_int(dim, "dim")

    def conditional(self, x: Point) -> EgNEOTConditional:
        """The conditional-plan energy at ONE source point `x` (shape `(dim,)`)."""
        return EgNEOTConditional(
            potential=self.potential, x=x, epsilon=self.epsilon, event_shape=(self.dim,)
        )

    def sample_conditional(
        self,
        key: Key,
        x: Point,
        *,
        num_steps: int = 200,
        sampler: AbstractSampler | None = None,
    ) -> Array:
        """One draw of `Y | X = x` by `num_steps` steps of `sampler` (default `ULA(step_size=
        0.05 epsilon)`) started at `x`; vmap it over a batch of `x` and keys."""
        sampler = _default_sampler(self.epsilon) if sampler is None else sampler
        return _run_chain(sampler, self.conditional(x), x, key, check_int(num_steps, "num_steps"))


def _default_sampler(epsilon):
    return ULA(step_size=0.05 * epsilon)


def _run_chain(sampler, energy, x_init, key, num_steps):
    state = sampler.init(energy, x_init)

    def body(s, k):
        s, _ = sampler.step(energy, s, key=k)
        return s, None

    state, _ = jax.lax.scan(body, state, jax.random.split(key, num_steps))
    return state.position


class EgNEOTLoss(eqx.Module):
    """The EgNEOT objective on a batch `(x0, x1)`: `mean f(y) - mean f(x1)` with `y ~
    pi_f(. | x0)` drawn by `num_mcmc_steps` steps of `sampler` from `x0` and held fixed
    (`stop_gradient`), so its gradient is the contrastive gradient of the weak dual.

    **Fields:** `sampler` (a `driftax.samplers` kernel; default `ULA(step_size=0.05 epsilon)`),
    `num_mcmc_steps` (default 50).
    """

    sampler: AbstractSampler | None = None
    num_mcmc_steps: int = eqx.field(static=True, default=50)

    def __check_init__(self):
        check_int(self.num_mcmc_steps, "num_mcmc_steps")
        if self.sampler is not None and not isinstance(self.sampler, AbstractSampler):
            raise TypeError("`sampler` must be a driftax.samplers kernel (AbstractSampler).")

    def __call__(self, model: EgNEOT, batch, *, key: Key) -> Scalar:
        x0, x1 = batch
        sampler = _default_sampler(model.epsilon) if self.sampler is None else self.sampler
        keys = jax.random.split(key, x0.shape[0])
        y = jax.vmap(
            lambda k, x: _run_chain(sampler, model.conditional(x), x, k, self.num_mcmc_steps)
        )(keys, x0)
        y = jax.lax.stop_gradient(y)
        return jnp.mean(jax.vmap(model.potential)(y)) - jnp.mean(jax.vmap(model.potential)(x1))


def quadratic_plan(model: EgNEOT) -> tuple[Array, Array, Array]:
    """For an [`EgNEOT`][] with a [`QuadraticPotential`][]: the Gaussian conditional plan
    `Y | X = x ~ N(K x + c, cov)` as `(K, c, cov)` (`K = P^{-1}`, `c = P^{-1} b`, `cov =
    epsilon P^{-1}`); between marginals with source covariance `S0` the coupling covariance
    is `S0 K^T`."""
    pot = model.potential
    if not isinstance(pot, QuadraticPotential):
        raise TypeError("`quadratic_plan` needs an EgNEOT with a QuadraticPotential.")
    p_inv = jnp.linalg.inv(pot.precision())
    p_inv = 0.5 * (p_inv + p_inv.T)
    return p_inv, p_inv @ pot.shift, model.epsilon * p_inv
