"""A gradient-free reverse-diffusion sampler whose score is estimated from the ensemble
(Bischoff & Riel 2024): self-normalized importance weights over target evaluations, with the
proposals pooled over all particles."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._checks import check_hyper, check_int
from ..._custom_types import Array, Key
from ...energies._base import AbstractEnergy


def ensemble_score(energy, x: Array, t, proposals: Array) -> Array:
    """The score of the noised target `p_t` at every particle of `x` `(N, D)` for the
    Ornstein–Uhlenbeck noising `X_t = α Y + σ Z`, `α = e^{-t}`, `σ² = 1 - α²`, `Y ~ π`,
    estimated by self-normalized importance sampling of the denoising posterior
    `p(y | x_i) ∝ π(y) N(x_i; α y, σ² I)` with the SHARED proposals `proposals` `(P, D)`
    drawn from the ensemble mixture `q(y) = 1/N Σ_j N(y; x_j / α, σ²/α² I)`:
    `∇log p_t(x_i) ≈ (α ȳ_i - x_i) / σ²`, `ȳ_i = Σ_k w_ik y_k`,
    `w_ik ∝ π(y_k) N(x_i; α y_k, σ² I) / q(y_k)`."""
    alpha = jnp.exp(-t)
    var = -jnp.expm1(-2.0 * t)
    log_pi = jax.vmap(energy.log_density)(proposals.reshape(-1, *energy.event_shape))
    log_pi = jnp.where(jnp.isfinite(log_pi), log_pi, -jnp.inf).astype(x.dtype)
    # |x_i - α y_k|² / (2σ²): the likelihood of every particle under every proposal
    sq = (
        jnp.sum(x**2, 1)[:, None]
        - 2 * alpha * x @ proposals.T
        + alpha**2 * jnp.sum(proposals**2, 1)
    )
    log_lik = -0.5 * jnp.maximum(sq, 0.0) / var  # (N, P)
    # the mixture proposal density (up to the constant shared by all k): the same Gaussians
    log_q = jax.nn.logsumexp(log_lik, axis=0)  # N(x_j; α y_k, σ²) ∝ N(y_k; x_j/α, σ²/α²)
    logw = log_pi[None, :] + log_lik - log_q[None, :]
    w = jax.nn.softmax(logw, axis=1)
    ybar = w @ proposals
    return (alpha * ybar - x) / var


@eqx.filter_jit
def _run(energy, key, t_max, t_min, num_particles, num_steps, num_proposals):
    d = math.prod(energy.event_shape)
    dtype = energy.dtype
    times = jnp.exp(jnp.linspace(jnp.log(t_max), jnp.log(t_min), num_steps + 1)).astype(dtype)
    k0, kr = jax.random.split(key)
    x = jax.random.normal(k0, (num_particles, d), dtype)

    def step(x, inputs):
        (t, t_next), k = inputs
        k_pick, k_prop, k_noise = jax.random.split(k, 3)
        alpha = jnp.exp(-t)
        scale = jnp.sqrt(-jnp.expm1(-2.0 * t)) / alpha
        centres = x[jax.random.randint(k_pick, (num_proposals,), 0, num_particles)] / alpha
        proposals = centres + scale * jax.random.normal(k_prop, (num_proposals, d), dtype)
        score = ensemble_score(energy, x, t, proposals)
        h = t - t_next  # exponential integrator of the reverse OU SDE with the score frozen
        x = (
            jnp.exp(h) * x
            + 2.0 * jnp.expm1(h) * score
            + jnp.sqrt(jnp.expm1(2.0 * h)) * jax.random.normal(k_noise, x.shape, dtype)
        )
        return x, None

    pairs = (times[:-1], times[1:])
    x, _ = jax.lax.scan(step, x, (pairs, jax.random.split(kr, num_steps)))
    return x


def ensemble_score_sample(
    energy: AbstractEnergy,
    *,
    key: Key,
    num_particles: int,
    num_steps: int = 200,
    num_proposals: int = 4096,
    t_max: float = 4.0,
    t_min: float = 1e-3,
) -> Array:
    r"""Sample `energy` by running the reverse-time Ornstein–Uhlenbeck diffusion from
    `N(0, I)` with a **gradient-free** score estimated from the ensemble (Bischoff & Riel 2024,
    "Enhancing score-based sampling methods with ensembles").

    The forward noising `X_t = e^{-t} Y + √(1 - e^{-2t}) Z`, `Y ~ π`, has the score
    `∇log p_t(x) = (e^{-t} E[Y | X_t = x] - x) / (1 - e^{-2t})`. At every step the denoising
    mean `E[Y | x_i]` of each particle is estimated by self-normalized importance sampling
    with weights `π(y_k) N(x_i; e^{-t} y_k, σ_t²) / q(y_k)` over `num_proposals` proposals
    `y_k` drawn from the mixture `q` of the denoising Gaussians centred at all the current
    particles (so the ensemble steers the proposals; only `log_density` of the target is
    evaluated). The particles then take an exponential-integrator step of the reverse SDE on a
    geometric time grid from `t_max` to `t_min`.

    Each step costs `num_proposals` density evaluations and an `N × num_proposals` weight
    matrix. The estimate is consistent as `num_proposals` grows; with few proposals the score
    (and so the samples) is biased, most where the target is far from Gaussian at large `t`.
    Suited to low-dimensional multimodal targets where gradients are unavailable; the
    importance weights degenerate as the dimension grows.

    **Arguments:**

    - `energy`: the target (only `log_density` is used).
    - `key`: a JAX PRNG key.
    - `num_particles`: `N ≥ 1`.
    - `num_steps`: reverse-time steps (≥ 1).
    - `num_proposals`: shared importance proposals per step (≥ 1).
    - `t_max`: the start time (the law at `t_max` is taken as `N(0, I)`); `t_min`: the end
      time, `0 < t_min < t_max` (the output is `X_{t_min}`, slightly noised).

    **Returns:** the particles `(num_particles, *event_shape)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.array([2.0, -1.0]), jnp.array([[1.0, 0.5], [0.5, 0.5]]))
    x = dx.samplers.ensemble_score_sample(target, key=jax.random.key(0), num_particles=1000,
                                          num_steps=100, num_proposals=1024)
    x.mean(axis=0)  # ≈ [2, -1]
    ```
    """
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    num_particles = check_int(num_particles, "num_particles", 1)
    num_steps = check_int(num_steps, "num_steps", 1)
    num_proposals = check_int(num_proposals, "num_proposals", 1)
    check_hyper(t_max, "t_max")
    check_hyper(t_min, "t_min")
    if not float(t_min) < float(t_max):
        raise ValueError(f"`t_min` ({t_min}) must be smaller than `t_max` ({t_max}).")
    dtype = energy.dtype
    x = _run(energy, key, jnp.asarray(t_max, dtype), jnp.asarray(t_min, dtype),
             num_particles, num_steps, num_proposals)  # fmt: skip
    return x.reshape(num_particles, *energy.event_shape)
