"""Small Equinox networks for low-dimensional data: an MLP with a sinusoidal time embedding."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key


class MLP(eqx.Module):
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

    **Example:**

    ```python
    net = MLP(2, key=jax.random.key(0))
    out = net(0.3, jnp.zeros(2))
    ```
    """

    first: eqx.nn.Linear
    blocks: eqx.nn.Linear
    last: eqx.nn.Linear
    frequencies: Array
    dim: int = eqx.field(static=True)
    num_times: int = eqx.field(static=True)

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
    ):
        for name, v in [
            ("dim", dim),
            ("hidden", hidden),
            ("depth", depth),
            ("num_times", num_times),
        ]:
            if not (isinstance(v, int) and v >= 1):
                raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
        if depth < 2:
            raise ValueError(f"`depth` must be >= 2, got {depth}.")
        k1, k2, k3 = jax.random.split(key, 3)
        emb = 2 * num_frequencies * num_times + num_times
        self.first = eqx.nn.Linear(dim + emb, hidden, key=k1)
        make = lambda k: eqx.nn.Linear(hidden, hidden, key=k)
        self.blocks = eqx.filter_vmap(make)(jax.random.split(k2, depth - 1))
        last = eqx.nn.Linear(hidden, dim, key=k3)
        # Start near zero output so every parameterization starts from a sensible field.
        self.last = eqx.tree_at(
            lambda m: (m.weight, m.bias), last, (last.weight * 0.1, last.bias * 0)
        )
        self.frequencies = jnp.exp(jnp.linspace(0.0, math.log(max_frequency), num_frequencies))
        self.dim = dim
        self.num_times = num_times

    def embed(self, t) -> Array:
        """Sinusoidal features of the time(s) `t`."""
        t = jnp.reshape(jnp.asarray(t, self.frequencies.dtype), (-1,))
        if t.shape[0] != self.num_times:
            raise ValueError(f"expected {self.num_times} time value(s), got {t.shape[0]}.")
        angles = t[:, None] * self.frequencies[None, :]
        return jnp.concatenate([t, jnp.sin(angles).reshape(-1), jnp.cos(angles).reshape(-1)])

    def __call__(self, t, x: Array) -> Array:
        """The network output at time(s) `t` and ONE unbatched point `x` (shape `(dim,)`)."""
        if x.shape != (self.dim,):
            raise ValueError(f"`x` must have shape ({self.dim},), got {x.shape}.")
        h = jax.nn.silu(self.first(jnp.concatenate([x, self.embed(t).astype(x.dtype)])))
        params, static = eqx.partition(self.blocks, eqx.is_array)

        def body(h, p):
            layer = eqx.combine(p, static)
            return h + jax.nn.silu(layer(h)), None

        h, _ = jax.lax.scan(body, h, params)
        return self.last(h)
