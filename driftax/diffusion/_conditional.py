"""Conditional diffusion models: one network that takes a context (a class label or a vector)
and a "drop" flag, so the same trained model gives the conditional field `given(context)` and
the unconditional field `unconditional()` (label dropout during training, Ho & Salimans 2022).
Classifier-free guidance and autoguidance then combine fields of trained models."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, Point, ScalarLike
from .._nn import TimeMLP
from ._model import AbstractField
from ._models import Denoiser
from ._path import AbstractPath, check_parameterization


def _context_spec(num_classes, context_shape):
    if (num_classes is None) == (context_shape is None):
        raise ValueError(
            "give exactly one of `num_classes` (labels) and `context_shape` (vectors)."
        )
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
            raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes!r}.")
        if num_classes < 1:
            raise ValueError(f"`num_classes` must be an int >= 1, got {num_classes!r}.")
        return int(num_classes), None
    shape = (context_shape,) if isinstance(context_shape, (int, np.integer)) else context_shape
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError as e:
        raise ValueError(f"`context_shape` must be a shape, got {context_shape!r}.") from e
    if not shape or any(s < 1 for s in shape):
        raise ValueError(
            f"`context_shape` must be a non-empty shape of positive sizes, got {shape}."
        )
    return None, shape


def check_context(
    context, num_classes: int | None, context_shape: tuple[int, ...] | None, *, batched: bool
) -> Array:
    """Check a context against a model's spec (shape and dtype at trace time; the label range
    too when the labels are concrete); return it as an array. `batched`: a leading batch axis.

    Labels are integer arrays of shape `()` (or `(n,)` batched) in `[0, num_classes)`; vectors
    are floating arrays of shape `context_shape` (or `(n, *context_shape)`)."""
    c = jnp.asarray(context)
    lead = c.shape[:1] if batched else ()
    if num_classes is not None:
        if not jnp.issubdtype(c.dtype, jnp.integer):
            raise TypeError(f"`context` must hold integer class labels, got dtype {c.dtype}.")
        if c.shape != lead or (batched and c.ndim != 1):
            want = "(n,)" if batched else "()"
            raise ValueError(f"`context` (class labels) must have shape {want}, got {c.shape}.")
        if not isinstance(context, jax.core.Tracer) and not isinstance(c, jax.core.Tracer):
            lo, hi = int(jnp.min(c)), int(jnp.max(c))
            if lo < 0 or hi >= num_classes:
                raise ValueError(
                    f"`context` labels must lie in [0, {num_classes}), got values in [{lo}, {hi}]."
                )
        return c
    assert context_shape is not None
    if not jnp.issubdtype(c.dtype, jnp.floating):
        raise TypeError(f"`context` must be a floating array, got dtype {c.dtype}.")
    if c.shape[len(lead) :] != context_shape or (batched and c.ndim != 1 + len(context_shape)):
        want = f"(n, {', '.join(map(str, context_shape))})" if batched else str(context_shape)
        raise ValueError(f"`context` must have shape {want}, got {c.shape}.")
    if not isinstance(c, jax.core.Tracer) and not bool(jnp.all(jnp.isfinite(c))):
        raise ValueError("`context` must be finite.")
    return c


class ConditionalMLP(eqx.Module):
    """A residual time-conditioned MLP `net(t, x, context, drop)` for vector data that also
    takes a context: a class label (a learned embedding per class, plus one "null" embedding
    used when `drop` is true) or a vector (concatenated with a drop flag; zeroed when dropped).

    **Arguments:**

    - `dim`: data dimension; `key`: PRNG key (keyword-only).
    - `num_classes` or `context_shape`: the context (exactly one).
    - `embed_size`: length of a class embedding.
    - `hidden`, `depth`, `num_frequencies`, `max_frequency`: as for [`MLP`][].

    **Example:**

    ```python
    net = ConditionalMLP(2, key=jax.random.key(0), num_classes=3)
    out = net(0.3, jnp.zeros(2), jnp.asarray(1))
    ```
    """

    trunk: TimeMLP
    embedding: Array | None
    num_classes: int | None = eqx.field(static=True)
    context_shape: tuple[int, ...] | None = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        *,
        key: Key,
        num_classes: int | None = None,
        context_shape: int | tuple[int, ...] | None = None,
        embed_size: int = 16,
        hidden: int = 128,
        depth: int = 3,
        num_frequencies: int = 16,
        max_frequency: float = 100.0,
    ):
        self.num_classes, self.context_shape = _context_spec(num_classes, context_shape)
        k1, k2 = jax.random.split(key)
        if self.num_classes is not None:
            if isinstance(embed_size, bool) or not isinstance(embed_size, int) or embed_size < 1:
                raise ValueError(f"`embed_size` must be an int >= 1, got {embed_size!r}.")
            size = embed_size
            self.embedding = jax.random.normal(k1, (self.num_classes + 1, size))
        else:
            assert self.context_shape is not None
            size = int(np.prod(self.context_shape)) + 1
            self.embedding = None
        self.trunk = TimeMLP(
            dim,
            key=k2,
            hidden=hidden,
            depth=depth,
            num_frequencies=num_frequencies,
            max_frequency=max_frequency,
            context_size=size,
        )

    def encode(self, context, drop) -> Array:
        """The context vector the trunk sees (the null one where `drop` is true)."""
        drop = jnp.asarray(drop, bool)
        if self.embedding is not None:
            assert self.num_classes is not None
            label = jnp.where(drop, self.num_classes, jnp.asarray(context, jnp.int32))
            return self.embedding[label]
        c = jnp.ravel(jnp.asarray(context, self.trunk.frequencies.dtype))
        return jnp.concatenate([jnp.where(drop, 0.0, c), drop[None].astype(c.dtype)])

    def __call__(self, t, x: Array, context, drop=False) -> Array:
        """The output at time `t`, ONE unbatched `x`, one context, and a drop flag."""
        return self.trunk(t, x, self.encode(context, drop).astype(x.dtype))


class _WithContext(eqx.Module):
    net: Callable
    context: Array
    drop: Array

    def __call__(self, t, x):
        return self.net(t, x, self.context, self.drop)


class ConditionalModel(eqx.Module):
    """A diffusion model that takes a context: `model(t, x, context, drop=False)`, in a declared
    `parameterization` along `path`. With `drop=True` the context is ignored (the null context
    of label dropout), so one trained model gives both fields of classifier-free guidance.

    With `sigma_data` set, the output is the EDM-preconditioned denoiser (as [`Denoiser`][],
    `parameterization = "data"`); otherwise `net`'s output is taken as `parameterization`.

    Train with [`fit`][]`(model, DenoisingLoss(path, label_dropout=0.1), data, context=labels,
    ...)`; sample with [`given`][] / [`unconditional`][] / [`guided`][] fields.

    **Arguments:**

    - `net`: `net(t, x, context, drop)`, e.g. [`ConditionalMLP`][].
    - `path`: the Gaussian path.
    - `num_classes` or `context_shape`: the context (exactly one): class labels in
      `[0, num_classes)` or float vectors of shape `context_shape`.
    - `parameterization`: of `net`'s output when `sigma_data` is `None` (default `"data"`).
    - `sigma_data`: the data scale of the EDM preconditioning, or `None` for none.
    """

    net: Callable
    path: AbstractPath
    num_classes: int | None = eqx.field(static=True)
    context_shape: tuple[int, ...] | None = eqx.field(static=True)
    parameterization: str = eqx.field(static=True)
    sigma_data: float | None

    def __init__(
        self,
        net: Callable,
        path: AbstractPath,
        *,
        num_classes: int | None = None,
        context_shape: int | tuple[int, ...] | None = None,
        parameterization: str = "data",
        sigma_data: float | None = 1.0,
    ):
        if not isinstance(path, AbstractPath):
            raise TypeError(f"`path` must be a driftax.diffusion AbstractPath, got {path!r}.")
        if not callable(net):
            raise TypeError("`net` must be a callable net(t, x, context, drop).")
        self.num_classes, self.context_shape = _context_spec(num_classes, context_shape)
        check_parameterization(parameterization)
        if sigma_data is not None:
            if parameterization != "data":
                raise ValueError(
                    "the EDM preconditioning (`sigma_data`) outputs the data prediction: use "
                    "parameterization='data' or sigma_data=None."
                )
            if not float(sigma_data) > 0:
                raise ValueError(f"`sigma_data` must be positive, got {sigma_data}.")
        self.net = net
        self.path = path
        self.parameterization = parameterization
        self.sigma_data = None if sigma_data is None else float(sigma_data)

    def check_context(self, context, *, batched: bool = False) -> Array:
        """Check a context (one, or a batch with `batched=True`) against this model's spec."""
        return check_context(context, self.num_classes, self.context_shape, batched=batched)

    def __call__(self, t: ScalarLike, x: Point, context, drop=False) -> Point:
        """The output (in `parameterization`) at `(t, x)` given one context (ignored if `drop`)."""
        context = self.check_context(context)
        net = _WithContext(self.net, context, jnp.asarray(drop, bool))
        if self.sigma_data is None:
            return net(t, x)
        return Denoiser(net, self.path, self.sigma_data)(t, x)

    def given(self, context) -> ConditionalField:
        """The conditional field at a fixed `context` (an [`AbstractField`][])."""
        # pyright reads the base's AbstractVar `path`/`parameterization` as init fields;
        # ConditionalField implements them as properties
        context = self.check_context(context)
        return ConditionalField(model=self, context=context, drop=False)  # pyright: ignore[reportCallIssue]

    def unconditional(self) -> ConditionalField:
        """The unconditional field (the null context of label dropout)."""
        null = (
            jnp.zeros((), jnp.int32)
            if self.num_classes is not None
            else jnp.zeros(self.context_shape, jnp.result_type(float))
        )
        return ConditionalField(model=self, context=null, drop=True)  # pyright: ignore[reportCallIssue]

    def guided(self, context, weight: float, *, interval=None):
        """Classifier-free guidance of this model at `context` with its own unconditional
        field: `u + weight (c - u)` (see [`classifier_free_guidance`][])."""
        from ._guidance import classifier_free_guidance

        return classifier_free_guidance(
            self.given(context), self.unconditional(), weight, interval=interval
        )


class ConditionalField(AbstractField):
    """A [`ConditionalModel`][] at a fixed context (or with the context dropped): an
    [`AbstractField`][] that every solver runs. Made by `model.given(context)` and
    `model.unconditional()`."""

    model: ConditionalModel
    context: Array
    drop: bool = eqx.field(static=True)

    @property
    def path(self) -> AbstractPath:  # pyright: ignore[reportIncompatibleVariableOverride]
        """The model's path."""
        return self.model.path

    @property
    def parameterization(self) -> str:  # pyright: ignore[reportIncompatibleVariableOverride]
        """The model's parameterization."""
        return self.model.parameterization

    def __call__(self, t, x):
        return self.model(t, x, self.context, self.drop)
