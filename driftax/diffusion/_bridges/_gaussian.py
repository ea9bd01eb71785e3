"""The closed-form Schrödinger bridge between two Gaussians (Bunne et al. 2023; the static
coupling is the entropic-OT plan of Mallasto et al. / Janati et al.).

Reference process: `dX = sigma dW` on `[0, 1]`. The static bridge is the entropic-OT plan with
cost `|x - y|^2 / 2` and regularization `sigma^2` (equivalently cost `|x - y|^2` and
`epsilon = 2 sigma^2`). Its joint law is Gaussian with cross-covariance

    C = 1/2 (S0^{1/2} D S0^{-1/2} - sigma^2 I),   D = (4 S0^{1/2} S1 S0^{1/2} + sigma^4 I)^{1/2},

the unique one whose joint precision has off-diagonal block `-I / sigma^2`. The dynamic bridge is
the mixture of Brownian bridges `X_t = (1 - t) X0 + t X1 + sigma sqrt(t (1 - t)) Z` over that
coupling, a Gaussian Markov process whose drift is `(E[X1 | X_t = x] - x) / (1 - t)`.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._custom_types import Array, Key, Point, ScalarLike
from ...energies._metrics_ot import _sqrtm_psd


def _check_mean_cov(mean, cov, name_mean, name_cov):
    m = jnp.asarray(mean)
    c = jnp.asarray(cov)
    if not jnp.issubdtype(m.dtype, jnp.floating):
        m = m.astype(jnp.result_type(float))
    if not jnp.issubdtype(c.dtype, jnp.floating):
        c = c.astype(jnp.result_type(float))
    if m.ndim != 1:
        raise ValueError(f"`{name_mean}` must have shape (d,), got {tuple(m.shape)}.")
    d = m.shape[0]
    if c.shape != (d, d):
        raise ValueError(f"`{name_cov}` must have shape ({d}, {d}), got {tuple(c.shape)}.")
    if not isinstance(c, jax.core.Tracer):
        cn = np.asarray(c, dtype=float)
        if not np.all(np.isfinite(cn)) or not np.all(np.isfinite(np.asarray(m, float))):
            raise ValueError(f"`{name_mean}` and `{name_cov}` must be finite.")
        if not np.allclose(cn, cn.T, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(cn).max())):
            raise ValueError(f"`{name_cov}` must be symmetric.")
        if np.linalg.eigvalsh(0.5 * (cn + cn.T)).min() <= 0:
            raise ValueError(f"`{name_cov}` must be positive definite.")
    return m, 0.5 * (c + c.T)


def check_time(t, name: str = "t"):
    """`t` as a float array; concrete values must lie in `[0, 1]` (eager `ValueError`)."""
    t = jnp.asarray(t)
    if not jnp.issubdtype(t.dtype, jnp.floating):
        t = t.astype(jnp.result_type(float))
    if not isinstance(t, jax.core.Tracer):
        tn = np.asarray(t)
        if not np.all(np.isfinite(tn)) or np.any(tn < 0) or np.any(tn > 1):
            raise ValueError(f"`{name}` must lie in [0, 1], got {tn}.")
    return t


def check_sigma(sigma, name: str = "sigma") -> float:
    """A positive finite float (the reference noise scale)."""
    if isinstance(sigma, jax.core.Tracer):
        return sigma  # type: ignore[return-value]
    s = float(np.asarray(sigma))
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {sigma!r}.")
    return s


class GaussianBridge(eqx.Module):
    """The Schrödinger bridge between `N(mean0, cov0)` at `t = 0` and `N(mean1, cov1)` at `t = 1`
    for the reference process `sigma · W_t`, in closed form.

    Equivalently, the entropic optimal-transport plan with cost `|x - y|^2 / 2` and
    regularization `sigma^2` (`epsilon = 2 sigma^2` for the cost `|x - y|^2`). `sigma -> 0` gives
    the Monge map, `sigma -> inf` the independent coupling.

    **Arguments:**

    - `mean0`, `cov0`: the source Gaussian (shape `(d,)`, `(d, d)` positive definite).
    - `mean1`, `cov1`: the target Gaussian.
    - `sigma`: the reference noise scale (`> 0`).

    **Methods:** `coupling_covariance()` (`Cov(X0, X1)`), `joint()` (the law of `(X0, X1)`),
    `marginal(t) -> (mean, cov)` of `X_t`, `conditional(x0) -> (mean, cov)` of `X1 | X0 = x0`,
    `sample_coupling(key, n)`, and the fields of the bridge SDE `dX = drift dt + sigma dW`:
    `drift(t, x)`, `backward_drift(t, x)`, `score(t, x)` and the probability-flow
    `velocity(t, x)`, all for ONE unbatched `x` (use them with [`solve_bridge`][]).

    ```python
    import jax, jax.numpy as jnp
    import driftax.diffusion as dd
    bridge = dd.GaussianBridge(jnp.zeros(2), jnp.eye(2), jnp.ones(2), 4.0 * jnp.eye(2), sigma=1.0)
    mean, cov = bridge.marginal(0.5)
    ```
    """

    mean0: Array
    cov0: Array
    mean1: Array
    cov1: Array
    sigma: float

    def __init__(self, mean0, cov0, mean1, cov1, sigma):
        m0, c0 = _check_mean_cov(mean0, cov0, "mean0", "cov0")
        m1, c1 = _check_mean_cov(mean1, cov1, "mean1", "cov1")
        if m0.shape != m1.shape:
            raise ValueError(
                f"`mean0` and `mean1` must have the same dimension, got {m0.shape[0]} and "
                f"{m1.shape[0]}."
            )
        dtype = jnp.result_type(m0, c0, m1, c1)
        self.mean0, self.cov0 = m0.astype(dtype), c0.astype(dtype)
        self.mean1, self.cov1 = m1.astype(dtype), c1.astype(dtype)
        self.sigma = check_sigma(sigma)

    @property
    def dim(self) -> int:
        """The dimension `d`."""
        return self.mean0.shape[0]

    @property
    def epsilon(self):
        """The entropic regularization `sigma^2` (cost `|x - y|^2 / 2`)."""
        return self.sigma**2

    def coupling_covariance(self) -> Array:
        """`Cov(X0, X1) = E[(X0 - mean0)(X1 - mean1)^T]` of the static bridge, shape `(d, d)`."""
        s0h = _sqrtm_psd(self.cov0)
        s0h_inv = jnp.linalg.inv(s0h)
        eye = jnp.eye(self.dim, dtype=self.cov0.dtype)
        e = self.epsilon
        dmat = _sqrtm_psd(4.0 * s0h @ self.cov1 @ s0h + e**2 * eye)
        return 0.5 * (s0h @ dmat @ s0h_inv - e * eye)

    def joint(self) -> tuple[Array, Array]:
        """`(mean, cov)` of the static coupling `(X0, X1)`, shapes `(2d,)`, `(2d, 2d)`."""
        c = self.coupling_covariance()
        cov = jnp.block([[self.cov0, c], [c.T, self.cov1]])
        return jnp.concatenate([self.mean0, self.mean1]), 0.5 * (cov + cov.T)

    def conditional(self, x0: Point) -> tuple[Array, Array]:
        """`(mean, cov)` of `X1 | X0 = x0` (the conditional plan, a Gaussian)."""
        c = self.coupling_covariance()
        a = jnp.linalg.solve(self.cov0, c).T  # C^T S0^{-1}
        cov = self.cov1 - a @ c
        return self.mean1 + a @ (x0 - self.mean0), 0.5 * (cov + cov.T)

    def sample_coupling(self, key: Key, n: int) -> tuple[Array, Array]:
        """`n` exact draws of `(X0, X1)`, each of shape `(n, d)`."""
        mean, cov = self.joint()
        z = jax.random.multivariate_normal(key, mean, cov, (n,), method="eigh")
        return z[:, : self.dim], z[:, self.dim :]

    def _moments(self, t):
        c = self.coupling_covariance()
        eye = jnp.eye(self.dim, dtype=self.cov0.dtype)
        mean = (1.0 - t) * self.mean0 + t * self.mean1
        cov = (
            (1.0 - t) ** 2 * self.cov0
            + t**2 * self.cov1
            + t * (1.0 - t) * (c + c.T + self.epsilon * eye)
        )
        # (E[X1 | X_t] - X_t) / (1 - t) = mean1 - mean0 + M Σ_t^{-1} (x - mean_t), with M below:
        # (Cov(X1, X_t) - Σ_t) / (1 - t) written without the division (finite at t = 1)
        m = t * self.cov1 - (1.0 - t) * self.cov0 + (1.0 - t) * c.T - t * c - t * self.epsilon * eye
        return mean, 0.5 * (cov + cov.T), m

    def marginal(self, t: ScalarLike) -> tuple[Array, Array]:
        """`(mean, cov)` of `X_t`: `mean = (1 - t) mean0 + t mean1`, `cov = (1 - t)^2 cov0 +
        t^2 cov1 + t (1 - t) (C + C^T + sigma^2 I)` with `C` the coupling covariance."""
        mean, cov, _ = self._moments(check_time(t))
        return mean, cov

    def score(self, t: ScalarLike, x: Point) -> Point:
        """`∇ log p_t(x) = -cov_t^{-1} (x - mean_t)`."""
        mean, cov, _ = self._moments(t)
        return -jnp.linalg.solve(cov, x - mean)

    def drift(self, t: ScalarLike, x: Point) -> Point:
        """The forward drift of the bridge SDE `dX = drift dt + sigma dW` (from `t = 0` to
        `t = 1`): `(E[X1 | X_t = x] - x) / (1 - t)`, an affine function of `x` (its limit at
        `t = 1` included)."""
        mean, cov, m = self._moments(t)
        return self.mean1 - self.mean0 + m @ jnp.linalg.solve(cov, x - mean)

    def backward_drift(self, t: ScalarLike, x: Point) -> Point:
        """The drift of the time-reversed bridge in reversed time (from `t = 1` to `t = 0`):
        `(E[X0 | X_t = x] - x) / t = sigma^2 score - drift`."""
        return self.epsilon * self.score(t, x) - self.drift(t, x)

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity `drift - sigma^2 / 2 · score`: the ODE with the bridge's
        marginals."""
        mean, cov, m = self._moments(t)
        eye = jnp.eye(self.dim, dtype=self.cov0.dtype)
        return (
            self.mean1
            - self.mean0
            + (m + 0.5 * self.epsilon * eye) @ jnp.linalg.solve(cov, x - mean)
        )
