"""Diffusion-based samplers trained from the energy alone: PIS, DDS and CMCD on one core.

Every sampler is a pair of discrete-time Markov processes on a grid of `K` steps:

- the **model** (forward, generative) process `Q`: `x_0 ~ q_0`, then Gaussian kernels
  `x_{k+1} ~ N(m_F(k, x_k), s_F(k)² I)` with a learned drift;
- the **target-side** (backward) process `P`: `x_K ~ p / Z`, then Gaussian kernels
  `x_k ~ N(m_B(k, x_{k+1}), s_B(k)² I)` (fixed for PIS and DDS, learned for CMCD).

The log path weight is the discrete Radon–Nikodym ratio

    log w = log p̃(x_K) + Σ_k log N(x_k; m_B, s_B²) - log q_0(x_0) - Σ_k log N(x_{k+1}; m_F, s_F²)

so `E_Q[w] = Z` exactly, whatever the drift and the step count (no Girsanov discretization
error): `log mean w` is the importance-sampling `log Z`, `mean log w` the ELBO, and the same
weight on backward paths started at target samples gives the EUBO. One function simulates
forward paths (reparameterized, or detached for the log-variance loss) and one simulates
backward paths (from target or replay-buffer samples); both accumulate the weight with the
same increment. The samplers differ only in `q_0` and the two kernels:

- [`PIS`][] (Zhang & Chen 2022): `x_0 = 0`, Brownian reference `dX = σ dW` whose backward
  kernels are Brownian bridges pinned at 0; learned drift `σ·NN(t, x)` plus optionally the
  target score scaled by a learned time network (the Langevin parameterization).
- [`DDS`][] (Vargas, Grathwohl & Doucet 2023): `x_0 ~ N(0, σ²I)`, an Ornstein–Uhlenbeck
  reference that keeps `N(0, σ²I)` invariant (cosine schedule, exact OU kernels) and a learned
  correction to its reverse drift.
- [`CMCD`][] (Vargas, Padhy, Blessing & Nüsken 2024): `x_0 ~ N(0, σ²I)`, Langevin kernels
  along the geometric path `π_β ∝ q_0^{1-β} p̃^β` with the drift `∇log π_β + u` forward and
  `∇log π_β - u` backward, a learned control `u` and a learned step size.

[`fit_sampler`][] trains any of them by the reverse KL (reparameterized through the SDE) or
the log-variance loss (on detached paths, optionally mixed with backward paths from a replay
buffer refined by MALA local search, [`LocalSearch`][]); PIS, being memoryless, can also be
trained by Adjoint Sampling (Havens et al. 2025: reciprocal adjoint matching on a buffer).
For translation-invariant particle targets PIS keeps every path on the zero-centre-of-mass
subspace (`particles=(n, d)`), where its Gaussian densities and `log Z` live.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._custom_types import Array, Key, Scalar
from ..energies._base import AbstractEnergy
from ..energies._metrics_logz import LogZEstimate, elbo, eubo, importance_ess, log_z_importance
from ..samplers._base import AbstractSampler
from ..samplers._hamiltonian import MALA
from ._nets import MLP

_LOG_2PI = math.log(2.0 * math.pi)
LOSSES: tuple[str, ...] = ("kl", "log_variance", "adjoint")


def _count(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
    return v


def _gaussian_log_density(x: Array, mean: Array, std: Array, dim: int | None = None) -> Scalar:
    """`log N(x; mean, std² I)` for an isotropic scalar `std`, on a `dim`-dimensional subspace
    that contains `x - mean` (all of `x`'s space by default)."""
    z = (x - mean) / std
    dim = x.size if dim is None else dim
    return -0.5 * jnp.sum(z**2) - dim * (jnp.log(std) + 0.5 * _LOG_2PI)


class _TimeNet(eqx.Module):
    """`g(t) = MLP(sin/cos features of t)`: a per-coordinate scale of the target score that
    depends on time only. The output layer starts at zero, so an untrained sampler is its
    reference process (the explicit score term is stiff for sharp targets; training turns it
    on where it helps)."""

    mlp: eqx.nn.MLP
    frequencies: Array

    def __init__(self, dim: int, hidden: int, *, key: Key):
        self.frequencies = jnp.exp(jnp.linspace(0.0, math.log(10.0), 8))
        mlp = eqx.nn.MLP(17, dim, hidden, 2, activation=jax.nn.silu, key=key)
        last = mlp.layers[-1]
        self.mlp = eqx.tree_at(
            lambda m: (m.layers[-1].weight, m.layers[-1].bias),
            mlp,
            (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
        )

    def __call__(self, t: Scalar) -> Array:
        a = t * self.frequencies
        return self.mlp(jnp.concatenate([jnp.reshape(t, (1,)), jnp.sin(a), jnp.cos(a)]))


def _clip(score: Array, clip: float) -> Array:
    return jnp.clip(score, -clip, clip)


class AbstractDiffusionSampler(eqx.Module):
    """A diffusion sampler: a model process `Q` (from `q_0`, learned drift) and a target-side
    process `P` (from the target, backward kernels), both Gaussian-kernel Markov chains on `K`
    steps. Subclasses define `q_0` and the kernels; the path weight, simulation, training and
    evaluation are shared. Use [`fit_sampler`][] to train and `.run(...)` to sample.
    """

    control: eqx.AbstractVar[MLP]
    num_steps: eqx.AbstractVar[int]
    dim: eqx.AbstractVar[int]

    # whether the backward kernel of step 0 is a proper Gaussian (False: a point mass, PIS)
    proper_first_backward: ClassVar[bool] = True
    # whether the kernels use the target score
    uses_score: ClassVar[bool] = True

    @property
    def event_dim(self) -> int:
        """Dimension of the space the paths live in (less than `dim` for particles with the
        centre of mass removed)."""
        return self.dim

    def project(self, v: Array) -> Array:
        """Project a vector onto the space the paths live in (identity by default)."""
        return v

    def initial(self, key: Key, dtype) -> tuple[Array, Scalar]:
        """Draw `x_0 ~ q_0`; returns `(x_0, log q_0(x_0))`."""
        raise NotImplementedError

    def initial_log_density(self, x0: Array) -> Scalar:
        """`log q_0(x_0)` (0 for a point mass)."""
        raise NotImplementedError

    def forward_kernel(self, k, x: Array, score: Array) -> tuple[Array, Array]:
        """Mean and standard deviation of `x_{k+1} | x_k = x` (`score` = `∇log p̃(x)`)."""
        raise NotImplementedError

    def backward_kernel(self, k, x: Array, score: Array) -> tuple[Array, Array]:
        """Mean and standard deviation of `x_k | x_{k+1} = x` (`score` = `∇log p̃(x)`)."""
        raise NotImplementedError

    def run(
        self,
        energy: AbstractEnergy,
        *,
        key: Key,
        num_samples: int,
        target_samples: Array | None = None,
    ) -> DiffusionSamplerResult:
        """Draw `num_samples` samples with their path log-weights and estimate `log Z`.

        **Arguments:**

        - `energy`: the target (an [`AbstractEnergy`][] of event shape `(dim,)`).
        - `key`: PRNG key (keyword-only).
        - `num_samples`: number of forward paths.
        - `target_samples`: optional exact samples of the target, shape `(n, dim)`; backward
          paths started there give the EUBO.

        **Returns:** a [`DiffusionSamplerResult`][].
        """
        _check_energy(self, energy)
        num_samples = _count(num_samples, "num_samples")
        keys = jax.random.split(key, num_samples)
        x, log_w = _forward_batch(self, energy, keys)
        log_w = np.asarray(log_w)
        finite = np.isfinite(log_w) & np.all(np.isfinite(np.asarray(x)), axis=-1)
        num_bad = int(np.size(finite) - np.count_nonzero(finite))
        if num_bad == num_samples:
            raise FloatingPointError(
                "every path log-weight is non-finite: the sampler diverged (check the step "
                "count, sigma, or the trained parameters)."
            )
        log_w_safe = np.where(finite, log_w, -np.inf)
        upper = None
        if target_samples is not None:
            y = jnp.asarray(target_samples)
            if y.ndim != 2 or y.shape[1] != self.dim:
                raise ValueError(
                    f"`target_samples` must have shape (n, {self.dim}), got {y.shape}."
                )
            y = jax.vmap(self.project)(y)  # e.g. remove the centre of mass
            kb = jax.random.split(jax.random.fold_in(key, 1), y.shape[0])
            _, log_w_back = _backward_batch(self, energy, y, kb)
            lb = np.asarray(log_w_back)
            upper = eubo(lb[np.isfinite(lb)])
        return DiffusionSamplerResult(
            samples=x,
            log_weights=jnp.asarray(log_w_safe),
            log_z=log_z_importance(log_w_safe),
            elbo=elbo(log_w[finite]),
            eubo=upper,
            ess=importance_ess(log_w_safe).ess,
            num_nonfinite=num_bad,
        )


def _check_energy(sampler: AbstractDiffusionSampler, energy) -> None:
    if not isinstance(sampler, AbstractDiffusionSampler):
        raise TypeError(f"`sampler` must be a diffusion sampler, got {type(sampler).__name__}.")
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    if tuple(energy.event_shape) != (sampler.dim,):
        raise ValueError(
            f"`energy` has event shape {tuple(energy.event_shape)}, but the sampler was built "
            f"for dim={sampler.dim} (event shape ({sampler.dim},))."
        )


class DiffusionSamplerResult(eqx.Module):
    """Samples of a diffusion sampler with their importance weights.

    **Fields:**

    - `samples`: terminal states `x_K`, shape `(n, dim)`.
    - `log_weights`: path log-weights `log w` (`-inf` where non-finite), shape `(n,)`.
    - `log_z`: the importance-sampling estimate `log mean w` with its standard error.
    - `elbo`: `mean log w` (a lower bound on `log Z`) with its standard error.
    - `eubo`: the mean log-weight of backward paths from target samples (an upper bound), or
      `None` without `target_samples`.
    - `ess`: Kish effective sample size of the weights.
    - `num_nonfinite`: paths whose weight or sample was not finite (excluded, reported here).
    """

    samples: Array
    log_weights: Array
    log_z: LogZEstimate
    elbo: LogZEstimate
    eubo: LogZEstimate | None
    ess: Scalar
    num_nonfinite: int = eqx.field(static=True)


# ----------------------------------------------------------------------------------------------
# the core: forward and backward paths with their log-weights


def _score_fn(sampler: AbstractDiffusionSampler, energy: AbstractEnergy):
    if sampler.uses_score:
        return energy.score
    return jnp.zeros_like


def _increment(sampler, k, x, x_next, forward, backward) -> Scalar:
    """`log B_k(x_k | x_{k+1}) - log F_k(x_{k+1} | x_k)`; the point-mass first backward
    kernel of PIS contributes nothing (it cancels the point mass `q_0`)."""
    (m_f, s_f), (m_b, s_b) = forward, backward
    d = sampler.event_dim
    log_f = _gaussian_log_density(x_next, m_f, s_f, d)
    if sampler.proper_first_backward:
        log_b = _gaussian_log_density(x, m_b, s_b, d)
    else:
        proper = k > 0
        s_b = jnp.where(proper, s_b, 1.0)
        log_b = jnp.where(proper, _gaussian_log_density(x, m_b, s_b, d), 0.0)
    return log_b - log_f


def forward_path(
    sampler: AbstractDiffusionSampler,
    energy: AbstractEnergy,
    key: Key,
    *,
    detach: bool = False,
) -> tuple[Array, Scalar]:
    """Simulate ONE forward (model) path and return `(x_K, log w)`.

    With `detach=False` the states are reparameterized (gradients flow through the path: the
    KL loss). With `detach=True` the states are constants and only the kernels' dependence on
    the parameters is differentiated (the log-variance loss).
    """
    dtype = jnp.result_type(float)
    k0, kpath = jax.random.split(key)
    x0, log_q0 = sampler.initial(k0, dtype)
    if detach:
        x0 = jax.lax.stop_gradient(x0)
    score = _score_fn(sampler, energy)

    def step(carry, inputs):
        x, g, acc = carry
        k, kk = inputs
        fwd = sampler.forward_kernel(k, x, g)
        noise = sampler.project(jax.random.normal(kk, x.shape, x.dtype))
        x_next = fwd[0] + fwd[1] * noise
        if detach:
            x_next = jax.lax.stop_gradient(x_next)
        g_next = score(x_next)
        bwd = sampler.backward_kernel(k, x_next, g_next)
        return (x_next, g_next, acc + _increment(sampler, k, x, x_next, fwd, bwd)), None

    ks = jnp.arange(sampler.num_steps)
    init = (x0, score(x0), jnp.zeros((), x0.dtype))
    (x, _, acc), _ = jax.lax.scan(step, init, (ks, jax.random.split(kpath, sampler.num_steps)))
    return x, energy.log_density(x) - log_q0 + acc


def backward_path(
    sampler: AbstractDiffusionSampler, energy: AbstractEnergy, x_final: Array, key: Key
) -> tuple[Array, Scalar]:
    """Simulate ONE backward (target-side) path from `x_K = x_final` down to `x_0`, and return
    `(x_0, log w)` with the same weight as [`forward_path`][]. The states are detached; the
    weight is differentiable in the parameters (log-variance training on off-policy paths)."""
    x_final = jax.lax.stop_gradient(x_final)
    score = _score_fn(sampler, energy)

    def step(carry, inputs):
        x_next, g_next, acc = carry
        k, kk = inputs
        bwd = sampler.backward_kernel(k, x_next, g_next)
        noise = sampler.project(jax.random.normal(kk, x_next.shape, x_next.dtype))
        x = bwd[0] + bwd[1] * noise
        x = jax.lax.stop_gradient(x)
        g = score(x)
        fwd = sampler.forward_kernel(k, x, g)
        return (x, g, acc + _increment(sampler, k, x, x_next, fwd, bwd)), None

    ks = jnp.arange(sampler.num_steps)[::-1]
    keys = jax.random.split(key, sampler.num_steps)
    init = (x_final, score(x_final), jnp.zeros((), x_final.dtype))
    (x0, _, acc), _ = jax.lax.scan(step, init, (ks, keys))
    return x0, energy.log_density(x_final) - sampler.initial_log_density(x0) + acc


@eqx.filter_jit
def _forward_batch(sampler, energy, keys):
    return jax.vmap(lambda k: forward_path(sampler, energy, k))(keys)


@eqx.filter_jit
def _backward_batch(sampler, energy, xs, keys):
    return jax.vmap(lambda x, k: backward_path(sampler, energy, x, k))(xs, keys)


# ----------------------------------------------------------------------------------------------
# the samplers


class PIS(AbstractDiffusionSampler):
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

    control: MLP
    scale: _TimeNet | None
    num_steps: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    horizon: float = eqx.field(static=True)
    schedule: str = eqx.field(static=True)
    clip: float = eqx.field(static=True)
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
        self.dim = _count(dim, "dim")
        if particles is not None:
            if not (isinstance(particles, tuple) and len(particles) == 2):
                raise ValueError(
                    f"`particles` must be a tuple (n_particles, spatial_dim), got {particles!r}."
                )
            n, sd = _count(particles[0], "particles[0]"), _count(particles[1], "particles[1]")
            if n < 2 or n * sd != dim:
                raise ValueError(
                    f"`particles` = {particles} must have n_particles >= 2 and "
                    f"n_particles * spatial_dim == dim ({dim})."
                )
            particles = (n, sd)
        self.particles = particles
        self.num_steps = _count(num_steps, "num_steps")
        self.sigma = _positive(sigma, "sigma")
        self.horizon = _positive(horizon, "horizon")
        self.clip = _positive(clip, "clip")
        if schedule not in ("uniform", "quadratic"):
            raise ValueError(f"`schedule` must be 'uniform' or 'quadratic', got {schedule!r}.")
        self.schedule = schedule
        k1, k2 = jax.random.split(key)
        self.control = MLP(dim, key=k1, hidden=hidden, depth=depth)
        self.scale = _TimeNet(dim, hidden, key=k2) if langevin else None

    @property
    def uses_score(self) -> bool:  # type: ignore[override]
        return self.scale is not None

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

    def forward_kernel(self, k, x, score):
        ts = self.times().astype(x.dtype)
        t, h = ts[k], ts[k + 1] - ts[k]
        return x + h * self.drift(t, x, score), self.sigma * jnp.sqrt(h)

    def backward_kernel(self, k, x, score):
        ts = self.times().astype(x.dtype)
        t, t_next = ts[k], ts[k + 1]
        return x * (t / t_next), self.sigma * jnp.sqrt(t * (t_next - t) / t_next)


def _cosine_alpha_bar(s: Array) -> Array:
    c = 0.008
    f = lambda u: jnp.cos(0.5 * jnp.pi * (u + c) / (1.0 + c)) ** 2
    return f(s) / f(0.0)


class _GaussianStart(AbstractDiffusionSampler):
    """Samplers that start from `q_0 = N(0, σ² I)`."""

    sigma: eqx.AbstractVar[float]

    def initial(self, key, dtype):
        x0 = self.sigma * jax.random.normal(key, (self.dim,), dtype)
        return x0, self.initial_log_density(x0)

    def initial_log_density(self, x0):
        return _gaussian_log_density(x0, 0.0, jnp.asarray(self.sigma, x0.dtype))


class DDS(_GaussianStart):
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

    control: MLP
    scale: _TimeNet | None
    num_steps: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    clip: float = eqx.field(static=True)

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
        self.dim = _count(dim, "dim")
        self.num_steps = _count(num_steps, "num_steps")
        self.sigma = _positive(sigma, "sigma")
        self.clip = _positive(clip, "clip")
        k1, k2 = jax.random.split(key)
        self.control = MLP(dim, key=k1, hidden=hidden, depth=depth)
        self.scale = _TimeNet(dim, hidden, key=k2) if langevin else None

    @property
    def uses_score(self) -> bool:  # type: ignore[override]
        return self.scale is not None

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

    control: MLP
    log_step_size: Array
    num_steps: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    clip: float = eqx.field(static=True)

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
        self.dim = _count(dim, "dim")
        self.num_steps = _count(num_steps, "num_steps")
        self.sigma = _positive(sigma, "sigma")
        self.clip = _positive(clip, "clip")
        self.log_step_size = jnp.log(jnp.asarray(_positive(step_size, "step_size")))
        self.control = MLP(dim, key=key, hidden=hidden, depth=depth)

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


# ----------------------------------------------------------------------------------------------
# training


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
        _count(self.num_steps, "num_steps")
        _count(self.buffer_size, "buffer_size")
        if not 0.0 < float(self.fraction) < 1.0:
            raise ValueError(f"`fraction` must lie in (0, 1), got {self.fraction!r}.")


class FitInfo(eqx.Module):
    """Training history of [`fit_sampler`][].

    **Fields:**

    - `losses`: the loss per iteration (NaN where the step was skipped), shape `(n,)`; for
      `loss="adjoint"` the mean regression loss of the iteration's `num_updates` steps.
    - `elbo`: mean log-weight of the on-policy batch per iteration (before the update).
    - `log_z`: the batch's importance-sampling `log Z` per iteration.
    - `num_nonfinite`: iterations whose loss or gradient was non-finite (skipped).
    - `acceptance_rate`: mean local-search acceptance per iteration (`None` without
      `local_search`).
    """

    losses: Array
    elbo: Array
    log_z: Array
    num_nonfinite: int = eqx.field(static=True)
    acceptance_rate: Array | None = None


def _trainable(sampler):
    """Float arrays except the networks' fixed sinusoidal frequencies."""
    spec = jax.tree.map(eqx.is_inexact_array, sampler)
    frozen = [lambda s: s.control.frequencies]
    if getattr(sampler, "scale", None) is not None:
        frozen.append(lambda s: s.scale.frequencies)
    for where in frozen:
        spec = eqx.tree_at(where, spec, replace=False)
    return eqx.partition(sampler, spec)


def _local_search(kernel, energy, xs, key, num_steps):
    def one(x, k):
        state = kernel.init(energy, x)

        def body(st, kk):
            st, info = kernel.step(energy, st, key=kk)
            return st, info.acceptance_rate

        state, acc = jax.lax.scan(body, state, jax.random.split(k, num_steps))
        return state.position, jnp.mean(acc)

    return jax.vmap(one)(xs, jax.random.split(key, xs.shape[0]))


def _guarded_update(objective, optimizer, params, opt_state, *args):
    """One optimizer step on `objective(params, *args) -> (value, aux)`, skipped (parameters
    and optimizer state unchanged) when the loss or a gradient is non-finite."""
    (value, aux), grads = jax.value_and_grad(objective, has_aux=True)(params, *args)
    finite = [jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)]
    ok = jnp.isfinite(value) & jnp.all(jnp.stack(finite))
    grads = jax.tree.map(lambda g: jnp.where(ok, g, 0.0), grads)
    updates, new_state = optimizer.update(grads, opt_state, params)
    new_params = eqx.apply_updates(params, updates)
    params, opt_state = jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), (new_params, new_state), (params, opt_state)
    )
    return params, opt_state, jnp.where(ok, value, jnp.nan), aux, ok


@eqx.filter_jit
def _train_chunk(params, static, opt_state, buffer, energy, keys, optimizer, batch, loss, search):
    def objective(p, key):
        sampler = eqx.combine(p, static)
        k_on, k_off = jax.random.split(key)
        n_on = batch if search is None else batch - int(round(batch * search.fraction))
        on_keys = jax.random.split(k_on, n_on)
        detach = loss == "log_variance"
        x, log_w = jax.vmap(lambda k: forward_path(sampler, energy, k, detach=detach))(on_keys)
        all_w = log_w
        if search is not None:
            data, count = buffer
            k_idx, k_path = jax.random.split(k_off)
            n_off = batch - n_on
            idx = jax.random.randint(k_idx, (n_off,), 0, jnp.maximum(count, 1))
            fallback = jax.lax.stop_gradient(x[jnp.arange(n_off) % n_on])
            starts = jnp.where(count > 0, data[idx], fallback)
            _, log_w_off = jax.vmap(lambda y, k: backward_path(sampler, energy, y, k))(
                starts, jax.random.split(k_path, n_off)
            )
            all_w = jnp.concatenate([log_w, log_w_off])
        if loss == "kl":
            value = -jnp.mean(all_w)
        else:
            value = jnp.var(all_w)
        log_w = jax.lax.stop_gradient(log_w)
        aux = (jax.lax.stop_gradient(x), jnp.mean(log_w), jax.nn.logsumexp(log_w) - jnp.log(n_on))
        return value, aux

    def step(carry, key):
        params, opt_state, buffer = carry
        k_loss, k_search = jax.random.split(key)
        params, opt_state, value, (x, lower, log_z), ok = _guarded_update(
            objective, optimizer, params, opt_state, k_loss
        )
        acc = jnp.zeros((), x.dtype)
        if search is not None:
            data, count = buffer
            fresh, acc_each = _local_search(search.kernel, energy, x, k_search, search.num_steps)
            good = jnp.all(jnp.isfinite(fresh), axis=-1)
            fresh = jnp.where(good[:, None], fresh, x)
            size = data.shape[0]
            pos = (count + jnp.arange(fresh.shape[0])) % size
            data = data.at[pos].set(fresh)
            buffer = (data, jnp.minimum(count + fresh.shape[0], size))
            acc = jnp.mean(acc_each)
        return (params, opt_state, buffer), (value, lower, log_z, ok, acc)

    (params, opt_state, buffer), out = jax.lax.scan(step, (params, opt_state, buffer), keys)
    return params, opt_state, buffer, out


@eqx.filter_jit
def _adjoint_chunk(
    params, static, opt_state, buffer, energy, keys, optimizer, batch, num_updates, search
):
    """Adjoint Sampling: simulate `batch` paths (no gradients), store their terminal states
    and lean adjoints `a = ∇g(x_K)`, `g = log N(·; 0, σ²T) - log p̃`, then take `num_updates`
    regression steps `|f(t, X_t)/σ² + a|²` on Brownian-bridge points `X_t` between 0 and
    buffer samples (reciprocal adjoint matching). With `search`, the terminal states are first
    moved by the MCMC kernel (toward the target) before they enter the buffer."""

    def step(carry, key):
        params, opt_state, (data, targets, count) = carry
        k_sim, k_upd = jax.random.split(key)
        sampler = eqx.combine(params, static)
        x, log_w = jax.vmap(lambda k: forward_path(sampler, energy, k, detach=True))(
            jax.random.split(k_sim, batch)
        )
        x, log_w = jax.lax.stop_gradient((x, log_w))
        acc = jnp.zeros((), x.dtype)
        if search is not None:
            k_sim, k_ls = jax.random.split(k_sim)
            moved, acc_each = _local_search(search.kernel, energy, x, k_ls, search.num_steps)
            moved = jax.vmap(sampler.project)(moved)
            x = jnp.where(jnp.all(jnp.isfinite(moved), -1)[:, None], moved, x)
            acc = jnp.mean(acc_each)
        nu = sampler.sigma**2 * sampler.horizon

        def adjoint(y):
            return -sampler.project(_clip(energy.score(y), sampler.clip) + y / nu)

        a = jax.vmap(adjoint)(x)
        good = jnp.all(jnp.isfinite(x), -1) & jnp.all(jnp.isfinite(a), -1)
        size = data.shape[0]
        pos = (count + jnp.arange(batch)) % size
        data = data.at[pos].set(jnp.where(good[:, None], x, data[pos]))
        targets = targets.at[pos].set(jnp.where(good[:, None], a, targets[pos]))
        count = jnp.minimum(count + batch, size)
        ts = sampler.times().astype(x.dtype)
        horizon, sigma = sampler.horizon, sampler.sigma
        score = _score_fn(sampler, energy)

        def objective(p, kk):
            smp = eqx.combine(p, static)
            ki, kt, kn = jax.random.split(kk, 3)
            idx = jax.random.randint(ki, (batch,), 0, jnp.maximum(count, 1))
            x1, a1 = data[idx], targets[idx]
            t = ts[jax.random.randint(kt, (batch,), 0, smp.num_steps)]
            noise = jax.vmap(smp.project)(jax.random.normal(kn, x1.shape, x1.dtype))
            std = sigma * jnp.sqrt(t * (horizon - t) / horizon)
            xt = (t / horizon)[:, None] * x1 + std[:, None] * noise
            f = jax.vmap(smp.drift)(t, xt, jax.vmap(score)(xt))
            return jnp.mean(jnp.sum((f / sigma**2 + a1) ** 2, axis=-1)), None

        def update(c, kk):
            params, opt_state = c
            params, opt_state, value, _, ok = _guarded_update(
                objective, optimizer, params, opt_state, kk
            )
            return (params, opt_state), (value, ok)

        (params, opt_state), (values, oks) = jax.lax.scan(
            update, (params, opt_state), jax.random.split(k_upd, num_updates)
        )
        lower = jnp.mean(log_w)
        log_z = jax.nn.logsumexp(log_w) - jnp.log(batch)
        out = (jnp.mean(values), lower, log_z, jnp.all(oks), acc)
        return (params, opt_state, (data, targets, count)), out

    (params, opt_state, buffer), out = jax.lax.scan(step, (params, opt_state, buffer), keys)
    return params, opt_state, buffer, out


def fit_sampler(
    sampler: AbstractDiffusionSampler,
    energy: AbstractEnergy,
    *,
    key: Key,
    num_iterations: int,
    batch_size: int = 256,
    loss: str = "log_variance",
    learning_rate: float = 1e-3,
    max_grad_norm: float = 1.0,
    optimizer: optax.GradientTransformation | None = None,
    local_search: LocalSearch | None = None,
    num_updates: int = 1,
    buffer_size: int = 4096,
    num_chunks: int = 10,
) -> tuple[AbstractDiffusionSampler, FitInfo]:
    """Train a diffusion sampler ([`PIS`][], [`DDS`][], [`CMCD`][]) from the energy alone.

    Losses (one implementation each, shared by all samplers):

    - `"kl"`: the reverse KL `E_Q[-log w]` (= `KL(Q‖P) - log Z`), reparameterized through the
      simulated paths (gradients flow through every state).
    - `"log_variance"`: `Var[log w]` over detached paths (on-policy, plus buffer paths with
      `local_search`); mode-covering in practice and cheaper (no backpropagation through the
      dynamics' states).
    - `"adjoint"` ([`PIS`][] only, a memoryless point-mass start): Adjoint Sampling (Havens et
      al. 2025). Each iteration simulates `batch_size` paths without gradients, stores their
      terminal states with the lean adjoint `∇g(x_K)` (`g = log N(·; 0, σ²T) - log p̃`) in a
      FIFO buffer of `buffer_size`, and takes `num_updates` regression steps of the drift
      onto `-σ²∇g(x_K)` at Brownian-bridge points between 0 and buffer samples. Energy
      evaluations per gradient step are `batch_size / num_updates`.

    The loop runs in `num_chunks` compiled chunks (`lax.scan` over iterations). Adam with
    gradient clipping by default. An iteration whose loss or gradient is non-finite is skipped
    (parameters unchanged); such iterations are counted in `FitInfo.num_nonfinite` and a
    `RuntimeWarning` names the first one.

    **Arguments:**

    - `sampler`, `energy`: the sampler and its target (event shape `(sampler.dim,)`).
    - `key`: PRNG key (keyword-only).
    - `num_iterations`, `batch_size`: gradient steps and paths per step.
    - `loss`: `"kl"` or `"log_variance"`.
    - `learning_rate`, `max_grad_norm`: for the default optimizer
      `optax.chain(clip_by_global_norm, adam)`; or pass `optimizer`.
    - `local_search`: a [`LocalSearch`][] (replay buffer + MCMC) for the log-variance loss;
      with `"adjoint"`, its kernel moves the terminal states before they enter the buffer
      (the adjoint loss keeps its own buffer of `buffer_size`).
    - `num_updates`, `buffer_size`: for `loss="adjoint"` (see above).
    - `num_chunks`: compiled chunks (the history is assembled across them).

    **Returns:** `(trained_sampler, FitInfo)`.
    """
    _check_energy(sampler, energy)
    num_iterations = _count(num_iterations, "num_iterations")
    batch_size = _count(batch_size, "batch_size")
    num_chunks = _count(num_chunks, "num_chunks")
    if loss not in LOSSES:
        raise ValueError(f"`loss` must be one of {LOSSES}, got {loss!r}.")
    if local_search is not None:
        if not isinstance(local_search, LocalSearch):
            raise TypeError("`local_search` must be a LocalSearch or None.")
        if loss == "kl":
            raise ValueError(
                "`local_search` needs loss='log_variance' or 'adjoint' (off-policy paths)."
            )
        if batch_size < 2:
            raise ValueError("`batch_size` must be >= 2 with `local_search`.")
    num_updates = _count(num_updates, "num_updates")
    buffer_size = _count(buffer_size, "buffer_size")
    if loss == "adjoint" and not isinstance(sampler, PIS):
        raise ValueError(
            "`loss='adjoint'` needs a memoryless sampler with a point-mass start (PIS), got "
            f"{type(sampler).__name__}."
        )
    if optimizer is None:
        optimizer = optax.chain(
            optax.clip_by_global_norm(_positive(max_grad_norm, "max_grad_norm")),
            optax.adam(_positive(learning_rate, "learning_rate")),
        )
    params, static = _trainable(sampler)
    opt_state = optimizer.init(params)
    if local_search is not None:
        dtype = jnp.result_type(float)
        buffer = (jnp.zeros((local_search.buffer_size, sampler.dim), dtype), jnp.array(0))
    else:
        buffer = None
    if loss == "adjoint":
        dtype = jnp.result_type(float)
        empty = jnp.zeros((max(buffer_size, batch_size), sampler.dim), dtype)
        buffer = (empty, empty, jnp.array(0))
    keys = jax.random.split(key, num_iterations)
    outs = []
    for chunk in np.array_split(np.arange(num_iterations), min(num_chunks, num_iterations)):
        if loss == "adjoint":
            params, opt_state, buffer, out = _adjoint_chunk(
                params,
                static,
                opt_state,
                buffer,
                energy,
                keys[chunk],
                optimizer,
                batch_size,
                num_updates,
                local_search,
            )
            outs.append(out)
            continue
        params, opt_state, buffer, out = _train_chunk(
            params,
            static,
            opt_state,
            buffer,
            energy,
            keys[chunk],
            optimizer,
            batch_size,
            loss,
            local_search,
        )
        outs.append(out)
    values, lower, log_z, ok, acc = (np.concatenate(parts) for parts in zip(*outs, strict=True))
    bad = int(np.size(ok) - np.count_nonzero(ok))
    if bad:
        warnings.warn(
            f"fit_sampler: {bad} of {ok.size} iterations had a non-finite loss or gradient "
            f"(first at iteration {int(np.argmin(ok))}); they were skipped and are NaN in "
            "`FitInfo.losses`.",
            RuntimeWarning,
            stacklevel=2,
        )
    info = FitInfo(
        losses=jnp.asarray(values),
        elbo=jnp.asarray(lower),
        log_z=jnp.asarray(log_z),
        num_nonfinite=bad,
        acceptance_rate=None if local_search is None else jnp.asarray(acc),
    )
    return eqx.combine(params, static), info
