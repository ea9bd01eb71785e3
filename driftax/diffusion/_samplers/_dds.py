"""The denoising diffusion sampler (DDS)."""

from __future__ import annotations

import jax.numpy as jnp

from ..._custom_types import Array, Key
from ._core import _clip, _GaussianStart, _ScoreScaled


def _cosine_alpha_bar(s: Array) -> Array:
    """`ᾱ(s) = α(s)²` of the cosine schedule (offset 0.008), as `CosineVP` defines `α`; computed
    here as a squared cosine because `CosineVP`'s log-α is NaN at `s = 1` in float32 (the cosine
    rounds to a tiny negative number), where DDS needs `ᾱ → 0`."""
    c = 0.008
    f = lambda u: jnp.cos(0.5 * jnp.pi * (u + c) / (1.0 + c)) ** 2
    return f(s) / f(0.0)


class DDS(_GaussianStart, _ScoreScaled):
    """Denoising diffusion sampler (Vargas, Grathwohl & Doucet 2023): `x_0 ~ N(0, σ² I)` and
    `x_{k+1} = √(1-a_k) x_k + 2σ²(1 - √(1-a_k)) f(t_k, x_k) + σ √a_k ξ`, where the reference
    (`f = 0`) is the Ornstein–Uhlenbeck chain leaving `N(0, σ² I)` invariant (its backward
    kernels `x_k ~ N(√(1-a_k) x_{k+1}, σ² a_k I)` are the noising steps, cosine schedule).
    The learned correction is `f = NN(t, x)/σ + g(t) ⊙ (clip(∇log p̃(x)) + x/σ²)`, the second
    term with `langevin=True` (`g` a time network starting at 0; `g = 1` is exact at the target
    end).

    **Arguments:** as [`PIS`][]: `dim`, `key`, `num_steps`, `sigma` (the prior scale; choose
    about the target's spread), `langevin`, `hidden`, `depth`, `clip`.
    """

    def __init__(
        self,
        dim: int,
        *,
        key: Key,
        num_steps: int = 50,
        sigma: float = 1.0,
        langevin: bool = True,
        hidden: int = 64,
        depth: int = 3,
        clip: float = 100.0,
    ):
        self._init_scored(
            dim, num_steps, sigma, clip, key=key, hidden=hidden, depth=depth, langevin=langevin
        )

    def noise_fractions(self) -> Array:
        """`a_k`, the variance fraction of noise added by the backward kernel of step `k`."""
        s = 1.0 - jnp.linspace(0.0, 1.0, self.num_steps + 1)  # noise level, 1 at k = 0
        ab = _cosine_alpha_bar(s)
        return jnp.clip(1.0 - ab[:-1] / ab[1:], 1e-5, 1.0 - 1e-5)

    def forward_kernel(self, k, x, score):
        a = self.noise_fractions().astype(x.dtype)[k]
        r = jnp.sqrt(1.0 - a)
        t = k / self.num_steps
        f = self.control(t, x) / self.sigma
        if self.scale is not None:
            f = f + self.scale(t) * (_clip(score, self.clip) + x / self.sigma**2)
        return r * x + 2.0 * self.sigma**2 * (1.0 - r) * f, self.sigma * jnp.sqrt(a)

    def backward_kernel(self, k, x, score):
        a = self.noise_fractions().astype(x.dtype)[k]
        return jnp.sqrt(1.0 - a) * x, self.sigma * jnp.sqrt(a)
