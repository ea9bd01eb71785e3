"""`fit_bridge`: the front door of every bridge / coupling loss on the shared training loop,
with minibatches drawn independently from a source and a target sample set."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_count
from ..._custom_types import Array, Key
from ..._training import AbstractBatcher, fit_losses


def check_marginals(source, target) -> tuple[Array, Array]:
    """Two finite sample sets `(n0, d)` and `(n1, d)` of one dimension (eager errors)."""
    x0 = jnp.asarray(source)
    x1 = jnp.asarray(target)
    for name, x in (("source", x0), ("target", x1)):
        if x.ndim != 2 or x.shape[0] < 1:
            raise ValueError(f"`{name}` must have shape (n, d), got {tuple(x.shape)}.")
        if not bool(jnp.all(jnp.isfinite(x))):
            raise ValueError(f"`{name}` must be finite.")
    if x0.shape[1] != x1.shape[1]:
        raise ValueError(
            f"`source` and `target` must have the same dimension, got {x0.shape[1]} and "
            f"{x1.shape[1]}."
        )
    dtype = jnp.result_type(x0, x1, float)
    return x0.astype(dtype), x1.astype(dtype)


class PairedMinibatches(AbstractBatcher):
    """Batches `(x0, x1)`: `batch_size` rows drawn with replacement from `source` and,
    independently, from `target` (the sets may have different sizes); with `paired=True` the
    same rows of both (the sets are a coupling, row `i` of one paired with row `i` of the
    other)."""

    source: Array
    target: Array
    batch_size: int = eqx.field(static=True)
    paired: bool = eqx.field(static=True, default=False)

    def next(self, state, model, key, step):
        k0, k1 = jax.random.split(key)
        i0 = jax.random.randint(k0, (self.batch_size,), 0, self.source.shape[0])
        i1 = (
            i0
            if self.paired
            else jax.random.randint(k1, (self.batch_size,), 0, self.target.shape[0])
        )
        return (self.source[i0], self.target[i1]), state


def fit_bridge(
    model,
    loss: Callable,
    source: Array,
    target: Array,
    *,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int = 256,
    ema_decay: float | None = None,
    paired: bool = False,
    progress: bool = False,
):
    """Train a bridge model between two sample sets by minimising `loss(model, (x0, x1), *,
    key)` on independent minibatches `x0` of `source` and `x1` of `target` (the shared training
    loop: one compiled scan, non-finite steps skipped and reported).

    **Arguments:**

    - `model`: e.g. [`LightSB`][], or a drift network for [`BridgeMatchingLoss`][].
    - `loss`: [`LightSBLoss`][], [`BridgeMatchingLoss`][] (any coupling), ...
    - `source`, `target`: samples of the two marginals, shapes `(n0, d)`, `(n1, d)`.
    - `key`, `optimizer`, `num_steps`, `batch_size`: as for every fit.
    - `ema_decay`: optional EMA of the parameters; `progress`: a progress bar.
    - `paired`: the rows of `source` and `target` are pairs (a given coupling, equal sizes):
      draw them together (for `BridgeMatchingLoss(coupling="given")`).

    **Returns:** `(trained_model, losses)` with `losses` of shape `(num_steps,)`.
    """
    x0, x1 = check_marginals(source, target)
    batch_size = check_count(batch_size, "batch_size")
    if paired and x0.shape[0] != x1.shape[0]:
        raise ValueError(
            f"`paired=True` needs as many `source` as `target` rows, got {x0.shape[0]} and "
            f"{x1.shape[0]}."
        )
    batcher = PairedMinibatches(x0, x1, batch_size, bool(paired))
    return fit_losses(
        model, loss, batcher, key, optimizer, num_steps, ema_decay, progress, "fit_bridge"
    )
