"""Trainable diffusion models: a network in a declared parameterization along a declared path
(subclasses of [`AbstractField`][]), and MeanFlow's two-time model."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Point, ScalarLike
from ._model import AbstractField
from ._path import AbstractPath, check_parameterization


class NetworkField(AbstractField):
    """`net(t, x)` taken as the `parameterization` of a model along `path` (no preconditioning).

    Typical: a velocity network on a `LinearInterpolant` (flow matching), or a noise network on
    a `VP` path (DDPM).
    """

    net: Callable
    path: AbstractPath
    parameterization: str = eqx.field(static=True)

    def __check_init__(self):
        check_parameterization(self.parameterization)

    def __call__(self, t, x):
        return self.net(t, x)


class Denoiser(AbstractField):
    """The EDM-preconditioned denoiser of Karras et al. (2022), for any Gaussian path.

    With the VE-equivalent noise level `s = sigma(t) / alpha(t)` and the rescaled point
    `y = x / alpha(t)`, `D(t, x) = c_skip(s) y + c_out(s) net(c_noise(s), c_in(s) y)` with
    `c_skip = sd^2 / (s^2 + sd^2)`, `c_out = s sd / sqrt(s^2 + sd^2)`,
    `c_in = 1 / sqrt(s^2 + sd^2)`, `c_noise = log(s) / 4` and `sd = sigma_data`. The output is
    the data prediction (`parameterization = "data"`).
    """

    net: Callable
    path: AbstractPath
    sigma_data: float
    parameterization: str = eqx.field(static=True)

    def __init__(self, net: Callable, path: AbstractPath, sigma_data: float = 1.0):
        self.net = net
        self.path = path
        self.sigma_data = sigma_data
        self.parameterization = "data"

    def __check_init__(self):
        if not self.sigma_data > 0:
            raise ValueError(f"`sigma_data` must be positive, got {self.sigma_data}.")

    def __call__(self, t, x):
        t = jnp.asarray(t, x.dtype)
        a, s_t = self.path.alpha(t), self.path.sigma(t)
        s = s_t / a
        sd = self.sigma_data
        y = x / a
        c_skip = sd**2 / (s**2 + sd**2)
        c_out = s * sd / jnp.sqrt(s**2 + sd**2)
        c_in = 1.0 / jnp.sqrt(s**2 + sd**2)
        c_noise = jnp.log(s) / 4.0
        return c_skip * y + c_out * self.net(c_noise, c_in * y)


class MeanFlowModel(eqx.Module):
    """The average velocity `u(r, t, z) = (1/(t - r)) ∫_r^t v(tau, z_tau) dtau` of MeanFlow
    (Geng et al. 2025) on the linear path `z_t = (1 - t) x + t eps` (noise at `t = 1`).

    `net` takes the pair of times `(r, t)` and a point. One-step generation:
    `x = eps - u(0, 1, eps)`; see [`meanflow_sample`][].
    """

    net: Callable

    def __call__(self, r: ScalarLike, t: ScalarLike, z: Point) -> Point:
        """The average velocity over `[r, t]` at `z` (ONE unbatched point)."""
        times = jnp.stack([jnp.asarray(r, z.dtype), jnp.asarray(t, z.dtype)])
        return self.net(times, z)
