"""Linear phase-space forward processes `du = -beta (D + Q) grad U_ref(u) dt + sqrt(2 beta D) dW`
with a quadratic reference energy, critically-damped Langevin diffusion (CLD, Dockhorn, Vahdat &
Kreis 2022) as the case u = (x, v), and the paper's symmetric splitting sampler (SSCS)."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, ScalarLike


def _matrix(value, name: str) -> np.ndarray:
    m = np.asarray(value, dtype=float)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not np.all(np.isfinite(m)):
        raise ValueError(f"`{name}` must be a finite square matrix, got shape {m.shape}.")
    return m


class LinearDiffusion(eqx.Module):
    """A linear forward diffusion on blocks `u = (x, aux_1, ..., aux_{k-1})` per data coordinate:

    `du = -beta (D + Q) P u dt + sqrt(2 beta D) dW`, i.e. the drift `-(D + Q) grad U_ref` of the
    quadratic reference energy `U_ref(u) = u^T P u / 2`, with `D` symmetric positive
    semi-definite (the diffusion), `Q` antisymmetric (the conservative part) and `P` positive
    definite. Its stationary law is `N(0, P^-1)` for any such `D`, `Q`. The data enter as the
    first component; the auxiliary components start from `N(0, aux_covariance)`.

    Every coordinate of the data has its own `k`-block, so a batch of states has shape
    `(batch, dim, k)`. The marginal given the data is Gaussian and closed-form:
    mean `E(t) (x0, 0, ...)`, covariance `Sigma_inf + E(t) (Sigma_0 - Sigma_inf) E(t)^T` with
    `E(t) = exp(-beta t (D + Q) P)`.

    Build critically-damped Langevin diffusion with [`critically_damped`][].

    **Fields:** `D`, `Q`, `P` (`k x k`), `aux_covariance` (`(k-1) x (k-1)`), `beta` (> 0),
    `t_data` and `t_noise` (generation runs from `t_noise` to `t_data`).
    """

    D: Array
    Q: Array
    P: Array
    aux_covariance: Array
    beta: float = 4.0
    t_data: float = 1e-3
    t_noise: float = 1.0

    def __init__(self, D, Q, P, aux_covariance, *, beta=4.0, t_data=1e-3, t_noise=1.0):
        d, q, p = _matrix(D, "D"), _matrix(Q, "Q"), _matrix(P, "P")
        k = d.shape[0]
        if q.shape != (k, k) or p.shape != (k, k):
            raise ValueError(
                f"`D`, `Q` and `P` must have the same shape, got {d.shape}, {q.shape}, {p.shape}."
            )
        if k < 1:
            raise ValueError("`D` must be at least 1 x 1.")
        tol = 1e-10 * max(1.0, float(np.abs(d).max()))
        if not np.allclose(d, d.T, atol=tol) or np.linalg.eigvalsh(d).min() < -tol:
            raise ValueError("`D` must be symmetric positive semi-definite.")
        if not np.allclose(q, -q.T, atol=1e-10 * max(1.0, float(np.abs(q).max()))):
            raise ValueError("`Q` must be antisymmetric.")
        if not np.allclose(p, p.T) or np.linalg.eigvalsh(p).min() <= 0:
            raise ValueError("`P` must be symmetric positive definite.")
        aux = (
            np.asarray(aux_covariance, dtype=float).reshape(k - 1, k - 1)
            if k > 1
            else np.zeros((0, 0))
        )
        if k > 1 and (not np.allclose(aux, aux.T) or np.linalg.eigvalsh(aux).min() < 0):
            raise ValueError("`aux_covariance` must be symmetric positive semi-definite.")
        if not (math.isfinite(float(beta)) and float(beta) > 0):
            raise ValueError(f"`beta` must be finite and > 0, got {beta}.")
        if not (0 <= float(t_data) < float(t_noise) < math.inf):
            raise ValueError(f"need 0 <= t_data < t_noise < inf, got {t_data}, {t_noise}.")
        self.D, self.Q, self.P = jnp.asarray(d), jnp.asarray(q), jnp.asarray(p)
        self.aux_covariance = jnp.asarray(aux)
        self.beta, self.t_data, self.t_noise = float(beta), float(t_data), float(t_noise)

    @property
    def block_size(self) -> int:
        """`k`, the size of one coordinate's block."""
        return self.D.shape[0]

    @property
    def drift_matrix(self) -> Array:
        """`F = -beta (D + Q) P`: the forward drift is `F u`."""
        return -self.beta * (self.D + self.Q) @ self.P

    @property
    def stationary_covariance(self) -> Array:
        """`P^-1`."""
        return jnp.linalg.inv(self.P)

    def initial_covariance(self, data_variance: ScalarLike = 0.0) -> Array:
        """The block covariance at `t = 0`: `data_variance` for `x`, `aux_covariance` for the rest."""
        k = self.block_size
        c = jnp.zeros((k, k), self.P.dtype).at[1:, 1:].set(self.aux_covariance.astype(self.P.dtype))
        return c.at[0, 0].set(data_variance)

    def transition(self, t: ScalarLike) -> Array:
        """`E(t) = exp(t F)`."""
        return jax.scipy.linalg.expm(jnp.asarray(t, self.P.dtype) * self.drift_matrix)

    def marginal(self, t: ScalarLike, data_mean: ScalarLike = 0.0, data_variance: ScalarLike = 0.0):
        """Mean `(k,)` and covariance `(k, k)` of one coordinate's block at time `t`, for a data
        coordinate with the given mean and variance (a point: variance 0)."""
        e = self.transition(t)
        s_inf = self.stationary_covariance
        s0 = self.initial_covariance(data_variance)
        mean = e[:, 0] * data_mean
        return mean, s_inf + e @ (s0 - s_inf) @ e.T

    def perturb(self, key: Key, x0: Array, t: ScalarLike) -> Array:
        """Draws of `u_t` given data `x0` (shape `(batch, dim)`): shape `(batch, dim, k)`."""
        x0 = jnp.asarray(x0)
        _, cov = self.marginal(t)  # the covariance does not depend on x0
        e0 = self.transition(t)[:, 0].astype(x0.dtype)
        chol = jnp.linalg.cholesky(cov + 1e-12 * jnp.eye(self.block_size)).astype(x0.dtype)
        z = jax.random.normal(key, (*x0.shape, self.block_size), x0.dtype)
        return x0[..., None] * e0 + z @ chol.T

    def prior_sample(self, key: Key, shape: tuple[int, int]) -> Array:
        """Draws of the stationary law `N(0, P^-1)` per block: shape `(*shape, k)`."""
        dtype = jnp.result_type(float)
        chol = jnp.linalg.cholesky(self.stationary_covariance).astype(dtype)
        return jax.random.normal(key, (*shape, self.block_size), dtype) @ chol.T

    def gaussian_score(self, data_mean: Array, data_variance: ScalarLike) -> Callable:
        """The exact score `grad_u log p_t(u)` (shape `(dim, k)`) when the data are
        `N(data_mean, data_variance I)` (`data_mean` of shape `(dim,)`)."""
        mu = jnp.asarray(data_mean)

        def score(t, u):
            e = self.transition(t)
            _, cov = self.marginal(t, 0.0, data_variance)
            mean = mu[:, None] * e[:, 0].astype(u.dtype)
            precision = jnp.linalg.inv(cov).astype(u.dtype)  # one 2x2 inverse, not per point
            return -(u - mean) @ precision.T

        return score


def critically_damped(
    *,
    mass: float = 0.25,
    gamma: float = 0.04,
    beta: float = 4.0,
    t_data: float = 1e-3,
    t_noise: float = 1.0,
) -> LinearDiffusion:
    """Critically-damped Langevin diffusion (Dockhorn et al. 2022) on `u = (x, v)`:

    `dx = beta v / M dt`, `dv = -beta x dt - beta Gamma v / M dt + sqrt(2 Gamma beta) dW`,
    with friction `Gamma = 2 sqrt(M)` (critical damping), the [`LinearDiffusion`][] with
    `D = diag(0, Gamma)`, `Q = [[0, -1], [1, 0]]`, `P = diag(1, 1/M)`. The velocity starts from
    `N(0, gamma M)`; the stationary law is `N(0, I) x N(0, M I)`. Paper defaults: `M = 0.25`,
    `gamma = 0.04`, `beta = 4`, `T = 1`.
    """
    if not (math.isfinite(mass) and mass > 0):
        raise ValueError(f"`mass` must be finite and > 0, got {mass}.")
    if not (math.isfinite(gamma) and gamma >= 0):
        raise ValueError(f"`gamma` must be finite and >= 0, got {gamma}.")
    friction = 2.0 * math.sqrt(mass)
    return LinearDiffusion(
        D=np.diag([0.0, friction]),
        Q=np.array([[0.0, -1.0], [1.0, 0.0]]),
        P=np.diag([1.0, 1.0 / mass]),
        aux_covariance=np.array([[gamma * mass]]),
        beta=beta,
        t_data=t_data,
        t_noise=t_noise,
    )


@eqx.filter_jit
def _sscs(process: LinearDiffusion, score: Callable, u: Array, key: Key, num_steps: int):
    dtype = u.dtype
    ts = jnp.linspace(process.t_noise, process.t_data, num_steps + 1).astype(dtype)
    h = (process.t_noise - process.t_data) / num_steps
    # part A: du = -beta (D - Q) P u ds + sqrt(2 beta D) dW over h/2, solved exactly
    f_a = -process.beta * (process.D - process.Q) @ process.P
    e_a = jax.scipy.linalg.expm(0.5 * h * f_a)
    s_inf = process.stationary_covariance
    cov_a = s_inf - e_a @ s_inf @ e_a.T
    w, v = jnp.linalg.eigh(0.5 * (cov_a + cov_a.T))
    root_a = (v * jnp.sqrt(jnp.clip(w, 0.0))).astype(dtype)  # root_a root_a^T = cov_a
    e_a = e_a.astype(dtype)
    gain = (2.0 * process.beta * process.D).astype(dtype)
    p = process.P.astype(dtype)

    def half_a(u, k_):
        z = jax.random.normal(k_, u.shape, dtype)
        return u @ e_a.T + z @ root_a.T

    def body(u, inp):
        i, k_ = inp
        k1, k2 = jax.random.split(k_)
        u = half_a(u, k1)
        t_mid = ts[i] - 0.5 * h
        # part S: du = 2 beta D (score + P u) ds, one Euler step at the midpoint
        s = jax.vmap(lambda x: score(t_mid, x))(u)
        u = u + h * (s + u @ p.T) @ gain.T
        return half_a(u, k2), None

    keys = jax.random.split(key, num_steps)
    u, _ = jax.lax.scan(body, u, (jnp.arange(num_steps), keys))
    return u


def solve_cld(
    process: LinearDiffusion,
    score: Callable,
    u_init: Array,
    *,
    num_steps: int,
    key: Key,
) -> Array:
    """Sample the reverse SDE of a [`LinearDiffusion`][] with the symmetric splitting sampler
    of Dockhorn et al. (SSCS), from `t_noise` to `t_data` on a uniform grid.

    The reverse SDE `du = [-beta (D - Q) P u + 2 beta D (s + P u)] ds + sqrt(2 beta D) dW`
    (`s = grad_u log p_t(u)`) is split into its linear part, solved exactly over half steps
    (its stationary law is `N(0, P^-1)`), and the score correction `2 beta D (s + P u)`, an Euler
    step at the midpoint: A(h/2) S(h) A(h/2), one score evaluation per step.

    **Arguments:**

    - `process`: the forward process (e.g. [`critically_damped`][]`()`).
    - `score`: `score(t, u)` for ONE state `u` of shape `(dim, k)`, returning `grad_u log p_t`
      of the same shape (only its `D`-weighted part is used: the velocity part for CLD).
    - `u_init`: the batch at `t_noise`, shape `(batch, dim, k)` (e.g. `process.prior_sample`).
    - `num_steps`, `key`.

    **Returns:** the batch at `t_data`, shape `(batch, dim, k)`; `[..., 0]` are the data.
    """
    if not isinstance(process, LinearDiffusion):
        raise TypeError(f"`process` must be a LinearDiffusion, got {type(process).__name__}.")
    if not callable(score):
        raise TypeError("`score` must be a callable score(t, u).")
    u = jnp.asarray(u_init)
    if u.ndim != 3 or u.shape[-1] != process.block_size:
        raise ValueError(
            f"`u_init` must have shape (batch, dim, {process.block_size}), got {u.shape}."
        )
    if not jnp.issubdtype(u.dtype, jnp.floating):
        u = u.astype(jnp.result_type(float))
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 1:
        raise ValueError(f"`num_steps` must be a positive int, got {num_steps!r}.")
    return _sscs(process, score, u, key, num_steps)
