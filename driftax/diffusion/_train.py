"""`fit`: an optax training loop with minibatches, EMA, a progress bar and data parallelism."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._custom_types import Array, Key


def _data_sharding(batch_size: int):
    devices = jax.devices()
    if len(devices) < 2 or batch_size % len(devices):
        return None
    mesh = jax.sharding.Mesh(np.array(devices), ("data",))
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))


@eqx.filter_jit
def _train_chunk(
    params,
    static,
    opt_state,
    ema,
    data,
    keys,
    steps,
    loss,
    optimizer,
    batch_size,
    ema_decay,
    sharding,
):
    def loss_fn(p, batch, key):
        return loss(eqx.combine(p, static), batch, key=key)

    def step(carry, inputs):
        params, opt_state, ema = carry
        key, n = inputs
        kb, kl = jax.random.split(key)
        idx = jax.random.randint(kb, (batch_size,), 0, data.shape[0])
        batch = data[idx]
        if sharding is not None:
            batch = jax.lax.with_sharding_constraint(batch, sharding)
        value, grads = jax.value_and_grad(loss_fn)(params, batch, kl)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = eqx.apply_updates(params, updates)
        if ema is not None:
            # EMA with the usual warm-up, so early parameters do not linger in the average.
            d = jnp.minimum(ema_decay, (1.0 + n) / (10.0 + n))
            ema = jax.tree.map(lambda e, p: d * e + (1.0 - d) * p, ema, params)
        return (params, opt_state, ema), value

    (params, opt_state, ema), losses = jax.lax.scan(step, (params, opt_state, ema), (keys, steps))
    return params, opt_state, ema, losses


def fit(
    model,
    loss: Callable,
    data: Array,
    *,
    key: Key,
    optimizer: optax.GradientTransformation,
    num_steps: int,
    batch_size: int = 256,
    ema_decay: float | None = 0.999,
    progress_bar: bool = False,
    num_chunks: int = 20,
):
    """Train `model` by minimising `loss(model, batch, *, key)` over random minibatches of
    `data` with an optax optimiser.

    The loop is compiled (`lax.scan` over steps). With `progress_bar=True` it runs in
    `num_chunks` compiled chunks and updates a tqdm bar between them. Minibatches are drawn with
    replacement. With several devices the batch is sharded over them (data parallelism via
    `jax.sharding`; the model is replicated).

    **Arguments:**

    - `model`: an Equinox module (e.g. [`Denoiser`][], [`NetworkField`][], [`MeanFlowModel`][]).
    - `loss`: e.g. [`DenoisingLoss`][], [`flow_matching_loss`][], [`MeanFlowLoss`][].
    - `data`: training data, shape `(n, *event_shape)`.
    - `key`, `optimizer`, `num_steps`, `batch_size`: as usual.
    - `ema_decay`: exponential moving average of the parameters (`None` to turn it off).

    **Returns:** `(trained_model, losses)`; the model is the EMA average when `ema_decay` is
    set, and `losses` has shape `(num_steps,)`.
    """
    data = jnp.asarray(data)
    if data.ndim < 2 or data.shape[0] < 1:
        raise ValueError(f"`data` must have shape (n, *event_shape), got {data.shape}.")
    if not bool(jnp.all(jnp.isfinite(data))):
        raise ValueError("`data` must be finite.")
    for name, v in [
        ("num_steps", num_steps),
        ("batch_size", batch_size),
        ("num_chunks", num_chunks),
    ]:
        if not (isinstance(v, int) and v >= 1):
            raise ValueError(f"`{name}` must be a positive int, got {v!r}.")
    if ema_decay is not None and not 0 <= ema_decay < 1:
        raise ValueError(f"`ema_decay` must lie in [0, 1) or be None, got {ema_decay}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError("`optimizer` must be an optax GradientTransformation.")
    params, static = eqx.partition(model, eqx.is_inexact_array)
    opt_state = optimizer.init(params)
    ema = params if ema_decay is not None else None
    decay = 0.0 if ema_decay is None else float(ema_decay)
    sharding = _data_sharding(batch_size)
    keys = jax.random.split(key, num_steps)
    steps = jnp.arange(num_steps, dtype=jnp.result_type(float))
    n_chunks = min(num_chunks, num_steps) if progress_bar else 1
    chunks = np.array_split(np.arange(num_steps), n_chunks)
    all_losses = []
    bar = None
    if progress_bar:
        from tqdm.auto import tqdm

        bar = tqdm(total=num_steps, desc="fit")
    for chunk in chunks:
        params, opt_state, ema, losses = _train_chunk(
            params,
            static,
            opt_state,
            ema,
            data,
            keys[chunk],
            steps[chunk],
            loss,
            optimizer,
            batch_size,
            decay,
            sharding,
        )
        all_losses.append(losses)
        if bar is not None:
            bar.update(len(chunk))
            bar.set_postfix(loss=float(losses[-1]))
    if bar is not None:
        bar.close()
    out = eqx.combine(ema if ema is not None else params, static)
    return out, jnp.concatenate(all_losses)
