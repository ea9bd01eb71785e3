"""The one Metropolis–Hastings accept/reject step every adjusted sampler uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._custom_types import Array, Key, PyTree
from ._base import MAX_ENERGY_ERROR, select


def metropolis_hastings(
    log_ratio: Array,
    proposal: PyTree,
    current: PyTree,
    *,
    u: Array | None = None,
    key: Key | None = None,
    valid: Array | None = None,
) -> tuple[PyTree, Array, Array, Array]:
    """Accept `proposal` with probability `min(1, exp(log_ratio))`, else keep `current`.

    The randomness is a uniform `u` in (0, 1) (or drawn from `key`).

    A non-finite `log_ratio`, a proposal flagged invalid (`valid=False`, e.g. a non-finite score)
    or an energy error above `MAX_ENERGY_ERROR` is rejected and reported divergent — a NaN
    energy can never be accepted.

    **Returns:** `(state, acceptance_probability, is_accepted, is_divergent)`.
    """
    log_ratio = jnp.asarray(log_ratio)
    divergent = ~jnp.isfinite(log_ratio) | (log_ratio < -MAX_ENERGY_ERROR)
    if valid is not None:
        divergent = divergent | ~valid
    log_ratio = jnp.where(divergent, -jnp.inf, log_ratio)
    acceptance = jnp.exp(jnp.minimum(log_ratio, 0.0))
    if u is None:
        if key is None:
            raise ValueError("pass a uniform `u` or a `key`.")
        u = jax.random.uniform(key, (), dtype=jnp.result_type(acceptance))
    accepted = jnp.log(u) < log_ratio
    return select(accepted, proposal, current), acceptance, accepted, divergent
