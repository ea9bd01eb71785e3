"""The networks shared by `flows` and `diffusion` (one home below both): a plain or masked
MLP, sinusoidal time features, and a residual time-conditioned MLP for low-dimensional data."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._checks import check_int
from ._custom_types import Array, ArrayLike, Key


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
        masks: Sequence[ArrayLike] | None = None,
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


def geometric_frequencies(num_frequencies: int, max_frequency: float) -> Array:
    """`num_frequencies` angular frequencies spaced geometrically from 1 to `max_frequency`."""
    return jnp.exp(jnp.linspace(0.0, math.log(max_frequency), num_frequencies))


def time_features(t, frequencies: Array) -> Array:
    """Sinusoidal features `[t, sin(f t), cos(f t)]` of one or more scalar times `t` (flattened),
    length `num_times * (1 + 2 * len(frequencies))`."""
    t = jnp.reshape(jnp.asarray(t, frequencies.dtype), (-1,))
    angles = t[:, None] * frequencies[None, :]
    return jnp.concatenate([t, jnp.sin(angles).reshape(-1), jnp.cos(angles).reshape(-1)])


class TimeMLP(eqx.Module):
    """A residual MLP `net(t, x)` for vector data, with a sinusoidal embedding of one or more
    scalar times (`num_times = 2` for MeanFlow's `(r, t)`).

    Layers: `[x, emb(t)] -> hidden -> (depth - 1) residual SiLU blocks -> dim`. The hidden
    blocks are stacked and run with one `lax.scan`.

    **Arguments:**

    - `dim`: data dimension.
    - `key`: PRNG key for the initialisation (keyword-only).
    - `hidden`, `depth`: width and number of hidden layers.
    - `num_frequencies`: sinusoidal frequencies per time (geometric from 1 to `max_frequency`).
    - `num_times`: how many scalar times the network takes.
    - `context_size`: length of an optional context vector concatenated to the input (e.g. a
      class embedding; `driftax.diffusion.ConditionalMLP` builds on this). 0: none.

    **Example:**

    ```python
    net = TimeMLP(2, key=jax.random.key(0))
    out = net(0.3, jnp.zeros(2))
    ```
    """

    first: eqx.nn.Linear
    blocks: eqx.nn.Linear
    last: eqx.nn.Linear
    frequencies: Array
    dim: int = eqx.field(static=True)
    num_times: int = eqx.field(static=True)
    context_size: int = eqx.field(static=True, default=0)

    def __init__(
        self,
        dim: int,
        *,
        key: Key,
        hidden: int = 128,
        depth: int = 3,
        num_frequencies: int = 16,
        max_frequency: float = 100.0,
        num_times: int = 1,
        context_size: int = 0,
    ):
        for name, v in [("dim", dim), ("hidden", hidden), ("num_times", num_times)]:
            check_int(v, name)
        check_int(context_size, "context_size", 0)
        check_int(depth, "depth", 2)
        k1, k2, k3 = jax.random.split(key, 3)
        emb = 2 * num_frequencies * num_times + num_times
        self.first = eqx.nn.Linear(dim + emb + context_size, hidden, key=k1)
        make = lambda k: eqx.nn.Linear(hidden, hidden, key=k)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(k2, depth - 1))
        last = eqx.nn.Linear(hidden, dim, key=k3)
        assert last.bias is not None  # use_bias=True
        # Start near zero output so every parameterization starts from a sensible field.
        self.last = eqx.tree_at(
            lambda m: (m.weight, m.bias), last, (last.weight * 0.1, last.bias * 0)
        )
        self.frequencies = geometric_frequencies(num_frequencies, max_frequency)
        self.dim = dim
        self.num_times = num_times
        self.context_size = context_size

    def embed(self, t) -> Array:
        """Sinusoidal features of the time(s) `t`."""
        t = jnp.reshape(jnp.asarray(t, self.frequencies.dtype), (-1,))
        if t.shape[0] != self.num_times:
            raise ValueError(f"expected {self.num_times} time value(s), got {t.shape[0]}.")
        return time_features(t, self.frequencies)

    def __call__(self, t, x: Array, context: Array | None = None) -> Array:
        """The network output at time(s) `t` and ONE unbatched point `x` (shape `(dim,)`), with
        a context vector of length `context_size` when the network takes one."""
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape ({self.dim},), got {x.shape}.")
        parts = [x, self.embed(t).astype(x.dtype)]
        if self.context_size:
            if context is None or jnp.shape(context) != (self.context_size,):
                raise ValueError(
                    f"`context` must have shape ({self.context_size},), got "
                    f"{None if context is None else jnp.shape(context)}."
                )
            parts.append(jnp.asarray(context, x.dtype))
        elif context is not None:
            raise ValueError("this network takes no `context` (built with context_size=0).")
        h = jax.nn.silu(self.first(jnp.concatenate(parts)))
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def body(h, p):
            layer = eqx.combine(p, static)
            return h + jax.nn.silu(layer(h)), None

        h, _ = jax.lax.scan(body, h, params)
        return self.last(h)
