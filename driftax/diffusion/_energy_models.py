"""Energy-parameterized diffusion models: the score is `-∇ₓ E(t, x)` of a learned scalar energy,
so the model at each time is an `energies.AbstractEnergy` and Metropolis-adjusted kernels (MALA,
HMC via [`SamplerCorrector`][]) and Feynman–Kac / SMC weights apply to a trained model."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_positive, check_shape
from .._custom_types import Point, Scalar, ScalarLike, Shape
from ..energies._base import AbstractEnergy
from ._model import AbstractField
from ._path import AbstractPath


class EnergyModel(AbstractField):
    """A diffusion model whose score is the gradient of a learned scalar energy, with the EDM
    preconditioning of [`Denoiser`][] carried over to energies:

    `E(t, x) = ||x||^2 / (2 (sigma^2 + alpha^2 sd^2)) + K(s) psi(c_noise(s), c_in(s) x / alpha)`,
    `score(t, x) = -∇ₓ E(t, x)`,

    with `s = sigma / alpha`, `sd = sigma_data`, the EDM `c_in`, `c_out`, `c_noise` of
    [`Denoiser`][] and `K = c_out / (s^2 c_in)`. The first term is the exact energy of
    `N(0, sd^2 I)` noised along the path; `K` makes `-∇ₓ` of the second term the EDM residual
    `c_out F / (alpha s^2)` with `F = -∇psi` of unit scale, so the model starts where a denoiser
    with a zero network does and trains as well conditioned. Unlike a denoiser the field is
    conservative, and the energy gives Metropolis tests (energy parameterizations: Salimans &
    Ho 2021; with SMC: Thornton et al. 2025). Each field evaluation is one backward pass.

    `net(c_noise, z)` returns a scalar `psi`, or a vector `v` of `z`'s shape read as
    `psi = v · z` (so [`MLP`][] serves). Train it like any model ([`DenoisingLoss`][],
    [`fit`][]); `at(t)` is the time-t [`TimeEnergy`][] that a [`SamplerCorrector`][] kernel
    samples with an exact Metropolis test.

    **Arguments:**

    - `net`: the energy network `net(c_noise, z)`.
    - `path`: the Gaussian path.
    - `event_shape`: the shape of one point (keyword-only).
    - `sigma_data`: the data scale of the preconditioning.
    """

    net: Callable
    path: AbstractPath
    sigma_data: float
    event_shape: Shape = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)

    def __init__(
        self,
        net: Callable,
        path: AbstractPath,
        *,
        event_shape: Shape,
        sigma_data: float = 1.0,
    ):
        if not callable(net):
            raise TypeError("`net` must be a callable net(c_noise, z) -> scalar or vector.")
        if not isinstance(path, AbstractPath):
            raise TypeError("`path` must be a driftax.diffusion AbstractPath.")
        check_positive(sigma_data, "sigma_data")
        self.net = net
        self.path = path
        self.sigma_data = float(sigma_data)
        self.event_shape = check_shape(event_shape, "event_shape")
        self.parameterization = "score"

    def energy(self, t: ScalarLike, x: Point) -> Scalar:
        """The energy `E(t, x)` (unnormalized `-log p_t(x)`) at ONE unbatched `x`."""
        t = jnp.asarray(t, x.dtype)
        a, sig = self.path.alpha(t), self.path.sigma(t)
        s, sd = sig / a, self.sigma_data
        c_in = 1.0 / jnp.sqrt(s**2 + sd**2)
        c_out = s * sd / jnp.sqrt(s**2 + sd**2)
        z = c_in * x / a
        out = self.net(jnp.log(s) / 4.0, z)
        psi = out if jnp.ndim(out) == 0 else jnp.sum(out * z)
        gauss = 0.5 * jnp.sum(x**2) / (sig**2 + a**2 * sd**2)
        return gauss + c_out / (s**2 * c_in) * psi

    def energy_and_score(self, t: ScalarLike, x: Point) -> tuple[Scalar, Point]:
        """`(E(t, x), -∇ₓ E(t, x))` from one backward pass."""
        e, g = jax.value_and_grad(self.energy, argnums=1)(t, x)
        return e, -g

    def __call__(self, t, x):
        return -jax.grad(self.energy, argnums=1)(t, x)

    def at(self, t: ScalarLike) -> TimeEnergy:
        """The model at time `t` as an `energies.AbstractEnergy` (pass the bound method
        `model.at` as a [`SamplerCorrector`][]'s `energy_at`)."""
        return TimeEnergy(model=self, t=jnp.asarray(t), event_shape=self.event_shape)


class TimeEnergy(AbstractEnergy):
    """An [`EnergyModel`][] frozen at a time `t`: `log_density(x) = -E(t, x)`. What MCMC
    kernels (and so [`SamplerCorrector`][]) sample."""

    model: EnergyModel
    t: jax.Array
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        """`-E(t, x)`."""
        return -self.model.energy(self.t, x)

    def value_and_score(self, x: Point) -> tuple[Scalar, Point]:
        """`(-E(t, x), -∇E(t, x))` in one backward pass."""
        e, s = self.model.energy_and_score(self.t, x)
        return -e, s
