"""Energy-parameterized diffusion models: the score is `-∇ₓ E(t, x)` of a learned scalar energy,
so the model at each time is an `energies.AbstractEnergy` and Metropolis-adjusted kernels (MALA,
HMC via [`SamplerCorrector`][]) and Feynman–Kac / SMC weights apply to a trained model."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_shape
from .._custom_types import Point, Scalar, ScalarLike, Shape
from ..energies._base import AbstractEnergy
from ._model import AbstractField, declared_parameterization, declared_path
from ._path import AbstractPath


class EnergyModel(AbstractField):
    """A diffusion model whose score is the gradient of a scalar energy,

    `E(t, x) = ||x - alpha(t) D(t, x)||^2 / (2 sigma(t)^2)`,  `score(t, x) = -∇ₓ E(t, x)`,

    with `D` any data-parameterized model (typically an EDM [`Denoiser`][]). Where `D`'s
    Jacobian is small the score is `(alpha D - x) / sigma^2`, Tweedie's formula, so the
    parameterization starts where a denoiser does (with `D = 0`, the energy of
    `N(0, sigma_data^2)` noised along the path for the EDM preconditioning); unlike a denoiser,
    the field is conservative, and the energy gives Metropolis tests
    (the squared-residual energy of Salimans & Ho 2021, "Should EBMs model the energy or the
    score?"). Each field evaluation is one backward pass through `D`.

    Train it like any model ([`DenoisingLoss`][], [`fit`][]); `at(t)` is the time-t
    [`TimeEnergy`][] that a [`SamplerCorrector`][] kernel samples with an exact Metropolis
    test.

    **Arguments:**

    - `denoiser`: `D(t, x)` in the `"data"` parameterization (an [`AbstractField`][] that
      declares it, or any callable).
    - `path`: the Gaussian path (default: the denoiser's declared path).
    - `event_shape`: the shape of one point (keyword-only).
    """

    denoiser: Callable
    path: AbstractPath
    event_shape: Shape = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)

    def __init__(self, denoiser: Callable, path: AbstractPath | None = None, *, event_shape: Shape):
        if not callable(denoiser):
            raise TypeError("`denoiser` must be a callable D(t, x) (a data prediction).")
        declared = declared_parameterization(denoiser)
        if declared is not None and declared != "data":
            raise ValueError(
                f"`denoiser` must predict the data (parameterization 'data'), got {declared!r}."
            )
        path = declared_path(denoiser) if path is None else path
        if not isinstance(path, AbstractPath):
            raise TypeError("`path` must be a driftax.diffusion AbstractPath.")
        self.denoiser = denoiser
        self.path = path
        self.event_shape = check_shape(event_shape, "event_shape")
        self.parameterization = "score"

    def energy(self, t: ScalarLike, x: Point) -> Scalar:
        """The energy `E(t, x)` (unnormalized `-log p_t(x)`) at ONE unbatched `x`."""
        t = jnp.asarray(t, x.dtype)
        r = x - self.path.alpha(t) * self.denoiser(t, x)
        return 0.5 * jnp.sum(r**2) / self.path.sigma(t) ** 2

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
