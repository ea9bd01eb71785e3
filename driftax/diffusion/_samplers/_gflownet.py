"""The GFlowNet view of a diffusion sampler (Sendera et al. 2024): a learned `log Z` and, for
sub-trajectory balance, a learned log-flow `log F(t, x)`, trained alongside the sampler.

A sampler's forward kernels are the GFlowNet's forward policy `P_F`, its backward kernels the
backward policy `P_B`, `p̃` the reward. The balance conditions are stated on the increments of
the path-weight core (`inc_k = log P_B(x_k | x_{k+1}) - log P_F(x_{k+1} | x_k)`):

- trajectory balance: `log Z + log q_0(x_0) + Σ log P_F = log p̃(x_K) + Σ log P_B`, i.e.
  `log Z = log w` on every path;
- sub-trajectory balance between steps `i < j`:
  `log F_i(x_i) - log F_j(x_j) = Σ_{i<=k<j} inc_k`, with the boundary flows
  `log F_0 = log Z + log q_0(x_0)` and `log F_K = log p̃(x_K)`.

At the optimum `log F_k(x) = log Z + log p_k(x)`, with `p_k` the marginal of the target-side
process at step `k`. The wrapper [`_Balanced`][] is the pytree the shared loop trains; the
front door [`fit_sampler`][] returns its sampler and reports the learned `log Z` per step.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ..._custom_types import Array, Key, Scalar
from ._core import _zero_output

# `log Z = LOG_Z_SPEED · θ`: an Adam-type optimizer moves `log Z` this many times faster than
# a network weight (GFlowNet training gives `log Z` its own, larger learning rate; this keeps
# one optimizer and `fit_sampler`'s signature)
LOG_Z_SPEED = 100.0


class LogFlow(eqx.Module):
    """A learned log-flow `log F(t, x)`: an MLP of `x` and sinusoidal features of the time
    `t ∈ [0, 1]` to a scalar (the output layer starts at zero).

    **Arguments:** `dim`, `key` (keyword-only), `hidden`, `depth` (MLP size).
    """

    mlp: eqx.nn.MLP
    frequencies: Array

    def __init__(self, dim: int, *, key: Key, hidden: int = 64, depth: int = 2):
        self.frequencies = jnp.exp(jnp.linspace(0.0, math.log(10.0), 8))
        mlp = eqx.nn.MLP(dim + 17, "scalar", hidden, depth, activation=jax.nn.silu, key=key)
        self.mlp = _zero_output(mlp)

    def __call__(self, t: Scalar, x: Array) -> Scalar:
        t = jnp.asarray(t, x.dtype)
        a = t * self.frequencies.astype(x.dtype)
        return self.mlp(jnp.concatenate([x, jnp.reshape(t, (1,)), jnp.sin(a), jnp.cos(a)]))


class _Balanced(eqx.Module):
    """What the balance losses train: the sampler, the learned `log Z` (stored as
    `θ = log Z / LOG_Z_SPEED`) and, for sub-trajectory balance, the log-flow network."""

    sampler: eqx.Module
    log_z_param: Array
    log_flow: eqx.Module | None = None

    @property
    def log_z(self) -> Scalar:
        """The learned `log Z`."""
        return LOG_Z_SPEED * self.log_z_param


def balanced(sampler, log_z=0.0, log_flow=None) -> _Balanced:
    """The trainable pytree of the balance losses, with `log Z` set to `log_z`."""
    dtype = jnp.result_type(float)
    return _Balanced(sampler, jnp.asarray(log_z, dtype) / LOG_Z_SPEED, log_flow)


def trajectory_balance(log_z: Scalar, log_w: Array) -> Scalar:
    """`mean (log Z - log w)²` over paths (zero iff every path weight equals `Z`)."""
    return jnp.mean((log_z - log_w) ** 2)


def subtrajectory_balance(
    log_z: Scalar, log_flow, paths, num_steps: int, lam: float, forward_looking=None
) -> Scalar:
    """The λ-weighted sub-trajectory balance loss of a batch of [`PathSteps`][] (leading batch
    axis): for every pair `i < j` of steps the residual `D_i - D_j` with `D_k = log F_k(x_k) +
    Σ_{m<k} inc_m`, squared and weighted by `λ^(j-i)`, the weights normalized to sum to 1
    over the pairs of one path; the mean over paths. Interior flows are `log_flow(k/K, x_k)`,
    plus `forward_looking(k, x_k)` when given (FL-SubTB: the network learns the residual of a
    known interpolation; Zhang et al. 2023)."""
    k = num_steps
    ts = jnp.arange(1, k, dtype=paths.states.dtype) / k
    steps = jnp.arange(1, k)

    def one(states, incs, log_target, log_initial):
        inner = jax.vmap(log_flow)(ts, states[1:-1])
        if forward_looking is not None:
            inner = inner + jax.vmap(forward_looking)(steps, states[1:-1])
        flows = jnp.concatenate(
            [jnp.reshape(log_z + log_initial, (1,)), inner, jnp.reshape(log_target, (1,))]
        )
        d = flows + jnp.concatenate([jnp.zeros((1,), incs.dtype), jnp.cumsum(incs)])
        resid = d[:, None] - d[None, :]
        idx = jnp.arange(k + 1)
        gap = idx[None, :] - idx[:, None]
        # λ^(j-i) relative to its largest value (no overflow for long paths)
        log_w = gap * math.log(lam)
        log_w = log_w - (k * math.log(lam) if lam > 1 else math.log(lam))
        w = jnp.where(gap > 0, jnp.exp(jnp.where(gap > 0, log_w, 0.0)), 0.0).astype(d.dtype)
        return jnp.sum(w * resid**2) / jnp.sum(w)

    return jnp.mean(
        jax.vmap(one)(paths.states, paths.increments, paths.log_target, paths.log_initial)
    )
