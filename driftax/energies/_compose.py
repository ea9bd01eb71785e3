"""Energies built from energies: tempering, geometric annealing, sums, conditioning, pull-backs."""

from __future__ import annotations

from typing import Any, Protocol

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Point, Scalar, ScalarLike, Shape
from ._base import AbstractEnergy, check_event, check_finite


def _check_energy(energy, name: str) -> AbstractEnergy:
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`{name}` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    return energy


def _inverse_temperature(value, name: str, *, at_most_one: bool = False) -> Array:
    """`value` as a float array, checked finite and `>= 0` (and `<= 1` with `at_most_one`) when
    it is concrete (a traced value passes unchecked)."""
    beta = check_finite(value, name)
    if isinstance(beta, np.ndarray):
        if at_most_one and (np.any(beta < 0) or np.any(beta > 1)):
            raise ValueError(f"`{name}` must lie in [0, 1], got {value!r}.")
        if np.any(beta < 0):
            raise ValueError(f"`{name}` must be >= 0, got {value!r}.")
    return jnp.asarray(beta, dtype=jnp.result_type(float))


class Tempered(AbstractEnergy):
    """`inverse_temperature · log_density(x)`: the target at temperature `1 / inverse_temperature`."""

    base: AbstractEnergy
    inverse_temperature: Array

    def __init__(self, base: AbstractEnergy, inverse_temperature: ScalarLike):
        self.base = _check_energy(base, "base")
        self.inverse_temperature = _inverse_temperature(inverse_temperature, "inverse_temperature")

    @property
    def event_shape(self) -> Shape:
        return self.base.event_shape

    def log_density(self, x: Point) -> Scalar:
        return self.inverse_temperature * self.base.log_density(x)


class GeometricPath(AbstractEnergy):
    """The geometric annealing path `(1 - beta) log p_initial(x) + beta log p_final(x)`.

    `beta = 0` is the `initial` (reference) energy, `beta = 1` the `final` (target). Use
    [`GeometricPath.at`][] to move along the path without rebuilding the energies; `beta` is an
    array field, so a path can be annealed inside `jit`.
    """

    initial: AbstractEnergy
    final: AbstractEnergy
    beta: Array

    def __init__(self, initial: AbstractEnergy, final: AbstractEnergy, beta: ScalarLike = 1.0):
        self.initial = _check_energy(initial, "initial")
        self.final = _check_energy(final, "final")
        if tuple(initial.event_shape) != tuple(final.event_shape):
            raise ValueError(
                f"`initial` and `final` must share an event shape, got {initial.event_shape} "
                f"and {final.event_shape}."
            )
        self.beta = _inverse_temperature(beta, "beta", at_most_one=True)

    @property
    def event_shape(self) -> Shape:
        return self.final.event_shape

    def at(self, beta: ScalarLike) -> GeometricPath:
        """The same path at another `beta` (works with traced `beta`)."""
        return eqx.tree_at(lambda p: p.beta, self, jnp.asarray(beta, self.beta.dtype))

    def log_density(self, x: Point) -> Scalar:
        return (1.0 - self.beta) * self.initial.log_density(x) + self.beta * self.final.log_density(
            x
        )


class SumEnergy(AbstractEnergy):
    """The product of densities: `log_density(x) = Σ_i terms[i].log_density(x)` (a sum of energies)."""

    terms: tuple[AbstractEnergy, ...]

    def __init__(self, *terms: AbstractEnergy):
        if len(terms) == 0:
            raise ValueError("`terms` must contain at least one energy.")
        for i, t in enumerate(terms):
            _check_energy(t, f"terms[{i}]")
        shapes = {tuple(t.event_shape) for t in terms}
        if len(shapes) != 1:
            raise ValueError(f"all `terms` must share one event shape, got {sorted(shapes)}.")
        self.terms = tuple(terms)

    @property
    def event_shape(self) -> Shape:
        return self.terms[0].event_shape

    def log_density(self, x: Point) -> Scalar:
        return sum(t.log_density(x) for t in self.terms)  # type: ignore[return-value]


class Conditioned(AbstractEnergy):
    """An energy of a flat vector conditioned on fixed values of some coordinates.

    The new energy acts on the remaining ("free") coordinates, in their original order.
    """

    base: AbstractEnergy
    fixed_index: tuple[int, ...] = eqx.field(static=True)
    free_index: tuple[int, ...] = eqx.field(static=True)
    values: Array

    def __init__(self, base: AbstractEnergy, index, values):
        self.base = _check_energy(base, "base")
        if len(base.event_shape) != 1:
            raise ValueError(
                f"`base` must have a vector event shape (d,), got {base.event_shape}; reshape first."
            )
        d = base.event_shape[0]
        idx = np.atleast_1d(np.asarray(index, dtype=int))
        if (
            idx.ndim != 1
            or np.any(idx < 0)
            or np.any(idx >= d)
            or len(set(idx.tolist())) != idx.size
        ):
            raise ValueError(f"`index` must be distinct integers in [0, {d}), got {index!r}.")
        if idx.size >= d:
            raise ValueError("`index` must leave at least one free coordinate.")
        vals = check_finite(values, "values")
        vals = np.broadcast_to(vals, idx.shape) if np.ndim(vals) == 0 else vals
        if np.shape(vals) != idx.shape:
            raise ValueError(
                f"`values` must have shape {idx.shape} like `index`, got {np.shape(vals)}."
            )
        self.fixed_index = tuple(int(i) for i in idx)
        self.free_index = tuple(int(i) for i in np.setdiff1d(np.arange(d), idx))
        self.values = jnp.asarray(vals, dtype=jnp.result_type(float))

    @property
    def event_shape(self) -> Shape:
        return (len(self.free_index),)

    def embed(self, x: Point) -> Point:
        """The full point: free coordinates from `x`, fixed ones from `values`."""
        x = check_event(x, self.event_shape)
        full = jnp.zeros(self.base.event_shape, x.dtype)
        free, fixed = jnp.asarray(self.free_index), jnp.asarray(self.fixed_index)
        return full.at[free].set(x).at[fixed].set(self.values.astype(x.dtype))

    def log_density(self, x: Point) -> Scalar:
        return self.base.log_density(self.embed(x))


class BijectionLike(Protocol):
    """Anything with `transform_and_log_det(x) -> (y, log|det ∂y/∂x|)` (e.g. a driftax flow bijection)."""

    def transform_and_log_det(self, x: Any, condition: Any = None) -> tuple[Array, Array]: ...


class PullBack(AbstractEnergy):
    """The pull-back of `base` through a bijection `T`: `log p_z(z) = log p(T(z)) + log|det ∂T/∂z|`.

    Sampling `z` from this energy and mapping `y = T(z)` samples `base`. This is the energy of
    NeuTra and of flow-transformed HMC.
    """

    base: AbstractEnergy
    bijection: BijectionLike
    event_shape: Shape = eqx.field(static=True)

    def __init__(
        self, base: AbstractEnergy, bijection: BijectionLike, event_shape: Shape | None = None
    ):
        self.base = _check_energy(base, "base")
        if not callable(getattr(bijection, "transform_and_log_det", None)):
            raise TypeError("`bijection` must have a `transform_and_log_det(x)` method.")
        self.bijection = bijection
        self.event_shape = tuple(base.event_shape if event_shape is None else event_shape)

    def push_forward(self, z: Point) -> Point:
        """`T(z)`: map a latent point to the base energy's space."""
        return self.bijection.transform_and_log_det(check_event(z, self.event_shape))[0]

    def log_density(self, z: Point) -> Scalar:
        z = check_event(z, self.event_shape)
        y, log_det = self.bijection.transform_and_log_det(z)
        return self.base.log_density(y) + log_det
