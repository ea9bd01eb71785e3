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

For anisotropic data the scalar schedules cannot meet every eigen-direction's bound at once;
letting the noise scale be a matrix diagonal in the eigenbasis of `S` (`x_t = (1 - t) x_data +
Sigma_t eps`, `Sigma_t = U diag(sqrt(t^2 + 2 sqrt(lam_i) t (1 - t))) U^T`) meets them all:
`AnisotropicKineticOptimalPath`, energy `|m|^2 + sum_i (1 - sqrt(lam_i))^2`, the least of any
Gaussian path whose noise is diagonal in that eigenbasis (each direction is a 1-D problem).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, ArrayLike, Point, Scalar, ScalarLike
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


def _check_cov(c) -> None:
    if not isinstance(c, jax.core.Tracer):
        cn = np.asarray(c, float)
        if not np.allclose(cn, cn.T, atol=1e-8) or np.linalg.eigvalsh(cn).min() < -1e-10:
            raise ValueError("`cov` must be symmetric positive semi-definite.")


class AnisotropicKineticOptimalPath(eqx.Module):
    """The kinetic-optimal Gaussian path for data with covariance `cov` (any mean; Shaul et
    al. 2023, the Gaussian case per eigen-direction): `x_t = (1 - t) x_data + Sigma_t eps`,
    `Sigma_t = U diag(sqrt(t^2 + 2 sqrt(lam_i) t (1 - t))) U^T` with `cov = U diag(lam) U^T`;
    data at `t = 0`, noise `N(0, I)` at `t = 1` (the convention of [`KineticOptimalPath`][],
    which it equals, `Sigma_t = sigma(t) I`, when `cov = s^2 I`).

    Along each eigen-direction the marginal's standard deviation `(1 - t) sqrt(lam_i) + t` and
    the mean `(1 - t) m` are linear in `t`, so each 1-D energy meets its Cauchy–Schwarz bound:
    the kinetic energy is `|m|^2 + sum_i (1 - sqrt(lam_i))^2`, the least among Gaussian paths
    with noise diagonal in the eigenbasis (scalar paths included). Not an `AbstractPath` (its
    noise scale is a matrix): it gives the schedule, the marginal, a sample and the exact
    marginal velocity; [`gaussian_kinetic_energy`][] takes it.

    **Arguments:** `cov` (`(d, d)` symmetric positive semi-definite), `t_data` (`0`),
    `t_noise` (`1`).

    ```python
    import jax.numpy as jnp
    import driftax.diffusion as dd
    path = dd.AnisotropicKineticOptimalPath(jnp.diag(jnp.array([0.04, 1.0, 4.0])))
    ke = dd.gaussian_kinetic_energy(path, jnp.zeros(3), path.cov)  # (1 - 0.2)^2 + 0 + 1
    ```
    """

    cov: Array
    t_data: float = 0.0
    t_noise: float = 1.0

    def __init__(self, cov: ArrayLike, *, t_data: float = 0.0, t_noise: float = 1.0):
        c = jnp.asarray(cov, jnp.result_type(float))
        if c.ndim != 2 or c.shape[0] != c.shape[1]:
            raise ValueError(f"`cov` must have shape (d, d), got {tuple(c.shape)}.")
        _check_cov(c)
        if not 0.0 <= float(t_data) < float(t_noise) <= 1.0:
            raise ValueError(
                f"need 0 <= `t_data` < `t_noise` <= 1, got t_data={t_data!r}, t_noise={t_noise!r}."
            )
        self.cov = 0.5 * (c + c.T)
        self.t_data = float(t_data)
        self.t_noise = float(t_noise)

    def _eig(self):
        lam, u = jnp.linalg.eigh(self.cov)
        return jnp.sqrt(jnp.clip(lam, 0.0)), u

    def alpha(self, t: ScalarLike) -> Scalar:
        """Signal coefficient `1 - t` (shared by all directions)."""
        return 1.0 - _as_time(t)

    def sigma_matrix(self, t: ScalarLike) -> Array:
        """The `(d, d)` noise scale `Sigma_t` (symmetric, diagonal in the eigenbasis)."""
        t = _as_time(t)
        s, u = self._eig()
        return (u * jnp.sqrt(t**2 + 2.0 * s * t * (1.0 - t))) @ u.T

    def marginal(self, t: ScalarLike, mean: ArrayLike) -> tuple[Array, Array]:
        """The law of `x_t` for data `N(mean, cov)`: `((1 - t) mean, (1 - t)^2 cov +
        Sigma_t^2)`."""
        a = self.alpha(t)
        sig = self.sigma_matrix(t)
        return a * jnp.asarray(mean), a**2 * self.cov + sig @ sig

    def sample(self, t: ScalarLike, x_data: Point, noise: Point) -> Point:
        """`x_t = (1 - t) x_data + Sigma_t noise` for ONE point (`(d,)` each)."""
        return self.alpha(t) * x_data + self.sigma_matrix(t) @ noise

    def velocity(self, t: ScalarLike, x: Point, mean: ArrayLike) -> Point:
        """The exact marginal velocity `E[d x_t / dt | x_t = x]` for data `N(mean, cov)` (ONE
        point): `-mean + U diag(rho_i' / rho_i) U^T (x - (1 - t) mean)`, `rho_i = (1 - t)
        sqrt(lam_i) + t` (`0 <= t <= 1`, finite where every `rho_i > 0`)."""
        t = _as_time(t)
        s, u = self._eig()
        m = jnp.asarray(mean)
        rate = (1.0 - s) / ((1.0 - t) * s + t)
        return -m + (u * rate) @ (u.T @ (x - (1.0 - t) * m))


def _anisotropic_energy(path, m, c, ts, weights):
    # the generic Gaussian-path formula, independent of the per-direction closed form: with
    # x_t = a x + S eps, E[dx_t/dt | x_t] = a' m + K C^{-1} (x_t - a m), K = a' a c + S' S^T,
    # C = a^2 c + S S^T, so E|u|^2 = a'^2 |m|^2 + tr(K C^{-1} K^T)
    def integrand(t):
        sig, dsig = jax.jvp(path.sigma_matrix, (t,), (jnp.ones_like(t),))
        a, da = jax.jvp(path.alpha, (t,), (jnp.ones_like(t),))
        k = da * a * c + dsig @ sig.T
        cm = a**2 * c + sig @ sig.T
        return da**2 * jnp.sum(m**2) + jnp.trace(k @ jnp.linalg.solve(cm, k.T))

    return jnp.sum(weights * jax.vmap(integrand)(ts))


def gaussian_kinetic_energy(
    path: AbstractPath | AnisotropicKineticOptimalPath,
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

    An [`AnisotropicKineticOptimalPath`][] is handled by the general matrix formula `E|u|^2 =
    alpha'^2 |mean|^2 + tr(K C^-1 K^T)` (`K = Cov(d x_t / dt, x_t)`, `C = Cov(x_t)`, the
    noise-scale derivative by `jax.jvp`), which does not use its per-direction closed form.

    **Arguments:** `path` (an `AbstractPath` or `AnisotropicKineticOptimalPath`), `mean` (`(d,)`), `cov` (`(d, d)` symmetric
    positive semi-definite), `num_points` (quadrature nodes, `>= 2`).
    """
    if not isinstance(path, (AbstractPath, AnisotropicKineticOptimalPath)):
        raise TypeError(f"`path` must be an AbstractPath, got {type(path).__name__}.")
    m = jnp.asarray(mean, jnp.result_type(float))
    c = jnp.asarray(cov, m.dtype)
    if m.ndim != 1 or c.shape != (m.shape[0], m.shape[0]):
        raise ValueError(
            f"`mean` must have shape (d,) and `cov` shape (d, d), got {m.shape}, {c.shape}."
        )
    _check_cov(c)
    if not (isinstance(num_points, int) and num_points >= 2):
        raise ValueError(f"`num_points` must be an integer >= 2, got {num_points!r}.")
    lam = jnp.clip(jnp.linalg.eigvalsh(0.5 * (c + c.T)), 0.0)
    nodes, weights = np.polynomial.legendre.leggauss(num_points)
    lo, hi = sorted((float(path.t_data), float(path.t_noise)))
    ts = jnp.asarray(0.5 * (hi - lo) * nodes + 0.5 * (hi + lo), m.dtype)
    if isinstance(path, AnisotropicKineticOptimalPath):
        w = jnp.asarray(0.5 * (hi - lo) * weights, m.dtype)
        return _anisotropic_energy(path, m, c, ts, w)

    def integrand(t):
        def rho(tt):
            return jnp.sqrt(path.alpha(tt) ** 2 * lam + path.sigma(tt) ** 2)

        _, drho = jax.jvp(rho, (t,), (jnp.ones_like(t),))
        _, da = path.alpha_and_derivative(t)
        return da**2 * jnp.sum(m**2) + jnp.sum(drho**2)

    values: Array = jax.vmap(integrand)(ts)
    return 0.5 * (hi - lo) * jnp.sum(jnp.asarray(weights, m.dtype) * values)
