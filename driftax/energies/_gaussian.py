"""Gaussian targets: dense, diagonal or isotropic covariance, and the ill-conditioned benchmark."""

from __future__ import annotations

import math
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_positive, check_sample_shape
from .._custom_types import Array, ArrayLike, Key, Point, Scalar, Shape
from ._base import (
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
)

_LOG_2PI = math.log(2.0 * math.pi)


def normal_log_density(x: Array, loc: ArrayLike = 0.0, scale=None, *, log_scale=None) -> Scalar:
    """The log density of the diagonal normal `N(loc, diag(scale^2))` at `x`, summed over every
    element of `x` (so a scalar for one point of any shape).

    `loc` and `scale` broadcast against `x` (a scalar `scale` is isotropic; default 1); give
    `log_scale` instead of `scale` where the log-scale is what is at hand (e.g. the funnel). The
    one isotropic / diagonal Gaussian log density of the package.
    """
    x = jnp.asarray(x)
    if log_scale is not None:
        if scale is not None:
            raise ValueError("give `scale` or `log_scale`, not both.")
        log_scale = jnp.broadcast_to(log_scale, x.shape)
        z = (x - loc) * jnp.exp(-log_scale)
    else:
        scale = 1.0 if scale is None else scale
        log_scale = jnp.broadcast_to(jnp.log(scale), x.shape)
        z = (x - loc) / scale
    return -0.5 * jnp.sum(z**2) - jnp.sum(log_scale) - 0.5 * x.size * _LOG_2PI


class Gaussian(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """A multivariate normal `N(loc, Σ)` on a vector event of size `d`.

    The covariance is stored by its lower Cholesky factor (`scale_tril`, dense) or by its diagonal
    standard deviations (`scale_diag`, diagonal); exactly one of them is set. `log_density` is
    normalized, so `log_normalizer == 0`. Build it with [`gaussian`][] or
    [`ill_conditioned_gaussian`][].
    """

    loc: Array
    scale_diag: Array | None
    scale_tril: Array | None
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        if self.scale_tril is None:
            return normal_log_density(x, self.loc, self.scale_diag)
        z = jax.scipy.linalg.solve_triangular(self.scale_tril, x - self.loc, lower=True)
        return normal_log_density(z) - jnp.sum(jnp.log(jnp.diag(self.scale_tril)))

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        eps = jax.random.normal(key, (*shape, *self.event_shape), dtype=self.loc.dtype)
        if self.scale_tril is None:
            return self.loc + eps * cast(Array, self.scale_diag)
        return self.loc + eps @ self.scale_tril.T

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), self.loc.dtype)

    @property
    def covariance(self) -> Array:
        """The dense covariance matrix Σ."""
        if self.scale_tril is None:
            return jnp.diag(cast(Array, self.scale_diag) ** 2)
        return self.scale_tril @ self.scale_tril.T

    @property
    def mean(self) -> Array:
        return self.loc

    @property
    def variance(self) -> Array:
        if self.scale_tril is None:
            return cast(Array, self.scale_diag) ** 2
        return jnp.sum(self.scale_tril**2, axis=-1)


def gaussian(mean, covariance=None) -> Gaussian:
    """A Gaussian target `N(mean, covariance)`.

    **Arguments:**

    - `mean`: a vector of shape `(d,)`.
    - `covariance`: `None` (identity), a positive scalar (isotropic), a positive vector `(d,)`
      (diagonal variances) or a symmetric positive-definite matrix `(d, d)`.

    **Returns:** a [`Gaussian`][] with exact `sample`, `log_normalizer` (0: the density is
    normalized), `mean` and `variance`.
    """
    mean_np = check_finite(mean, "mean")
    if mean_np.ndim != 1:
        raise ValueError(f"`mean` must be a vector of shape (d,), got shape {mean_np.shape}.")
    d = mean_np.shape[0]
    # the energy's dtype is the mean's floating dtype (a float32 mean under x64 stays float32)
    given = getattr(mean, "dtype", None)
    floating = given is not None and jnp.issubdtype(given, jnp.floating)
    dtype = jax.dtypes.canonicalize_dtype(given) if floating else jnp.result_type(float)
    loc = jnp.asarray(mean_np, dtype=dtype)
    if covariance is None:
        return Gaussian(
            loc=loc, scale_diag=jnp.ones(d, loc.dtype), scale_tril=None, event_shape=(d,)
        )
    cov = check_finite(covariance, "covariance")
    if cov.ndim == 0 or cov.ndim == 1:
        check_positive(cov, "covariance")
        var = np.broadcast_to(cov, (d,)) if cov.ndim == 0 else cov
        if var.shape != (d,):
            raise ValueError(f"`covariance` as a vector must have shape ({d},), got {cov.shape}.")
        return Gaussian(
            loc=loc,
            scale_diag=jnp.sqrt(jnp.asarray(var, loc.dtype)),
            scale_tril=None,
            event_shape=(d,),
        )
    if cov.shape != (d, d):
        raise ValueError(f"`covariance` must have shape ({d}, {d}), got {cov.shape}.")
    if not np.allclose(cov, cov.T, rtol=1e-6, atol=1e-10 * np.abs(cov).max()):
        raise ValueError("`covariance` must be symmetric.")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError as e:
        raise ValueError("`covariance` must be positive definite.") from e
    return Gaussian(
        loc=loc, scale_diag=None, scale_tril=jnp.asarray(chol, loc.dtype), event_shape=(d,)
    )


def ill_conditioned_gaussian(
    d: int = 100, kappa: float = 100.0, *, rotate: bool = False, seed: int = 0
):
    """The ill-conditioned Gaussian benchmark: zero mean, covariance eigenvalues log-spaced over
    `[1/kappa, 1]`.

    **Arguments:**

    - `d`: dimension (the standard cases are `d=100` with `kappa=100` and `kappa=1e5`).
    - `kappa`: condition number `≥ 1`.
    - `rotate`: if `True`, the eigenbasis is a random rotation drawn from `seed` (dense covariance);
      otherwise the covariance is diagonal, with variances increasing along the coordinates.
    - `seed`: seed of the rotation (NumPy), only used when `rotate=True`.
    """
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"`d` must be a positive int, got {d!r}.")
    kappa_np = float(check_finite(kappa, "kappa"))
    if kappa_np < 1.0:
        raise ValueError(f"`kappa` must be >= 1, got {kappa!r}.")
    eig = np.logspace(-np.log10(kappa_np), 0.0, int(d))
    if not rotate:
        return gaussian(np.zeros(d), eig)
    q, r = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    q = q * np.sign(np.diag(r))
    cov = (q * eig) @ q.T
    return gaussian(np.zeros(d), 0.5 * (cov + cov.T))
