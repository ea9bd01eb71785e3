"""Small neural networks used as conditioners: a plain MLP and a masked (MADE) MLP."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key


def hidden_widths(hidden, depth: int | None = None) -> tuple[int, ...]:
    """Normalise a `hidden` argument: an int width (repeated `depth` times, default once) or a
    sequence of widths."""
    if isinstance(hidden, bool):
        raise TypeError(f"`hidden` must be an int or a sequence of ints, got {hidden!r}.")
    if isinstance(hidden, (int, np.integer)):
        depth = 1 if depth is None else depth
        if depth < 0:
            raise ValueError(f"`depth` must be >= 0, got {depth}.")
        widths = (int(hidden),) * depth
    else:
        if depth is not None:
            raise ValueError("pass `depth` only with an int `hidden`.")
        try:
            widths = tuple(int(h) for h in hidden)
        except TypeError as e:
            raise TypeError(
                f"`hidden` must be an int or a sequence of ints, got {hidden!r}."
            ) from e
    if any(w < 1 for w in widths):
        raise ValueError(f"hidden widths must be positive, got {widths}.")
    return widths


class MLP(eqx.Module):
    """A multilayer perceptron `R^in -> R^out` on ONE unbatched vector, optionally with fixed
    boolean connectivity masks (MADE). The last layer starts at zero by default, so a flow layer
    driven by it starts as the identity.
    """

    weights: tuple[Array, ...]
    biases: tuple[Array, ...]
    masks: tuple[Array, ...] | None
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        key: Key,
        in_size: int,
        out_size: int,
        hidden: Sequence[int],
        *,
        activation: Callable = jax.nn.relu,
        masks: Sequence[Array] | None = None,
        zero_last: bool = True,
    ):
        sizes = (in_size, *hidden, out_size)
        keys = jax.random.split(key, len(sizes) - 1)
        dtype = jnp.result_type(float)
        weights, biases = [], []
        for i, (k, n_in, n_out) in enumerate(zip(keys, sizes[:-1], sizes[1:], strict=True)):
            kw, kb = jax.random.split(k)
            lim = 1.0 / math.sqrt(max(n_in, 1))
            last = i == len(sizes) - 2
            if last and zero_last:
                weights.append(jnp.zeros((n_out, n_in), dtype))
                biases.append(jnp.zeros((n_out,), dtype))
            else:
                weights.append(jax.random.uniform(kw, (n_out, n_in), dtype, -lim, lim))
                biases.append(jax.random.uniform(kb, (n_out,), dtype, -lim, lim))
        self.weights = tuple(weights)
        self.biases = tuple(biases)
        if masks is not None:
            masks = tuple(jnp.asarray(m, dtype=bool) for m in masks)
            for m, w in zip(masks, self.weights, strict=True):
                if m.shape != w.shape:
                    raise ValueError(f"mask shape {m.shape} does not match weight {w.shape}.")
        self.masks = masks
        self.activation = activation

    def __call__(self, x: Array) -> Array:
        n = len(self.weights)
        for i in range(n):
            w = self.weights[i]
            if self.masks is not None:
                w = jnp.where(self.masks[i], w, 0.0)
            x = w @ x + self.biases[i]
            if i < n - 1:
                x = self.activation(x)
        return x


def made_masks(
    dim: int, cond_dim: int, hidden: Sequence[int], params_per_dim: int
) -> tuple[list[np.ndarray], np.ndarray]:
    """Boolean masks making output block `j` (of `params_per_dim` outputs) depend only on inputs
    `x_<j` (and on all `cond_dim` conditioning inputs). Returns `(masks, out_ranks)`."""
    in_ranks = np.concatenate([np.arange(dim), -np.ones(cond_dim, int)])
    ranks = [in_ranks]
    for width in hidden:
        if cond_dim == 0:
            r = np.arange(width) % max(dim - 1, 1) if dim > 1 else np.zeros(width, int)
        else:
            r = np.arange(width) % dim - 1
        ranks.append(r)
    out_ranks = np.repeat(np.arange(dim), params_per_dim)
    masks = []
    for a, b in zip(ranks[:-1], ranks[1:], strict=True):
        masks.append(b[:, None] >= a[None, :])
    masks.append(out_ranks[:, None] > ranks[-1][None, :])
    return masks, out_ranks
