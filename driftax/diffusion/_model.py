"""The one base of time-dependent fields: `field(t, x)` in a declared parameterization along a
declared path, with the conversions to every other parameterization as methods.

(No `from __future__ import annotations` here: equinox reads `AbstractVar` annotations, and
a property in a subclass implements them only when they are not strings.)"""

import abc
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp

from .._custom_types import Point, ScalarLike
from ._path import AbstractPath, check_parameterization


class AbstractField(eqx.Module):
    """A time-dependent field `field(t, x)` on ONE unbatched `x` that returns a declared
    `parameterization` (`"score"`, `"noise"`, `"data"` or `"velocity"`) along a declared `path`.

    The conversions to the other parameterizations are methods ([`score`][], [`noise`][],
    [`denoise`][], [`velocity`][], [`get`][], [`as_`][]); each costs one field evaluation.
    `solve` checks a field's declared `path` and `parameterization` against its own arguments,
    so a model cannot silently be sampled in the wrong parameterization.

    Subclasses: [`ParameterizedField`][] (any callable with a stated parameterization),
    [`NetworkField`][], [`Denoiser`][], and the guided combinations of `Guided`.
    """

    path: eqx.AbstractVar[AbstractPath]
    parameterization: eqx.AbstractVar[str]

    @abc.abstractmethod
    def __call__(self, t: ScalarLike, x: Point) -> Point:
        """The field's output at `(t, x)` in `self.parameterization`."""

    def get(self, t: ScalarLike, x: Point, target: str) -> Point:
        """The model in parameterization `target` at `(t, x)` (one field evaluation)."""
        return self.path.convert(self(t, x), t, x, source=self.parameterization, target=target)

    def get_many(self, t: ScalarLike, x: Point, targets: tuple[str, ...]) -> tuple[Point, ...]:
        """Several parameterizations from ONE field evaluation."""
        out = self(t, x)
        return tuple(
            self.path.convert(out, t, x, source=self.parameterization, target=tg) for tg in targets
        )

    def denoise(self, t: ScalarLike, x: Point) -> Point:
        """The data prediction (denoiser) `E[x_data | x_t = x]`."""
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

    def as_(self, target: str) -> "AbstractField":
        """The same model as a field `(t, x) -> output` in parameterization `target`."""
        check_parameterization(target, "target")
        if target == self.parameterization:
            return self
        return ParameterizedField(
            field=_Converted(model=self, target=target), path=self.path, parameterization=target
        )


class _Converted(eqx.Module):
    model: "AbstractField"
    target: str = eqx.field(static=True)

    def __call__(self, t, x):
        return self.model.get(t, x, self.target)


class ParameterizedField(AbstractField):
    """Any callable `field(t, x)` taken as the `parameterization` of a model along `path`; the
    output is shape-checked against `x` and cast to its dtype.

    `solve` wraps a user's field in one of these; users rarely build it themselves.
    """

    field: Callable
    path: AbstractPath
    parameterization: str = eqx.field(static=True)

    def __check_init__(self):
        check_parameterization(self.parameterization)
        declared = declared_parameterization(self.field)
        if declared is not None and declared != self.parameterization:
            raise ValueError(
                f"`parameterization={self.parameterization!r}` does not match the field's "
                f"declared parameterization {declared!r}."
            )

    def __call__(self, t: ScalarLike, x: Point) -> Point:
        out = jnp.asarray(self.field(t, x))
        if out.shape != x.shape:
            raise ValueError(
                f"`field(t, x)` must return an array of the shape of one unbatched `x` "
                f"{x.shape}, got {out.shape}."
            )
        return out.astype(x.dtype)


def declared_parameterization(field) -> str | None:
    """The parameterization a field declares (an [`AbstractField`][]), else `None`."""
    if isinstance(field, AbstractField):
        p = field.parameterization
        return p if isinstance(p, str) else None
    return None


def declared_path(field) -> AbstractPath | None:
    """The path a field declares (an [`AbstractField`][]), else `None`."""
    if isinstance(field, AbstractField):
        p = field.path
        return p if isinstance(p, AbstractPath) else None
    return None
