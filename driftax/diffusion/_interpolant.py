"""General stochastic interpolants (Albergo, Boffi, Vanden-Eijnden 2023):
`x_t = a(t) x0 + b(t) x1 + gamma(t) z`, `x0 ~ rho0` (base), `x1 ~ rho1` (target),
`z ~ N(0, I)`; their losses, exact fields between Gaussian mixtures, and sampling by the ODE
`dx = b dt` or the SDEs `dx = (b + eps s) dt + sqrt(2 eps) dW`.

Time convention (the one of every path in `driftax.diffusion`): the noise / base end is
`t_noise = 1` and the data / target end is `t_data = 0`, so `x_1 = x0` and `x_0 = x1`. The
paper's time is `1 - t`; with it, the paper's coefficients are `a(1 - t)`, `b(1 - t)`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, Scalar, ScalarLike
from ..energies import GaussianMixture
from ._grid import _check_num_steps, check_grid
from ._losses import AbstractLoss
from ._solve import Solution, _check_x_init, _integrate
from ._solvers import AbstractSolver, Euler, EulerMaruyama, Heun


def _t(t):
    t = jnp.asarray(t)
    return t if jnp.issubdtype(t.dtype, jnp.floating) else t.astype(jnp.result_type(float))


class StochasticInterpolant(eqx.Module):
    """The interpolant `x_t = a(t) x0 + b(t) x1 + gamma(t) z` on `t` in `[0, 1]`, with the base
    `x0` at `t = 1` (`t_noise`) and the target `x1` at `t = 0` (`t_data`), as for every path of
    `driftax.diffusion` (e.g. `LinearInterpolant`: noise at `t = 1`).

    - `kind="linear"`: `a = t`, `b = 1 - t`; `kind="trigonometric"`: `a = sin(pi t / 2)`,
      `b = cos(pi t / 2)` (the paper's coefficients at its time `1 - t`).
    - `gamma(t) = gamma_scale · sqrt(t (1 - t))` (`gamma_scale = sqrt(2)` is the paper's
      `sqrt(2 t (1 - t))`; `0` gives a deterministic interpolant, e.g. the one-sided
      Gaussian-base interpolant of flow matching).

    Two-sided: `x0` and `x1` are both arbitrary data. One-sided: `x0 ~ N(0, I)`.
    `t_noise = 1` and `t_data = 0` are the ends `solve_interpolant` integrates between (the
    base end and the target end); `t_min`/`t_max` keep training times off the ends where
    `gamma'` is infinite.
    """

    kind: str = eqx.field(default="linear", static=True)
    gamma_scale: float = math.sqrt(2.0)
    t_noise: float = 1.0
    t_data: float = 0.0
    t_min: float = 1e-3
    t_max: float = 1.0 - 1e-3

    def __check_init__(self):
        if self.kind not in ("linear", "trigonometric"):
            raise ValueError(f"`kind` must be 'linear' or 'trigonometric', got {self.kind!r}.")
        if not self.gamma_scale >= 0:
            raise ValueError(f"`gamma_scale` must be >= 0, got {self.gamma_scale}.")
        for name in ("t_noise", "t_data", "t_min", "t_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"`{name}` must lie in [0, 1].")

    @property
    def domain(self) -> tuple[float, float]:
        """Times where the interpolant is defined."""
        return (0.0, 1.0)

    def coefficients(self, t: ScalarLike) -> tuple[Scalar, Scalar, Scalar]:
        """`(a(t), b(t), gamma(t))`."""
        t = _t(t)
        if self.kind == "linear":
            a, b = t, 1.0 - t
        else:
            a, b = jnp.sin(0.5 * math.pi * t), jnp.cos(0.5 * math.pi * t)
        g = self.gamma_scale * jnp.sqrt(jnp.clip(t * (1.0 - t), 0.0))
        return a, b, g

    def derivatives(self, t: ScalarLike) -> tuple[Scalar, Scalar, Scalar]:
        """`(a'(t), b'(t), gamma(t) gamma'(t))` (the last is finite at the ends)."""
        t = _t(t)
        if self.kind == "linear":
            da, db = jnp.ones_like(t), -jnp.ones_like(t)
        else:
            da = 0.5 * math.pi * jnp.cos(0.5 * math.pi * t)
            db = -0.5 * math.pi * jnp.sin(0.5 * math.pi * t)
        ggd = 0.5 * self.gamma_scale**2 * (1.0 - 2.0 * t)
        return da, db, ggd

    def interpolate(self, t: ScalarLike, x0: Point, x1: Point, z: Point) -> Point:
        """`x_t` for ONE triple `(x0, x1, z)`."""
        a, b, g = self.coefficients(t)
        return a * x0 + b * x1 + g * z

    def velocity_target(self, t: ScalarLike, x0: Point, x1: Point, z: Point) -> Point:
        """`∂_t I + gamma' z`, whose conditional mean is the drift `b(t, x)`."""
        t = _t(t)
        da, db, ggd = self.derivatives(t)
        _, _, g = self.coefficients(t)
        return da * x0 + db * x1 + ggd / g * z

    def epsilon(self, t):
        """Stochastic interpolants have no default diffusion: pass `epsilon` to the solver."""
        raise ValueError(
            "an interpolant SDE needs an explicit diffusion: use EulerMaruyama(epsilon=...)."
        )

    def sample_time(self, key: Key, n: int, dtype) -> Array:
        """`n` training times uniform on `[t_min, t_max]`."""
        return jax.random.uniform(key, (n,), dtype, self.t_min, self.t_max)


# --------------------------------------------------------------------------------- losses


class InterpolantLoss(AbstractLoss):
    """The quadratic losses of stochastic interpolants, for a model `model(t, x)`:

    - `target="velocity"`: `||b(t, x_t) - (∂_t I + gamma' z)||^2` (the drift `b`);
    - `target="noise"`: `||eta(t, x_t) - z||^2` (the paper's denoiser `eta`, a noise prediction;
      score `s = -eta/gamma`).

    `base` draws the `x0` batch, `base(key, shape) -> array`; `None` means `x0 ~ N(0, I)`
    (one-sided). The model is called as `model(t, x)` for ONE unbatched `x`.
    """

    interpolant: StochasticInterpolant
    target: str = eqx.field(default="velocity", static=True)
    base: Callable | None = None

    def __check_init__(self):
        if self.target not in ("velocity", "noise"):
            raise ValueError(f"`target` must be 'velocity' or 'noise', got {self.target!r}.")
        if self.target == "noise" and self.interpolant.gamma_scale == 0:
            raise ValueError("target='noise' needs gamma_scale > 0.")

    def __call__(self, model, batch, *, key):
        n = batch.shape[0]
        k0, kz, kt = jax.random.split(key, 3)
        if self.base is None:
            x0 = jax.random.normal(k0, batch.shape, batch.dtype)
        else:
            x0 = jnp.asarray(self.base(k0, batch.shape), batch.dtype)
        z = jax.random.normal(kz, batch.shape, batch.dtype)
        t = self.interpolant.sample_time(kt, n, batch.dtype)
        it = self.interpolant

        def one(a, b, zz, ti):
            xt = it.interpolate(ti, a, b, zz)
            want = it.velocity_target(ti, a, b, zz) if self.target == "velocity" else zz
            return jnp.mean((model(ti, xt) - want) ** 2)

        return jnp.mean(jax.vmap(one)(x0, batch, z, t))


# --------------------------------------------------------------------------- exact fields


class InterpolantMixtureFields(eqx.Module):
    """Exact drift, score and law of a stochastic interpolant between two Gaussian mixtures
    (independent coupling): at time t, `x_t` is a mixture of `K0 × K1` Gaussians with means
    `a mu0_i + b mu1_j` and covariances `a^2 S0_i + b^2 S1_j + gamma^2 I`, and every
    conditional expectation is linear within a component. Test fields for interpolant solvers
    and losses (cf. `interflow/gmm.py` of the paper's code).
    """

    interpolant: StochasticInterpolant
    base: GaussianMixture
    target: GaussianMixture

    def __check_init__(self):
        if tuple(self.base.event_shape) != tuple(self.target.event_shape):
            raise ValueError("`base` and `target` must share an event shape.")

    def _components(self, t):
        a, b, g = self.coefficients(t)
        s0 = self.base.component_covariances()
        s1 = self.target.component_covariances()
        d = self.base.dim
        means = a * self.base.means[:, None, :] + b * self.target.means[None, :, :]
        covs = a**2 * s0[:, None] + b**2 * s1[None, :] + g**2 * jnp.eye(d)
        logw = self.base.log_weights[:, None] + self.target.log_weights[None, :]
        k = means.shape[0] * means.shape[1]
        return (
            logw.reshape(k),
            means.reshape(k, d),
            covs.reshape(k, d, d),
            jnp.broadcast_to(s0[:, None], (s0.shape[0], s1.shape[0], d, d)).reshape(k, d, d),
            jnp.broadcast_to(s1[None, :], (s0.shape[0], s1.shape[0], d, d)).reshape(k, d, d),
            jnp.repeat(self.base.means, s1.shape[0], axis=0),
            jnp.tile(self.target.means, (s0.shape[0], 1)),
        )

    def coefficients(self, t):
        """The interpolant's `(a, b, gamma)` at `t`."""
        return self.interpolant.coefficients(t)

    def _posterior(self, t, x):
        logw, means, covs, s0, s1, mu0, mu1 = self._components(t)
        chol = jnp.linalg.cholesky(covs)
        r = x - means
        sol = jax.vmap(lambda L, v: jax.scipy.linalg.cho_solve((L, True), v))(chol, r)
        z = jax.vmap(lambda L, v: jax.scipy.linalg.solve_triangular(L, v, lower=True))(chol, r)
        half_logdet = jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), -1)
        d = x.shape[0]
        logp = logw - 0.5 * jnp.sum(z**2, -1) - half_logdet - 0.5 * d * math.log(2 * math.pi)
        return logp, sol, s0, s1, mu0, mu1

    def log_density(self, t: ScalarLike, x: Point) -> Scalar:
        """Log density of `x_t` at `x`."""
        return jax.nn.logsumexp(self._posterior(_t(t), x)[0])

    def score(self, t: ScalarLike, x: Point) -> Point:
        """`∇ log p_t(x)`."""
        logp, sol, *_ = self._posterior(_t(t), x)
        return -jax.nn.softmax(logp) @ sol

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The drift `b(t, x) = E[a' x0 + b' x1 + gamma' z | x_t = x]`."""
        t = _t(t)
        a, b, _ = self.coefficients(t)
        da, db, ggd = self.interpolant.derivatives(t)
        logp, sol, s0, s1, mu0, mu1 = self._posterior(t, x)
        e0 = mu0 + a * jnp.einsum("kij,kj->ki", s0, sol)
        e1 = mu1 + b * jnp.einsum("kij,kj->ki", s1, sol)
        comp = da * e0 + db * e1 + ggd * sol
        return jax.nn.softmax(logp) @ comp

    def noise(self, t: ScalarLike, x: Point) -> Point:
        """The noise prediction (the paper's denoiser)
        `eta(t, x) = E[z | x_t = x] = -gamma(t) score(t, x)`."""
        return -self.coefficients(t)[2] * self.score(t, x)

    def sample(self, key: Key, t: ScalarLike, n: int) -> Array:
        """`n` exact draws of `x_t`."""
        k0, k1, kz = jax.random.split(key, 3)
        x0 = self.base.sample(k0, n)
        x1 = self.target.sample(k1, n)
        z = jax.random.normal(kz, x0.shape, x0.dtype)
        return jax.vmap(lambda a, b, c: self.interpolant.interpolate(t, a, b, c))(x0, x1, z)


# -------------------------------------------------------------------------------- sampling


class InterpolantField(eqx.Module):
    """A drift `velocity(t, x)` and optional `score(t, x)` of a stochastic interpolant, in the
    form the Euler, Heun and Euler–Maruyama solvers consume."""

    velocity_fn: Callable
    score_fn: Callable | None
    path: StochasticInterpolant

    def velocity(self, t, x):
        """The drift."""
        return self.velocity_fn(t, x)

    def score(self, t, x):
        """The score (required for SDE sampling)."""
        if self.score_fn is None:
            raise TypeError("this interpolant field has no `score`; give one for SDE sampling.")
        return self.score_fn(t, x)

    def get_many(self, t, x, targets):
        """The requested `("velocity", "score")` fields."""
        return tuple(
            self.velocity(t, x) if tg == "velocity" else self.score(t, x) for tg in targets
        )


def _solve_interpolant_full(
    solver: AbstractSolver,
    interpolant: StochasticInterpolant,
    x_init: Array,
    *,
    velocity: Callable,
    score: Callable | None = None,
    num_steps: int | None = None,
    ts: Array | None = None,
    key: Key | None = None,
    save_trajectory: bool = False,
) -> Solution:
    """[`solve_interpolant`][] with `full_output=True`."""
    if not isinstance(interpolant, StochasticInterpolant):
        raise TypeError("`interpolant` must be a StochasticInterpolant.")
    if isinstance(solver, Heun) and solver.churn > 0:
        raise ValueError("Heun churn needs a Gaussian path; use Heun() for interpolants.")
    if not isinstance(solver, Euler | Heun | EulerMaruyama):
        raise TypeError(
            "interpolants are sampled with Euler(), Heun() or EulerMaruyama(epsilon=...)."
        )
    if isinstance(solver, EulerMaruyama):
        if solver.epsilon is None:
            raise ValueError("give the interpolant SDE's diffusion: EulerMaruyama(epsilon=...).")
        if score is None:
            raise ValueError("`score` is required for SDE sampling of an interpolant.")
        if key is None:
            raise ValueError("`key` is required for SDE sampling.")
    if not callable(velocity):
        raise TypeError("`velocity` must be a callable (t, x) -> drift.")
    field = InterpolantField(velocity_fn=velocity, score_fn=score, path=interpolant)
    return solve_between_ends(solver, field, x_init, key, num_steps, ts, save_trajectory)


def solve_between_ends(
    solver: AbstractSolver,
    field: InterpolantField,
    x_init: Array,
    key: Key | None,
    num_steps: int | None,
    ts: Array | None,
    save_trajectory: bool,
) -> Solution:
    """Run `field` with a fixed-step `solver` from its path's `t_noise` to `t_data`, on a uniform
    grid of `num_steps` steps or on the explicit grid `ts` (the interpolant and bridge solves)."""
    x_init = _check_x_init(x_init)
    path = field.path
    if ts is None:
        if num_steps is None:
            raise ValueError("give `num_steps` (or an explicit grid `ts`).")
        n = _check_num_steps(num_steps)
        ts_arr = jnp.linspace(path.t_noise, path.t_data, n + 1, dtype=x_init.dtype)
    else:
        ts_arr = jnp.asarray(check_grid(path, ts), x_init.dtype)
        n = ts_arr.shape[0] - 1
    x, traj, failed, ts_arr, _ = _integrate(
        solver, field, x_init, key, ts_arr, None, None, bool(save_trajectory), False
    )
    return Solution(
        x=x,
        ts=ts_arr,
        trajectory=traj,
        failed_step=failed,
        num_field_evals=n * solver.evals_per_step,
    )


def finite_x(sol: Solution) -> Array:
    """`sol.x`, or a `RuntimeError` if any sample became non-finite."""
    bad = np.asarray(sol.failed_step)
    if np.any(bad >= 0):
        raise RuntimeError(f"{int(np.sum(bad >= 0))} samples became non-finite.")
    return sol.x


def solve_interpolant(
    solver: AbstractSolver,
    interpolant: StochasticInterpolant,
    x_init: Array,
    *,
    full_output: bool = False,
    **kwargs,
) -> Array | Solution:
    """Transport a batch of base samples `x_init` (at `interpolant.t_noise`) to the target end
    `interpolant.t_data` with the interpolant ODE (`Euler()`, `Heun()`: `dx = b dt`) or SDE
    (`EulerMaruyama(epsilon=...)`: `dx = (b + eps s) dt + sqrt(2 eps) dW`, needs `score`).

    **Keyword arguments:** `velocity` (the drift `b(t, x)`, required), `score` (for the SDE),
    `num_steps` (a uniform grid) or an explicit grid `ts`, `key` (for the SDE),
    `save_trajectory`, and `full_output` (return a [`Solution`][] and report non-finite
    samples in it instead of raising).
    """
    sol = _solve_interpolant_full(solver, interpolant, x_init, **kwargs)
    return sol if full_output else finite_x(sol)
