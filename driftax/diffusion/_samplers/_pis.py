"""The path integral sampler (PIS)."""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax.numpy as jnp

from ..._checks import check_count
from ..._custom_types import Array, Key, Scalar
from ._core import _clip, _gaussian_log_density, _positive, _ScoreScaled


class PIS(_ScoreScaled):
    """Path integral sampler (Zhang & Chen 2022): `x_0 = 0`,
    `x_{k+1} = x_k + h_k f(t_k, x_k) + σ √h_k ξ` with the learned drift
    `f = σ·NN(t, x) + σ² g(t) ⊙ clip(∇log p̃(x))` (the second term with `langevin=True`,
    `g` a time network starting at 0). The reference (`f = 0`) is Brownian motion, whose
    terminal law is `N(0, σ² T I)`; the backward kernels are its Brownian bridges to 0.

    **Arguments:**

    - `dim`: dimension of the target.
    - `key`: PRNG key for the networks (keyword-only).
    - `num_steps`: number of Euler–Maruyama steps `K`.
    - `sigma`: diffusion coefficient `σ` (positive); choose `σ √T` about the target's spread.
    - `horizon`: the final time `T`.
    - `schedule`: `"uniform"` or `"quadratic"` (steps shrink toward the target end:
      `t_k = T (1 - (1 - k/K)²)`).
    - `langevin`: add the target-score term (needs `∇log p̃`).
    - `hidden`, `depth`: size of the control MLP.
    - `clip`: elementwise clip of the target score.
    - `particles`: `(n_particles, spatial_dim)` for a translation-invariant particle target
      (flat points, particle-major): the noise and the drift are projected onto the
      zero-centre-of-mass subspace, so every path stays there, and the Gaussian densities
      (hence `log Z`) are those of that `(n_particles - 1)·spatial_dim`-dimensional subspace.

    PIS is memoryless (point-mass start), so it can also be trained by adjoint matching:
    `fit_sampler(..., loss="adjoint")` (Adjoint Sampling, Havens et al. 2025).
    """

    horizon: float = eqx.field(static=True)
    schedule: str = eqx.field(static=True)
    particles: tuple[int, int] | None = eqx.field(static=True)

    proper_first_backward: ClassVar[bool] = False

    def __init__(
        self,
        dim: int,
        *,
        key: Key,
        num_steps: int = 50,
        sigma: float = 1.0,
        horizon: float = 1.0,
        schedule: str = "uniform",
        langevin: bool = True,
        hidden: int = 64,
        depth: int = 3,
        clip: float = 100.0,
        particles: tuple[int, int] | None = None,
    ):
        self._init_scored(
            dim, num_steps, sigma, clip, key=key, hidden=hidden, depth=depth, langevin=langevin
        )
        if particles is not None:
            if not (isinstance(particles, tuple) and len(particles) == 2):
                raise ValueError(
                    f"`particles` must be a tuple (n_particles, spatial_dim), got {particles!r}."
                )
            n, sd = (
                check_count(particles[0], "particles[0]"),
                check_count(particles[1], "particles[1]"),
            )
            if n < 2 or n * sd != dim:
                raise ValueError(
                    f"`particles` = {particles} must have n_particles >= 2 and "
                    f"n_particles * spatial_dim == dim ({dim})."
                )
            particles = (n, sd)
        self.particles = particles
        self.horizon = _positive(horizon, "horizon")
        if schedule not in ("uniform", "quadratic"):
            raise ValueError(f"`schedule` must be 'uniform' or 'quadratic', got {schedule!r}.")
        self.schedule = schedule

    @property
    def event_dim(self) -> int:
        if self.particles is None:
            return self.dim
        return (self.particles[0] - 1) * self.particles[1]

    def project(self, v: Array) -> Array:
        if self.particles is None:
            return v
        pos = v.reshape(self.particles)
        return (pos - jnp.mean(pos, axis=0)).reshape(v.shape)

    def drift(self, t: Scalar, x: Array, score: Array) -> Array:
        """The learned drift `f(t, x)` (`score` = `∇log p̃(x)`, unused without the Langevin
        term)."""
        f = self.sigma * self.control(t / self.horizon, x)
        if self.scale is not None:
            f = f + self.sigma**2 * self.scale(t / self.horizon) * _clip(score, self.clip)
        return self.project(f)

    def times(self) -> Array:
        """The time grid `t_0 = 0 < ... < t_K = T`."""
        u = jnp.linspace(0.0, 1.0, self.num_steps + 1)
        if self.schedule == "quadratic":
            u = 1.0 - (1.0 - u) ** 2
        return self.horizon * u

    def initial(self, key, dtype):
        return jnp.zeros((self.dim,), dtype), jnp.zeros((), dtype)

    def initial_log_density(self, x0):
        return jnp.zeros((), x0.dtype)

    def reference_log_density(self, k, x):
        """`log N(x; 0, σ² t_k)` of the reference Brownian motion from 0 (`t_k` kept at least
        `0.01 T`: the start is a point mass), on the CoM-free subspace for particles."""
        t = jnp.maximum(self.times().astype(x.dtype)[k], 0.01 * self.horizon)
        std = jnp.asarray(self.sigma, x.dtype) * jnp.sqrt(t)
        return _gaussian_log_density(x, 0.0, std, self.event_dim)

    def forward_kernel(self, k, x, score):
        ts = self.times().astype(x.dtype)
        t, h = ts[k], ts[k + 1] - ts[k]
        return x + h * self.drift(t, x, score), self.sigma * jnp.sqrt(h)

    def backward_kernel(self, k, x, score):
        ts = self.times().astype(x.dtype)
        t, t_next = ts[k], ts[k + 1]
        return x * (t / t_next), self.sigma * jnp.sqrt(t * (t_next - t) / t_next)
