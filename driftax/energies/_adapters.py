"""Adapters between driftax energies and plain callables, numpyro models and blackjax."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, Scalar, Shape
from ._base import AbstractEnergy, PytreeLayout, check_event, pytree_layout


class FromLogDensity(AbstractEnergy):
    """An energy wrapping a JAX callable `fn(x) -> scalar`. Build it with [`from_log_density`][].

    For an array example, points are arrays of the example's shape. For a pytree example (a
    dict, tuple, ... of floating arrays), the kernels act on the flat vector of all leaves
    (`event_shape == (dim,)`); `ravel` / `unravel` convert, and `variables` names the leaves by
    their pytree paths (`a`, `layer.w`, `w[0]`).
    """

    fn: Callable[[Any], Array]
    event_shape: Shape = eqx.field(static=True)
    layout: PytreeLayout | None = eqx.field(static=True, default=None)
    point_dtype: str = eqx.field(static=True, default="float32")

    @property
    def dtype(self):
        """The floating dtype of points: that of the example's leaves (promoted)."""
        return jnp.dtype(self.point_dtype)

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return self.fn(x if self.layout is None else self.layout.unravel(x))

    def ravel(self, point) -> Array:
        if self.layout is None:
            return super().ravel(point)
        return self.layout.ravel(point, self.dtype)

    def unravel(self, x: Array):
        return x if self.layout is None else self.layout.unravel(x)

    def variables(self, x: Array, *, constrained: bool = True) -> dict[str, Array]:
        del constrained
        return {"x": x} if self.layout is None else self.layout.named(x)


def from_log_density(fn: Callable[[Any], Array], example) -> FromLogDensity:
    """Wrap any JAX callable `fn(x) -> scalar` as a driftax energy on points shaped like `example`.

    `fn` is traced once on `example` (abstractly, no FLOPs) to check that it returns a real scalar.

    **Arguments:**

    - `fn`: unnormalized log density of ONE point (an array, or a pytree like `example`).
    - `example`: an example point: a floating array (its shape is the event shape) or any pytree
      of floating arrays (dict, tuple, list, ...; the energy then acts on the flat vector of
      its leaves and `sample` returns draws in the example's structure). Only its structure,
      shapes and dtype are used; the energy's `dtype` is the leaves' (promoted) floating dtype.

    Raises a `TypeError` naming `example` when it is not a pytree of floating arrays (e.g. a
    shape tuple like `(3,)`, an int array, a string).

    **Example:**

    ```python
    energy = from_log_density(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3))
    tree = from_log_density(
        lambda p: -0.5 * (jnp.sum(p["a"] ** 2) + jnp.sum(p["b"] ** 2)),
        {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))},
    )
    tree.event_shape  # (7,)
    ```
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    layout, dtype = pytree_layout(example, "example")
    is_array = jax.tree_util.treedef_is_leaf(layout.treedef)
    if is_array:
        shape = tuple(np.shape(example))
        spec = jax.ShapeDtypeStruct(shape, dtype)
        layout_or_none = None
    else:
        shape = (layout.dim,)
        spec = jax.tree_util.tree_unflatten(
            layout.treedef, [jax.ShapeDtypeStruct(s, dtype) for s in layout.shapes]
        )
        layout_or_none = layout
    try:
        out = jax.eval_shape(fn, spec)
    except Exception as e:  # noqa: BLE001 - report any tracing failure with context
        raise TypeError(f"`fn` could not be evaluated on a point like `example`: {e}") from e
    if not hasattr(out, "shape") or tuple(out.shape) != ():
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`fn` must return a scalar log density, got output of shape {got}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`fn` must return a real floating scalar, got dtype {out.dtype}.")
    return FromLogDensity(
        fn=fn, event_shape=shape, layout=layout_or_none, point_dtype=jnp.dtype(dtype).name
    )


def to_logdensity_fn(energy: AbstractEnergy) -> Callable[[Array], Array]:
    """Export an energy as a blackjax `logdensity_fn` (a pure function of one position)."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    return energy.log_density
