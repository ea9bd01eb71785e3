"""`fit`: train a diffusion / flow-matching / MeanFlow / interpolant model on data, a thin front
door on the shared training loop (`driftax/_training.py`)."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key
from .._training import Minibatches, check_count, fit_losses
from ._conditional import ConditionalModel


def _data_sharding(batch_size: int):
    devices = jax.devices()
    if len(devices) < 2 or batch_size % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


def fit(
    model,
    loss: Callable,
    data: Array,
    *,
    context: Array | None = None,
    key: Key,
    optimizer,
    num_steps: int,
    batch_size: int = 256,
    ema_decay: float | None = 0.999,
    progress: bool = False,
):
    """Train `model` by minimising `loss(model, batch, *, key)` over random minibatches of
    `data` with an optax optimiser.

    The loop is the shared one (one compiled `lax.scan` over steps; a second fit with the same
    shapes, loss and optimizer object does not recompile). Minibatches are drawn with
    replacement. A step whose loss or gradient is not finite is skipped (parameters,
    optimizer state and EMA kept) and reported by one `RuntimeWarning` after the fit. With
    several devices the batch is sharded over them (data parallelism via `jax.sharding`; the
    model is replicated).

    **Arguments:**

    - `model`: an Equinox module (e.g. [`Denoiser`][], [`NetworkField`][], [`MeanFlowModel`][]).
    - `loss`: e.g. [`DenoisingLoss`][], [`flow_matching_loss`][], [`MeanFlowLoss`][],
      [`InterpolantLoss`][] (a scalar, or `(value, aux)`).
    - `data`: training data, shape `(n, *event_shape)`.
    - `context`: for a [`ConditionalModel`][], the context of each data point (class labels of
      shape `(n,)`, or vectors of shape `(n, *context_shape)`); batches are then
      `(data, context)` pairs (see `DenoisingLoss`'s `label_dropout`).
    - `key`, `optimizer`, `num_steps` (optimizer steps), `batch_size`: as for every fit.
    - `ema_decay`: exponential moving average of the parameters (`None` to turn it off; the
      warm-up is that of the shared loop).
    - `progress`: draw a progress bar.

    **Returns:** `(trained_model, losses)`; the model is the EMA average when `ema_decay` is
    set, and `losses` has shape `(num_steps,)`.
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (n, *event_shape), got {data.shape}.")
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("`data` must be finite.")
    batch_size = check_count(batch_size, "batch_size")
    if context is not None:
        if not isinstance(model, ConditionalModel):
            raise TypeError(
                f"`context` needs a driftax.diffusion ConditionalModel, got {type(model).__name__}."
            )
        context = model.check_context(context, batched=True)
        if context.shape[0] != data.shape[0]:
            raise ValueError(
                f"`context` must have one row per data point ({data.shape[0]}), got "
                f"{context.shape[0]}."
            )
    elif isinstance(model, ConditionalModel):
        raise ValueError("a ConditionalModel needs the `context` of each data point.")
    batched = data if context is None else (data, context)
    batches = Minibatches(batched, batch_size, replace=True, sharding=_data_sharding(batch_size))
    return fit_losses(model, loss, batches, key, optimizer, num_steps, ema_decay, progress, "fit")
