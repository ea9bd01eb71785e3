"""Planar and radial flows (Rezende & Mohamed, 2015) with their invertibility reparameterization."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_int
from .._custom_types import Array, Key, Shape
from ._bijection import AbstractBijection, check_input


def _normal_parameters(key: Key, init_scale: float, *shapes) -> tuple[Array, ...]:
    """Initial parameters of the given shapes, independent `N(0, init_scale²)` (one key each)."""
    dtype = jnp.result_type(float)
    keys = jax.random.split(key, len(shapes))
    return tuple(init_scale * jax.random.normal(k, s, dtype) for k, s in zip(keys, shapes))


def _planar_m(a):
    # m(a) = -1 + softplus(a) > -1
    return -1.0 + jax.nn.softplus(a)


class Planar(AbstractBijection):
    """A planar layer `y = x + û tanh(wᵀx + b)`.

    `û = u + (m(wᵀu) - wᵀu) w / ‖w‖²` with `m(a) = -1 + softplus(a)` guarantees `wᵀû > -1`, hence
    invertibility for any parameter values; `log|det| = log(1 + wᵀû tanh'(wᵀx + b))`. The inverse
    solves a monotone scalar equation by bisection (gradients by the implicit function theorem),
    so sampling is cheap and density evaluation a little dearer.

    **Arguments:**

    - `key`: PRNG key for the initial parameters (`N(0, init_scale²)`).
    - `dim`: the dimension `d` of the vector event.
    - `init_scale`: standard deviation of the initial `u`, `w`, `b`.
    """

    u: Array
    w: Array
    b: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, key: Key, dim: int, *, init_scale: float = 0.1):
        d = check_int(dim, "dim")
        self.u, self.w, self.b = _normal_parameters(key, init_scale, (d,), (d,), ())
        self.event_shape = (d,)

    @property
    def u_hat(self) -> Array:
        """The reparameterized `û` with `wᵀû > -1`."""
        wu = jnp.dot(self.w, self.u)
        w2 = jnp.sum(self.w**2)
        w2 = jnp.where(w2 > 0, w2, 1.0)
        return self.u + (_planar_m(wu) - wu) * self.w / w2

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        u_hat = self.u_hat
        a = jnp.dot(self.w, x) + self.b
        t = jnp.tanh(a)
        m = jnp.dot(self.w, u_hat)
        return x + u_hat * t, jnp.log1p(m * (1.0 - t**2))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        u_hat = self.u_hat
        m = jnp.dot(self.w, u_hat)
        c = jnp.dot(self.w, y)
        b = self.b

        def g(alpha, m, c, b):
            return alpha + m * jnp.tanh(alpha + b) - c

        # g is strictly increasing (m > -1) and its root lies in [c - |m|, c + |m|].
        ms, cs, bs = jax.lax.stop_gradient((m, c, b))
        lo0, hi0 = cs - jnp.abs(ms) - 1e-6, cs + jnp.abs(ms) + 1e-6

        def bisect(_, lohi):
            lo, hi = lohi
            mid = 0.5 * (lo + hi)
            pos = g(mid, ms, cs, bs) > 0
            return jnp.where(pos, lo, mid), jnp.where(pos, mid, hi)

        lo, hi = jax.lax.fori_loop(0, 60, bisect, (lo0, hi0))
        alpha = 0.5 * (lo + hi)
        # two Newton polishes, then one differentiable Newton step (implicit-function gradients)
        for _ in range(2):
            alpha = alpha - g(alpha, ms, cs, bs) / (1.0 + ms * (1.0 - jnp.tanh(alpha + bs) ** 2))
        alpha = jax.lax.stop_gradient(alpha)
        deriv = 1.0 + m * (1.0 - jnp.tanh(alpha + b) ** 2)
        alpha = alpha - g(alpha, m, c, b) / jax.lax.stop_gradient(deriv)
        t = jnp.tanh(alpha + b)
        return y - u_hat * t, -jnp.log1p(m * (1.0 - t**2))


class Radial(AbstractBijection):
    """A radial layer `y = x + β h(α, r) (x - x₀)`, `h = 1 / (α + r)`, `r = ‖x - x₀‖`.

    `α = softplus(α̃) > 0` and `β = -α + softplus(β̃) > -α` guarantee invertibility; the inverse is
    in closed form (a quadratic in `r`).

    **Arguments:**

    - `key`: PRNG key for the initial parameters.
    - `dim`: the dimension `d` of the vector event.
    - `init_scale`: standard deviation of the initial centre `x₀` and raw `α̃`, `β̃`.
    """

    center: Array
    raw_alpha: Array
    raw_beta: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, key: Key, dim: int, *, init_scale: float = 0.1):
        d = check_int(dim, "dim")
        self.center, self.raw_alpha, self.raw_beta = _normal_parameters(
            key, init_scale, (d,), (), ()
        )
        self.event_shape = (d,)

    def _alpha_beta(self):
        alpha = jax.nn.softplus(self.raw_alpha)
        return alpha, -alpha + jax.nn.softplus(self.raw_beta)

    def _log_det(self, r, alpha, beta):
        d = self.event_shape[0]
        h = 1.0 / (alpha + r)
        bh = beta * h
        # d/dr [r (1 + β h)] = 1 + β h + β h' r, h' = -h²
        return (d - 1) * jnp.log1p(bh) + jnp.log1p(bh - beta * h**2 * r)

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        alpha, beta = self._alpha_beta()
        diff = x - self.center
        r = _safe_norm(diff)
        return x + beta / (alpha + r) * diff, self._log_det(r, alpha, beta)

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        alpha, beta = self._alpha_beta()
        diff = y - self.center
        ry = _safe_norm(diff)
        # r² + (α + β - r_y) r - α r_y = 0, positive root written without cancellation
        bq = alpha + beta - ry
        disc = jnp.sqrt(bq**2 + 4.0 * alpha * ry)
        r = jnp.where(bq > 0, 2.0 * alpha * ry / (bq + disc), 0.5 * (disc - bq))
        x = self.center + diff / (1.0 + beta / (alpha + r))
        return x, -self._log_det(r, alpha, beta)


def _safe_norm(v):
    # ‖v‖ with a finite gradient at v = 0
    sq = jnp.sum(v**2)
    safe = jnp.where(sq > 0, sq, 1.0)
    return jnp.where(sq > 0, jnp.sqrt(safe), 0.0)
