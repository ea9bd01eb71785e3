"""jaxtyping aliases shared by every driftax subpackage."""

from typing import Any

from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray, PyTree, Shaped

Scalar = Float[Array, ""]
"""A floating-point scalar array."""
ScalarLike = float | int | Float[ArrayLike, ""]
"""Anything that can be turned into a floating-point scalar."""
Point = Float[Array, "..."]
"""ONE unbatched point of an energy's event shape."""
Batch = Float[Array, "batch ..."]
"""A batch of points: leading axis is the batch, the rest is the event shape."""
Key = PRNGKeyArray
"""An explicit JAX PRNG key (always passed as keyword ``key``)."""
Shape = tuple[int, ...]
"""A static shape."""

__all__ = [
    "Any",
    "Array",
    "ArrayLike",
    "Batch",
    "Bool",
    "Float",
    "Int",
    "Key",
    "Point",
    "PyTree",
    "Scalar",
    "ScalarLike",
    "Shape",
    "Shaped",
]
