"""The bijection interface and the combinators that build flows out of layers.

A bijection acts on ONE unbatched point of shape `shape` (and, when conditional, one condition of
shape `cond_shape`); batching is done with `jax.vmap`. Stacks of identical layers are stored with a
leading layer axis (built with `eqx.filter_vmap`) and run with `jax.lax.scan` by [`Scan`][].
"""

from __future__ import annotations

import abc
import math
from typing import cast

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Scalar, Shape


def _float_of_shape(value, shape, name: str, dtype) -> Array:
    """`value` as an array of `shape` (one unbatched point or condition; else a `ValueError`
    naming `name`), cast to `dtype` unless already floating."""
    value = jnp.asarray(value)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"`{name}` must have shape {tuple(shape)} (one unbatched value), got shape "
            f"{tuple(value.shape)}; batch with jax.vmap."
        )
    return value if jnp.issubdtype(value.dtype, jnp.floating) else value.astype(dtype)


def check_input(bijection: AbstractBijection, x, condition, name: str = "x"):
    """Check (at trace time) one unbatched input and its condition against a bijection.

    Returns `(x, condition)` as float arrays. Raises a `ValueError` naming the argument when a
    shape does not match, or when a conditional bijection gets no condition. Unconditional
    bijections ignore `condition` (so a chain can pass one condition to every layer).
    """
    x = _float_of_shape(x, bijection.event_shape, name, jnp.result_type(float))
    if bijection.cond_shape is None:
        return x, None
    if condition is None:
        raise ValueError(
            f"this {type(bijection).__name__} is conditional: pass `condition` of shape "
            f"{tuple(bijection.cond_shape)}."
        )
    condition = _float_of_shape(condition, bijection.cond_shape, "condition", x.dtype)
    return x, condition


class AbstractBijection(eqx.Module):
    """An invertible, differentiable map `y = T(x)` with a tractable log-Jacobian-determinant.

    Subclasses set the (static) fields `shape` (the event shape of one unbatched point) and
    `cond_shape` (`None` for unconditional bijections, else the shape of one condition), and
    implement `transform_and_log_det` and `inverse_and_log_det`. `transform` and `inverse` are
    derived here.

    **Example:**

    ```python
    import jax.numpy as jnp
    import driftax as dx

    bij = dx.flows.Affine(loc=jnp.ones(2), scale=2.0 * jnp.ones(2))
    y, log_det = bij.transform_and_log_det(jnp.zeros(2))   # y = [1, 1], log_det = 2 log 2
    x, inv_log_det = bij.inverse_and_log_det(y)            # back to 0, -2 log 2
    ```
    """

    event_shape: eqx.AbstractVar[Shape]
    cond_shape: eqx.AbstractVar[Shape | None]

    @abc.abstractmethod
    def transform_and_log_det(
        self, x: Array, condition: Array | None = None
    ) -> tuple[Array, Scalar]:
        """`(T(x), log|det ∂T/∂x|)` for ONE unbatched `x` of shape `shape`.

        **Arguments:**

        - `x`: one point of shape `shape`.
        - `condition`: one condition of shape `cond_shape` (required by conditional bijections,
          ignored by unconditional ones).
        """

    @abc.abstractmethod
    def inverse_and_log_det(self, y: Array, condition: Array | None = None) -> tuple[Array, Scalar]:
        """`(T⁻¹(y), log|det ∂T⁻¹/∂y|)` for ONE unbatched `y` (the log-det is `-log|det ∂T/∂x|`)."""

    def transform(self, x: Array, condition: Array | None = None) -> Array:
        """`T(x)` (the log-det is computed and discarded; XLA removes the dead code)."""
        return self.transform_and_log_det(x, condition)[0]

    def inverse(self, y: Array, condition: Array | None = None) -> Array:
        """`T⁻¹(y)`."""
        return self.inverse_and_log_det(y, condition)[0]

    @property
    def size(self) -> int:
        """Number of scalar coordinates of one point (`prod(shape)`)."""
        return math.prod(self.event_shape)

    @property
    def stochastic_log_det(self) -> bool:
        """`True` if the log-det is a random estimate (a [`CNF`][] with Hutchinson divergence):
        then `transform_and_log_det` and `inverse_and_log_det` take a keyword `key`."""
        return False


def _shapes(bijection: AbstractBijection) -> tuple[Shape, Shape | None]:
    """`(event_shape, cond_shape)` of a bijection, as tuples: what a wrapper of it takes over."""
    cond = bijection.cond_shape
    return tuple(bijection.event_shape), None if cond is None else tuple(cond)


def directed(bijection, inverse: bool):
    """`bijection.inverse_and_log_det` if `inverse` else `bijection.transform_and_log_det`
    (a transformer's or a bijection's): one direction of a two-way map."""
    return bijection.inverse_and_log_det if inverse else bijection.transform_and_log_det


class _TwoWay(AbstractBijection):
    """A bijection whose two directions are one routine `_run(x, condition, inverse)`: the
    input checks and the two public methods are written here once."""

    @abc.abstractmethod
    def _run(self, x: Array, condition: Array | None, inverse: bool) -> tuple[Array, Scalar]:
        """`(T(x), log-det)`, or `(T⁻¹(x), log-det)` with `inverse=True`, on checked input."""

    def transform_and_log_det(self, x, condition=None):
        x, condition = check_input(self, x, condition)
        return self._run(x, condition, inverse=False)

    def inverse_and_log_det(self, y, condition=None):
        y, condition = check_input(self, y, condition, "y")
        return self._run(y, condition, inverse=True)


class Invert(AbstractBijection):
    """The inverse `T⁻¹` of a bijection: `transform` and `inverse` swap roles.

    Used to make the cheap direction of an autoregressive layer the density direction of a flow.
    """

    bijection: AbstractBijection
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def __init__(self, bijection: AbstractBijection):
        if not isinstance(bijection, AbstractBijection):
            raise TypeError(f"`bijection` must be an AbstractBijection, got {type(bijection)}.")
        self.bijection = bijection
        self.event_shape, self.cond_shape = _shapes(bijection)

    def transform_and_log_det(self, x, condition=None):
        return self.bijection.inverse_and_log_det(x, condition)

    def inverse_and_log_det(self, y, condition=None):
        return self.bijection.transform_and_log_det(y, condition)


def _common_cond_shape(bijections, name: str) -> Shape | None:
    shapes = {tuple(b.cond_shape) for b in bijections if b.cond_shape is not None}
    if len(shapes) > 1:
        raise ValueError(
            f"all conditional `{name}` must share one cond_shape, got {sorted(shapes)}."
        )
    return shapes.pop() if shapes else None


class Chain(_TwoWay):
    """The composition of a short sequence of (different) bijections, applied left to right.

    `Chain([a, b]).transform(x) = b.transform(a.transform(x))`. The same `condition` is passed to
    every layer. For many identical layers use [`Scan`][] instead (one compiled layer body).
    """

    bijections: tuple[AbstractBijection, ...]
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def __init__(self, bijections):
        bijections = tuple(bijections)
        if len(bijections) == 0:
            raise ValueError("`bijections` must contain at least one bijection.")
        for i, b in enumerate(bijections):
            if not isinstance(b, AbstractBijection):
                raise TypeError(f"`bijections[{i}]` must be an AbstractBijection, got {type(b)}.")
        shapes = {tuple(b.event_shape) for b in bijections}
        if len(shapes) != 1:
            raise ValueError(f"all `bijections` must share one shape, got {sorted(shapes)}.")
        self.bijections = bijections
        self.event_shape = tuple(bijections[0].event_shape)
        self.cond_shape = _common_cond_shape(bijections, "bijections")

    def _run(self, x, condition, inverse: bool):
        log_det = jnp.zeros((), x.dtype)
        for b in reversed(self.bijections) if inverse else self.bijections:
            x, ld = directed(b, inverse)(x, condition)
            log_det = log_det + ld
        return x, log_det


class Scan(_TwoWay):
    """`num_layers` copies of one layer structure with stacked parameters, run by `lax.scan`.

    Build the stacked layer with `eqx.filter_vmap` over keys, e.g.
    `Scan(eqx.filter_vmap(lambda k: Coupling(k, ...))(jax.random.split(key, 8)))`: every array
    leaf carries a leading layer axis, static fields are shared. Compilation cost does not grow
    with the number of layers.
    """

    layers: AbstractBijection
    num_layers: int = eqx.field(static=True)
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def __init__(self, layers: AbstractBijection):
        if not isinstance(layers, AbstractBijection):
            raise TypeError(f"`layers` must be a stacked AbstractBijection, got {type(layers)}.")
        leaves = jax.tree.leaves(eqx.filter(layers, eqx.is_array))
        if len(leaves) == 0:
            raise ValueError("`layers` has no array leaves to scan over.")
        sizes = {leaf.shape[0] if leaf.ndim else None for leaf in leaves}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "every array leaf of `layers` must carry the same leading layer axis (build it "
                f"with eqx.filter_vmap); got leading sizes {sorted(map(str, sizes))}."
            )
        self.layers = layers
        self.num_layers = int(cast(int, sizes.pop()))  # None was excluded above
        self.event_shape, self.cond_shape = _shapes(layers)

    def _run(self, x, condition, inverse: bool):
        params, static = eqx.partition(self.layers, eqx.is_array)

        def body(carry, p):
            z, log_det = carry
            z, ld = directed(eqx.combine(p, static), inverse)(z, condition)
            return (z, log_det + ld), None

        (z, log_det), _ = jax.lax.scan(body, (x, jnp.zeros((), x.dtype)), params, reverse=inverse)
        return z, log_det

    def layer(self, i: int) -> AbstractBijection:
        """The `i`-th layer as an ordinary (unstacked) bijection."""
        if not -self.num_layers <= i < self.num_layers:
            raise ValueError(f"`i` must index one of {self.num_layers} layers, got {i}.")
        params, static = eqx.partition(self.layers, eqx.is_array)
        return eqx.combine(jax.tree.map(lambda a: a[i], params), static)
