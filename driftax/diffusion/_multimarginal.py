"""Multimarginal stochastic interpolants (Albergo, Boffi, Lindsey, Vanden-Eijnden 2023).

`K` marginals `rho_1 .. rho_K` and a time `alpha` on the simplex `{alpha_k >= 0, sum alpha_k =
1}`: `x_alpha = sum_k alpha_k x_k + gamma(alpha) z`, `x_k ~ rho_k` independent, `z ~ N(0, I)`,
with `gamma(alpha) = gamma_scale · sqrt(1 - |alpha|^2)`, zero at the vertices (so `x_{e_k} =
x_k`: the law at vertex `k` is `rho_k`) and `gamma_scale · sqrt(2 t (1 - t))` on an edge.

The multimarginal velocity has one component per vertex direction, `g_k(alpha, x) =
E[x_k + ∂_k gamma(alpha) z | x_alpha = x]`, learned by one quadratic regression; along any curve
`alpha(t)` on the simplex, `dX/dt = sum_k alpha_k'(t) g_k(alpha(t), X)` carries the law of
`x_{alpha(0)}` to that of `x_{alpha(t)}` (an edge `e_i -> e_j` transports `rho_i` to `rho_j`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_count, check_int
from .._custom_types import Array, Key, Point, Scalar
from .._nn import TimeMLP
from .._training import AbstractBatcher, fit_losses
from ._bridges._solve import solve_bridge
from ._solve import Solution
from ._solvers import AbstractSolver, Euler, Heun


def _check_alpha(alpha, num_marginals: int, name: str = "alpha") -> Array:
    a = jnp.asarray(alpha)
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.result_type(float))
    if a.shape[-1:] != (num_marginals,):
        raise ValueError(f"`{name}` must end in an axis of {num_marginals}, got {a.shape}.")
    if not isinstance(a, jax.core.Tracer):
        an = np.asarray(a, float)
        if np.any(an < -1e-9) or not np.allclose(an.sum(-1), 1.0, atol=1e-6):
            raise ValueError(f"`{name}` must lie on the simplex (>= 0, summing to 1), got {an}.")
    return a


class MultimarginalInterpolant(eqx.Module):
    """The simplex-time interpolant `x_alpha = sum_k alpha_k x_k + gamma(alpha) z` between
    `num_marginals` marginals, `gamma(alpha) = gamma_scale · sqrt(1 - |alpha|^2)`.

    **Arguments:**

    - `num_marginals`: `K >= 2` (with `K = 2` and the edge `alpha = (t, 1 - t)` this is the
      two-sided linear `StochasticInterpolant` with its `gamma_scale` = `sqrt(2)` times this
      one).
    - `gamma_scale`: `>= 0` (`0`: a deterministic interpolant; `1`: `sqrt(2 t (1 - t))` on edges).
    - `concentration`: the Dirichlet concentration of the training `alpha` (`1`: uniform on
      the simplex; `< 1` puts more of them near edges and vertices).
    - `alpha_floor`: training `alpha` are mixed as `(1 - K floor) alpha + floor` to keep them off
      the vertices, where `∂ gamma` is infinite.
    """

    num_marginals: int = eqx.field(static=True)
    gamma_scale: float = 1.0
    concentration: float = 1.0
    alpha_floor: float = 1e-3

    def __check_init__(self):
        check_int(self.num_marginals, "num_marginals", 2)
        if not self.gamma_scale >= 0:
            raise ValueError(f"`gamma_scale` must be >= 0, got {self.gamma_scale!r}.")
        if not self.concentration > 0:
            raise ValueError(f"`concentration` must be > 0, got {self.concentration!r}.")
        if not 0 <= self.alpha_floor * self.num_marginals < 1:
            raise ValueError(
                f"`alpha_floor` must lie in [0, 1 / num_marginals), got {self.alpha_floor!r}."
            )

    def vertex(self, k: int) -> Array:
        """The simplex vertex `e_k` (where the law is the marginal `k`)."""
        if not 0 <= int(k) < self.num_marginals:
            raise ValueError(f"vertex index must lie in [0, {self.num_marginals}), got {k!r}.")
        return jnp.eye(self.num_marginals, dtype=jnp.result_type(float))[int(k)]

    def gamma(self, alpha) -> Scalar:
        """`gamma(alpha) = gamma_scale sqrt(1 - |alpha|^2)` (zero at the vertices)."""
        return self.gamma_scale * jnp.sqrt(jnp.clip(1.0 - jnp.sum(alpha**2, -1), 0.0))

    def gamma_gradient(self, alpha) -> Array:
        """`∂ gamma / ∂ alpha_k = -gamma_scale^2 alpha_k / gamma`, shape `(K,)` (0 where
        `gamma_scale = 0`; infinite at the vertices)."""
        g = self.gamma(alpha)
        return jnp.where(self.gamma_scale > 0, -(self.gamma_scale**2) * alpha / g, 0.0)

    def interpolate(self, alpha, xs: Array, z: Point) -> Point:
        """`x_alpha` for ONE draw: `xs` of shape `(K, d)` (one point per marginal), `z` `(d,)`."""
        return jnp.tensordot(alpha, xs, 1) + self.gamma(alpha) * z

    def velocity_targets(self, alpha, xs: Array, z: Point) -> Array:
        """The regression targets `x_k + ∂_k gamma(alpha) z`, shape `(K, d)`, whose
        conditional means given `x_alpha` are the velocities `g_k`."""
        return xs + self.gamma_gradient(alpha)[:, None] * z

    def sample_alpha(self, key: Key, n: int, dtype=None) -> Array:
        """`n` training times on the simplex, shape `(n, K)`."""
        dtype = jnp.result_type(float) if dtype is None else dtype
        conc = jnp.full((self.num_marginals,), self.concentration, dtype)
        a = jax.random.dirichlet(key, conc, (n,), dtype)
        return (1.0 - self.num_marginals * self.alpha_floor) * a + self.alpha_floor


class MultimarginalGaussianFields(eqx.Module):
    """The exact law and velocities of a [`MultimarginalInterpolant`][] between Gaussian
    marginals `N(means[k], covs[k])` (independent coupling): `x_alpha` is Gaussian with mean
    `sum_k alpha_k m_k` and covariance `C = sum_k alpha_k^2 S_k + gamma^2 I`, and
    `g_k(alpha, x) = m_k + (alpha_k S_k + gamma ∂_k gamma I) C^{-1} (x - mean)`.
    """

    interpolant: MultimarginalInterpolant
    means: Array
    covs: Array

    def __init__(self, interpolant: MultimarginalInterpolant, means, covs):
        if not isinstance(interpolant, MultimarginalInterpolant):
            raise TypeError("`interpolant` must be a MultimarginalInterpolant.")
        m = jnp.asarray(means, jnp.result_type(float))
        c = jnp.asarray(covs, m.dtype)
        k = interpolant.num_marginals
        if m.ndim != 2 or m.shape[0] != k or c.shape != (k, m.shape[1], m.shape[1]):
            raise ValueError(
                f"`means` must have shape ({k}, d) and `covs` ({k}, d, d), got {m.shape}, "
                f"{c.shape}."
            )
        if np.any(np.linalg.eigvalsh(np.asarray(c, float)) <= 0):
            raise ValueError("every matrix in `covs` must be positive definite.")
        self.interpolant, self.means, self.covs = interpolant, m, 0.5 * (c + c.swapaxes(1, 2))

    def marginal(self, alpha) -> tuple[Array, Array]:
        """`(mean, cov)` of `x_alpha`."""
        alpha = _check_alpha(alpha, self.interpolant.num_marginals)
        return self._marginal(alpha)

    def _marginal(self, alpha):
        d = self.means.shape[1]
        cov = jnp.einsum("k,kij->ij", alpha**2, self.covs)
        cov = cov + self.interpolant.gamma(alpha) ** 2 * jnp.eye(d, dtype=cov.dtype)
        return alpha @ self.means, cov

    def velocities(self, alpha, x: Point) -> Array:
        """`g_k(alpha, x)` for every `k`, shape `(K, d)` (ONE unbatched `x`)."""
        mean, cov = self._marginal(alpha)
        w = jnp.linalg.solve(cov, x - mean)
        it = self.interpolant
        ggd = jnp.where(it.gamma_scale > 0, -(it.gamma_scale**2) * alpha, 0.0)  # gamma ∂_k gamma
        return self.means + jnp.einsum("k,kij,j->ki", alpha, self.covs, w) + ggd[:, None] * w

    def __call__(self, alpha, x: Point) -> Array:
        return self.velocities(alpha, x)


class MultimarginalMLP(eqx.Module):
    """One residual time-MLP per vertex direction, each taking the `K` simplex coordinates as
    its times: `model(alpha, x) -> (K, d)`, the velocities `g_k(alpha, x)`.

    **Arguments:** `dim` (`d`), `num_marginals` (`K`), `key`, `hidden`, `depth`,
    `max_frequency` (of the sinusoidal embedding of `alpha`).
    """

    nets: TimeMLP

    def __init__(
        self,
        dim: int,
        num_marginals: int,
        *,
        key: Key,
        hidden: int = 64,
        depth: int = 3,
        max_frequency: float = 10.0,
    ):
        k = check_int(num_marginals, "num_marginals", 2)

        def make(kk):
            return TimeMLP(
                dim, key=kk, hidden=hidden, depth=depth, num_frequencies=4,
                max_frequency=max_frequency, num_times=k,
            )  # fmt: skip

        self.nets = eqx.filter_vmap(make)(jax.random.split(key, k))

    def __call__(self, alpha, x: Point) -> Array:
        return eqx.filter_vmap(lambda net: net(alpha, x))(self.nets)


class MultimarginalLoss(eqx.Module):
    """`sum_k ||model(alpha, x_alpha)_k - (x_k + ∂_k gamma z)||^2` (averaged) on a batch: a tuple
    of `K` arrays `(B, d)`, one minibatch per marginal, drawn independently."""

    interpolant: MultimarginalInterpolant

    def __call__(self, model, batch, *, key: Key) -> Scalar:
        xs = jnp.stack(batch, axis=1)  # (B, K, d)
        n = xs.shape[0]
        ka, kz = jax.random.split(key)
        alpha = self.interpolant.sample_alpha(ka, n, xs.dtype)
        z = jax.random.normal(kz, (n, xs.shape[2]), xs.dtype)
        it = self.interpolant

        def one(a, x, zz):
            xt = it.interpolate(a, x, zz)
            return jnp.mean((model(a, xt) - it.velocity_targets(a, x, zz)) ** 2)

        return jnp.mean(jax.vmap(one)(alpha, xs, z))


class _IndependentMinibatches(AbstractBatcher):
    """`batch_size` rows drawn with replacement from each sample set, independently."""

    sets: tuple[Array, ...]
    batch_size: int = eqx.field(static=True)

    def next(self, state, model, key, step):
        keys = jax.random.split(key, len(self.sets))
        batch = tuple(
            s[jax.random.randint(k, (self.batch_size,), 0, s.shape[0])]
            for k, s in zip(keys, self.sets, strict=True)
        )
        return batch, state


def check_marginal_sets(marginals, num_marginals: int) -> tuple[Array, ...]:
    """`K` finite sample sets `(n_k, d)` of one dimension (eager errors naming `marginals`)."""
    if not isinstance(marginals, Sequence) or len(marginals) != num_marginals:
        raise ValueError(f"`marginals` must be a sequence of {num_marginals} sample arrays.")
    sets = [jnp.asarray(m) for m in marginals]
    for i, s in enumerate(sets):
        if s.ndim != 2 or s.shape[0] < 1:
            raise ValueError(f"`marginals[{i}]` must have shape (n, d), got {tuple(s.shape)}.")
        if not bool(jnp.all(jnp.isfinite(s))):
            raise ValueError(f"`marginals[{i}]` must be finite.")
        if s.shape[1] != sets[0].shape[1]:
            raise ValueError(
                f"`marginals` must share one dimension, got {sets[0].shape[1]} and "
                f"{s.shape[1]} (marginals[{i}])."
            )
    dtype = jnp.result_type(*sets, float)
    return tuple(s.astype(dtype) for s in sets)


def fit_multimarginal(
    model,
    interpolant: MultimarginalInterpolant,
    marginals: Sequence[Array],
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int = 256,
    ema_decay: float | None = None,
    progress: bool = False,
):
    """Learn the multimarginal velocity `model(alpha, x) -> (K, d)` (e.g. a
    [`MultimarginalMLP`][]) from samples of the `K` marginals by [`MultimarginalLoss`][] on the
    shared training loop.

    **Arguments:** `model`, `interpolant` (a [`MultimarginalInterpolant`][]), `marginals` (`K`
    arrays `(n_k, d)`), `key`, `optimizer`, `num_steps`, `batch_size` (rows per marginal and
    step), `ema_decay`, `progress`.

    **Returns:** `(trained_model, losses)` with `losses` of shape `(num_steps,)`.
    """
    if not isinstance(interpolant, MultimarginalInterpolant):
        raise TypeError("`interpolant` must be a MultimarginalInterpolant.")
    sets = check_marginal_sets(marginals, interpolant.num_marginals)
    batcher = _IndependentMinibatches(sets, check_count(batch_size, "batch_size"))
    loss = MultimarginalLoss(interpolant)
    return fit_losses(
        model, loss, batcher, key, optimizer, num_steps, ema_decay, progress, "fit_multimarginal"
    )


class _SimplexFlow(eqx.Module):
    """`dX/dt = sum_k alpha_k'(t) g_k(alpha(t), X)` on `t in [0, 1]` along the segment
    `alpha(t) = (1 - t) start + t end` (a bridge with `sigma = 0` for `solve_bridge`)."""

    velocities: Callable
    start: Array
    end: Array
    sigma: float = 0.0

    def velocity(self, t, x):
        alpha = (1.0 - t) * self.start + t * self.end
        return (self.end - self.start) @ self.velocities(alpha, x)

    def drift(self, t, x):
        return self.velocity(t, x)


def solve_multimarginal(
    velocities: Callable,
    x_init: Array,
    path,
    *,
    num_steps: int,
    solver: AbstractSolver | None = None,
    save_trajectory: bool = False,
    full_output: bool = False,
) -> Array | Solution | list[Solution]:
    """Transport samples `x_init` of the law at `path[0]` along a piecewise-linear path on the
    simplex by `dX/dt = sum_k alpha_k' g_k(alpha, X)`.

    **Arguments:**

    - `velocities`: `velocities(alpha, x) -> (K, d)` for ONE unbatched `x` (a trained
      [`MultimarginalMLP`][], or [`MultimarginalGaussianFields`][]).
    - `x_init`: `(n, d)` samples at `path[0]`.
    - `path`: waypoints on the simplex, shape `(m, K)`, `m >= 2` (e.g. `np.eye(3)[[0, 2]]`
      for the edge from marginal 0 to marginal 2, `np.eye(3)[[0, 1, 2]]` through marginal 1).
    - `num_steps`: steps per segment; `solver`: `Heun()` (default) or `Euler()`.
    - `save_trajectory`, `full_output`: as for [`solve_bridge`][]; with `full_output=True`
      a list of one [`Solution`][] per segment.

    **Returns:** the samples at `path[-1]` (shape `(n, d)`).
    """
    if not callable(velocities):
        raise TypeError("`velocities` must be a callable (alpha, x) -> (K, d).")
    waypoints = jnp.asarray(path, jnp.result_type(float))
    if waypoints.ndim != 2 or waypoints.shape[0] < 2:
        raise ValueError(f"`path` must have shape (m >= 2, K), got {waypoints.shape}.")
    waypoints = _check_alpha(waypoints, waypoints.shape[1], "path")
    solver = Heun() if solver is None else solver
    if not isinstance(solver, Euler | Heun):
        raise TypeError("`solver` must be Euler() or Heun() (the transport is an ODE).")
    x = jnp.asarray(x_init)
    sols = []
    for a, b in zip(waypoints[:-1], waypoints[1:], strict=True):
        flow = _SimplexFlow(velocities, a, b)
        sol = solve_bridge(
            flow,
            x,
            num_steps=num_steps,
            solver=solver,
            save_trajectory=save_trajectory,
            full_output=True,
        )
        assert isinstance(sol, Solution)
        sols.append(sol)
        bad = np.asarray(sol.failed_step)
        if not full_output and np.any(bad >= 0):
            raise RuntimeError(f"{int(np.sum(bad >= 0))} samples became non-finite.")
        x = sol.x
    return sols if full_output else x
