"""Gaussian mixtures, the mixture reference targets, and their exact noised (time-dependent) fields."""

from __future__ import annotations

import math
from typing import Protocol, cast

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_finite, check_positive, check_sample_shape
from .._custom_types import Array, Key, Point, Scalar, ScalarLike, Shape
from ._base import (
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
)

_LOG_2PI = math.log(2.0 * math.pi)


class GaussianMixture(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """A finite mixture of Gaussians on a vector event of size `d`.

    Component `k` has weight `weights[k]`, mean `means[k]` and covariance given either by
    diagonal standard deviations `scale_diag[k]` or by a lower Cholesky factor `scale_tril[k]`
    (exactly one of the two is set). The density is normalized (`log_normalizer == 0`).
    Build it with [`gaussian_mixture`][] or one of the named reference mixtures.
    """

    log_weights: Array
    means: Array
    scale_diag: Array | None
    scale_tril: Array | None
    event_shape: Shape = eqx.field(static=True)

    @property
    def num_components(self) -> int:
        """Number of mixture components."""
        return self.means.shape[0]

    @property
    def weights(self) -> Array:
        """Normalized component weights, shape `(K,)`."""
        return jnp.exp(self.log_weights)

    def component_log_densities(self, x: Point) -> Array:
        """`log w_k + log N(x; μ_k, Σ_k)` for every component `k`, shape `(K,)`."""
        x = check_event(x, self.event_shape)
        r = x - self.means
        if self.scale_tril is None:
            z = r / cast(Array, self.scale_diag)
            half_logdet = jnp.sum(jnp.log(cast(Array, self.scale_diag)), axis=-1)
        else:
            z = jax.vmap(lambda L, b: jax.scipy.linalg.solve_triangular(L, b, lower=True))(
                self.scale_tril, r
            )
            half_logdet = jnp.sum(jnp.log(jnp.diagonal(self.scale_tril, axis1=-2, axis2=-1)), -1)
        return self.log_weights - 0.5 * jnp.sum(z**2, -1) - half_logdet - 0.5 * self.dim * _LOG_2PI

    def log_density(self, x: Point) -> Scalar:
        return jax.nn.logsumexp(self.component_log_densities(x))

    def responsibilities(self, x: Point) -> Array:
        """Posterior component probabilities `p(k | x)`, shape `(K,)`."""
        return jax.nn.softmax(self.component_log_densities(x))

    def assign(self, x: Point) -> Array:
        """Index of the most probable component for `x` (used for mode coverage)."""
        return jnp.argmax(self.component_log_densities(x))

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        k_key, n_key = jax.random.split(key)
        comp = jax.random.categorical(k_key, self.log_weights, shape=shape)
        eps = jax.random.normal(n_key, (*shape, *self.event_shape), dtype=self.means.dtype)
        if self.scale_tril is None:
            return self.means[comp] + eps * cast(Array, self.scale_diag)[comp]
        return self.means[comp] + jnp.einsum("...ij,...j->...i", self.scale_tril[comp], eps)

    def component_covariances(self) -> Array:
        """Dense covariances of every component, shape `(K, d, d)`."""
        if self.scale_tril is None:
            return jax.vmap(jnp.diag)(cast(Array, self.scale_diag) ** 2)
        return self.scale_tril @ jnp.swapaxes(self.scale_tril, -1, -2)

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), self.means.dtype)

    @property
    def mean(self) -> Array:
        return self.weights @ self.means

    @property
    def variance(self) -> Array:
        if self.scale_tril is None:
            comp_var = cast(Array, self.scale_diag) ** 2
        else:
            comp_var = jnp.sum(self.scale_tril**2, axis=-1)
        second = self.weights @ (comp_var + self.means**2)
        return second - self.mean**2

    def noised(self, alpha: ScalarLike, sigma: ScalarLike) -> GaussianMixture:
        """The law of `alpha * x + sigma * eps` for `x` from this mixture and `eps ~ N(0, I)`.

        It is again a Gaussian mixture: means `alpha μ_k`, covariances `alpha² Σ_k + sigma² I`.
        """
        alpha = jnp.asarray(alpha, self.means.dtype)
        sigma = jnp.asarray(sigma, self.means.dtype)
        means = alpha * self.means
        if self.scale_tril is None:
            scale = jnp.sqrt(alpha**2 * cast(Array, self.scale_diag) ** 2 + sigma**2)
            return GaussianMixture(
                log_weights=self.log_weights,
                means=means,
                scale_diag=scale,
                scale_tril=None,
                event_shape=self.event_shape,
            )
        cov = alpha**2 * self.component_covariances() + sigma**2 * jnp.eye(self.dim)
        return GaussianMixture(
            log_weights=self.log_weights,
            means=means,
            scale_diag=None,
            scale_tril=jnp.linalg.cholesky(cov),
            event_shape=self.event_shape,
        )

    def posterior_means(self, alpha: ScalarLike, sigma: ScalarLike, x: Point) -> Array:
        """`E[x_data | k, alpha x_data + sigma eps = x]` for every component, shape `(K, d)`."""
        alpha = jnp.asarray(alpha, self.means.dtype)
        sigma = jnp.asarray(sigma, self.means.dtype)
        r = x - alpha * self.means
        if self.scale_tril is None:
            var = cast(Array, self.scale_diag) ** 2
            return self.means + alpha * var * r / (alpha**2 * var + sigma**2)
        cov = self.component_covariances()
        noised_cov = alpha**2 * cov + sigma**2 * jnp.eye(self.dim)
        sol = jax.vmap(lambda c, b: jnp.linalg.solve(c, b))(noised_cov, r)
        return self.means + alpha * jnp.einsum("kij,kj->ki", cov, sol)


def gaussian_mixture(weights, means, covariances=None) -> GaussianMixture:
    """A Gaussian mixture target.

    **Arguments:**

    - `weights`: non-negative component weights, shape `(K,)` (normalized internally).
    - `means`: component means, shape `(K, d)`.
    - `covariances`: `None` (identity), a positive scalar shared by all components, a vector `(K,)`
      of isotropic variances, an array `(K, d)` of diagonal variances, or full covariances
      `(K, d, d)`.
    """
    w = check_finite(weights, "weights")
    mu = check_finite(means, "means")
    if mu.ndim != 2:
        raise ValueError(f"`means` must have shape (K, d), got {mu.shape}.")
    K, d = mu.shape
    if w.shape != (K,):
        raise ValueError(f"`weights` must have shape ({K},) to match `means`, got {w.shape}.")
    if np.any(w < 0) or not np.any(w > 0):
        raise ValueError("`weights` must be non-negative with a positive sum.")
    dtype = jnp.result_type(float)
    log_w = jnp.asarray(np.log(w / w.sum()), dtype)
    means_j = jnp.asarray(mu, dtype)
    if covariances is None:
        return GaussianMixture(
            log_weights=log_w,
            means=means_j,
            scale_diag=jnp.ones((K, d), dtype),
            scale_tril=None,
            event_shape=(d,),
        )
    cov = check_finite(covariances, "covariances")
    if cov.ndim <= 2 and cov.shape in {(), (K,), (K, d)}:
        check_positive(cov, "covariances")
        if cov.ndim == 1:
            cov = cov[:, None]
        var = np.broadcast_to(cov, (K, d))
        return GaussianMixture(
            log_weights=log_w,
            means=means_j,
            scale_diag=jnp.asarray(np.sqrt(var), dtype),
            scale_tril=None,
            event_shape=(d,),
        )
    if cov.shape != (K, d, d):
        raise ValueError(
            f"`covariances` must be a scalar, (K,), (K, d) or (K, d, d) = ({K}, {d}, {d}); "
            f"got shape {cov.shape}."
        )
    try:
        chol = np.linalg.cholesky(0.5 * (cov + np.swapaxes(cov, -1, -2)))
    except np.linalg.LinAlgError as e:
        raise ValueError("every matrix in `covariances` must be positive definite.") from e
    return GaussianMixture(
        log_weights=log_w,
        means=means_j,
        scale_diag=None,
        scale_tril=jnp.asarray(chol, dtype),
        event_shape=(d,),
    )


# Means of the FAB 40-mode mixture: torch.manual_seed(0); (torch.rand(40, 2) - 0.5) * 2 * 40.
_GMM40_MEANS_2D = np.array(
    [[-0.29947281, 21.4577446], [-32.92180634, -29.43756104], [-15.40617466, 10.72629452],
     [-0.7925272, 31.71557999], [-3.54976177, 10.58450222], [-12.08852291, -7.86261559],
     [-38.21393967, -26.49128342], [-16.48892403, 1.48174286], [15.8134079, 24.00091171],
     [-27.11764336, -17.41851425], [14.52868462, 33.21551895], [-8.23200703, 29.93247032],
     [-6.44733429, 4.23256397], [36.21904755, -37.10681534], [-25.18151855, -10.1266098],
     [-15.5919981, 34.56003189], [-25.92718506, -18.41331482], [-27.94561768, -37.46244049],
     [-23.34961891, 34.38392258], [17.84873581, 19.38690186], [2.10366249, -20.50733948],
     [6.76738739, -37.34778976], [-28.90264893, -20.62120056], [25.23751831, 23.45285034],
     [-17.73980141, -1.44329548], [25.58242798, 39.76532364], [15.87528706, 5.40371418],
     [26.81945419, -23.55209351], [7.4537611, -31.01222038], [-27.72344589, -20.66334152],
     [18.09892273, 16.08641624], [-23.69409943, 12.08428383], [21.95888138, -5.04869461],
     [1.52726173, 9.26818848], [24.81506348, 38.40776443], [-30.82494354, -14.65878963],
     [15.72039604, 33.1419754], [34.80829239, 35.29426956], [7.96058178, -34.78330612],
     [3.6796999, -25.02421379]]
)  # fmt: skip

GMM40_FAB_SCALE = 0.7443966865539551
"""Component standard deviation of the FAB variant of gmm40: softplus(0.1)."""


def gmm40(dim: int = 2, *, scale: float = 1.0, seed: int = 0) -> GaussianMixture:
    """The 40-mode mixture: 40 equal-weight isotropic components, means uniform in `[-40, 40]^dim`.

    In 2-D the means are the FAB ones (`torch.manual_seed(0)`), stored as constants; for other
    `dim` they are drawn from `numpy.random.default_rng(seed)` and so differ from any torch code.
    `scale` is the component standard deviation: 1.0 (default) or `GMM40_FAB_SCALE` ≈ 0.744, the
    variant used by FAB.
    """
    if not isinstance(dim, (int, np.integer)) or dim < 1:
        raise ValueError(f"`dim` must be a positive int, got {dim!r}.")
    check_positive(scale, "scale")
    if dim == 2 and seed == 0:
        means = _GMM40_MEANS_2D
    else:
        means = np.random.default_rng(seed).uniform(-40.0, 40.0, size=(40, int(dim)))
    return gaussian_mixture(np.ones(40), means, float(scale) ** 2)


def gmm25(*, variance: float = 0.3, spacing: float = 5.0) -> GaussianMixture:
    """The 25-mode grid: modes on `{-10, -5, 0, 5, 10}²`, covariance `0.3·I`, equal weights."""
    grid = spacing * np.arange(-2, 3, dtype=float)
    means = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    return gaussian_mixture(np.ones(25), means, check_positive(variance, "variance"))


def gmm9(*, variance: float = 0.3, spacing: float = 5.0) -> GaussianMixture:
    """The 9-mode grid: a 3×3 grid with spacing 5 centred at 0, covariance `0.3·I`, equal weights."""
    grid = spacing * np.arange(-1, 2, dtype=float)
    means = np.stack(np.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 2)
    return gaussian_mixture(np.ones(9), means, check_positive(variance, "variance"))


def four_mode_gmm(d: int = 16) -> GaussianMixture:
    """The 4-mode mixture of Grenioux et al.: identity covariances, equal weights, means
    `(−a…−a)`, `(+a…+a)`, `(−a…,+a…)`, `(+a…,−a…)` on half-blocks, `a = 0.591·√(2 log d)`."""
    if not isinstance(d, (int, np.integer)) or d < 2 or d % 2:
        raise ValueError(f"`d` must be an even int >= 2, got {d!r}.")
    a = 0.591 * np.sqrt(2.0 * np.log(d))
    h = d // 2
    one = np.ones(h)
    means = a * np.stack(
        [
            np.concatenate([-one, -one]),
            np.concatenate([one, one]),
            np.concatenate([-one, one]),
            np.concatenate([one, -one]),
        ]
    )
    return gaussian_mixture(np.ones(4), means)


class GaussianPathLike(Protocol):
    """Anything with `alpha(t)` and `sigma(t)`: the Gaussian path `x_t = alpha(t) x + sigma(t) eps`."""

    def alpha(self, t: ScalarLike) -> Array:
        """The signal scale `alpha(t)`."""
        ...

    def sigma(self, t: ScalarLike) -> Array:
        """The noise scale `sigma(t)`."""
        ...


def _value_and_derivative(fn, t):
    t = jnp.asarray(t, jnp.result_type(float))
    return jax.jvp(fn, (t,), (jnp.ones_like(t),))


class NoisedGaussianMixture(eqx.Module):
    """Exact time-dependent fields of a Gaussian mixture pushed along a Gaussian path.

    For `x_t = alpha(t) x_data + sigma(t) eps` with `x_data` from `mixture`, the law of `x_t` is
    the mixture `mixture.noised(alpha(t), sigma(t))`, so its log density, score, denoiser
    `E[x_data | x_t]`, noise prediction `E[eps | x_t]` and the probability-flow velocity are all
    closed-form. Every method takes `(t, x)` for ONE unbatched `x`. `path` is any object with
    `alpha(t)` and `sigma(t)` (e.g. a `driftax.diffusion` path); time derivatives come from
    `jax.jvp`.

    **Example:**

    ```python
    field = NoisedGaussianMixture(gmm25(), path)
    v = field.velocity(0.5, x)
    ```
    """

    mixture: GaussianMixture
    path: GaussianPathLike

    def at(self, t: ScalarLike) -> GaussianMixture:
        """The noised mixture at time `t` (an energy with exact samples and log Z)."""
        return self.mixture.noised(self.path.alpha(t), self.path.sigma(t))

    def log_density(self, t: ScalarLike, x: Point) -> Scalar:
        """Normalized log density of `x_t` at `x`."""
        return self.at(t).log_density(x)

    def score(self, t: ScalarLike, x: Point) -> Point:
        """`∇_x log p_t(x)` in closed form."""
        noised = self.at(t)
        x = check_event(x, self.mixture.event_shape)
        resp = noised.responsibilities(x)
        r = x - noised.means
        if noised.scale_tril is None:
            comp_scores = -r / cast(Array, noised.scale_diag) ** 2
        else:
            comp_scores = -jax.vmap(lambda L, b: jax.scipy.linalg.cho_solve((L, True), b))(
                noised.scale_tril, r
            )
        return resp @ comp_scores

    def denoise(self, t: ScalarLike, x: Point) -> Point:
        """The denoiser (data prediction) `E[x_data | x_t = x]` in closed form."""
        alpha, sigma = self.path.alpha(t), self.path.sigma(t)
        x = check_event(x, self.mixture.event_shape)
        resp = self.at(t).responsibilities(x)
        return resp @ self.mixture.posterior_means(alpha, sigma, x)

    def noise(self, t: ScalarLike, x: Point) -> Point:
        """The noise prediction `E[eps | x_t = x] = -sigma(t) · score(t, x)`."""
        return -self.path.sigma(t) * self.score(t, x)

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity `E[alpha'(t) x_data + sigma'(t) eps | x_t = x]`."""
        _, dalpha = _value_and_derivative(self.path.alpha, t)
        _, dsigma = _value_and_derivative(self.path.sigma, t)
        return dalpha * self.denoise(t, x) + dsigma * self.noise(t, x)

    def sample(self, key: Key, t: ScalarLike, shape: Shape | int = ()) -> Array:
        """Exact draws of `x_t`, shape `(*shape, d)`."""
        return self.at(t).sample(key, shape)
