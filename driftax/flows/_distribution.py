"""Flow distributions: a base distribution pushed through a bijection. A flow IS an energy."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp

from .._checks import check_shape
from .._custom_types import Array, Key, Point, Scalar, Shape
from ..energies._base import (
    AbstractEnergy,
    AbstractKnownMoments,
    AbstractKnownNormalizer,
    AbstractSampleable,
    check_event,
    check_sample_shape,
)
from ..energies._gaussian import normal_log_density
from ._bijection import AbstractBijection


class StandardNormal(AbstractSampleable, AbstractKnownNormalizer, AbstractKnownMoments):
    """The standard normal `N(0, I)` on any event shape: the default base of a flow."""

    event_shape: Shape = eqx.field(static=True)

    def __init__(self, event_shape):
        self.event_shape = check_shape(event_shape, "event_shape")

    def log_density(self, x: Point) -> Scalar:
        x = check_event(x, self.event_shape)
        return normal_log_density(x)

    def sample(self, key: Key, shape: Shape | int = ()) -> Array:
        shape = check_sample_shape(shape)
        return jax.random.normal(key, (*shape, *self.event_shape), jnp.result_type(float))

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), jnp.result_type(float))

    @property
    def mean(self) -> Array:
        return jnp.zeros(self.event_shape, jnp.result_type(float))

    @property
    def variance(self) -> Array:
        return jnp.ones(self.event_shape, jnp.result_type(float))


def _batched(fn, n_batch_dims: int, in_axes: int | None | Sequence[Any] = 0):
    for _ in range(n_batch_dims):
        fn = jax.vmap(fn, in_axes=in_axes)
    return fn


def check_base(base) -> None:
    """Raise a `TypeError` unless `base` can start a flow: a sampleable energy with a known
    normalizer."""
    if not (isinstance(base, AbstractSampleable) and isinstance(base, AbstractKnownNormalizer)):
        raise TypeError(
            "`base` must be a sampleable energy with a known normalizer "
            f"(AbstractSampleable and AbstractKnownNormalizer), got {type(base).__name__}."
        )


def base_log_density(base, z: Array) -> Scalar:
    """The normalized log density `log p̃(z) - log Z` of a base checked by `check_base`."""
    return base.log_density(z) - base.log_normalizer


class Flow(AbstractSampleable, AbstractKnownNormalizer):
    """A normalizing flow: `x = T(z)` with `z ~ base` and `T = bijection`.

    It is an energy (`log_density` is normalized, `log_normalizer == 0`) with exact `sample` and
    `sample_and_log_density`, so anything that consumes an energy consumes a flow. Conditional
    flows take a keyword `condition` (one condition of the bijection's `cond_shape`, or a batch of
    them matching the sample shape).

    **Arguments:**

    - `base`: a sampleable energy with a known normalizer, e.g. [`StandardNormal`][].
    - `bijection`: an [`AbstractBijection`][] of the same shape.

    **Example:**

    ```python
    import jax
    import driftax as dx

    flow = dx.flows.coupling_flow(jax.random.key(0), dim=2, transformer="spline")
    x, log_q = flow.sample_and_log_density(jax.random.key(1), (5,))   # (5, 2), (5,)
    ```
    """

    base: AbstractEnergy
    bijection: AbstractBijection

    def __init__(self, base: AbstractEnergy, bijection: AbstractBijection):
        if not isinstance(bijection, AbstractBijection):
            raise TypeError(f"`bijection` must be an AbstractBijection, got {type(bijection)}.")
        check_base(base)
        if tuple(base.event_shape) != tuple(bijection.event_shape):
            raise ValueError(
                f"`base` event shape {tuple(base.event_shape)} must equal the bijection shape "
                f"{tuple(bijection.event_shape)}."
            )
        self.base = base
        self.bijection = bijection

    @property
    def event_shape(self) -> Shape:
        return tuple(self.bijection.event_shape)

    @property
    def cond_shape(self) -> Shape | None:
        """Shape of one condition (`None` for an unconditional flow)."""
        return self.bijection.cond_shape

    @property
    def log_normalizer(self) -> Scalar:
        return jnp.zeros((), jnp.result_type(float))

    def log_density(
        self, x: Point, condition: Array | None = None, *, key: Key | None = None
    ) -> Scalar:
        """Normalized `log q(x) = log p_base(T⁻¹(x)) + log|det ∂T⁻¹/∂x|` of ONE point.

        `key` is passed on to bijections with a stochastic log-det (a [`CNF`][] with Hutchinson
        divergence); the result is then an unbiased estimate.
        """
        x = check_event(x, self.event_shape)
        if key is None:
            z, log_det = self.bijection.inverse_and_log_det(x, condition)
        else:
            z, log_det = self.bijection.inverse_and_log_det(x, condition, key=key)  # type: ignore[call-arg]
        return base_log_density(self.base, z) + log_det

    def transform_and_log_density(
        self, z: Point, condition: Array | None = None, *, key: Key | None = None
    ):
        """`(T(z), log q(T(z)))` for ONE base point `z` (the reparameterization of reverse KL).

        `key` as for [`Flow.log_density`][]."""
        z = check_event(z, self.event_shape)
        if key is None:
            x, log_det = self.bijection.transform_and_log_det(z, condition)
        else:
            x, log_det = self.bijection.transform_and_log_det(z, condition, key=key)  # type: ignore[call-arg]
        return x, base_log_density(self.base, z) - log_det

    def _condition_batch(self, condition, shape):
        if condition is None:
            return None, False
        condition = jnp.asarray(condition)
        cs = self.cond_shape
        if cs is None:
            raise ValueError("this flow is unconditional: do not pass `condition`.")
        if tuple(condition.shape) == tuple(cs):
            return condition, False
        if tuple(condition.shape) == (*shape, *cs):
            return condition, True
        raise ValueError(
            f"`condition` must have shape {tuple(cs)} or {(*shape, *cs)}, got {condition.shape}."
        )

    def sample_and_log_density(
        self, key: Key, shape: Shape | int = (), condition: Array | None = None
    ) -> tuple[Array, Array]:
        """Draw `x` of shape `(*shape, *event_shape)` and its normalized log density `(*shape)`."""
        shape = check_sample_shape(shape)
        z, keys = self._base_draws(key, shape)
        condition, batched = self._condition_batch(condition, shape)
        fn = _batched(self._one_draw, len(shape), (0, 0 if batched else None, 0))
        return fn(z, condition, keys)

    def _one_draw(self, z, condition, key):
        return self.transform_and_log_density(z, condition, key=key)

    def _base_draws(self, key, shape):
        """Base draws and, for a stochastic log-det, one key per draw (else a tree of `None`s)."""
        if not self.bijection.stochastic_log_det:
            return self.base.sample(key, shape), None  # type: ignore[attr-defined]
        k_base, k_det = jax.random.split(key)
        keys = jax.random.split(k_det, math.prod(shape)).reshape(shape)
        return self.base.sample(k_base, shape), keys  # type: ignore[attr-defined]

    def sample(self, key: Key, shape: Shape | int = (), condition: Array | None = None) -> Array:
        """Exact draws of shape `(*shape, *event_shape)`."""
        shape = check_sample_shape(shape)
        z, keys = self._base_draws(key, shape)
        condition, batched = self._condition_batch(condition, shape)
        fn = _batched(self._one_draw, len(shape), (0, 0 if batched else None, 0))
        return fn(z, condition, keys)[0]
