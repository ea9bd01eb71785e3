"""Phase-space stochastic bridges (AGM, Chen et al. 2024, "Generative modeling with phase
stochastic bridges").

State `m = (x, v)` (position, velocity, each in `R^d`), reference linear SDE on `[0, 1]`

    dx = v dt,    dv = sigma dW

(integrated Brownian motion, the same for every coordinate). Conditioning it on the position
`x_1 = x1` at `t = 1` gives the bridge: by Doob's transform its control is the acceleration

    u(t, x, v; x1) = 3 (x1 - x - (1 - t) v) / (1 - t)^2

(the minimum-acceleration steering, independent of `sigma`), and its law at time `t` given the
state `m_s` at `s < t` is Gaussian in closed form (Gaussian conditioning of the linear SDE; the
covariance is `sigma^2` times a 2 x 2 matrix shared by the coordinates). Training regresses a
data predictor `D(t, x, v) ≈ E[x1 | m_t]` on draws of that conditional, so the learned
acceleration is `u(t, x, v; D)`; sampling steps the closed-form conditional with `x1 := D`.

Convention here: source positions `x0` (e.g. noise) at `t = 0` with initial velocities
`v0 ~ N(0, velocity_scale^2 I)`, data at `t = 1` (the bridge time of `solve_bridge`).
"""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._checks import check_int
from ..._custom_types import Array, Key, Point, Scalar, ScalarLike
from ..._nn import TimeMLP
from ._gaussian import check_time


def _nonneg(value, name: str) -> float:
    if isinstance(value, jax.core.Tracer):
        return value  # type: ignore[return-value]
    v = float(np.asarray(value))
    if not (np.isfinite(v) and v >= 0):
        raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    return v


class PhaseSpaceBridge(eqx.Module):
    """The position–velocity bridge of AGM: the reference `dx = v dt, dv = sigma dW` on
    `[0, 1]` pinned to a position `x1` at `t = 1`.

    **Arguments:** `sigma` (`>= 0`, the reference noise on the velocity; `0` makes the bridge
    deterministic given its ends: the cubic minimum-acceleration path), `velocity_scale`
    (`>= 0`, standard deviation of the initial velocities `v0`).

    **Methods** (for ONE unbatched point; `x`, `v`, `x1` of shape `(d,)`):
    `transition(t, s)` (the reference `(Phi, Q)`), `conditional(t, x, v, x1, s=0)` (mean of
    `(x_t, v_t)` and the 2 x 2 covariance given the state at `s` and `x1`),
    `sample_conditional`, `acceleration(t, x, v, x1)` (the bridge's control).

    ```python
    import jax.numpy as jnp
    import driftax.diffusion as dd
    bridge = dd.PhaseSpaceBridge(sigma=1.0)
    (mx, mv), cov = bridge.conditional(0.5, jnp.zeros(2), jnp.ones(2), jnp.full(2, 3.0))
    ```
    """

    sigma: float = 1.0
    velocity_scale: float = 1.0

    def __check_init__(self):
        _nonneg(self.sigma, "sigma")
        _nonneg(self.velocity_scale, "velocity_scale")

    def transition(self, t: ScalarLike, s: ScalarLike = 0.0) -> tuple[Array, Array]:
        """The reference transition from `s` to `t >= s` per coordinate: `m_t = Phi m_s +
        N(0, Q)`, `Phi = [[1, h], [0, 1]]`, `Q = sigma^2 [[h^3/3, h^2/2], [h^2/2, h]]`,
        `h = t - s` (both `(2, 2)`)."""
        h = jnp.asarray(t, jnp.result_type(float)) - s
        phi = jnp.array([[1.0, 0.0], [0.0, 1.0]], h.dtype) + h * jnp.array([[0.0, 1.0], [0.0, 0.0]])
        return phi, self.sigma**2 * _q(h)

    def _gain(self, s, t):
        # K = Q~(t - s) [1, 1 - t]^T / ((1 - s)^3 / 3): the gain of x1 - (x_s + (1 - s) v_s)
        h, rest, total = t - s, 1.0 - t, 1.0 - s
        num = jnp.stack([h**3 / 3.0 + rest * h**2 / 2.0, h**2 / 2.0 + rest * h])
        return num / (total**3 / 3.0), h, total

    def conditional(
        self, t: ScalarLike, x: Point, v: Point, x1: Point, s: ScalarLike = 0.0
    ) -> tuple[tuple[Array, Array], Array]:
        """The law of `(x_t, v_t)` given `(x_s, v_s) = (x, v)` and `x_1 = x1`, `s <= t <= 1`:
        `((mean_x, mean_v), cov)` with `cov` the `(2, 2)` covariance of `(x_t[i], v_t[i])`,
        the same for every coordinate `i` (coordinates independent)."""
        t = check_time(t)
        s = check_time(s, "s")
        k, h, total = self._gain(s, t)
        resid = x1 - x - total * v
        mean_x = x + h * v + k[0] * resid
        mean_v = v + k[1] * resid
        cov = self.sigma**2 * (_q(h) - jnp.outer(k, k) * total**3 / 3.0)
        return (mean_x, mean_v), 0.5 * (cov + cov.T)

    def sample_conditional(
        self, key: Key, t: ScalarLike, x: Point, v: Point, x1: Point, s: ScalarLike = 0.0
    ) -> tuple[Array, Array]:
        """One draw of `(x_t, v_t)` from [`conditional`][]."""
        (mx, mv), cov = self.conditional(t, x, v, x1, s)
        return _draw(key, mx, mv, cov)

    def acceleration(self, t: ScalarLike, x: Point, v: Point, x1: Point) -> Point:
        """The bridge's control `u = 3 (x1 - x - (1 - t) v) / (1 - t)^2` (`t < 1`)."""
        rest = 1.0 - jnp.asarray(t, x.dtype)
        return 3.0 * (x1 - x - rest * v) / rest**2


def _q(h):
    return jnp.stack([jnp.stack([h**3 / 3.0, h**2 / 2.0]), jnp.stack([h**2 / 2.0, h])])


def _draw(key, mx, mv, cov):
    # the 2 x 2 Cholesky by hand (the covariance may be singular: sigma = 0 or t = s)
    a = jnp.sqrt(jnp.clip(cov[0, 0], 0.0))
    b = jnp.where(a > 0, cov[0, 1] / jnp.where(a > 0, a, 1.0), 0.0)
    c = jnp.sqrt(jnp.clip(cov[1, 1] - b**2, 0.0))
    e = jax.random.normal(key, (2,) + mx.shape, mx.dtype)
    return mx + a * e[0], mv + b * e[0] + c * e[1]


class PhaseSpaceMLP(eqx.Module):
    """A data predictor `D(t, x, v) ≈ E[x1 | x_t = x, v_t = v]` for [`PhaseSpaceLoss`][]: the
    ballistic guess `x + (1 - t) v` plus a residual time-MLP of `(x, v)` (ONE unbatched
    point)."""

    net: TimeMLP

    def __init__(self, dim: int, *, key: Key, hidden: int = 64, depth: int = 3):
        d = check_int(dim, "dim")
        self.net = TimeMLP(d, key=key, hidden=hidden, depth=depth, context_size=d)

    def __call__(self, t, x: Point, v: Point) -> Point:
        return x + (1.0 - t) * v + self.net(t, x, v)


class PhaseSpaceLoss(eqx.Module):
    """The AGM regression on a batch `(x0, x1)` (source positions and data): draw `v0 ~
    N(0, velocity_scale^2 I)`, `t ~ U[0, 1 - t_min]` and `(x_t, v_t)` from the bridge's
    closed-form conditional given `(x0, v0)` and `x1`; minimise `|D(t, x_t, v_t) - x1|^2`.
    The learned acceleration is then `bridge.acceleration(t, x, v, D)`, the Markovian
    projection of the bridges' controls (the control is affine in `x1`)."""

    bridge: PhaseSpaceBridge
    t_min: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        if not 0 < self.t_min < 1:
            raise ValueError(f"`t_min` must lie in (0, 1), got {self.t_min!r}.")

    def __call__(self, model: Callable, batch, *, key: Key) -> Scalar:
        x0, x1 = batch
        n = x0.shape[0]
        kv, kt, km = jax.random.split(key, 3)
        v0 = self.bridge.velocity_scale * jax.random.normal(kv, x0.shape, x0.dtype)
        t = jax.random.uniform(kt, (n,), x0.dtype, 0.0, 1.0 - self.t_min)

        def one(k, a, va, b, ti):
            xt, vt = self.bridge.sample_conditional(k, ti, a, va, b)
            return jnp.mean((model(ti, xt, vt) - b) ** 2)

        return jnp.mean(jax.vmap(one)(jax.random.split(km, n), x0, v0, x1, t))


def _slope_gain(s, t):
    """The response of `(x_t, v_t)` at `t` to a target that moves linearly in time, `x1(tau) =
    D + (tau - s) delta`, beyond the constant-target response (per unit `delta`); with `a = 1 - s`,
    `r = 1 - t`: `x: a - 3 r / 4 + 3 r log(r / a) / 2 - r^3 / (4 a^2)`, `v: -3/4 - 3 log(r / a) / 2
    + 3 r^2 / (4 a^2)` (the closed-loop Green's function of the bridge control, built from its
    homogeneous solutions `1 - tau` and `(1 - tau)^3`, integrated in closed form). At `t = 1` the
    position gain is `a` (the target's end value) and the velocity gain diverges (returned as
    0)."""
    a, r = 1.0 - s, 1.0 - t
    safe = jnp.where(r > 0, r, 1.0)
    log_ratio = jnp.log(safe / a)
    gx = a - 0.75 * r + jnp.where(r > 0, 1.5 * r * log_ratio, 0.0) - r**3 / (4.0 * a**2)
    gv = jnp.where(r > 0, -0.75 - 1.5 * log_ratio + 0.75 * r**2 / a**2, 0.0)
    return gx, gv


@eqx.filter_jit
def _sample_scan(bridge, model, x, v, ts, key, order):
    def step(carry, inp):
        x, v, d_prev, s_prev = carry
        s, t, k = inp
        d = jax.vmap(lambda a, b: model(s, a, b))(x, v)
        keys = jax.random.split(k, x.shape[0])
        x_new, v_new = jax.vmap(lambda kk, a, b, c: bridge.sample_conditional(kk, t, a, b, c, s))(
            keys, x, v, d
        )
        if order == 2:
            # linear extrapolation of the prediction through the previous step's (zero slope on
            # the first step), integrated exactly on top of the constant-target transition
            slope = jnp.where(
                s > s_prev, (d - d_prev) / jnp.where(s > s_prev, s - s_prev, 1.0), 0.0
            )
            gx, gv = _slope_gain(s, t)
            x_new, v_new = x_new + gx * slope, v_new + gv * slope
        return (x_new, v_new, d, s), None

    n = ts.shape[0] - 1
    init = (x, v, jnp.zeros_like(x), ts[0])
    (x, v, _, _), _ = jax.lax.scan(step, init, (ts[:-1], ts[1:], jax.random.split(key, n)))
    return x, v


def solve_phase_space(
    bridge: PhaseSpaceBridge,
    model: Callable,
    x_init: Array,
    *,
    key: Key,
    num_steps: int,
    v_init: Array | None = None,
    order: int = 1,
) -> tuple[Array, Array]:
    """Generate with a trained data predictor `model(t, x, v)` (e.g. [`PhaseSpaceMLP`][]): from
    source positions `x_init` at `t = 0` (velocities `v_init`, default `N(0,
    velocity_scale^2 I)` drawn with `key`), each of the `num_steps` uniform steps draws the
    state at the next time from the bridge's closed-form conditional with `x1` replaced by the
    prediction `D` (one network evaluation per step; deterministic when `sigma = 0`). The last
    step lands on `x_1 = D` exactly.

    `order = 1` holds `D` constant over each step (exact when the prediction does not change
    along the path, e.g. point-mass data). `order = 2` is the multistep exponential integrator
    of the AGM paper's deterministic sampler (its "gDDIM" with one past evaluation): `D` is
    extrapolated linearly in time through the previous step's prediction and the linear
    dynamics are integrated exactly against that moving target (still one network evaluation per
    step; the first step is first order). It is exact for predictions affine in time; the
    returned velocity at `t = 1` is the constant-target one (the moving target's diverges).

    **Returns:** `(x, v)` at `t = 1`, each `(n, d)`.
    """
    if not isinstance(bridge, PhaseSpaceBridge):
        raise TypeError("`bridge` must be a PhaseSpaceBridge.")
    if not callable(model):
        raise TypeError("`model` must be a callable (t, x, v) -> predicted x1.")
    n = check_int(num_steps, "num_steps")
    if order not in (1, 2):
        raise ValueError(f"`order` must be 1 or 2, got {order!r}.")
    x = jnp.asarray(x_init)
    if x.ndim != 2:
        raise ValueError(f"`x_init` must have shape (n, d), got {tuple(x.shape)}.")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    kv, ks = jax.random.split(key)
    if v_init is None:
        v = bridge.velocity_scale * jax.random.normal(kv, x.shape, x.dtype)
    else:
        v = jnp.asarray(v_init, x.dtype)
        if v.shape != x.shape:
            raise ValueError(f"`v_init` must have the shape of `x_init`, got {tuple(v.shape)}.")
    ts = jnp.linspace(0.0, 1.0, n + 1, dtype=x.dtype)
    x, v = _sample_scan(bridge, model, x, v, ts, ks, order)
    if not bool(jnp.all(jnp.isfinite(x))):
        raise RuntimeError("phase-space sampling produced non-finite samples.")
    return x, v
