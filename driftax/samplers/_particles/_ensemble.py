"""Gradient-free and affine-invariant ensembles: ALDI and ensemble Kalman inversion (EKI), and
the Bayesian inverse problem `y = G(x) + noise` they are usually run on."""

from __future__ import annotations

from collections.abc import Callable

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from ..._checks import check_finite
from ..._custom_types import Array, Key, Point, Scalar, Shape
from ...energies._base import AbstractEnergy
from .._base import check_hyper, float_leaf
from ._base import AbstractParticleMethod, ParticleState, evaluate, flat, particle_info


def _as_covariance(value, size: int, name: str) -> np.ndarray:
    """A positive scalar, a positive vector `(size,)` or an SPD matrix `(size, size)` as a
    dense matrix; a `ValueError` naming `name` otherwise."""
    c = np.asarray(check_finite(value, name), dtype=float)
    if c.ndim == 0 or c.ndim == 1:
        if np.any(c <= 0):
            raise ValueError(f"`{name}` must be positive, got {value!r}.")
        return np.diag(np.broadcast_to(c, (size,)).astype(float))
    if c.shape != (size, size):
        raise ValueError(
            f"`{name}` must be a scalar, ({size},) or ({size}, {size}); got {c.shape}."
        )
    if not np.allclose(c, c.T) or np.any(np.linalg.eigvalsh(c) <= 0):
        raise ValueError(f"`{name}` must be symmetric positive definite.")
    return c


class InverseProblem(AbstractEnergy):
    """The posterior of a Bayesian inverse problem `y = G(x) + ε`, `ε ~ N(0, Γ)`, with the
    Gaussian prior `x ~ N(m₀, C₀)`:
    `log π(x) = -½ |Γ^{-1/2}(y - G(x))|² - ½ |C₀^{-1/2}(x - m₀)|²` (unnormalized).

    The structure (forward map, noise and prior) is what the gradient-free ensemble methods use:
    [`EKI`][] and `ALDI(gradient_free=True)` call only `forward`.

    **Arguments:**

    - `forward`: `G`, a function of ONE point `(d,)` returning a vector `(k,)`.
    - `observations`: `y`, shape `(k,)`.
    - `noise_cov`: `Γ`: a positive scalar, a positive vector `(k,)` or an SPD matrix `(k, k)`.
    - `prior_mean`: `m₀`, shape `(d,)`.
    - `prior_cov`: `C₀` (scalar, vector or SPD matrix, as `noise_cov`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
    problem = dx.samplers.InverseProblem(lambda x: A @ x, jnp.array([1.0, 0.0, 0.5]),
                                         noise_cov=0.1, prior_mean=jnp.zeros(2), prior_cov=1.0)
    x0 = problem.sample_prior(jax.random.key(0), 100)  # (100, 2)
    ```
    """

    forward: Callable
    observations: Array
    noise_chol: Array
    prior_mean: Array
    prior_chol: Array
    event_shape: Shape = eqx.field(static=True)

    def __init__(self, forward, observations, *, noise_cov, prior_mean, prior_cov):
        if not callable(forward):
            raise TypeError(f"`forward` must be callable, got {type(forward).__name__}.")
        y = np.asarray(check_finite(observations, "observations"), dtype=float)
        m0 = np.asarray(check_finite(prior_mean, "prior_mean"), dtype=float)
        if y.ndim != 1 or m0.ndim != 1:
            raise ValueError("`observations` and `prior_mean` must be vectors.")
        dtype = jnp.result_type(float)
        gx = jax.eval_shape(forward, jax.ShapeDtypeStruct(m0.shape, dtype))
        if getattr(gx, "shape", None) != y.shape:
            raise ValueError(
                f"`forward` maps a point {m0.shape} to shape {getattr(gx, 'shape', None)}, but "
                f"`observations` has shape {y.shape}."
            )
        self.forward = forward
        self.observations = jnp.asarray(y, dtype)
        self.noise_chol = jnp.asarray(
            np.linalg.cholesky(_as_covariance(noise_cov, y.shape[0], "noise_cov")), dtype
        )
        self.prior_mean = jnp.asarray(m0, dtype)
        self.prior_chol = jnp.asarray(
            np.linalg.cholesky(_as_covariance(prior_cov, m0.shape[0], "prior_cov")), dtype
        )
        self.event_shape = tuple(m0.shape)

    def _whiten(self, chol: Array, v: Array) -> Array:
        return jax.scipy.linalg.solve_triangular(chol, v, lower=True)

    def misfit(self, x: Point) -> Scalar:
        """`½ |Γ^{-1/2}(y - G(x))|²`, the data misfit of one point."""
        r = self._whiten(self.noise_chol, self.observations - self.forward(x))
        return 0.5 * jnp.sum(r**2)

    def log_density(self, x: Point) -> Scalar:
        z = self._whiten(self.prior_chol, x - self.prior_mean)
        return -self.misfit(x) - 0.5 * jnp.sum(z**2)

    def sample_prior(self, key: Key, num: int) -> Array:
        """`num` independent draws from the prior `N(m₀, C₀)`, shape `(num, d)`."""
        eps = jax.random.normal(key, (num, *self.event_shape), self.prior_mean.dtype)
        return self.prior_mean + eps @ self.prior_chol.T

    def noise_precision_apply(self, r: Array) -> Array:
        """`Γ^{-1} r` for one residual `r` (shape `(k,)`)."""
        return jax.scipy.linalg.cho_solve((self.noise_chol, True), r)

    def prior_precision_apply(self, v: Array) -> Array:
        """`C₀^{-1} v` for one vector `v` (shape `(d,)`)."""
        return jax.scipy.linalg.cho_solve((self.prior_chol, True), v)


def _require_problem(energy, who: str) -> InverseProblem:
    if not isinstance(energy, InverseProblem):
        raise TypeError(
            f"{who} needs the forward map of an `InverseProblem` energy, got "
            f"{type(energy).__name__}."
        )
    return energy


class ALDI(AbstractParticleMethod):
    r"""Affine-invariant Langevin dynamics (Garbuno-Inigo, Nüsken & Reich 2020): an ensemble
    Langevin sampler preconditioned by the ensemble covariance, with the finite-ensemble
    correction that makes the product target `π^⊗N` invariant.

    For `N` particles in dimension `D`, with ensemble mean `x̄`, centred ensemble
    `A = (x_j - x̄)_j / √N` (`D × N`) and covariance `C = A Aᵀ`:

    `dx_i = [C ∇log π(x_i) + (D + 1)/N (x_i - x̄)] dt + √2 A dW_i`,  `W_i` in `ℝ^N`,

    discretized by Euler–Maruyama with step `step_size` (bias O(step_size) in the stationary
    covariance). The drift `(D + 1)/N (x_i - x̄)` is the correction: without it the ensemble
    is biased at finite `N`. The generalized square root `A` makes the noise cost O(N² D) and
    needs no factorization; `C` is full rank only with `N ≥ D + 1` particles (fewer is an
    error). Every particle is a draw of the target at stationarity: run with warmup and
    use `ParticleResult.samples` (particles play the role of chains).

    `gradient_free=True` (only for an [`InverseProblem`][] energy) replaces `C ∇log π(x_i)`
    by its derivative-free ensemble estimate
    `-C_{xG} Γ^{-1}(G(x_i) - y) - C C₀^{-1}(x_i - m₀)` (exact for a linear `G`).

    **Arguments:**

    - `step_size`: positive time step.
    - `gradient_free`: use the forward map instead of the score (see above).

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.8], [0.8, 1.0]]))
    x0 = jax.random.normal(jax.random.key(1), (20, 2))
    res = dx.samplers.run_particles(dx.samplers.ALDI(step_size=0.05), target, x0,
                                    key=jax.random.key(0), num_warmup=300, num_steps=500)
    res.samples.shape  # (20, 500, 2)
    ```
    """

    step_size: Array = eqx.field(converter=float_leaf)
    gradient_free: bool = eqx.field(static=True, default=False)

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")

    @property
    def uses_score(self) -> bool:
        """The score is used unless `gradient_free`."""
        return not self.gradient_free

    def min_particles(self, dim: int) -> int:
        """`dim + 1`: fewer particles give a singular ensemble covariance."""
        return dim + 1

    def step(self, energy: AbstractEnergy, state: ParticleState, *, key: Key):
        x = flat(state.position)
        n, d = x.shape
        h = self.step_size.astype(x.dtype)
        mean = jnp.mean(x, axis=0)
        a = (x - mean) / jnp.sqrt(n)  # rows are the columns of the generalized square root
        if self.gradient_free:
            problem = _require_problem(energy, "ALDI(gradient_free=True)")
            g = jax.vmap(problem.forward)(state.position)
            gc = (g - jnp.mean(g, axis=0)) / jnp.sqrt(n)
            weighted = jax.vmap(problem.noise_precision_apply)(g - problem.observations)
            prior = jax.vmap(problem.prior_precision_apply)(x - problem.prior_mean)
            # C_xG Γ^{-1} r_i = A (Gcᵀ Γ^{-1} r_i);  C C0^{-1} v_i = A (Aᵀ C0^{-1} v_i)
            drift = -(weighted @ gc.T) @ a - (prior @ a.T) @ a
            num_grad = 0
        else:
            assert state.score is not None  # ALDI with gradients keeps the scores
            score = flat(state.score)
            drift = (score @ a.T) @ a  # C s_i = A (Aᵀ s_i)
            num_grad = n
        drift = drift + (d + 1) / n * (x - mean)
        z = jax.random.normal(key, (n, n), x.dtype)
        new = x + h * drift + jnp.sqrt(2.0 * h) * (z @ a)
        position = new.reshape(state.position.shape)
        logp, score = evaluate(energy, position, with_score=self.uses_score)
        out = ParticleState(position, logp, score, None, state.iteration + 1)
        return out, particle_info(out, num_grad)


class EKI(AbstractParticleMethod):
    r"""Ensemble Kalman inversion with perturbed observations (tempered, stochastic EKI): a
    derivative-free ensemble method for an [`InverseProblem`][].

    Each step moves every particle by the ensemble Kalman gain for the likelihood raised to the
    power `step_size = Δ`:

    `x_i ← x_i + C_{xG} (C_{GG} + Γ/Δ)^{-1} (y + √(1/Δ) η_i - G(x_i))`,  `η_i ~ N(0, Γ)`,

    with the ensemble cross-covariance `C_{xG}` and forward covariance `C_{GG}`. Started from
    prior draws (`InverseProblem.sample_prior`), `1/Δ` steps reach the posterior exactly for a
    linear `G` as `N → ∞` (a Gaussian approximation otherwise); continuing past `1/Δ` steps
    keeps assimilating the data again (the ensemble then collapses towards the least-squares
    solution, EKI as an optimizer). Gradient-free: it calls only `forward`.

    **Arguments:**

    - `step_size`: `Δ` in `(0, 1]`; run `round(1/Δ)` steps from the prior for the posterior.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
    problem = dx.samplers.InverseProblem(lambda x: A @ x, jnp.array([1.0, 0.0, 0.5]),
                                         noise_cov=0.1, prior_mean=jnp.zeros(2), prior_cov=1.0)
    x0 = problem.sample_prior(jax.random.key(0), 500)
    res = dx.samplers.run_particles(dx.samplers.EKI(step_size=0.1), problem, x0,
                                    key=jax.random.key(1), num_steps=10, store_samples=False)
    res.particles.mean(axis=0)  # the posterior mean, up to O(N^-1/2)
    ```
    """

    step_size: Array = eqx.field(converter=float_leaf)

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")
        if not isinstance(self.step_size, jax.core.Tracer) and float(self.step_size) > 1.0:
            raise ValueError(f"`step_size` must be in (0, 1], got {float(self.step_size)!r}.")

    @property
    def uses_score(self) -> bool:
        """EKI is derivative-free."""
        return False

    def step(self, energy: AbstractEnergy, state: ParticleState, *, key: Key):
        problem = _require_problem(energy, "EKI")
        x = flat(state.position)
        n = x.shape[0]
        delta = self.step_size.astype(x.dtype)
        g = jax.vmap(problem.forward)(state.position)
        xc = x - jnp.mean(x, axis=0)
        gc = g - jnp.mean(g, axis=0)
        c_xg = xc.T @ gc / n
        gamma = problem.noise_chol @ problem.noise_chol.T
        c_gg = gc.T @ gc / n + gamma / delta
        eta = jax.random.normal(key, g.shape, x.dtype) @ problem.noise_chol.T
        innovation = problem.observations + eta / jnp.sqrt(delta) - g
        gain_t = jnp.linalg.solve(c_gg, c_xg.T)  # (C_xG C_GG^{-1})ᵀ, C_GG symmetric
        new = x + innovation @ gain_t
        position = new.reshape(state.position.shape)
        logp, _ = evaluate(energy, position, with_score=False)
        out = ParticleState(position, logp, None, None, state.iteration + 1)
        return out, particle_info(out, 0)
