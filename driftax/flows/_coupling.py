"""Coupling layers (RealNVP, neural spline flows) with arbitrary masks, incl. checkerboards."""

from __future__ import annotations

import math
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._checks import check_shape
from .._custom_types import Array, Key, Scalar, Shape
from ._bijection import _TwoWay, directed
from ._nn import MLP, condition_size, hidden_widths
from ._transformers import AbstractTransformer, make_transformer


def checkerboard_mask(shape, parity: int = 0) -> np.ndarray:
    """A boolean checkerboard mask of `shape` (for lattice fields): `True` where the sum of the
    indices has the given `parity`. `True` marks the coordinates a coupling layer leaves
    unchanged (and conditions on)."""
    shape = check_shape(shape)
    if parity not in (0, 1):
        raise ValueError(f"`parity` must be 0 or 1, got {parity!r}.")
    return (np.indices(shape).sum(axis=0) % 2) == parity


def half_mask(dim: int, first: bool = True) -> np.ndarray:
    """The mask that keeps the first `dim // 2` coordinates (or the last `dim - dim // 2`)."""
    m = np.arange(dim) < dim // 2
    return m if first else ~m


def _take(flat, idx: tuple[int, ...]):
    start = idx[0]
    if idx == tuple(range(start, start + len(idx))):
        return flat[start : start + len(idx)]
    return flat[np.asarray(idx)]


def _merge(kept, kept_idx, changed, changed_idx, size):
    if kept_idx == tuple(range(len(kept_idx))) and changed_idx == tuple(range(len(kept_idx), size)):
        return jnp.concatenate([kept, changed])
    if changed_idx == tuple(range(len(changed_idx))) and kept_idx == tuple(
        range(len(changed_idx), size)
    ):
        return jnp.concatenate([changed, kept])
    out = jnp.zeros((size,), changed.dtype)
    return out.at[np.asarray(kept_idx)].set(kept).at[np.asarray(changed_idx)].set(changed)


class _ConditionedTransform(_TwoWay):
    """A coupling-type layer: some values are mapped by an elementwise transformer whose
    parameters an MLP conditioner computes from other inputs (the last layer starts at zero, so
    the layer starts as the identity)."""

    conditioner: MLP
    transformer: AbstractTransformer
    event_shape: Shape = eqx.field(static=True)
    cond_shape: Shape | None = eqx.field(static=True)

    def _build(
        self, key: Key, n_in: int, n_changed: int, transformer, options, hidden, depth, activation
    ) -> None:
        """Set the transformer and an MLP conditioner (`hidden`, `depth`, `activation`) from
        `n_in` inputs to the parameters of `n_changed` values."""
        self.transformer = make_transformer(transformer, **options)
        n_out = n_changed * self.transformer.num_params
        widths = hidden_widths(hidden, depth)
        self.conditioner = MLP(key, n_in, n_out, widths, activation=activation)

    def _transform(self, values: Array, inputs: Array, inverse: bool) -> tuple[Array, Scalar]:
        """`(h(values), Σ log h'(values))`, or `h⁻¹` with `inverse`, with `h` parameterized by
        the conditioner applied to `inputs`."""
        raw = self.conditioner(inputs).reshape(values.shape[0], self.transformer.num_params)
        new, log_grad = directed(self.transformer, inverse)(values, raw)
        return new, jnp.sum(log_grad)


class Coupling(_ConditionedTransform):
    """A coupling layer: the coordinates where `mask` is `True` pass through unchanged and drive a
    conditioner network whose outputs parameterize an elementwise transformer of the others.

    **Arguments:**

    - `key`: PRNG key for the conditioner.
    - `event_shape`: the event shape (an int `d` for vectors, or a tuple, e.g. a lattice `(L, L)`).
    - `mask`: boolean array of `event_shape`, `True` = unchanged (default: the first `d // 2`
      coordinates of the flattened event). It must have at least one `True` and one `False`.
    - `transformer`: `"affine"` (RealNVP), `"spline"` (rational-quadratic, neural spline flow),
      `"circular_spline"` (angles in `[-π, π)`), or an [`AbstractTransformer`][].
    - `hidden`: conditioner hidden width (an int, with `depth` layers) or a sequence of widths.
    - `depth`: number of hidden layers when `hidden` is an int (default 1).
    - `cond_dim`: size of a vector condition (`None`: unconditional).
    - `activation`: conditioner activation (default `jax.nn.relu`).
    - `**transformer_options`: e.g. `knots`, `interval` for splines, `min_scale` for affine.

    The conditioner's last layer starts at zero, so the layer starts as the identity.
    """

    kept_index: tuple[int, ...] = eqx.field(static=True)
    changed_index: tuple[int, ...] = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        event_shape,
        *,
        mask=None,
        transformer="affine",
        hidden=64,
        depth: int | None = None,
        cond_dim: int | None = None,
        activation: Callable = jax.nn.relu,
        **transformer_options,
    ):
        shape = check_shape(event_shape, "event_shape")
        size = math.prod(shape)
        if mask is None:
            mask = half_mask(size).reshape(shape)
        mask = np.asarray(mask)
        if mask.shape != shape or mask.dtype != bool:
            raise ValueError(
                f"`mask` must be a boolean array of shape {shape}, got {mask.dtype}{mask.shape}."
            )
        flat = mask.reshape(-1)
        if flat.all() or not flat.any():
            raise ValueError(
                "`mask` must keep at least one coordinate (True) and change at least one "
                "(False); a coupling layer needs both (for d = 1 use an elementwise bijection)."
            )
        nc = condition_size(cond_dim)
        self.kept_index = tuple(int(i) for i in np.flatnonzero(flat))
        self.changed_index = tuple(int(i) for i in np.flatnonzero(~flat))
        self.event_shape = shape
        self.cond_shape = None if cond_dim is None else (nc,)
        n_in = len(self.kept_index) + nc
        n_changed = len(self.changed_index)
        self._build(
            key, n_in, n_changed, transformer, transformer_options, hidden, depth, activation
        )

    def _run(self, x, condition, inverse: bool):
        flat = x.reshape(-1)
        kept = _take(flat, self.kept_index)
        changed = _take(flat, self.changed_index)
        inp = kept if condition is None else jnp.concatenate([kept, condition.reshape(-1)])
        new, log_det = self._transform(changed, inp, inverse)
        out = _merge(kept, self.kept_index, new, self.changed_index, flat.size)
        return out.reshape(self.event_shape), log_det
