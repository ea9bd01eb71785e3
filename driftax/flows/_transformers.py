"""Elementwise transformers driven by raw parameters from a conditioner network.

A transformer maps a vector `x` (the coordinates a coupling or autoregressive layer updates) with
raw parameters `raw` of shape `(n, num_params)` to `(y, log|dy/dx|)` elementwise. Raw parameters of
zero give the identity, so a layer whose conditioner ends in a zero layer starts as the identity.
Transformers hold only static configuration.
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array


def _inv_softplus(y: float) -> float:
    return math.log(math.expm1(y))


def _softplus(x):
    """`log(1 + eˣ)`; faster on CPU than `jax.nn.softplus` (the clamp keeps `exp` finite)."""
    return jnp.log1p(jnp.exp(jnp.minimum(x, 30.0))) + jnp.maximum(x - 30.0, 0.0)


class AbstractTransformer(eqx.Module):
    """An elementwise monotone map with `num_params` raw parameters per coordinate."""

    @property
    @abc.abstractmethod
    def num_params(self) -> int:
        """Number of raw parameters per transformed coordinate."""

    @abc.abstractmethod
    def transform_and_log_det(self, x: Array, raw: Array) -> tuple[Array, Array]:
        """`(y, log dy/dx)` elementwise for `x` of shape `(n,)` and `raw` of shape `(n, num_params)`."""

    @abc.abstractmethod
    def inverse_and_log_det(self, y: Array, raw: Array) -> tuple[Array, Array]:
        """`(x, log dx/dy)` elementwise: the inverse of `transform_and_log_det`."""


class AffineTransformer(AbstractTransformer):
    """`y = shift + scale · x` with `scale = softplus(raw) + min_scale` (RealNVP / MAF)."""

    min_scale: float = eqx.field(static=True, default=1e-3)

    @property
    def num_params(self) -> int:
        return 2

    def _shift_log_scale(self, raw):
        offset = _inv_softplus(1.0 - self.min_scale)
        scale = _softplus(raw[..., 1] + offset) + self.min_scale
        return raw[..., 0], jnp.log(scale)

    def transform_and_log_det(self, x, raw):
        shift, log_scale = self._shift_log_scale(raw)
        return shift + jnp.exp(log_scale) * x, log_scale

    def inverse_and_log_det(self, y, raw):
        shift, log_scale = self._shift_log_scale(raw)
        return (y - shift) * jnp.exp(-log_scale), -log_scale


def _exp_raw(raw):
    # one exp over all raw parameters; the clamp keeps softmax sums finite without a max shift
    return jnp.exp(jnp.clip(raw, -40.0, 40.0))


def _knot_positions(e, lo, hi, min_size):
    """Knot positions `lo = p_0 < ... < p_B = hi` of several splines at once from
    exponentiated raw bin sizes `e` of shape `(..., B)` (a softmax); returns `(..., B + 1)`.

    The cumulative sums are one small matmul with a triangular matrix (faster on CPU than a
    cumsum plus a separate sum and a concatenation)."""
    num_bins = e.shape[-1]
    tri = jnp.asarray(np.triu(np.ones((num_bins, num_bins + 1)), 1), e.dtype)
    cum = e @ tri
    frac = cum / cum[..., -1:]
    ramp = jnp.asarray(np.arange(num_bins + 1) * min_size, e.dtype)
    return lo + (hi - lo) * (ramp + (1.0 - min_size * num_bins) * frac)


def _gather(a, k):
    return jnp.take_along_axis(a, k[..., None], axis=-1)[..., 0]


def _rqs_bin(xk, z):
    """Index of the bin of `z` (already inside `[xk_0, xk_B]`)."""
    num_bins = xk.shape[-1] - 1
    k = jnp.sum(z[..., None] >= xk[..., 1:-1], axis=-1)
    return jnp.clip(k, 0, num_bins - 1)


def _rqs_bin_of(k, xk, yk, dk):
    """The bin `k`'s left knot `(x0, y0)`, end derivatives `d0, d1`, width `w`, height `h` and
    slope `s = h / w`."""
    x0, y0 = _gather(xk, k), _gather(yk, k)
    w, h = _gather(xk, k + 1) - x0, _gather(yk, k + 1) - y0
    return x0, y0, _gather(dk, k), _gather(dk, k + 1), w, h, h / w


def _rqs_log_grad(xi, d0, d1, s):
    """`log dy/dx` of the spline at the position `xi` in its bin (Durkan et al. 2019, eq. 5)."""
    xi1 = xi * (1.0 - xi)
    den = s + (d1 + d0 - 2.0 * s) * xi1
    num = d1 * xi**2 + 2.0 * s * xi1 + d0 * (1.0 - xi) ** 2
    return 2.0 * jnp.log(s) + jnp.log(num) - 2.0 * jnp.log(den)


def _rqs_forward(x, xk, yk, dk):
    """Monotone rational-quadratic spline (Durkan et al. 2019, eq. 4-5) inside the knots."""
    x0, y0, d0, d1, w, h, s = _rqs_bin_of(_rqs_bin(xk, x), xk, yk, dk)
    xi = jnp.clip((x - x0) / w, 0.0, 1.0)
    xi1 = xi * (1.0 - xi)
    y = y0 + h * (s * xi**2 + d0 * xi1) / (s + (d1 + d0 - 2.0 * s) * xi1)
    return y, _rqs_log_grad(xi, d0, d1, s)


def _rqs_inverse(y, xk, yk, dk):
    """Inverse of `_rqs_forward` by the stable root of a quadratic (Durkan et al. 2019, eq. 6-8)."""
    x0, y0, d0, d1, w, h, s = _rqs_bin_of(_rqs_bin(yk, y), xk, yk, dk)
    dy = y - y0
    term = dy * (d1 + d0 - 2.0 * s)
    a = h * (s - d0) + term
    b = h * d0 - term
    c = -s * dy
    disc = jnp.maximum(b**2 - 4.0 * a * c, 0.0)
    xi = jnp.clip(2.0 * c / (-b - jnp.sqrt(disc)), 0.0, 1.0)
    return x0 + xi * w, -_rqs_log_grad(xi, d0, d1, s)


def _check_knots(knots) -> None:
    if not isinstance(knots, int) or knots < 1:
        raise ValueError(f"`knots` must be an int >= 1, got {knots!r}.")


def _spline_knots(spline, raw, lo, hi, *, num_derivatives: int):
    """The knots `(xk, yk)` on `[lo, hi]` (bin widths and heights at least `min_width` of the
    range) and `num_derivatives` knot derivatives `> min_derivative` of a rational-quadratic
    spline with `spline.knots + 1` bins, from the raw parameters (positions first, then the
    derivatives)."""
    nb = spline.knots + 1
    e = _exp_raw(raw)
    pos = _knot_positions(e[..., : 2 * nb].reshape(*e.shape[:-1], 2, nb), lo, hi, spline.min_width)
    # derivative = min + softplus(raw + offset), with softplus(r + o) = log1p(e^r · e^o)
    low = spline.min_derivative
    derivs = jnp.log1p(e[..., 2 * nb : 2 * nb + num_derivatives] * math.expm1(1.0 - low)) + low
    return pos[..., 0, :], pos[..., 1, :], derivs


class SplineTransformer(AbstractTransformer):
    """Monotone rational-quadratic spline on `[-interval, interval]` with `knots` interior knots
    (`knots + 1` bins) and identity (linear) tails outside (neural spline flows, Durkan et al. 2019).

    Boundary derivatives are 1 so the map is C¹ at the interval ends.
    """

    knots: int = eqx.field(static=True, default=8)
    interval: float = eqx.field(static=True, default=4.0)
    min_width: float = eqx.field(static=True, default=1e-3)
    min_derivative: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        _check_knots(self.knots)
        if not self.interval > 0:
            raise ValueError(f"`interval` must be positive, got {self.interval!r}.")
        if not 0 < self.min_width * (self.knots + 1) < 1:
            raise ValueError("`min_width * (knots + 1)` must lie in (0, 1).")

    @property
    def num_params(self) -> int:
        return 3 * self.knots + 2

    def _knots(self, raw):
        bound = self.interval
        xk, yk, inner = _spline_knots(self, raw, -bound, bound, num_derivatives=self.knots)
        ones = jnp.ones_like(inner[..., :1])
        return xk, yk, jnp.concatenate([ones, inner, ones], axis=-1)

    def _inside(self, spline, z, raw):
        """`spline` (`_rqs_forward` or `_rqs_inverse`) inside the interval, identity outside."""
        inside = jnp.abs(z) < self.interval
        out, lg = spline(jnp.clip(z, -self.interval, self.interval), *self._knots(raw))
        return jnp.where(inside, out, z), jnp.where(inside, lg, 0.0)

    def transform_and_log_det(self, x, raw):
        return self._inside(_rqs_forward, x, raw)

    def inverse_and_log_det(self, y, raw):
        return self._inside(_rqs_inverse, y, raw)


class CircularSplineTransformer(AbstractTransformer):
    """Rational-quadratic spline diffeomorphism of the circle `[-π, π)` (Rezende et al. 2020):
    `knots + 1` bins, equal derivatives at both ends, plus a trainable rotation. Inputs are
    wrapped into `[-π, π)`; outputs lie in `[-π, π)`.
    """

    knots: int = eqx.field(static=True, default=8)
    min_width: float = eqx.field(static=True, default=1e-3)
    min_derivative: float = eqx.field(static=True, default=1e-3)

    def __check_init__(self):
        _check_knots(self.knots)

    @property
    def num_params(self) -> int:
        return 3 * self.knots + 4

    def _knots(self, raw):
        nb = self.knots + 1
        xk, yk, derivs = _spline_knots(self, raw, -math.pi, math.pi, num_derivatives=nb)
        dk = jnp.concatenate([derivs, derivs[..., :1]], axis=-1)  # periodic: d_B = d_0
        return xk, yk, dk, raw[..., 3 * nb]

    @staticmethod
    def _wrap(z):
        return jnp.mod(z + math.pi, 2.0 * math.pi) - math.pi

    def transform_and_log_det(self, x, raw):
        xk, yk, dk, rot = self._knots(raw)
        y, lg = _rqs_forward(self._wrap(x), xk, yk, dk)
        return self._wrap(y + rot), lg

    def inverse_and_log_det(self, y, raw):
        xk, yk, dk, rot = self._knots(raw)
        x, lg = _rqs_inverse(self._wrap(y - rot), xk, yk, dk)
        return x, lg


_TRANSFORMERS = {
    "affine": AffineTransformer,
    "spline": SplineTransformer,
    "circular_spline": CircularSplineTransformer,
}


def make_transformer(transformer, **kwargs) -> AbstractTransformer:
    """A transformer from a name (`"affine"`, `"spline"`, `"circular_spline"`) and its knobs, or
    an [`AbstractTransformer`][] instance as is."""
    if isinstance(transformer, AbstractTransformer):
        if kwargs:
            raise ValueError(
                f"knobs {sorted(kwargs)} cannot be combined with a transformer instance."
            )
        return transformer
    if transformer not in _TRANSFORMERS:
        raise ValueError(
            f"`transformer` must be one of {sorted(_TRANSFORMERS)} or an AbstractTransformer, "
            f"got {transformer!r}."
        )
    cls = _TRANSFORMERS[transformer]
    fields = {f for f in cls.__dataclass_fields__}
    unknown = set(kwargs) - fields
    if unknown:
        raise ValueError(f"unknown options {sorted(unknown)} for transformer {transformer!r}.")
    return cls(**kwargs)
