"""A user field `field(t, x)` in one of the four parameterizations, seen through a path."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Point, ScalarLike
from ._path import AbstractPath


class ParameterizedField(eqx.Module):
    """`field(t, x)` returning the `parameterization` of a model along `path`, with every other
    parameterization available through the path's conversions.

    Solvers receive one of these; users rarely build it themselves.
    """

    field: Callable
    path: AbstractPath
    parameterization: str = eqx.field(static=True)

    def raw(self, t: ScalarLike, x: Point) -> Point:
        """The field's own output at `(t, x)`, shape-checked."""
        out = self.field(t, x)
        out = jnp.asarray(out)
        if out.shape != x.shape:
            raise ValueError(
                f"`field(t, x)` must return an array of the shape of one unbatched `x` "
                f"{x.shape}, got {out.shape}."
            )
        return out.astype(x.dtype)

    def get(self, t: ScalarLike, x: Point, target: str) -> Point:
        """The model in parameterization `target` at `(t, x)` (one field evaluation)."""
        return self.path.convert(self.raw(t, x), t, x, source=self.parameterization, target=target)

    def get_many(self, t: ScalarLike, x: Point, targets: tuple[str, ...]) -> tuple[Point, ...]:
        """Several parameterizations from ONE field evaluation."""
        out = self.raw(t, x)
        return tuple(
            self.path.convert(out, t, x, source=self.parameterization, target=tg) for tg in targets
        )

    def data(self, t: ScalarLike, x: Point) -> Point:
        """The denoiser `E[x_data | x_t = x]`."""
        return self.get(t, x, "data")

    def velocity(self, t: ScalarLike, x: Point) -> Point:
        """The probability-flow velocity `dx/dt`."""
        return self.get(t, x, "velocity")

    def score(self, t: ScalarLike, x: Point) -> Point:
        """The score `∇ log p_t(x)`."""
        return self.get(t, x, "score")

    def noise(self, t: ScalarLike, x: Point) -> Point:
        """The noise prediction `E[eps | x_t = x]`."""
        return self.get(t, x, "noise")
