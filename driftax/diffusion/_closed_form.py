"""Closed-form diffusion fields of a finite training set (Scarvelis et al.), the Gaussian-score
approximation and Gaussian "teleportation" (Wang & Vastola): fields any solver runs, no training.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, ScalarLike
from ..energies import GaussianMixture, NoisedGaussianMixture, gaussian_mixture
from ._path import AbstractPath

__all__ = ["ClosedFormDiffusion", "gaussian_approximation", "gaussian_teleport"]


def _check_data(data) -> Array:
    data = jnp.asarray(data)
    if data.ndim != 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (num_points, dim), got {data.shape}.")
    if not jnp.issubdtype(data.dtype, jnp.floating):
        raise TypeError(f"`data` must be a floating array, got dtype {data.dtype}.")
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("`data` has non-finite entries.")
    return data


class ClosedFormDiffusion(eqx.Module):
    """The closed-form denoiser of a finite training set along a Gaussian path, optionally
    smoothed (σ-CFDM, Scarvelis, Sáez de Ocáriz Borde & Solomon, "Closed-form diffusion models").

    For training points `y_1..y_N`, the law of `x_t = alpha(t) y + sigma(t) eps` is a mixture
    of Gaussians, and its denoiser is exact:

        D(t, x) = sum_i softmax_i(-|x - alpha y_i|^2 / (2 sigma^2)) y_i.

    Run to `t_data`, this field memorizes: every sample lands on a training point. With
    `smoothing = s > 0` the denoiser is averaged over `num_draws` fixed perturbations of its
    input, `D_s(t, x) = mean_m D(t, x + s e_m)` with `e_m ~ N(0, I)` drawn once from `key`
    (a deterministic field, so any solver runs it); this pulls samples towards barycentres of
    nearby training points, giving new samples near the data. With `num_neighbors = k` the
    softmax runs over the `k` nearest training points only (the nearest-neighbour estimator).

    Every method takes `(t, x)` for ONE unbatched `x`: `denoise`, `score`, `noise`, `velocity`.

    **Arguments:**

    - `data`: the training set, shape `(num_points, dim)`.
    - `path`: a Gaussian path (`driftax.diffusion.AbstractPath`).
    - `smoothing`: the smoothing scale `s >= 0` (0: the exact empirical field).
    - `num_draws`: perturbations averaged when `smoothing > 0`.
    - `num_neighbors`: `None` (all points) or the `k` of the nearest-neighbour estimator.
    - `key`: draws the perturbations (required when `smoothing > 0`).

    ```python
    import jax
    import driftax.diffusion as dd

    data = jax.random.normal(jax.random.key(0), (50, 2))
    path = dd.VP()
    field = dd.ClosedFormDiffusion(data, path)
    x = dd.solve(dd.DDIM(), field.denoise, path, path.prior_sample(jax.random.key(1), (8, 2)),
                 num_steps=50, parameterization="data")
    ```
    """

    data: Array
    path: AbstractPath
    smoothing: float = eqx.field(static=True)
    perturbations: Array
    num_neighbors: int | None = eqx.field(static=True)

    def __init__(
        self,
        data,
        path: AbstractPath,
        *,
        smoothing: float = 0.0,
        num_draws: int = 8,
        num_neighbors: int | None = None,
        key: Key | None = None,
    ):
        self.data = _check_data(data)
        if not isinstance(path, AbstractPath):
            raise TypeError(f"`path` must be a driftax.diffusion path, got {type(path).__name__}.")
        self.path = path
        if isinstance(smoothing, bool) or not isinstance(smoothing, (int, float, np.floating)):
            raise TypeError(f"`smoothing` must be a number, got {smoothing!r}.")
        if not (np.isfinite(smoothing) and smoothing >= 0):
            raise ValueError(f"`smoothing` must be finite and >= 0, got {smoothing!r}.")
        self.smoothing = float(smoothing)
        if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 1:
            raise ValueError(f"`num_draws` must be a positive int, got {num_draws!r}.")
        if num_neighbors is not None and (
            isinstance(num_neighbors, bool)
            or not isinstance(num_neighbors, int)
            or not 1 <= num_neighbors <= self.data.shape[0]
        ):
            raise ValueError(
                f"`num_neighbors` must be None or an int in [1, {self.data.shape[0]}], "
                f"got {num_neighbors!r}."
            )
        self.num_neighbors = num_neighbors
        dim = self.data.shape[1]
        if self.smoothing > 0:
            if key is None:
                raise ValueError("`key` is required when `smoothing > 0`.")
            self.perturbations = jax.random.normal(key, (num_draws, dim), self.data.dtype)
        else:
            self.perturbations = jnp.zeros((1, dim), self.data.dtype)

    def _exact_denoise(self, alpha, sigma, x):
        logits = -jnp.sum((x - alpha * self.data) ** 2, axis=-1) / (2.0 * sigma**2)
        if self.num_neighbors is None:
            return jax.nn.softmax(logits) @ self.data
        top, idx = jax.lax.top_k(logits, self.num_neighbors)
        return jax.nn.softmax(top) @ self.data[idx]

    def denoise(self, t: ScalarLike, x: Point) -> Point:
        """The (smoothed) data prediction `E[x_data | x_t = x]`."""
        alpha, sigma = self.path.alpha(t), self.path.sigma(t)
        xs = x + self.smoothing * self.perturbations
        return jnp.mean(jax.vmap(lambda z: self._exact_denoise(alpha, sigma, z))(xs), axis=0)

    def score(self, t: ScalarLike, x: Point) -> Point:
        """`(alpha D(t, x) - x) / sigma^2`."""
        return self.path.convert(self.denoise(t, x), t, x, source="data", target="score")

    def noise(self, t: ScalarLike, x: Point) -> Point:
        """`(x - alpha D(t, x)) / sigma`."""
        return self.path.convert(self.denoise(t, x), t, x, source="data", target="noise")

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity of the (smoothed) field."""
        return self.path.convert(self.denoise(t, x), t, x, source="data", target="velocity")


def gaussian_approximation(data, path: AbstractPath) -> NoisedGaussianMixture:
    """The Gaussian-score approximation of a data set (Wang & Vastola): the exact fields of
    `N(mean, cov)` of `data` along `path` (`score`, `denoise`, `noise`, `velocity`,
    `log_density`, `sample`), a `driftax.energies.NoisedGaussianMixture` with one component.
    The covariance gets a jitter of `1e-6` times its mean variance so its Cholesky factor exists.
    """
    data = _check_data(data)
    if data.shape[0] < 2:
        raise ValueError("`data` needs at least 2 points for a covariance.")
    mean = jnp.mean(data, axis=0)
    cov = jnp.atleast_2d(jnp.cov(data, rowvar=False))
    cov = cov + 1e-6 * jnp.mean(jnp.diag(cov)) * jnp.eye(cov.shape[0], dtype=cov.dtype)
    mix: GaussianMixture = gaussian_mixture(jnp.ones((1,)), mean[None], cov[None])
    return NoisedGaussianMixture(mix, path)


def gaussian_teleport(
    x_init: Array, path: AbstractPath, mean, cov, t_to: ScalarLike, *, t_from=None
) -> Array:
    """Jump along the probability-flow ODE of Gaussian data `N(mean, cov)` from `t_from`
    (default `path.t_noise`) to `t_to` in closed form ("analytical teleportation", Wang &
    Vastola): in the eigenbasis `(lam_k, u_k)` of `cov`,

        x(t_to) = alpha_1 mean + sum_k sqrt((alpha_1^2 lam_k + sigma_1^2)
                  / (alpha_0^2 lam_k + sigma_0^2)) u_k u_k^T (x(t_from) - alpha_0 mean).

    Skipping the first, nearly Gaussian part of sampling this way, a numerical solver then
    continues from `t_to` (pass `ts` starting at `t_to` to `solve`). `x_init` is a batch
    `(batch, dim)`.
    """
    x_init = jnp.asarray(x_init)
    mean = jnp.asarray(mean, x_init.dtype)
    cov = jnp.asarray(cov, x_init.dtype)
    if x_init.ndim != 2:
        raise ValueError(f"`x_init` must have shape (batch, dim), got {x_init.shape}.")
    dim = x_init.shape[1]
    if mean.shape != (dim,):
        raise ValueError(f"`mean` must have shape ({dim},), got {mean.shape}.")
    if cov.shape != (dim, dim):
        raise ValueError(f"`cov` must have shape ({dim}, {dim}), got {cov.shape}.")
    t0 = path.t_noise if t_from is None else t_from
    f0, f1 = float(np.asarray(t0)), float(np.asarray(t_to))
    for name, t in (("t_from", f0), ("t_to", f1)):
        if not np.isfinite(t):
            raise ValueError(f"`{name}` must be finite, got {t!r}.")
    lo, hi = sorted((path.t_noise, path.t_data))
    if not (lo <= f1 <= hi and lo <= f0 <= hi):
        raise ValueError(f"`t_from` and `t_to` must lie in [{lo}, {hi}], got {t0!r}, {t_to!r}.")
    lam, u = jnp.linalg.eigh(0.5 * (cov + cov.T))
    lam = jnp.clip(lam, 0.0)
    a0, s0 = path.alpha(t0), path.sigma(t0)
    a1, s1 = path.alpha(t_to), path.sigma(t_to)
    scale = jnp.sqrt((a1**2 * lam + s1**2) / (a0**2 * lam + s0**2))
    z = (x_init - a0 * mean) @ u
    return a1 * mean + (z * scale) @ u.T
