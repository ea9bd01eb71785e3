"""Stein variational gradient descent (Liu & Wang 2016) with the RBF kernel and the median
heuristic."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy
from .._base import check_hyper, float_leaf
from ._base import AbstractParticleMethod, ParticleState, evaluate, flat, particle_info


def squared_distances(x: Array, y: Array) -> Array:
    """`|x_i - y_j|²` for all pairs, `(n, m)`, clipped at 0 against round-off."""
    s = jnp.sum(x**2, axis=1)[:, None] + jnp.sum(y**2, axis=1)[None, :] - 2.0 * x @ y.T
    return jnp.maximum(s, 0.0)


def median_bandwidth(sq: Array) -> Array:
    """The SVGD median heuristic from the pairwise squared distances `sq` of `n` particles:
    `ℓ² = med² / (2 log n)`, i.e. the kernel `exp(-|x - y|² log n / med²)` of Liu & Wang,
    so that `Σ_j k(x_i, x_j) ≈ 1 + n · n^{-1}`; returns `ℓ` (1 when all particles coincide)."""
    n = sq.shape[0]
    i, j = np.triu_indices(n, k=1)
    med2 = jnp.median(sq[i, j])
    ell2 = med2 / (2.0 * np.log(max(n, 2)))
    return jnp.sqrt(jnp.where(ell2 > 0, ell2, 1.0))


class SVGD(AbstractParticleMethod):
    r"""Stein variational gradient descent: deterministic interacting particles that follow the
    steepest descent direction of the KL divergence in the RBF kernel's Stein class.

    Every particle moves by `step_size · φ(x_i)`, with

    `φ(x) = 1/N Σ_j [k(x_j, x) ∇log π(x_j) + ∇_{x_j} k(x_j, x)]`,
    `k(x, y) = exp(-|x - y|² / (2ℓ²))`:

    the first term pulls particles to high density, the second (the kernel's gradient) pushes
    them apart. With `bandwidth=None` the bandwidth follows the median heuristic at every step
    (`ℓ² = med² / (2 log N)`, med the median pairwise distance). The particles converge to a
    set whose empirical measure approximates the target; run it until the moments settle and
    use `ParticleResult.particles`. Cost O(N² D) per step, N score evaluations.

    **Arguments:**

    - `step_size`: positive step `ε`.
    - `bandwidth`: a positive `ℓ`, or `None` (median heuristic).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.array([1.0, -1.0]))
    x0 = jax.random.normal(jax.random.key(1), (100, 2)) - 3.0
    res = dx.samplers.run_particles(dx.samplers.SVGD(step_size=0.3), target, x0,
                                    key=jax.random.key(0), num_steps=400, store_samples=False)
    res.particles.mean(axis=0), res.particles.var(axis=0)  # ≈ [1, -1], ≈ [1, 1]
    ```
    """

    step_size: Array = eqx.field(converter=float_leaf)
    bandwidth: Array | None = eqx.field(
        default=None, converter=lambda v: None if v is None else float_leaf(v)
    )

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")
        if self.bandwidth is not None:
            check_hyper(self.bandwidth, "bandwidth")

    def direction(self, x: Array, score: Array) -> Array:
        """The SVGD direction `φ(x_i)` of every particle of the flat ensemble `x` `(N, D)`
        with scores `score` `(N, D)`."""
        n = x.shape[0]
        sq = squared_distances(x, x)
        ell = median_bandwidth(sq) if self.bandwidth is None else self.bandwidth.astype(x.dtype)
        k = jnp.exp(-0.5 * sq / ell**2)
        repulsion = (jnp.sum(k, axis=1)[:, None] * x - k @ x) / ell**2
        return (k @ score + repulsion) / n

    def step(self, energy: AbstractEnergy, state: ParticleState, *, key: Key):
        del key
        x = flat(state.position)
        assert state.score is not None  # SVGD always evaluates the scores
        phi = self.direction(x, flat(state.score))
        new = x + self.step_size.astype(x.dtype) * phi
        position = new.reshape(state.position.shape)
        logp, score = evaluate(energy, position, with_score=True)
        out = ParticleState(position, logp, score, None, state.iteration + 1)
        return out, particle_info(out, x.shape[0])
