"""The kinetic-optimal Gaussian probability path for Gaussian data (Shaul, Chen, Nickel, Le,
Lipman 2023) and the exact kinetic energy of any Gaussian path on Gaussian data.

For a Gaussian path `x_t = alpha(t) x_data + sigma(t) eps` and data `N(m, S)`, the marginal
law is `N(alpha m, alpha^2 S + sigma^2 I)` and the marginal velocity is affine in `x`; along
every eigen-direction of `S` (eigenvalue `lam`) its mean square is `(d/dt rho_lam)^2` with
`rho_lam(t) = sqrt(alpha^2 lam + sigma^2)`. The kinetic energy
`KE = int E|u_t(x_t)|^2 dt` is therefore

    KE = int alpha'(t)^2 |m|^2 dt + sum_lam int (d/dt rho_lam(t))^2 dt,

and by Cauchy–Schwarz each integral is at least the square of its end-to-end change. For
isotropic data `S = s^2 I` both bounds are met at once by `alpha` linear in `t` and
`rho = sqrt(alpha^2 s^2 + sigma^2)` linear in `t`: in the library's time convention (data at
`t = 0`, noise at `t = 1`), `alpha(t) = 1 - t`, `sigma(t)^2 = t^2 + 2 s t (1 - t)`, with the
minimal energy `|m|^2 + d (1 - s)^2`. `s -> 0` (point-mass data) gives the conditional-OT path
`LinearInterpolant`, the paper's limit of vanishing data separation.
"""

from __future__ import annotations

import math

import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Scalar
from ._path import AbstractPath, _as_time


class KineticOptimalPath(AbstractPath):
    """The kinetic-optimal Gaussian path for data `N(m, s^2 I)` (Shaul et al. 2023, the
    Gaussian case): `alpha(t) = 1 - t`, `sigma(t) = sqrt(t^2 + 2 s t (1 - t))`, data at `t = 0`,
    noise at `t = 1` (the convention of `LinearInterpolant` and `TrigonometricInterpolant`).

    Among all Gaussian paths from `N(0, I)` to the data it has the least kinetic energy
    `int E|u_t|^2 dt` of its marginal velocity, `|m|^2 + d (1 - s)^2`, where `s` is the data's
    per-coordinate standard deviation (`data_scale`); [`gaussian_kinetic_energy`][] computes
    the energy of any path. `data_scale = 0` is the conditional-OT path `LinearInterpolant`;
    `data_scale = 1` (standardised data) is the variance-preserving path with linear `alpha`.

    **Arguments:** `data_scale` (`s >= 0`), `t_data` (`1e-3`), `t_noise` (`1`).

    ```python
    import jax.numpy as jnp
    import driftax.diffusion as dd
    path = dd.KineticOptimalPath(data_scale=0.5)
    ke = dd.gaussian_kinetic_energy(path, jnp.zeros(2), 0.25 * jnp.eye(2))
    ```
    """

    data_scale: float = 1.0
    t_data: float = 1e-3
    t_noise: float = 1.0

    def __check_init__(self):
        s = self.data_scale
        if not isinstance(s, jax.core.Tracer) and not (math.isfinite(float(s)) and s >= 0):
            raise ValueError(f"`data_scale` must be a finite number >= 0, got {s!r}.")

    def alpha(self, t):
        return 1.0 - _as_time(t)

    def sigma(self, t):
        t = _as_time(t)
        return jnp.sqrt(t**2 + 2.0 * self.data_scale * t * (1.0 - t))

    def alpha_and_derivative(self, t):
        t = _as_time(t)
        return 1.0 - t, -jnp.ones_like(t)


def gaussian_kinetic_energy(
    path: AbstractPath,
    mean: ArrayLike,
    cov: ArrayLike,
    *,
    num_points: int = 64,
) -> Scalar:
    """The kinetic energy `int E|u_t(x_t)|^2 dt` over `[t_data, t_noise]` of the marginal
    velocity `u_t` of the Gaussian path `path` on data `N(mean, cov)`.

    The integrand is exact (`alpha'^2 |mean|^2 + sum_lam (d/dt sqrt(alpha^2 lam + sigma^2))^2`
    over the eigenvalues `lam` of `cov`, derivatives by `jax.jvp`); the time integral is
    Gauss–Legendre with `num_points` nodes (exact to rounding for polynomial integrands of
    degree `< 2 num_points`, e.g. every `KineticOptimalPath`).

    **Arguments:** `path` (an `AbstractPath`), `mean` (`(d,)`), `cov` (`(d, d)` symmetric
    positive semi-definite), `num_points` (quadrature nodes, `>= 2`).
    """
    if not isinstance(path, AbstractPath):
        raise TypeError(f"`path` must be an AbstractPath, got {type(path).__name__}.")
    m = jnp.asarray(mean, jnp.result_type(float))
    c = jnp.asarray(cov, m.dtype)
    if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
        raise ValueError(
            f"`mean` must have shape (d,) and `cov` shape (d, d), got {m.shape}, {c.shape}."
        )
    if not isinstance(c, jax.core.Tracer):
        cn = np.asarray(c, float)
        if not np.allclose(cn, cn.T, atol=1e-8) or np.linalg.eigvalsh(cn).min() < -1e-10:
            raise ValueError("`cov` must be symmetric positive semi-definite.")
    if not (isinstance(num_points, int) and num_points >= 2):
        raise ValueError(f"`num_points` must be an integer >= 2, got {num_points!r}.")
    lam = jnp.clip(jnp.linalg.eigvalsh(0.5 * (c + c.T)), 0.0)
    nodes, weights = np.polynomial.legendre.leggauss(num_points)
    lo, hi = sorted((float(path.t_data), float(path.t_noise)))
    ts = jnp.asarray(0.5 * (hi - lo) * nodes + 0.5 * (hi + lo), m.dtype)

    def integrand(t):
        def rho(tt):
            return jnp.sqrt(path.alpha(tt) ** 2 * lam + path.sigma(tt) ** 2)

        _, drho = jax.jvp(rho, (t,), (jnp.ones_like(t),))
        _, da = path.alpha_and_derivative(t)
        return da**2 * jnp.sum(m**2) + jnp.sum(drho**2)

    values: Array = jax.vmap(integrand)(ts)
    return 0.5 * (hi - lo) * jnp.sum(jnp.asarray(weights, m.dtype) * values)
