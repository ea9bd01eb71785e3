"""Adapters between driftax energies and plain callables, numpyro models and blackjax."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, Scalar, Shape
from ._base import AbstractEnergy, check_event


class FromLogDensity(AbstractEnergy):
    """An energy wrapping a JAX callable `fn(x) -> scalar`. Build it with [`from_log_density`][]."""

    fn: Callable[[Array], Array]
    event_shape: Shape = eqx.field(static=True)

    def log_density(self, x: Point) -> Scalar:
        return self.fn(check_event(x, self.event_shape))


def from_log_density(fn: Callable[[Array], Array], example) -> FromLogDensity:
    """Wrap any JAX callable `fn(x) -> scalar` as a driftax energy on points shaped like `example`.

    `fn` is traced once on `example` (abstractly, no FLOPs) to check that it returns a real scalar.

    **Arguments:**

    - `fn`: unnormalized log density of ONE point.
    - `example`: an example point (only its shape is used).

    **Example:**

    ```python
    energy = from_log_density(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3))
    ```
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    shape = tuple(np.shape(example))
    spec = jax.ShapeDtypeStruct(shape, jnp.result_type(float))
    try:
        out = jax.eval_shape(fn, spec)
    except Exception as e:  # noqa: BLE001 - report any tracing failure with context
        raise TypeError(f"`fn` could not be evaluated on a point of shape {shape}: {e}") from e
    if not hasattr(out, "shape") or tuple(out.shape) != ():
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`fn` must return a scalar log density, got output of shape {got}.")
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise TypeError(f"`fn` must return a real floating scalar, got dtype {out.dtype}.")
    return FromLogDensity(fn=fn, event_shape=shape)


def to_logdensity_fn(energy: AbstractEnergy) -> Callable[[Array], Array]:
    """Export an energy as a blackjax `logdensity_fn` (a pure function of one position)."""
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    return energy.log_density
