"""Smooth (C^∞) flows on intervals and tori from mixtures of bump-function ramps (Köhler, Krämer
& Noé 2021, "Smooth normalizing flows").

In unit coordinates `u ∈ [0, 1]` one coordinate is mapped by

    f(u) = (1 − λ) u + λ Σ_k w_k r_k(u),      r_k(u) = (σ(t_k(u)) − σ(t_k(0))) / (σ(t_k(1)) − σ(t_k(0))),

where `t_k(u) = (u − b_k) / (2 h_k) + ½` puts the ramp's transition window `[b_k − h_k, b_k + h_k]`
onto `[0, 1]` and `σ(t) = ρ(t) / (ρ(t) + ρ(1 − t))` with the bump `ρ(t) = exp(−α / t)` (`t > 0`,
else 0) is a C^∞ ramp from 0 to 1. `λ < 1` keeps `f' ≥ 1 − λ > 0`, `w` is a softmax. On the circle
every window lies strictly inside `(0, 1)`, so `f(u) = (1 − λ) u` near 0 and `(1 − λ) u + λ` near 1:
every derivative matches across the seam, and learned rotations before and after move the seam.

The forward map is closed form; the inverse is a bracketed Newton / bisection root finder with a
fixed number of iterations, differentiated IMPLICITLY (`jax.custom_jvp` and the inverse-function
theorem `dx = (dy − ∂f/∂θ dθ) / f'(x)`), never by unrolling the solver.
"""

from __future__ import annotations

import functools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_shape
from .._custom_types import Array, Key, Shape
from ._bijection import _TwoWay
from ._transformers import AbstractTransformer

_MIN_CENTRE = 0.01  # window centres lie in (0.01, 0.99) of the unit interval
_MIN_HALF_WIDTH = 0.05  # half-widths are at least this fraction of their maximum


def _check_components(num_components) -> int:
    if isinstance(num_components, bool) or not isinstance(num_components, (int, np.integer)):
        raise ValueError(f"`num_components` must be a positive int, got {num_components!r}.")
    if num_components < 1:
        raise ValueError(f"`num_components` must be a positive int, got {num_components!r}.")
    return int(num_components)


def _check_positive(value, name: str) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"`{name}` must be a positive finite float, got {value!r}.")
    return value


def _logit(p: float) -> float:
    return math.log(p) - math.log1p(-p)


# ----------------------------------------------------------------------------------------------
# the unit-interval map: params = (lam (n,), w (n, K), b (n, K), h (n, K))


def _ramp_args(sharpness: float, t):
    """The ramp's log-odds `z = α(2t − 1)/(t(1 − t))` at safe `t` and where `t` is inside (0, 1)."""
    eps = jnp.finfo(jnp.result_type(t)).eps
    inside = (t > 0.0) & (t < 1.0)
    tc = jnp.clip(jnp.where(inside, t, 0.5), eps, 1.0 - eps)
    z = sharpness * (2.0 * tc - 1.0) / (tc * (1.0 - tc))
    return tc, z, inside


def _ramp(sharpness: float, t):
    """The C^∞ ramp `σ(t)`: 0 for `t ≤ 0`, 1 for `t ≥ 1`."""
    _, z, inside = _ramp_args(sharpness, t)
    return jnp.where(inside, jax.nn.sigmoid(z), jnp.where(t >= 1.0, 1.0, 0.0))


def _ramp_slope(sharpness: float, t):
    """`σ'(t) = σ(1 − σ) α (1/t² + 1/(1 − t)²)`, computed in log space (0 outside (0, 1))."""
    tc, z, inside = _ramp_args(sharpness, t)
    log_slope = (
        jax.nn.log_sigmoid(z)
        + jax.nn.log_sigmoid(-z)
        + math.log(sharpness)
        + jnp.log(1.0 / tc**2 + 1.0 / (1.0 - tc) ** 2)
    )
    return jnp.where(inside, jnp.exp(log_slope), 0.0)


def _window(u, b, h):
    """`t_k(u)` for `u` of shape `(n,)` and windows `(n, K)`."""
    return (u[..., None] - b) / (2.0 * h) + 0.5


def _norm(sharpness, b, h):
    lo = _ramp(sharpness, _window(jnp.zeros(b.shape[:-1], b.dtype), b, h))
    hi = _ramp(sharpness, _window(jnp.ones(b.shape[:-1], b.dtype), b, h))
    return lo, hi - lo


def _unit_forward(sharpness: float, u, params):
    """`f(u)` elementwise (unit coordinates)."""
    lam, w, b, h = params
    lo, span = _norm(sharpness, b, h)
    ramps = (_ramp(sharpness, _window(u, b, h)) - lo) / span
    return (1.0 - lam) * u + lam * jnp.sum(w * ramps, axis=-1)


def _unit_slope(sharpness: float, u, params):
    """`f'(u) ≥ 1 − λ > 0` elementwise."""
    lam, w, b, h = params
    _, span = _norm(sharpness, b, h)
    slopes = _ramp_slope(sharpness, _window(u, b, h)) / (2.0 * h * span)
    return (1.0 - lam) + lam * jnp.sum(w * slopes, axis=-1)


def _num_iterations(dtype) -> int:
    """Fixed root-finder iterations: enough bisections alone to reach the dtype's resolution."""
    return int(jnp.finfo(dtype).nmant) + 8


def _solve(sharpness: float, y, params):
    """`f⁻¹(y)` for `y ∈ [0, 1]` by Newton steps kept inside a shrinking bracket (a bisection
    step when Newton leaves it), a fixed number of iterations; converged entries (residual
    within a few ulps) stay put. Plain JAX: differentiable by unrolling (the tests' reference)."""
    dtype = jnp.result_type(y)
    tol = 8.0 * jnp.finfo(dtype).eps

    def body(_, carry):
        x, lo, hi = carry
        r = _unit_forward(sharpness, x, params) - y
        lo = jnp.where(r < 0.0, x, lo)
        hi = jnp.where(r > 0.0, x, hi)
        newton = x - r / _unit_slope(sharpness, x, params)
        ok = (newton >= lo) & (newton <= hi)
        step = jnp.where(ok, newton, 0.5 * (lo + hi))
        return jnp.where(jnp.abs(r) <= tol, x, step), lo, hi

    init = (jnp.clip(y, 0.0, 1.0), jnp.zeros_like(y), jnp.ones_like(y))
    x, _, _ = jax.lax.fori_loop(0, _num_iterations(dtype), body, init)
    return x


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _unit_inverse(sharpness: float, y, params):
    """`f⁻¹(y)` with implicit derivatives (the solver is never differentiated)."""
    return _solve(sharpness, jax.lax.stop_gradient(y), jax.lax.stop_gradient(params))


@_unit_inverse.defjvp
def _unit_inverse_jvp(sharpness, primals, tangents):
    y, params = primals
    dy, dparams = tangents
    x = _unit_inverse(sharpness, y, params)  # re-entrant: higher derivatives stay implicit
    _, df = jax.jvp(lambda p: _unit_forward(sharpness, x, p), (params,), (dparams,))
    return x, (dy - df) / _unit_slope(sharpness, x, params)


# ----------------------------------------------------------------------------------------------
# transformers


class _AbstractSmoothTransformer(AbstractTransformer):
    num_components: int = eqx.field(static=True, default=4)
    sharpness: float = eqx.field(static=True, default=1.0)
    min_slope: float = eqx.field(static=True, default=0.01)
    init_weight: float = eqx.field(static=True, default=0.1)

    def _check_common(self):
        _check_components(self.num_components)
        _check_positive(self.sharpness, "sharpness")
        if not 0.0 < self.min_slope < 1.0:
            raise ValueError(f"`min_slope` must lie in (0, 1), got {self.min_slope!r}.")
        if not 0.0 < self.init_weight < 1.0 - self.min_slope:
            raise ValueError(
                f"`init_weight` must lie in (0, 1 - min_slope), got {self.init_weight!r}."
            )

    def _mixture(self, raw, circular: bool):
        """`(λ, w, b, h)` from raw parameters `(n, ≥ 3K + 1)`: ramp weight, softmax weights,
        window centres (spread over the interval at raw 0) and half-widths (inside (0, 1) on
        the circle, at most 1 on the interval)."""
        k = self.num_components
        lam_max = 1.0 - self.min_slope
        lam = lam_max * jax.nn.sigmoid(raw[..., 0] + _logit(self.init_weight / lam_max))
        w = jax.nn.softmax(raw[..., 1 : 1 + k], axis=-1)
        spread = jnp.asarray([_logit((i + 0.5) / k) for i in range(k)], raw.dtype)
        b = _MIN_CENTRE + (1.0 - 2.0 * _MIN_CENTRE) * jax.nn.sigmoid(
            raw[..., 1 + k : 1 + 2 * k] + spread
        )
        frac = _MIN_HALF_WIDTH + (1.0 - _MIN_HALF_WIDTH) * jax.nn.sigmoid(
            raw[..., 1 + 2 * k : 1 + 3 * k]
        )
        h = frac * (jnp.minimum(b, 1.0 - b) if circular else 0.5)
        return lam, w, b, h


class SmoothTransformer(_AbstractSmoothTransformer):
    """A C^∞ monotone map of the interval `[lower, upper]` onto itself: a mixture of
    `num_components` smooth bump-function ramps mixed with the identity (Köhler et al. 2021);
    the identity outside the interval.

    The inverse is found by a bracketed Newton / bisection root finder with implicit gradients.
    Use it as the transformer of a [`Coupling`][] layer (`transformer=SmoothTransformer(...)`) or
    through [`SmoothInterval`][]. `3 · num_components + 1` raw parameters per coordinate; at raw
    zero the ramps carry weight `init_weight` (near the identity, with non-zero gradients).

    **Arguments:**

    - `num_components`: number of ramps `K ≥ 1`.
    - `lower`, `upper`: the interval (`lower < upper`).
    - `sharpness`: `α` of the bump `exp(−α/t)`.
    - `min_slope`: lower bound of the derivative inside the interval (the identity's share).
    - `init_weight`: the ramps' share at raw parameters zero.
    """

    lower: float = eqx.field(static=True, default=0.0)
    upper: float = eqx.field(static=True, default=1.0)

    def __check_init__(self):
        self._check_common()
        if not (math.isfinite(self.lower) and math.isfinite(self.upper)):
            raise ValueError(f"`lower` and `upper` must be finite, got {self.lower}, {self.upper}.")
        if not self.lower < self.upper:
            raise ValueError(
                f"`lower` must be smaller than `upper`, got lower={self.lower}, upper={self.upper}."
            )

    @property
    def num_params(self) -> int:
        return 3 * self.num_components + 1

    def _unit(self, z):
        width = self.upper - self.lower
        inside = (z > self.lower) & (z < self.upper)
        return jnp.clip((z - self.lower) / width, 0.0, 1.0), inside, width

    def transform_and_log_det(self, x, raw):
        params = self._mixture(raw, circular=False)
        u, inside, width = self._unit(x)
        y = self.lower + width * _unit_forward(self.sharpness, u, params)
        log_grad = jnp.log(_unit_slope(self.sharpness, u, params))
        return jnp.where(inside, y, x), jnp.where(inside, log_grad, 0.0)

    def inverse_and_log_det(self, y, raw):
        params = self._mixture(raw, circular=False)
        v, inside, width = self._unit(y)
        u = _unit_inverse(self.sharpness, v, params)
        log_grad = -jnp.log(_unit_slope(self.sharpness, u, params))
        return jnp.where(inside, self.lower + width * u, y), jnp.where(inside, log_grad, 0.0)


class CircularSmoothTransformer(_AbstractSmoothTransformer):
    """A C^∞ diffeomorphism of the circle `[lower, lower + 2π)`: a rotation, a mixture of
    `num_components` smooth ramps whose windows lie inside the period (so every derivative
    matches across the seam), and a second rotation (Köhler et al. 2021). Inputs are wrapped
    into the period; outputs lie in it.

    `3 · num_components + 3` raw parameters per coordinate (rotations zero at raw zero); the
    knobs are those of [`SmoothTransformer`][], with `lower` the start of the period
    (default `−π`, the convention of the other circular layers).
    """

    lower: float = eqx.field(static=True, default=-math.pi)

    def __check_init__(self):
        self._check_common()
        if not math.isfinite(self.lower):
            raise ValueError(f"`lower` must be finite, got {self.lower!r}.")

    @property
    def num_params(self) -> int:
        return 3 * self.num_components + 3

    def _wrap(self, z):
        return jnp.mod(z - self.lower, 2.0 * math.pi) + self.lower

    def _unit(self, z):
        """Unit coordinate in [0, 1) of an angle."""
        return jnp.mod(z - self.lower, 2.0 * math.pi) / (2.0 * math.pi)

    def _rotations(self, raw):
        k = self.num_components
        return raw[..., 1 + 3 * k], raw[..., 2 + 3 * k]

    def transform_and_log_det(self, x, raw):
        params = self._mixture(raw, circular=True)
        before, after = self._rotations(raw)
        u = self._unit(x - before)
        y = self.lower + 2.0 * math.pi * _unit_forward(self.sharpness, u, params)
        return self._wrap(y + after), jnp.log(_unit_slope(self.sharpness, u, params))

    def inverse_and_log_det(self, y, raw):
        params = self._mixture(raw, circular=True)
        before, after = self._rotations(raw)
        u = _unit_inverse(self.sharpness, self._unit(y - after), params)
        x = self.lower + 2.0 * math.pi * u
        return self._wrap(x + before), -jnp.log(_unit_slope(self.sharpness, u, params))


# ----------------------------------------------------------------------------------------------
# elementwise bijections with their own parameters


class _SmoothElementwise(_TwoWay):
    """An elementwise bijection: a smooth transformer with one row of raw parameters per
    coordinate (trainable)."""

    raw: Array
    transformer: _AbstractSmoothTransformer
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True)

    def _setup(self, event_shape, transformer, key: Key | None, init_scale: float):
        self.event_shape = check_shape(event_shape, "event_shape")
        self.cond_shape = None
        self.transformer = transformer
        shape = (math.prod(self.event_shape), transformer.num_params)
        dtype = jnp.result_type(float)
        if key is None:
            self.raw = jnp.zeros(shape, dtype)
        else:
            self.raw = _check_positive(init_scale, "init_scale") * jax.random.normal(
                key, shape, dtype
            )

    def _run(self, x, condition, inverse: bool):
        fn = (
            self.transformer.inverse_and_log_det
            if inverse
            else self.transformer.transform_and_log_det
        )
        y, log_grad = fn(x.reshape(-1), self.raw)
        return y.reshape(self.event_shape), jnp.sum(log_grad)


class SmoothInterval(_SmoothElementwise):
    """A smooth (C^∞) elementwise bijection of the box `[lower, upper]^event_shape` onto itself
    (a [`SmoothTransformer`][] per coordinate with its own trainable parameters; the identity
    outside the interval).

    **Arguments:**

    - `event_shape`: the event shape.
    - `lower`, `upper`: the interval (`lower < upper`; default `[0, 1]`).
    - `num_components`: number of ramps per coordinate.
    - `key`: PRNG key for random initial parameters (`init_scale` standard deviation); `None`
      (default) starts at raw zero, near the identity.
    - `**options`: `sharpness`, `min_slope`, `init_weight` of the transformer.

    **Example:**

    ```python
    import jax.numpy as jnp
    import driftax as dx

    bij = dx.flows.SmoothInterval(3, 0.0, 1.0, num_components=4)
    y, log_det = bij.transform_and_log_det(jnp.array([0.1, 0.5, 0.9]))
    x = bij.inverse(y)                         # the root finder recovers the input
    ```
    """

    def __init__(
        self,
        event_shape,
        lower: float = 0.0,
        upper: float = 1.0,
        *,
        num_components: int = 4,
        key: Key | None = None,
        init_scale: float = 0.5,
        **options,
    ):
        transformer = SmoothTransformer(
            num_components=_check_components(num_components),
            lower=float(lower),
            upper=float(upper),
            **options,
        )
        self._setup(event_shape, transformer, key, init_scale)


class SmoothTorus(_SmoothElementwise):
    """A smooth (C^∞) elementwise diffeomorphism of the torus `[lower, lower + 2π)^event_shape`
    (a [`CircularSmoothTransformer`][] per angle with its own trainable parameters; inputs are
    wrapped into the period).

    Arguments as for [`SmoothInterval`][], with `lower` the start of the period (default `−π`).
    """

    def __init__(
        self,
        event_shape,
        *,
        lower: float = -math.pi,
        num_components: int = 4,
        key: Key | None = None,
        init_scale: float = 0.5,
        **options,
    ):
        transformer = CircularSmoothTransformer(
            num_components=_check_components(num_components), lower=float(lower), **options
        )
        self._setup(event_shape, transformer, key, init_scale)
