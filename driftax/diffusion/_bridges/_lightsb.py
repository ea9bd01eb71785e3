"""LightSB (Korotin, Gushchin, Burnaev, ICLR 2024): the Schrödinger bridge with a Gaussian-mixture
potential, fitted by its closed-form objective, with closed-form conditional plans and drift.

Reference process `dX = sigma dW` on `[0, 1]`, `eps = sigma^2`. The adjusted Schrödinger potential
is `v(y) = sum_k alpha_k N(y | r_k, eps S_k)`; then

- the conditional plan is `pi(y | x) = sum_k w_k(x) N(y | r_k + S_k x, eps S_k)` with
  `log w_k(x) = log alpha_k + (x^T S_k x + 2 r_k^T x) / (2 eps)` (normalized),
- the objective is `E_{x ~ p0} log c(x) - E_{y ~ p1} log v(y)` with
  `c(x) = sum_k alpha_k exp((x^T S_k x + 2 r_k^T x) / (2 eps))`,
- the bridge drift is `eps ∇_x log h(t, x)`; written with `G_k = t S_k + (1 - t) I` it is
  `sum_k w_k(t, x) G_k^{-1} ((S_k - I) x + r_k)` with
  `log w_k(t, x) = log alpha_k - 1/2 log det G_k
  + (x^T G_k^{-1} (S_k - I) x + 2 r_k^T G_k^{-1} x - t r_k^T G_k^{-1} r_k) / (2 eps)`
  (the terms common to every component dropped; finite on all of `[0, 1]`).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._checks import check_int
from ..._custom_types import Array, Key, Point, Scalar, ScalarLike
from ._gaussian import check_sigma


def _tril_param(raw: Array, log_diag: Array) -> Array:
    return jnp.tril(raw, -1) + jnp.diag(jnp.exp(log_diag))


class LightSB(eqx.Module):
    """The LightSB Schrödinger bridge: a Gaussian-mixture Schrödinger potential with
    closed-form conditional plans and bridge drift (reference `sigma · W_t` on `[0, 1]`).

    **Arguments:**

    - `dim`: the dimension `d`.
    - `num_components`: the number `K` of mixture components of the potential.
    - `sigma`: the reference noise scale (`> 0`; the entropic regularization is `sigma^2`).
    - `key`: initializes the component means (standard normal) unless `means` is given.
    - `covariance`: `"full"` (each `S_k` a Cholesky factor) or `"diagonal"`.
    - `means`: optional initial `r_k`, shape `(K, d)` (e.g. `K` target samples, as in the paper).
    - `scale`: the initial `S_k = scale · I` (`> 0`).

    Fit it with [`fit_bridge`][]`(model, LightSBLoss(), source, target, ...)`. Then
    `conditional_sample(key, x0)` draws `X1 | X0 = x0`, `drift(t, x)` is the bridge SDE's drift
    (use with [`solve_bridge`][]), `potential_log_density(y)` is `log v(y)`.

    ```python
    import jax, jax.numpy as jnp, optax
    import driftax.diffusion as dd
    k0, k1, kf = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(k0, (2000, 2))
    x1 = 2.0 + 0.5 * jax.random.normal(k1, (2000, 2))
    model = dd.LightSB(2, 4, sigma=1.0, key=kf)
    model, losses = dd.fit_bridge(
        model, dd.LightSBLoss(), x0, x1, key=kf, optimizer=optax.adam(1e-2), num_steps=300
    )
    y = model.conditional_sample(jax.random.key(1), x0[0])
    ```
    """

    log_alpha: Array
    means: Array
    log_diag: Array
    raw: Array | None
    sigma: float = eqx.field(static=True)
    covariance: str = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        num_components: int,
        sigma: float,
        *,
        key: Key,
        covariance: str = "full",
        means: Array | None = None,
        scale: float = 1.0,
    ):
        d = check_int(dim, "dim")
        k = check_int(num_components, "num_components")
        self.sigma = check_sigma(sigma)
        if covariance not in ("full", "diagonal"):
            raise ValueError(f"`covariance` must be 'full' or 'diagonal', got {covariance!r}.")
        self.covariance = covariance
        if not (np.isfinite(scale) and scale > 0):
            raise ValueError(f"`scale` must be a positive number (S_k = scale I), got {scale!r}.")
        dtype = jnp.result_type(float)
        if means is None:
            means = jax.random.normal(key, (k, d), dtype)
        means = jnp.asarray(means, dtype)
        if means.shape != (k, d):
            raise ValueError(f"`means` must have shape ({k}, {d}), got {tuple(means.shape)}.")
        if not bool(jnp.all(jnp.isfinite(means))):
            raise ValueError("`means` must be finite.")
        self.means = means
        self.log_alpha = jnp.full((k,), -math.log(k), dtype)
        self.log_diag = jnp.full((k, d), 0.5 * math.log(scale), dtype)
        self.raw = jnp.zeros((k, d, d), dtype) if covariance == "full" else None

    @property
    def dim(self) -> int:
        """The dimension `d`."""
        return self.means.shape[1]

    @property
    def epsilon(self):
        """The entropic regularization `sigma^2`."""
        return self.sigma**2

    def component_covariances(self) -> Array:
        """The `S_k`, shape `(K, d, d)` (the components of the potential are `N(r_k, eps S_k)`)."""
        if self.raw is None:
            return jax.vmap(jnp.diag)(jnp.exp(2.0 * self.log_diag))
        chol = jax.vmap(_tril_param)(self.raw, self.log_diag)
        return chol @ jnp.swapaxes(chol, -1, -2)

    def _chol(self):
        if self.raw is None:
            return jax.vmap(jnp.diag)(jnp.exp(self.log_diag))
        return jax.vmap(_tril_param)(self.raw, self.log_diag)

    def potential_log_density(self, y: Point) -> Scalar:
        """`log v(y) = log sum_k alpha_k N(y | r_k, eps S_k)` (unnormalized by `sum alpha`)."""
        chol = self._chol() * self.sigma
        diff = y - self.means
        z = jax.vmap(lambda c, v: jax.scipy.linalg.solve_triangular(c, v, lower=True))(chol, diff)
        logdet = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(chol, axis1=-2, axis2=-1))), -1)
        comp = -0.5 * jnp.sum(z**2, -1) - logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return jax.nn.logsumexp(self.log_alpha + comp)

    def _plan_logits(self, x):
        s = self.component_covariances()
        quad = jnp.einsum("i,kij,j->k", x, s, x)
        return self.log_alpha + (quad + 2.0 * self.means @ x) / (2.0 * self.epsilon)

    def log_normalizer(self, x: Point) -> Scalar:
        """`log c(x) = log ∫ exp(<x, y> / eps) v(y) dy`."""
        return jax.nn.logsumexp(self._plan_logits(x))

    def conditional(self, x0: Point) -> tuple[Array, Array, Array]:
        """The conditional plan `X1 | X0 = x0` as a Gaussian mixture: `(log_weights, means,
        covariances)` of shapes `(K,)`, `(K, d)`, `(K, d, d)`."""
        s = self.component_covariances()
        logw = jax.nn.log_softmax(self._plan_logits(x0))
        return logw, self.means + s @ x0, self.epsilon * s

    def conditional_sample(self, key: Key, x0: Point) -> Point:
        """One draw of `X1 | X0 = x0` (closed form)."""
        kc, kz = jax.random.split(key)
        logw = self._plan_logits(x0)
        k = jax.random.categorical(kc, logw)
        chol = self._chol()[k]
        z = jax.random.normal(kz, (self.dim,), self.means.dtype)
        return self.means[k] + self.component_covariances()[k] @ x0 + self.sigma * chol @ z

    def conditional_mean(self, x0: Point) -> Point:
        """`E[X1 | X0 = x0]` (the barycentric projection of the plan)."""
        logw, means, _ = self.conditional(x0)
        return jnp.exp(logw) @ means

    def drift(self, t: ScalarLike, x: Point) -> Point:
        """The bridge SDE's drift `eps ∇_x log h(t, x)` at `t` in `[0, 1]` (closed form)."""
        t = jnp.asarray(t, self.means.dtype)
        s = self.component_covariances()
        eye = jnp.eye(self.dim, dtype=s.dtype)
        g = t * s + (1.0 - t) * eye
        gchol = jnp.linalg.cholesky(g)

        def solve(c, v):
            return jax.scipy.linalg.cho_solve((c, True), v)

        sx = jnp.einsum("kij,j->ki", s - eye, x) + self.means  # (S_k - I) x + r_k
        ginv_sx = jax.vmap(solve)(gchol, sx)
        ginv_r = jax.vmap(solve)(gchol, self.means)
        logdet = jnp.sum(jnp.log(jnp.diagonal(gchol, axis1=-2, axis2=-1)), -1)
        # x^T G^{-1} (S - I) x + 2 r^T G^{-1} x - t r^T G^{-1} r, from ((S - I) x + r)
        # x^T G^{-1} (S - I) x + 2 r^T G^{-1} x - t r^T G^{-1} r
        q = ginv_sx @ x + ginv_r @ x - t * jnp.einsum("ki,ki->k", ginv_r, self.means)
        logw = self.log_alpha - logdet + q / (2.0 * self.epsilon)
        return jax.nn.softmax(logw) @ ginv_sx


class LightSBLoss(eqx.Module):
    """The LightSB objective `mean_i log c(x0_i) - mean_j log v(x1_j)` on a batch `(x0, x1)` of
    source and target samples (no simulation; its minimum over all potentials is the
    Schrödinger bridge, up to a constant). For [`fit_bridge`][]."""

    def __call__(self, model: LightSB, batch, *, key: Key) -> Scalar:
        del key
        x0, x1 = batch
        return jnp.mean(jax.vmap(model.log_normalizer)(x0)) - jnp.mean(
            jax.vmap(model.potential_log_density)(x1)
        )
