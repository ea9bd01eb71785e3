"""The path-weight core of the learned samplers of energies (PIS, DDS, CMCD): the base class,
forward / backward path simulation with the discrete Radon–Nikodym weight, shared helpers.

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
from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._checks import check_count
from ..._custom_types import Array, ArrayLike, Key, Scalar
from ...energies._base import AbstractEnergy
from ...energies._gaussian import _LOG_2PI, normal_log_density
from ...energies._metrics_logz import elbo, eubo, importance_ess, log_z_importance
from ...samplers._weighted import WeightedSampleResult
from .._nets import MLP


def _positive(value, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive number, got {value!r}.") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"`{name}` must be a positive finite number, got {value!r}.")
    return v


def _gaussian_log_density(x: Array, mean: ArrayLike, std: Array, dim: int | None = None) -> Scalar:
    """`log N(x; mean, std² I)` for an isotropic scalar `std`, on a `dim`-dimensional subspace
    that contains `x - mean` (all of `x`'s space by default)."""
    full = normal_log_density(x, mean, std)
    if dim is None or dim == x.size:
        return full
    # the normalizer counts only the `dim` directions of the subspace
    return full + (x.size - dim) * (jnp.log(std) + 0.5 * _LOG_2PI)


def _zero_output(mlp: eqx.nn.MLP) -> eqx.nn.MLP:
    """`mlp` with its output layer set to zero (the network starts at exactly 0)."""
    last = mlp.layers[-1]
    assert last.bias is not None  # eqx.nn.MLP uses biases by default
    return eqx.tree_at(
        lambda m: (m.layers[-1].weight, m.layers[-1].bias),
        mlp,
        (jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )


class _TimeNet(eqx.Module):
    """`g(t) = MLP(sin/cos features of t)`: a per-coordinate scale of the target score that
    depends on time only. The output layer starts at zero, so an untrained sampler is its
    reference process (the explicit score term is stiff for sharp targets; training turns it
    on where it helps)."""

    mlp: eqx.nn.MLP
    frequencies: Array

    def __init__(self, dim: int, hidden: int, *, key: Key):
        self.frequencies = jnp.exp(jnp.linspace(0.0, math.log(10.0), 8))
        self.mlp = _zero_output(eqx.nn.MLP(17, dim, hidden, 2, activation=jax.nn.silu, key=key))

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

    def reference_log_density(self, k, x: Array) -> Scalar:
        """`log` density at step `k` of the sampler's reference process (no control, no
        target): what the forward-looking sub-trajectory balance interpolates from. Default:
        `q_0`, the stationary start of the Gaussian-start samplers."""
        return self.initial_log_density(x)

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
    ) -> WeightedSampleResult:
        """Draw `num_samples` samples with their path log-weights and estimate `log Z`.

        **Arguments:**

        - `energy`: the target (an [`AbstractEnergy`][] of event shape `(dim,)`).
        - `key`: PRNG key (keyword-only).
        - `num_samples`: number of forward paths.
        - `target_samples`: optional exact samples of the target, shape `(n, dim)`; backward
          paths started there give the EUBO.

        **Returns:** a [`driftax.samplers.WeightedSampleResult`][]: `samples` (`x_K`,
        `(n, dim)`), normalized `log_weights` (`-inf` where non-finite), `log_normalizer`
        (the importance `log mean w` with its standard error), `ess`, `elbo` (`mean log w`),
        `eubo` (with `target_samples`, else `None`), `num_energy_evals` / `num_grad_evals`
        (target log-density / score evaluations of the forward paths), `num_nonfinite`, and
        `extras["path_log_weights"]`, the unnormalized path log-weights `log w`.
        """
        _check_energy(self, energy)
        num_samples = check_count(num_samples, "num_samples")
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
        log_w_safe = jnp.asarray(log_w_safe)
        per_path = self.num_steps + 1
        return WeightedSampleResult(
            samples=x,
            log_weights=log_w_safe - jax.nn.logsumexp(log_w_safe),
            log_normalizer=log_z_importance(log_w_safe),
            ess=importance_ess(log_w_safe).ess,
            elbo=elbo(log_w[finite]),
            eubo=upper,
            num_grad_evals=num_samples * per_path if self.uses_score else 0,
            num_energy_evals=num_samples,
            num_nonfinite=num_bad,
            extras={"path_log_weights": log_w_safe},
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


def _draw(sampler, key: Key, kernel, explore=None) -> Array:
    """One draw `mean + std · P z` from a Gaussian kernel `(mean, std)` (`P` the sampler's
    projection onto the space the paths live in). With `explore = σ_e` the draw comes from the
    behaviour kernel `N(mean, (std² + σ_e²) I)` instead (off-policy exploration)."""
    mean, std = kernel
    if explore is not None:
        std = jnp.sqrt(std**2 + explore**2)
    return mean + std * sampler.project(jax.random.normal(key, mean.shape, mean.dtype))


def _scan_path(
    sampler, score, x_start: Array, key: Key, *, forward: bool, detach: bool, explore=None
):
    """Run a path from `x_start` (`x_0` forward, `x_K` backward): each step draws the next state
    from one kernel (the forward kernel going up, the backward kernel going down), evaluates the
    other kernel at the new pair and accumulates `_increment`. Returns `(end state, Σ log
    increments, visited states, increments)`, the last two in scan order (`K` rows; reversed
    for a backward path); with `detach` the drawn states are constants. `explore` (forward
    only) draws from the widened behaviour kernel while the increments keep the model's own
    kernel: the weight stays that of the target policy."""
    kernel, other = sampler.forward_kernel, sampler.backward_kernel
    if not forward:
        kernel, other = other, kernel

    def step(carry, inputs):
        y, g_y, acc = carry
        k, kk = inputs
        drawn_from = kernel(k, y, g_y)
        z = _draw(sampler, kk, drawn_from, explore if forward else None)
        if detach:
            z = jax.lax.stop_gradient(z)
        g_z = score(z)
        at_pair = other(k, z, g_z)
        if forward:  # y = x_k, z = x_{k+1}
            inc = _increment(sampler, k, y, z, drawn_from, at_pair)
        else:  # y = x_{k+1}, z = x_k
            inc = _increment(sampler, k, z, y, at_pair, drawn_from)
        return (z, g_z, acc + inc), (z, inc)

    ks = jnp.arange(sampler.num_steps)
    keys = jax.random.split(key, sampler.num_steps)
    init = (x_start, score(x_start), jnp.zeros((), x_start.dtype))
    (x_end, _, acc), (states, incs) = jax.lax.scan(step, init, (ks if forward else ks[::-1], keys))
    return x_end, acc, states, incs


class PathSteps(eqx.Module):
    """One simulated path, step by step (what the sub-trajectory balance loss needs).

    **Fields:** `states` (`x_0, …, x_K`, shape `(K + 1, dim)`), `increments` (`log B_k(x_k |
    x_{k+1}) - log F_k(x_{k+1} | x_k)` for `k = 0, …, K-1`), `log_target` (`log p̃(x_K)`),
    `log_initial` (`log q_0(x_0)`). The path log-weight is `log_target - log_initial +
    Σ increments`."""

    states: Array
    increments: Array
    log_target: Scalar
    log_initial: Scalar

    @property
    def log_weight(self) -> Scalar:
        """`log w` of the path."""
        return self.log_target - self.log_initial + jnp.sum(self.increments)


def path_steps(
    sampler: AbstractDiffusionSampler,
    energy: AbstractEnergy,
    key: Key,
    *,
    x_final: Array | None = None,
    detach: bool = True,
    explore=None,
) -> PathSteps:
    """Simulate ONE path and return it step by step ([`PathSteps`][]): forward from `q_0`
    (`x_final=None`; `explore = σ_e` draws from the behaviour kernels widened by `σ_e`, the
    increments staying those of the model), or backward from `x_K = x_final` (detached)."""
    score = _score_fn(sampler, energy)
    if x_final is None:
        dtype = jnp.result_type(float)
        k0, kpath = jax.random.split(key)
        x0, log_q0 = sampler.initial(k0, dtype)
        if detach:
            x0 = jax.lax.stop_gradient(x0)
        x, _, states, incs = _scan_path(
            sampler, score, x0, kpath, forward=True, detach=detach, explore=explore
        )
        states = jnp.concatenate([x0[None], states])
    else:
        x = jax.lax.stop_gradient(x_final)
        x0, _, states, incs = _scan_path(sampler, score, x, key, forward=False, detach=True)
        states = jnp.concatenate([states[::-1], x[None]])
        incs = incs[::-1]
        log_q0 = sampler.initial_log_density(x0)
    return PathSteps(states, incs, energy.log_density(x), log_q0)


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
    path = path_steps(sampler, energy, key, detach=detach)
    return path.states[-1], path.log_weight


def backward_path(
    sampler: AbstractDiffusionSampler, energy: AbstractEnergy, x_final: Array, key: Key
) -> tuple[Array, Scalar]:
    """Simulate ONE backward (target-side) path from `x_K = x_final` down to `x_0`, and return
    `(x_0, log w)` with the same weight as [`forward_path`][]. The states are detached; the
    weight is differentiable in the parameters (log-variance training on off-policy paths)."""
    path = path_steps(sampler, energy, key, x_final=x_final)
    return path.states[0], path.log_weight


@eqx.filter_jit
def _forward_batch(sampler, energy, keys):
    return jax.vmap(lambda k: forward_path(sampler, energy, k))(keys)


@eqx.filter_jit
def _backward_batch(sampler, energy, xs, keys):
    return jax.vmap(lambda x, k: backward_path(sampler, energy, x, k))(xs, keys)


class _LearnedSampler(AbstractDiffusionSampler):
    """The fields every learned sampler shares: the control network, the step count `K`, the
    dimension, the reference scale `σ` and the clip of the target score."""

    control: MLP
    num_steps: int = eqx.field(static=True)
    dim: int = eqx.field(static=True)
    sigma: float = eqx.field(static=True)
    clip: float = eqx.field(static=True)

    def _init_common(self, dim, num_steps, sigma, clip, *, key: Key, hidden, depth) -> None:
        """Check and set the shared fields and build the control MLP (from `__init__`)."""
        self.dim = check_count(dim, "dim")
        self.num_steps = check_count(num_steps, "num_steps")
        self.sigma = _positive(sigma, "sigma")
        self.clip = _positive(clip, "clip")
        self.control = MLP(self.dim, key=key, hidden=hidden, depth=depth)


class _ScoreScaled(_LearnedSampler):
    """Learned samplers whose drift may add the clipped target score scaled by a time network
    `g(t)` (`langevin=True`; `scale = None` without it, and then no score is evaluated)."""

    scale: _TimeNet | None

    def _init_scored(self, dim, num_steps, sigma, clip, *, key, hidden, depth, langevin) -> None:
        """`_init_common` plus the score-scale network `g` when `langevin`."""
        k1, k2 = jax.random.split(key)
        self._init_common(dim, num_steps, sigma, clip, key=k1, hidden=hidden, depth=depth)
        self.scale = _TimeNet(self.dim, hidden, key=k2) if langevin else None

    @property
    def uses_score(self) -> bool:  # type: ignore[override]
        return self.scale is not None


class _GaussianStart(_LearnedSampler):
    """Samplers that start from `q_0 = N(0, σ² I)`."""

    def initial(self, key, dtype):
        x0 = self.sigma * jax.random.normal(key, (self.dim,), dtype)
        return x0, self.initial_log_density(x0)

    def initial_log_density(self, x0):
        return _gaussian_log_density(x0, 0.0, jnp.asarray(self.sigma, x0.dtype))
