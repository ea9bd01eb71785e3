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

from typing import ClassVar, cast

import equinox as eqx
import jax
import jax.numpy as jnp

from .._custom_types import Array, Key
from ..energies._base import AbstractEnergy
from ._base import (
    MAX_ENERGY_ERROR,
    AbstractMetricSampler,
    AbstractStepSizeSampler,
    Info,
    KineticState,
    MCMCState,
    check_hyper,
    check_int,
    float_leaf,
    init_position,
    safe_energy_error,
    select,
)
from ._hamiltonian import _check_jitter, _check_metric, _hamiltonian_integrator
from ._integrators import AbstractIntegrator, Leapfrog
from ._metrics import AbstractMetric, IdentityMetric
from ._random import draws, hash_uniforms


class _Proposal(eqx.Module):
    position: Array
    log_density: Array
    score: Array
    energy: Array


class _Loop(eqx.Module):
    cur: KineticState  # the end being extended
    other: KineticState  # the opposite end
    cur_v: Array  # velocities M⁻¹p at the ends
    other_v: Array
    proposal: _Proposal
    log_w: Array
    rho: Array
    sub_proposal: _Proposal
    sub_log_w: Array
    sub_rho: Array
    ckpt_v: Array  # velocity v_f at the first leaf of each open sub-subtree
    ckpt_w: Array  # R + p_f/2: R the subtree's momentum sum before that leaf, p_f its momentum
    ckpt_a: Array  # -v_f · w
    depth: Array
    leaf: Array
    forward: Array  # direction of the current subtree
    sum_accept: Array
    num_leaves: Array
    diverging: Array
    turning: Array
    done: Array


def _ckpt_range(leaf):
    """Checkpoint slots `[lo, hi]` touched by `leaf`: even leaves store at `hi`; odd leaves
    close `lo..hi` sub-subtrees and check them."""
    hi = jax.lax.population_count(leaf >> 1)
    num_closed = jax.lax.population_count(leaf & ~(leaf + 1))
    return hi - num_closed + 1, hi


class NUTS(AbstractStepSizeSampler, AbstractMetricSampler):
    """The No-U-Turn Sampler (multinomial, generalized U-turn, max tree depth).

    **Arguments:**

    - `step_size`: integrator step size (default 1.0, Stan's starting value; `driftax.sample`
      adapts it during warmup).
    - `metric`: the mass matrix (`IdentityMetric`, `DiagonalMetric`, `DenseMetric`).
    - `integrator`: a Hamiltonian integrator (default leapfrog).
    - `max_tree_depth`: at most `2**max_tree_depth - 1` integration steps per transition.
    - `max_energy_error`: an energy error above this ends the trajectory as divergent.

    A leaf whose energy is not finite (a log density of NaN, +∞ or -∞, or a non-finite
    momentum) ends the trajectory as divergent; it is never chosen as the proposal and its
    weight never enters the multinomial sums. A proposal whose score is not finite is rejected.
    - `jitter_step_size`: relative jitter `j` (Stan's `stepsize_jitter`): each transition uses
      the step size `h·U(1-j, 1+j)`. Occasional smaller steps let chains enter regions of high
      curvature (the neck of a funnel) that a fixed step size skips.

    `info.extras` carries `tree_depth`, `num_integration_steps` and `is_turning`.
    """

    step_size: Array = eqx.field(converter=float_leaf, default=1.0)
    metric: AbstractMetric = eqx.field(default_factory=IdentityMetric)
    integrator: AbstractIntegrator = eqx.field(
        default_factory=Leapfrog, converter=_hamiltonian_integrator
    )
    max_tree_depth: int = eqx.field(static=True, default=10)
    max_energy_error: float = eqx.field(static=True, default=MAX_ENERGY_ERROR)
    jitter_step_size: float = eqx.field(static=True, default=0.0)

    default_target_acceptance: ClassVar[float] = 0.8

    def __check_init__(self):
        check_hyper(self.step_size, "step_size")
        _check_metric(self.metric)
        check_int(self.max_tree_depth, "max_tree_depth", 1, 30)
        check_hyper(self.max_energy_error, "max_energy_error")
        _check_jitter(self.jitter_step_size)

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        x0, logp, score = init_position(energy, x0)
        return MCMCState(position=x0, log_density=logp, score=score)

    def step(self, energy: AbstractEnergy, state: MCMCState, *, key: Key):
        metric = self.metric
        x = state.position
        dtype = jnp.result_type(x)
        # ONE call to the PRNG per transition (each call is a loop on CPU): the momentum's
        # normals, the first direction, and the seed of the per-leaf uniforms
        jitter = self.jitter_step_size
        xi, u = draws(key, jnp.shape(x), 4 if jitter > 0 else 3, dtype)
        seed = (u[:2] * 2.0**32).astype(jnp.uint32)
        first_forward = u[2] < 0.5
        step_size = self.step_size.astype(dtype)
        if jitter > 0:
            step_size = step_size * (1.0 - jitter + 2.0 * jitter * u[3])
        score0 = cast(Array, state.score)  # NUTS states carry the score
        p0 = metric.momentum_noise(xi)
        v0 = metric.velocity(p0)
        z0 = KineticState(position=x, momentum=p0, log_density=state.log_density, score=score0)
        h0 = -state.log_density + 0.5 * jnp.sum(p0 * v0)
        prop0 = _Proposal(position=x, log_density=state.log_density, score=score0, energy=h0)
        depth_max = self.max_tree_depth
        # one spare checkpoint row (index depth_max) absorbs the writes of odd leaves
        ckpt = jnp.zeros((depth_max + 1, *jnp.shape(x)), dtype)
        zero = jnp.zeros((), dtype)
        loop = _Loop(
            cur=z0,
            other=z0,
            cur_v=v0,
            other_v=v0,
            proposal=prop0,
            log_w=zero,
            rho=p0,
            sub_proposal=prop0,
            sub_log_w=jnp.asarray(-jnp.inf, dtype),
            sub_rho=jnp.zeros_like(p0),
            ckpt_v=ckpt,
            ckpt_w=ckpt,
            ckpt_a=jnp.zeros(depth_max + 1, dtype),
            depth=jnp.asarray(0, jnp.int32),
            leaf=jnp.asarray(0, jnp.int32),
            forward=first_forward,
            sum_accept=zero,
            num_leaves=jnp.asarray(0, jnp.int32),
            diverging=jnp.array(False),
            turning=jnp.array(False),
            done=jnp.array(False),
        )
        params = (self, energy, h0, seed, step_size)
        out = _build_trajectory(params, loop)
        prop = out.proposal
        # a proposal whose score is not finite is never accepted (the chain would be stuck)
        bad = ~jnp.all(jnp.isfinite(prop.score))
        new = MCMCState(position=prop.position, log_density=prop.log_density, score=prop.score)
        new = select(bad, state, new)
        n = out.num_leaves
        info = Info(
            acceptance_rate=jnp.where(bad, 0.0, out.sum_accept / n.astype(dtype)),
            is_divergent=out.diverging | bad,
            energy_error=jnp.where(bad, MAX_ENERGY_ERROR, safe_energy_error(prop.energy - h0)),
            num_grad_evals=n * self.integrator.num_grad_evals,
            extras=dict(tree_depth=out.depth, num_integration_steps=n, is_turning=out.turning),
        )
        return new, info


def _leaf(params, s: _Loop) -> _Loop:
    """One leaf of the trajectory: an integrator step and all the tree bookkeeping. A chain that
    is already done only keeps its outputs (proposal and counters) frozen; the rest of its
    state may change freely, which saves a full select of the loop state per leaf."""
    sampler, energy, h0, seed, step_size = params
    metric, integrator = sampler.metric, sampler.integrator
    depth_max = sampler.max_tree_depth
    dtype = h0.dtype
    live = ~s.done
    # scalar decisions are materialized (optimization barriers) before they steer vector
    # selects: otherwise XLA fuses their whole computation (the cipher, exp, ...) into every
    # element of every select that uses them
    u = jax.lax.optimization_barrier(hash_uniforms(seed, s.num_leaves, 3, dtype))
    h = jnp.where(s.forward, step_size, -step_size)
    z = integrator.step(energy, metric, s.cur, h)[0]
    v = metric.velocity(z.momentum)
    sub_rho = s.sub_rho + z.momentum
    p_v = jnp.sum(z.momentum * v)
    sub_v = jnp.sum(sub_rho * v)
    rho_v = jnp.sum(s.rho * v)
    other_sub = jnp.sum(s.other_v * sub_rho)
    other_rho = jnp.sum(s.other_v * s.rho)
    other_p = jnp.sum(s.other_v * s.other.momentum)
    other_z = jnp.sum(s.other_v * z.momentum)
    v_other = jnp.sum(v * s.other.momentum)
    energy_z = -z.log_density + 0.5 * p_v
    delta = energy_z - h0
    # NaN, +inf AND -inf (a log density of +inf) are divergent: never accepted with probability
    # one, never in the multinomial sums
    diverging = ~(jnp.isfinite(delta) & (delta <= sampler.max_energy_error))
    log_w_leaf = jnp.where(diverging, -jnp.inf, -delta)
    accept = jnp.where(diverging, 0.0, jnp.exp(jnp.minimum(-delta, 0.0)))
    # progressive uniform sampling inside the subtree
    sub_log_w = jnp.logaddexp(s.sub_log_w, log_w_leaf)
    take_leaf = jax.lax.optimization_barrier(u[0] < jnp.exp(log_w_leaf - sub_log_w))
    leaf_prop = _Proposal(
        position=z.position, log_density=z.log_density, score=z.score, energy=energy_z
    )
    sub_proposal = select(take_leaf, leaf_prop, s.sub_proposal)
    # U-turns of the sub-subtrees closed by this (odd) leaf, checkpoints hi, hi-1, ..., lo.
    # The criterion (as in Stan, NumPyro, BlackJAX) uses the momentum sum with the two end
    # leaves counted half (a trapezoidal integral of the momentum):
    # rho_k = sub_rho - R_k - (p_f + p_last)/2, so with w_k = R_k + p_f/2
    # v_f · rho_k = v_f · (sub_rho - p_last/2) + a_k   and   v · rho_k = sub_v - p_v/2 - v · w_k
    lo, hi = _ckpt_range(s.leaf)
    is_even = (s.leaf % 2) == 0
    half_last = sub_rho - 0.5 * z.momentum

    # all checkpoints at once, masked to lo..hi: two small mat-vecs are far cheaper than a
    # nested while loop (each loop iteration costs microseconds of control flow on CPU)
    slots = jnp.arange(depth_max + 1)
    closed = (slots >= lo) & (slots <= hi) & ~is_even
    num_slots = depth_max + 1
    start_dot = s.ckpt_v.reshape(num_slots, -1) @ half_last.reshape(-1) + s.ckpt_a
    end_dot = sub_v - 0.5 * p_v - s.ckpt_w.reshape(num_slots, -1) @ v.reshape(-1)
    turning_sub = jnp.any(closed & ((start_dot <= 0) | (end_dot <= 0)))
    # checkpoint writes at even leaves (odd leaves write to the spare last row)
    slot = jnp.where(is_even, hi, depth_max)
    onehot = jnp.arange(depth_max + 1) == slot
    mask = onehot.reshape((-1,) + (1,) * jnp.ndim(v))
    ckpt_v = jnp.where(mask, v[None], s.ckpt_v)
    ckpt_w = jnp.where(mask, half_last[None], s.ckpt_w)
    ckpt_a = jnp.where(onehot, 0.5 * p_v - sub_v, s.ckpt_a)
    leaf = s.leaf + 1
    sub_done = (leaf == (1 << s.depth)) | turning_sub | diverging
    # merge a finished subtree into the tree (biased progressive sampling), then check the
    # whole tree, whose ends are now z and `other`
    ok = ~(turning_sub | diverging)
    merge = sub_done & ok
    take_sub = live & merge & (u[1] < jnp.exp(sub_log_w - s.log_w))
    turning_tree = (rho_v + sub_v - 0.5 * (p_v + v_other) <= 0) | (
        other_rho + other_sub - 0.5 * (other_z + other_p) <= 0
    )
    depth = s.depth + 1
    finished = sub_done & (~ok | turning_tree | (depth >= depth_max))
    # a new subtree in the other direction starts from the other end: swap the ends
    forward = jnp.where(sub_done, u[2] < 0.5, s.forward)
    swap = forward != s.forward
    take_sub, merge, swap, sub_done = jax.lax.optimization_barrier(
        (take_sub, merge, swap, sub_done)
    )
    return _Loop(
        cur=select(swap, s.other, z),
        other=select(swap, z, s.other),
        cur_v=jnp.where(swap, s.other_v, v),
        other_v=jnp.where(swap, v, s.other_v),
        proposal=select(take_sub, sub_proposal, s.proposal),
        log_w=jnp.where(merge, jnp.logaddexp(s.log_w, sub_log_w), s.log_w),
        rho=jnp.where(merge, s.rho + sub_rho, s.rho),
        sub_proposal=sub_proposal,
        sub_log_w=jnp.where(sub_done, -jnp.inf, sub_log_w),
        sub_rho=jnp.where(sub_done, 0.0, sub_rho),
        ckpt_v=ckpt_v,
        ckpt_w=ckpt_w,
        ckpt_a=ckpt_a,
        depth=jnp.where(live & sub_done, depth, s.depth),
        leaf=jnp.where(sub_done, 0, leaf),
        forward=forward,
        sum_accept=s.sum_accept + jnp.where(live, accept, 0.0),
        num_leaves=s.num_leaves + live.astype(jnp.int32),
        diverging=s.diverging | (live & diverging),
        turning=s.turning | (live & ((merge & turning_tree) | turning_sub)),
        done=s.done | finished,
    )


def _build_trajectory(params, loop: _Loop) -> _Loop:
    """`while not done: leaf`, with a batching rule that runs ONE loop over a batch of chains
    until all are done (the leaf freezes finished chains itself), instead of JAX's default of
    selecting the whole loop state of every chain at every leaf."""
    dynamic, static = eqx.partition(params, eqx.is_array)

    def leaf(dynamic, s):
        return _leaf(eqx.combine(dynamic, static), s)

    @jax.custom_batching.custom_vmap
    def run(dynamic, loop):
        return jax.lax.while_loop(lambda s: ~s.done, lambda s: leaf(dynamic, s), loop)

    @run.def_vmap
    def run_batched(axis_size, in_batched, dynamic, loop):
        dyn_batched, loop_batched = in_batched
        loop = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
            loop,
            loop_batched,
        )
        axes = jax.tree.map(lambda b: 0 if b else None, dyn_batched)
        vleaf = jax.vmap(leaf, in_axes=(axes, 0))
        out = jax.lax.while_loop(lambda s: jnp.any(~s.done), lambda s: vleaf(dynamic, s), loop)
        return out, jax.tree.map(lambda _: True, out)

    return run(dynamic, loop)
