"""The No-U-Turn Sampler: multinomial, iterative, with the generalized U-turn criterion.

The whole trajectory is built in ONE flat `while_loop` whose body is exactly one integrator step
(plus cheap bookkeeping), so a vmapped batch of chains runs in lock-step with no nested loops.
The tree doubles (Hoffman & Gelman 2014) in a random direction; inside a new subtree the proposal
is drawn uniformly (progressive multinomial sampling), and the subtree replaces the tree's
proposal with probability `min(1, w_subtree / w_tree)` (biased progressive sampling, Betancourt
2017). U-turns inside a subtree are checked against checkpoints of momenta and momentum sums, in
the way of the iterative builders of NumPyro and BlackJAX, but with all checkpoint checks of a
leaf done at once as a masked vector operation.
"""

from __future__ import annotations

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy
from ._base import (
    MAX_ENERGY_ERROR,
    AbstractSampler,
    Info,
    KineticState,
    MCMCState,
    check_hyper,
    float_leaf,
    init_position,
    select,
)
from ._hamiltonian import _check_metric, _hamiltonian_integrator
from ._integrators import AbstractIntegrator, Leapfrog, hamiltonian
from ._metrics import AbstractMetric, IdentityMetric


class _Proposal(eqx.Module):
    position: Array
    log_density: Array
    score: Array
    energy: Array


class _Loop(eqx.Module):
    left: KineticState
    right: KineticState
    proposal: _Proposal
    log_w: Array
    rho: Array
    sub_proposal: _Proposal
    sub_log_w: Array
    sub_rho: Array
    ckpt_p: Array
    ckpt_v: Array
    ckpt_rho: Array
    depth: Array
    leaf: Array
    direction: Array
    sum_accept: Array
    num_leaves: Array
    diverging: Array
    turning: Array
    done: Array


def _dot(a, b):
    return jnp.sum(a * b)


def _ckpt_range(leaf):
    """Checkpoint slots `[lo, hi]` touched by `leaf`: even leaves store at `hi`; odd leaves
    close `lo..hi` sub-subtrees and check them."""
    hi = jax.lax.population_count(leaf >> 1)
    num_closed = jax.lax.population_count(leaf & ~(leaf + 1))
    return hi - num_closed + 1, hi


class NUTS(AbstractSampler):
    """The No-U-Turn Sampler (multinomial, generalized U-turn, max tree depth).

    **Arguments:**

    - `step_size`: integrator step size.
    - `metric`: the mass matrix (`IdentityMetric`, `DiagonalMetric`, `DenseMetric`).
    - `integrator`: a Hamiltonian integrator (default leapfrog).
    - `max_tree_depth`: at most `2**max_tree_depth - 1` integration steps per transition.
    - `max_energy_error`: an energy error above this ends the trajectory as divergent.

    `info.extras` carries `tree_depth`, `num_integration_steps` and `is_turning`.
    """

    step_size: Array = eqx.field(converter=float_leaf)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)
    integrator: AbstractIntegrator = eqx.field(
        default_factory=Leapfrog, converter=_hamiltonian_integrator
    )
    max_tree_depth: int = eqx.field(static=True, default=10)
    max_energy_error: float = eqx.field(static=True, default=MAX_ENERGY_ERROR)

    default_target_acceptance: ClassVar[float] = 0.8

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")
        _check_metric(self.metric)
        if not isinstance(self.max_tree_depth, int) or not 1 <= self.max_tree_depth <= 30:
            raise ValueError(
                f"`max_tree_depth` must be an int in [1, 30], got {self.max_tree_depth!r}."
            )

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        x0, logp, score = init_position(energy, x0)
        return MCMCState(position=x0, log_density=logp, score=score)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        metric, integrator = self.metric, self.integrator
        key_p, key_dir, key_loop = jax.random.split(key, 3)
        x = state.position
        dtype = jnp.result_type(x)
        p0 = metric.sample_momentum(key_p, x)
        z0 = KineticState(position=x, momentum=p0, log_density=state.log_density, score=state.score)
        h0 = hamiltonian(metric, z0)
        prop0 = _Proposal(position=x, log_density=state.log_density, score=state.score, energy=h0)
        depth_max = self.max_tree_depth
        ckpt = jnp.zeros((depth_max, *jnp.shape(x)), dtype)
        zero = jnp.zeros((), dtype)
        loop = _Loop(
            left=z0,
            right=z0,
            proposal=prop0,
            log_w=zero,
            rho=p0,
            sub_proposal=prop0,
            sub_log_w=jnp.asarray(-jnp.inf, dtype),
            sub_rho=jnp.zeros_like(p0),
            ckpt_p=ckpt,
            ckpt_v=ckpt,
            ckpt_rho=ckpt,
            depth=jnp.asarray(0, jnp.int32),
            leaf=jnp.asarray(0, jnp.int32),
            direction=jax.random.bernoulli(key_dir),
            sum_accept=zero,
            num_leaves=jnp.asarray(0, jnp.int32),
            diverging=jnp.array(False),
            turning=jnp.array(False),
            done=jnp.array(False),
        )
        slots = jnp.arange(depth_max)
        max_err = self.max_energy_error

        def body(s: _Loop) -> _Loop:
            k_leaf, k_merge, k_dir = jax.random.split(jax.random.fold_in(key_loop, s.num_leaves), 3)
            forward = s.direction
            start = select(forward, s.right, s.left)
            h = jnp.where(forward, self.step_size, -self.step_size)
            z = integrator.step(energy, metric, start, h)[0]
            energy_z = hamiltonian(metric, z)
            delta = energy_z - h0
            delta = jnp.where(jnp.isnan(delta), jnp.inf, delta)
            diverging = (delta > max_err) | ~jnp.all(jnp.isfinite(z.score))
            log_w_leaf = jnp.where(diverging, -jnp.inf, -delta)
            accept = jnp.where(diverging, 0.0, jnp.exp(jnp.minimum(-delta, 0.0)))
            # progressive uniform sampling inside the subtree
            sub_log_w = jnp.logaddexp(s.sub_log_w, log_w_leaf)
            take_leaf = jax.random.uniform(k_leaf, (), dtype) < jnp.exp(log_w_leaf - sub_log_w)
            leaf_prop = _Proposal(
                position=z.position, log_density=z.log_density, score=z.score, energy=energy_z
            )
            sub_proposal = select(take_leaf, leaf_prop, s.sub_proposal)
            sub_rho = s.sub_rho + z.momentum
            # U-turns of the sub-subtrees that this leaf closes (checkpoints)
            v = metric.velocity(z.momentum)
            lo, hi = _ckpt_range(s.leaf)
            is_even = (s.leaf % 2) == 0
            ckpt_p = jnp.where(is_even, s.ckpt_p.at[hi].set(z.momentum), s.ckpt_p)
            ckpt_v = jnp.where(is_even, s.ckpt_v.at[hi].set(v), s.ckpt_v)
            ckpt_rho = jnp.where(is_even, s.ckpt_rho.at[hi].set(sub_rho), s.ckpt_rho)
            axes = tuple(range(1, ckpt.ndim))
            rho_k = sub_rho[None] - s.ckpt_rho + s.ckpt_p
            turn_k = (jnp.sum(s.ckpt_v * rho_k, axis=axes) <= 0) | (
                jnp.sum(v[None] * rho_k, axis=axes) <= 0
            )
            turning_sub = ~is_even & jnp.any((slots >= lo) & (slots <= hi) & turn_k)
            left = select(forward, s.left, z)
            right = select(forward, z, s.right)
            leaf = s.leaf + 1
            sub_done = (leaf == (1 << s.depth)) | turning_sub | diverging
            # merge a finished subtree into the tree (biased progressive sampling)
            ok = ~(turning_sub | diverging)
            take_sub = ok & (jax.random.uniform(k_merge, (), dtype) < jnp.exp(sub_log_w - s.log_w))
            merged_proposal = select(take_sub, sub_proposal, s.proposal)
            merged_log_w = jnp.where(ok, jnp.logaddexp(s.log_w, sub_log_w), s.log_w)
            merged_rho = jnp.where(ok, s.rho + sub_rho, s.rho)
            turning_tree = (_dot(metric.velocity(left.momentum), merged_rho) <= 0) | (
                _dot(metric.velocity(right.momentum), merged_rho) <= 0
            )
            depth = s.depth + 1
            finished = sub_done & (~ok | turning_tree | (depth >= depth_max))

            def pick(a, b):
                return jnp.where(sub_done, a, b)

            return _Loop(
                left=left,
                right=right,
                proposal=select(sub_done, merged_proposal, s.proposal),
                log_w=pick(merged_log_w, s.log_w),
                rho=pick(merged_rho, s.rho),
                sub_proposal=sub_proposal,
                sub_log_w=pick(-jnp.inf, sub_log_w),
                sub_rho=pick(jnp.zeros_like(sub_rho), sub_rho),
                ckpt_p=ckpt_p,
                ckpt_v=ckpt_v,
                ckpt_rho=ckpt_rho,
                depth=pick(depth, s.depth),
                leaf=pick(0, leaf),
                direction=pick(jax.random.bernoulli(k_dir), s.direction),
                sum_accept=s.sum_accept + accept,
                num_leaves=s.num_leaves + 1,
                diverging=s.diverging | diverging,
                turning=s.turning | (sub_done & ok & turning_tree) | turning_sub,
                done=finished,
            )

        out = jax.lax.while_loop(lambda s: ~s.done, body, loop)
        prop = out.proposal
        new = MCMCState(position=prop.position, log_density=prop.log_density, score=prop.score)
        n = out.num_leaves
        info = Info(
            acceptance_rate=out.sum_accept / n.astype(dtype),
            is_divergent=out.diverging,
            energy_error=prop.energy - h0,
            num_grad_evals=n * integrator.num_grad_evals,
            extras=dict(tree_depth=out.depth, num_integration_steps=n, is_turning=out.turning),
        )
        return new, info
