"""The replay buffer with MCMC local search, for off-policy (log-variance) training."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_count
from ...samplers._base import AbstractSampler
from ...samplers._hamiltonian import MALA


class LocalSearch(eqx.Module):
    """A replay buffer of terminal samples refined by MCMC local search (Sendera et al. 2024),
    for log-variance training: every iteration the on-policy samples take `num_steps` steps of
    `kernel` (MALA by default) and enter a FIFO buffer; a `fraction` of each batch is then
    backward paths started at buffer samples (off-policy paths the log-variance loss accepts).

    **Arguments:**

    - `kernel`: a driftax kernel (`init(energy, x)`, `step(energy, state, key=)`).
    - `num_steps`: kernel steps per iteration.
    - `buffer_size`: capacity of the buffer.
    - `fraction`: share of the batch drawn from the buffer, in `(0, 1)`.
    """

    kernel: AbstractSampler = eqx.field(default_factory=lambda: MALA(step_size=0.05))
    num_steps: int = eqx.field(static=True, default=10)
    buffer_size: int = eqx.field(static=True, default=4096)
    fraction: float = eqx.field(static=True, default=0.5)

    def __check_init__(self):
        if not isinstance(self.kernel, AbstractSampler):
            raise TypeError("`kernel` must be a driftax sampler (e.g. driftax.samplers.MALA).")
        check_count(self.num_steps, "num_steps")
        check_count(self.buffer_size, "buffer_size")
        if not 0.0 < float(self.fraction) < 1.0:
            raise ValueError(f"`fraction` must lie in (0, 1), got {self.fraction!r}.")


def _local_search(kernel, energy, xs, key, num_steps):
    def one(x, k):
        state = kernel.init(energy, x)

        def body(st, kk):
            st, info = kernel.step(energy, st, key=kk)
            return st, info.acceptance_rate

        state, acc = jax.lax.scan(body, state, jax.random.split(k, num_steps))
        return state.position, jnp.mean(acc)

    return jax.vmap(one)(xs, jax.random.split(key, xs.shape[0]))
