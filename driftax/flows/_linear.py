"""Volume-preserving and linear layers: permutation, reversal, LU-parameterized linear, ActNorm."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_int, check_shape
from .._custom_types import Array, Key, Shape
from ._bijection import AbstractBijection, check_input


class Permutation(AbstractBijection):
    """`y = x[permutation]` on a vector event (log-det 0).

    **Arguments:**

    - `permutation`: an integer array holding a permutation of `0..d-1`. It is stored as an
      (untrainable) integer array, so layers with different permutations can be stacked with
      `eqx.filter_vmap` and run by [`Scan`][].
    """

    permutation: Array
    inverse_permutation: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, permutation):
        if not isinstance(permutation, jax.core.Tracer):
            perm = np.asarray(permutation)
            if perm.ndim != 1 or not np.issubdtype(perm.dtype, np.integer):
                raise ValueError("`permutation` must be a 1-D integer array.")
            if not np.array_equal(np.sort(perm), np.arange(perm.size)):
                raise ValueError(f"`permutation` must be a permutation of 0..{perm.size - 1}.")
        permutation = jnp.asarray(permutation, dtype=jnp.int32)
        self.permutation = permutation
        self.inverse_permutation = jnp.argsort(permutation).astype(jnp.int32)
        self.event_shape = (int(permutation.shape[0]),)

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return x[self.permutation], jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return y[self.inverse_permutation], jnp.zeros((), y.dtype)


def random_permutation(key: Key, dim: int) -> Permutation:
    """A [`Permutation`][] drawn uniformly at random (works inside `eqx.filter_vmap`)."""
    return Permutation(jax.random.permutation(key, dim).astype(jnp.int32))


class Reverse(AbstractBijection):
    """`y = x[::-1]`, reversing the order of a vector event (log-det 0)."""

    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, dim: int):
        self.event_shape = (check_int(dim, "dim"),)

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return x[::-1], jnp.zeros((), x.dtype)

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return y[::-1], jnp.zeros((), y.dtype)


class LULinear(AbstractBijection):
    """`y = L U x + bias` with `L` unit lower-triangular and `U` upper-triangular with a positive
    diagonal `exp(log_diag)`: a general invertible linear map (up to a permutation) with an
    `O(d)` log-det and an `O(d²)` inverse by two triangular solves.

    Initialised to the identity. Chain with a [`Permutation`][] for full generality.
    """

    lower: Array
    upper: Array
    log_diag: Array
    bias: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, dim: int):
        d = check_int(dim, "dim")
        dtype = jnp.result_type(float)
        self.lower = jnp.zeros((d, d), dtype)
        self.upper = jnp.zeros((d, d), dtype)
        self.log_diag = jnp.zeros((d,), dtype)
        self.bias = jnp.zeros((d,), dtype)
        self.event_shape = (d,)

    def _factors(self):
        d = self.event_shape[0]
        lower = jnp.tril(self.lower, -1) + jnp.eye(d, dtype=self.lower.dtype)
        upper = jnp.triu(self.upper, 1) + jnp.diag(jnp.exp(self.log_diag))
        return lower, upper

    @property
    def matrix(self) -> Array:
        """The dense matrix `L U`."""
        lower, upper = self._factors()
        return lower @ upper

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        lower, upper = self._factors()
        return lower @ (upper @ x) + self.bias, jnp.sum(self.log_diag)

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        lower, upper = self._factors()
        z = jax.scipy.linalg.solve_triangular(lower, y - self.bias, lower=True, unit_diagonal=True)
        x = jax.scipy.linalg.solve_triangular(upper, z, lower=False)
        return x, -jnp.sum(self.log_diag)


class ActNorm(AbstractBijection):
    """Activation normalisation (Glow): `y = loc + exp(log_scale) * x` elementwise, trainable.

    Starts as the identity; [`ActNorm.from_data`][] initialises it so that the inverse map
    standardises a batch of data (mean 0, unit variance per coordinate).
    """

    loc: Array
    log_scale: Array
    event_shape: Shape = eqx.field(static=True)
    cond_shape: None = eqx.field(static=True, default=None)

    def __init__(self, event_shape, loc=None, log_scale=None):
        shape = check_shape(event_shape, "event_shape")
        dtype = jnp.result_type(float)
        self.loc = jnp.zeros(shape, dtype) if loc is None else jnp.broadcast_to(loc, shape)
        self.log_scale = (
            jnp.zeros(shape, dtype) if log_scale is None else jnp.broadcast_to(log_scale, shape)
        )
        self.event_shape = shape

    @classmethod
    def from_data(cls, data: Array) -> ActNorm:
        """An ActNorm whose inverse standardises `data` (shape `(n, *event_shape)`, `n ≥ 2`)."""
        data = jnp.asarray(data)
        if data.ndim < 2 or data.shape[0] < 2:
            raise ValueError(f"`data` must have shape (n >= 2, *event_shape), got {data.shape}.")
        std = jnp.std(data, axis=0)
        return cls(data.shape[1:], jnp.mean(data, axis=0), jnp.log(jnp.maximum(std, 1e-8)))

    def transform_and_log_det(self, x, condition=None):
        x, _ = check_input(self, x, condition)
        return self.loc + jnp.exp(self.log_scale) * x, jnp.sum(self.log_scale)

    def inverse_and_log_det(self, y, condition=None):
        y, _ = check_input(self, y, condition, "y")
        return (y - self.loc) * jnp.exp(-self.log_scale), -jnp.sum(self.log_scale)
