"""Elementwise bijections: affine, softplus, sigmoid/logit, tanh."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_shape
from .._custom_types import Array, Shape
from ..energies._base import check_finite
from ._bijection import AbstractBijection, check_input


def _float(x) -> Array:
    return jnp.asarray(x, dtype=jnp.result_type(float))


class Affine(AbstractBijection):
    """`y = loc + scale * x` elementwise (`scale` may be negative, never zero).

    **Arguments:**

    - `loc`, `scale`: arrays broadcastable to each other; their broadcast shape is the event
      shape unless `event_shape` is given (then they broadcast to it).
    """

    loc: Array
    scale: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, loc=0.0, scale=1.0, event_shape=None):
        check_finite(loc, "loc")
        scale_np = check_finite(scale, "scale")
        if isinstance(scale_np, np.ndarray) and np.any(scale_np == 0):
            raise ValueError("`scale` must be non-zero everywhere (the map is not invertible).")
        if event_shape is None:
            event_shape = np.broadcast_shapes(np.shape(loc), np.shape(scale))
        shape = tuple(int(s) for s in event_shape)
        self.loc = jnp.broadcast_to(_float(loc), shape)
        self.scale = jnp.broadcast_to(_float(scale), shape)
        self.event_shape = shape

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return self.loc + self.scale * x, jnp.sum(jnp.log(jnp.abs(self.scale)))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return (y - self.loc) / self.scale, -jnp.sum(jnp.log(jnp.abs(self.scale)))


class _AbstractParameterless(AbstractBijection):
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, event_shape=()):
        self.event_shape = check_shape(event_shape, "event_shape") if event_shape != () else ()


class Softplus(_AbstractParameterless):
    """`y = log(1 + eˣ)` elementwise: maps ℝ onto (0, ∞)."""

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return jax.nn.softplus(x), jnp.sum(jax.nn.log_sigmoid(x))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        # x = log(e^y - 1) = y + log(1 - e^{-y}); dx/dy = 1 / (1 - e^{-y})
        x = y + jnp.log(-jnp.expm1(-y))
        return x, -jnp.sum(jnp.log(-jnp.expm1(-y)))


class Sigmoid(_AbstractParameterless):
    """`y = 1 / (1 + e⁻ˣ)` elementwise: maps ℝ onto (0, 1). Its inverse is [`Logit`][]."""

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return jax.nn.sigmoid(x), jnp.sum(jax.nn.log_sigmoid(x) + jax.nn.log_sigmoid(-x))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return jnp.log(y) - jnp.log1p(-y), -jnp.sum(jnp.log(y) + jnp.log1p(-y))


class Logit(_AbstractParameterless):
    """`y = log(x / (1 - x))` elementwise: maps (0, 1) onto ℝ. Its inverse is [`Sigmoid`][]."""

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return jnp.log(x) - jnp.log1p(-x), -jnp.sum(jnp.log(x) + jnp.log1p(-x))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return jax.nn.sigmoid(y), jnp.sum(jax.nn.log_sigmoid(y) + jax.nn.log_sigmoid(-y))


def _log_sech2(x):
    # log(1 - tanh(x)^2) = 2 (log 2 - x - softplus(-2x)), stable for large |x|
    return 2.0 * (jnp.log(2.0) - x - jax.nn.softplus(-2.0 * x))


class Tanh(_AbstractParameterless):
    """`y = tanh(x)` elementwise: maps ℝ onto (-1, 1)."""

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return jnp.tanh(x), jnp.sum(_log_sech2(x))

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        x = jnp.arctanh(y)
        return x, -jnp.sum(_log_sech2(x))
