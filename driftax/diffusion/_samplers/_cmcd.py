"""Controlled Monte Carlo diffusion (CMCD)."""

from __future__ import annotations

import jax.numpy as jnp

from ..._custom_types import Array, Key
from ._core import _clip, _GaussianStart, _positive


class CMCD(_GaussianStart):
    """Controlled Monte Carlo diffusion (Vargas, Padhy, Blessing & Nüsken 2024): Langevin
    kernels along the geometric path `π_β ∝ q_0^{1-β} p̃^β` (`q_0 = N(0, σ² I)`, `β_k = k/K`):

    - forward: `x_{k+1} = x_k + h (∇log π_{β_{k+1}} + u)(x_k) + √(2h) ξ`;
    - backward: `x_k = x_{k+1} + h (∇log π_{β_{k+1}} - u)(x_{k+1}) + √(2h) ξ`,

    with the control `u = NN(t, x)` and the step size `h` learned. With `u = 0` this is the
    uncontrolled annealed Langevin (MCD) sampler, whose weights are already unbiased.

    **Arguments:** `dim`, `key`, `num_steps`, `sigma` (the reference scale), `step_size`
    (initial `h`), `hidden`, `depth`, `clip` (elementwise clip of the target score).
    """

    log_step_size: Array

    def __init__(
        self,
        dim: int,
        *,
        key: Key,
        num_steps: int = 50,
        sigma: float = 1.0,
        step_size: float = 0.05,
        hidden: int = 64,
        depth: int = 3,
        clip: float = 100.0,
    ):
        self._init_common(dim, num_steps, sigma, clip, key=key, hidden=hidden, depth=depth)
        self.log_step_size = jnp.log(jnp.asarray(_positive(step_size, "step_size")))

    def _annealed_score(self, k, x, score):
        beta = (k + 1) / self.num_steps
        return (1.0 - beta) * (-x / self.sigma**2) + beta * _clip(score, self.clip)

    def forward_kernel(self, k, x, score):
        h = jnp.exp(self.log_step_size).astype(x.dtype)
        u = self.control((k + 1) / self.num_steps, x)
        return x + h * (self._annealed_score(k, x, score) + u), jnp.sqrt(2.0 * h)

    def backward_kernel(self, k, x, score):
        h = jnp.exp(self.log_step_size).astype(x.dtype)
        u = self.control((k + 1) / self.num_steps, x)
        return x + h * (self._annealed_score(k, x, score) - u), jnp.sqrt(2.0 * h)
