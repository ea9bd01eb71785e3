"""Resampling of weighted particles: multinomial, stratified and systematic.

Each scheme maps log-weights to ancestor indices whose offspring counts `O_i` (the number of
times particle `i` is drawn) are unbiased: `E[O_i] = n · W_i` with `W` the normalized weights.
They differ in variance: multinomial draws `n` i.i.d. indices (`Var O_i = n W_i (1 - W_i)`);
stratified draws one uniform per stratum `[k/n, (k+1)/n)`; systematic uses ONE uniform shifted
by `k/n`, so `O_i ∈ {⌊n W_i⌋, ⌈n W_i⌉}` (the lowest variance, the usual default).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._custom_types import Array, Key

RESAMPLING_SCHEMES = ("multinomial", "stratified", "systematic")


def _cdf(log_weights: Array) -> Array:
    """The normalized cumulative weights; NaN log-weights count as zero weight."""
    log_weights = jnp.where(jnp.isnan(log_weights), -jnp.inf, log_weights)
    w = jax.nn.softmax(log_weights)
    cdf = jnp.cumsum(w)
    return cdf / cdf[-1]


def _invert(cdf: Array, u: Array) -> Array:
    # the first index with cdf > u: a zero-weight particle is never selected
    idx = jnp.searchsorted(cdf, u, side="right")
    return jnp.clip(idx, 0, cdf.shape[0] - 1).astype(jnp.int32)


def resample(
    log_weights: Array,
    *,
    key: Key,
    scheme: str = "systematic",
    num_samples: int | None = None,
) -> Array:
    """Ancestor indices drawn from the particles' weights `W ∝ exp(log_weights)`: the one
    resampler of driftax (SMC / AIS, the Feynman–Kac samplers of `driftax.diffusion`). It
    traces: call it inside `jit`, `vmap` and `lax.scan` with traced log-weights.

    The offspring counts are unbiased for every scheme, `E[#{j : a_j = i}] = num_samples · W_i`;
    `"systematic"` has the lowest variance, `"multinomial"` the highest (independent draws).
    NaN or `-inf` log-weights are zero weights and are never drawn (at least one weight must be
    positive).

    **Arguments:**

    - `log_weights`: shape `(n,)`, unnormalized.
    - `key`: a JAX PRNG key.
    - `scheme`: `"systematic"` (default), `"stratified"` or `"multinomial"`.
    - `num_samples`: number of indices to draw (default `n`).

    **Returns:** int32 indices of shape `(num_samples,)`, in increasing order for the
    stratified and systematic schemes.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    idx = dx.samplers.resample(jnp.log(jnp.array([0.1, 0.6, 0.3])), key=jax.random.key(0))
    ```
    """
    if scheme not in RESAMPLING_SCHEMES:
        raise ValueError(f"`scheme` must be one of {RESAMPLING_SCHEMES}, got {scheme!r}.")
    log_weights = jnp.asarray(log_weights)
    if log_weights.ndim != 1 or log_weights.shape[0] < 1:
        raise ValueError(
            f"`log_weights` must be a non-empty 1-D array, got shape {log_weights.shape}."
        )
    if not jnp.issubdtype(log_weights.dtype, jnp.floating):
        log_weights = log_weights.astype(jnp.result_type(float))
    n = log_weights.shape[0] if num_samples is None else num_samples
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"`num_samples` must be a positive int, got {num_samples!r}.")
    cdf = _cdf(log_weights)
    dtype = cdf.dtype
    if scheme == "multinomial":
        u = jax.random.uniform(key, (n,), dtype)
    elif scheme == "stratified":
        u = (jnp.arange(n, dtype=dtype) + jax.random.uniform(key, (n,), dtype)) / n
    else:
        u = (jnp.arange(n, dtype=dtype) + jax.random.uniform(key, (), dtype)) / n
    return _invert(cdf, u)


def offspring_counts(indices: Array, num_particles: int) -> Array:
    """How many times each of `num_particles` particles appears in `indices` (shape `(n,)`)."""
    return jnp.zeros(num_particles, jnp.int32).at[indices].add(1)
