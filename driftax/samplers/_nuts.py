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
    AbstractAdaptableSampler,
    Info,
    KineticState,
    MCMCState,
    check_hyper,
    check_int,
    float_leaf,
    safe_energy_error,
    select,
)
from ._hamiltonian import _check_jitter, gradient_init, hamiltonian_integrator_field
from ._integrators import AbstractIntegrator
from ._metrics import AbstractMetric, DiagonalMetric, IdentityMetric
from ._random import draws, hash_uniforms

# The loop state is packed into three arrays, so that a leaf writes it with a few fused kernels
# (on CPU each kernel costs about as much as the arithmetic of a 100-d leaf): `vec` stacks every
# position-shaped vector, `flt` the float scalars, `ints` the integer and boolean scalars.
# Rows of `vec` (the checkpoints follow them):
_X, _P, _G = 0, 1, 2  # the end being extended: position, momentum, score
_OX, _OP, _OG = 3, 4, 5  # the opposite end
_PX, _PG = 6, 7  # the tree's proposal: position, score
_SX, _SG = 8, 9  # the open subtree's proposal
_RHO, _SRHO = 10, 11  # momentum sums of the tree and of the open subtree
_V, _OV = 12, 13  # velocities M⁻¹p at the two ends, only for a metric with a costly velocity
# With an identity or diagonal metric the opposite end's velocity is recomputed from its
# momentum (one elementwise product, fused into the kernels that read it): two rows fewer to
# write per leaf, and the same bits as a stored copy.
# A batch of chains whose rows hold at most this many numbers in all writes the rows of `vec`
# with one select-chain kernel (`_gather_rows`); a larger batch gives each row a kernel of its
# own. On the 2-core CPU the select chain is the cheaper up to about 128 numbers per row
# (4 chains of the 31-d logistic regression: 40 against 64 µs per leaf), and far the dearer
# above (4 chains of a 100-d Gaussian: 29 against 17 µs per leaf; XLA:CPU then splits the
# larger kernel over threads).
_SELECT_CHAIN_MAX = 128
# `ckpt` stacks ckpt_v (velocity at the first leaf of each open sub-subtree), then ckpt_w
# (R + p_f/2: R the subtree's momentum sum before that leaf, p_f its momentum)
# Entries of `flt` (then ckpt_a = -v_f · w per checkpoint):
# (the three uniforms of the next leaf are carried: a value computed in the loop body is fused
# into, and recomputed by, every kernel that reads it, and the cipher is the costliest of them)
_LOGP, _OLOGP, _PLOGP, _PE, _SLOGP, _SE, _LOGW, _SLOGW, _ACC, _U = range(10)
_NUM_FLT = _U + 3
# Entries of `ints`:
_DEPTH, _LEAF, _FWD, _NLEAF, _DIV, _TURN, _DONE = range(7)


class _Loop(eqx.Module):
    vec: Array
    ckpt: Array
    flt: Array
    ints: Array


def _ckpt_range(leaf):
    """Checkpoint slots `[lo, hi]` touched by `leaf`: even leaves store at `hi`; odd leaves
    close `lo..hi` sub-subtrees and check them."""
    hi = jax.lax.population_count(leaf >> 1)
    num_closed = jax.lax.population_count(leaf & ~(leaf + 1))
    return hi - num_closed + 1, hi


class NUTS(AbstractAdaptableSampler):
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
    integrator: AbstractIntegrator = hamiltonian_integrator_field()
    max_tree_depth: int = eqx.field(static=True, default=10)
    max_energy_error: float = eqx.field(static=True, default=MAX_ENERGY_ERROR)
    jitter_step_size: float = eqx.field(static=True, default=0.0)

    default_target_acceptance: ClassVar[float] = 0.8

    def __check_init__(self):
        check_int(self.max_tree_depth, "max_tree_depth", 1, 30)
        check_hyper(self.max_energy_error, "max_energy_error")
        _check_jitter(self.jitter_step_size)

    def init(self, energy: AbstractEnergy, x0: Array) -> MCMCState:
        return gradient_init(energy, x0)

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
        logp0 = state.log_density
        h0 = -logp0 + 0.5 * jnp.sum(p0 * v0)
        depth_max = self.max_tree_depth
        # one spare checkpoint row (index depth_max) absorbs the writes of odd leaves
        num_ckpt = depth_max + 1
        zeros = jnp.zeros_like(x)
        rows = [x, p0, score0, x, p0, score0, x, score0, x, score0, p0, zeros]
        if _stores_velocity(metric):
            rows += [v0, v0]
        vec = jnp.stack(rows)
        ckpt = jnp.zeros((2 * num_ckpt, *jnp.shape(x)), dtype)
        zero, ninf = jnp.zeros((), dtype), jnp.asarray(-jnp.inf, dtype)
        flt = jnp.concatenate(
            [
                jnp.stack([logp0, logp0, logp0, h0, logp0, h0, zero, ninf, zero]).astype(dtype),
                hash_uniforms(seed, jnp.asarray(0, jnp.int32), 3, dtype),
                jnp.zeros(num_ckpt, dtype),
            ]
        )
        ints = jnp.zeros(7, jnp.int32).at[_FWD].set(first_forward.astype(jnp.int32))
        params = (self, energy, h0, seed, step_size)
        out = _build_trajectory(params, _Loop(vec=vec, ckpt=ckpt, flt=flt, ints=ints))
        prop_x, prop_g = out.vec[_PX], out.vec[_PG]
        prop_logp, prop_energy = out.flt[_PLOGP], out.flt[_PE]
        # a proposal whose score is not finite is never accepted (the chain would be stuck)
        bad = ~jnp.all(jnp.isfinite(prop_g))
        new = MCMCState(position=prop_x, log_density=prop_logp, score=prop_g)
        new = select(bad, state, new)
        n = out.ints[_NLEAF]
        info = Info(
            acceptance_rate=jnp.where(bad, 0.0, out.flt[_ACC] / n.astype(dtype)),
            is_divergent=(out.ints[_DIV] != 0) | bad,
            energy_error=jnp.where(bad, MAX_ENERGY_ERROR, safe_energy_error(prop_energy - h0)),
            num_grad_evals=n * self.integrator.num_grad_evals,
            extras=dict(
                tree_depth=out.ints[_DEPTH],
                num_integration_steps=n,
                is_turning=out.ints[_TURN] != 0,
            ),
        )
        return new, info


def _leaf(params, s: _Loop, rows_by_select: bool = False) -> _Loop:
    """One leaf of the trajectory: an integrator step and all the tree bookkeeping. A chain that
    is already done only keeps its outputs (proposal and counters) frozen; the rest of its
    state may change freely, which saves a full select of the loop state per leaf.

    `rows_by_select` (static) writes the rows of the vector state in one kernel, a chain of
    selects on the row index (cheaper for one chain and for small batches); otherwise each row
    gets a kernel of its own (cheaper for larger batches, where the select chain's work grows
    with the batch; see `_SELECT_CHAIN_MAX`)."""
    sampler, energy, h0, seed, step_size = params
    metric, integrator = sampler.metric, sampler.integrator
    num_ckpt = sampler.max_tree_depth + 1
    vec, flt, ints = s.vec, s.flt, s.ints
    dtype = h0.dtype
    depth, leaf, num_leaves = ints[_DEPTH], ints[_LEAF], ints[_NLEAF]
    old_forward = ints[_FWD] != 0
    live = ints[_DONE] == 0
    # this leaf's uniforms, computed (once) by the previous leaf
    u = flt[_U : _U + 3]
    h = jnp.where(old_forward, step_size, -step_size)
    cur = KineticState(position=vec[_X], momentum=vec[_P], log_density=flt[_LOGP], score=vec[_G])
    z = integrator.step(energy, metric, cur, h)[0]
    v = metric.velocity(z.momentum)
    rho, other_p = vec[_RHO], vec[_OP]
    stores_velocity = _stores_velocity(metric)
    other_v = vec[_OV] if stores_velocity else metric.velocity(other_p)
    sub_rho = vec[_SRHO] + z.momentum
    half_last = sub_rho - 0.5 * z.momentum
    ckpt_v, ckpt_w = s.ckpt[:num_ckpt], s.ckpt[num_ckpt:]
    # every inner product of the leaf in one reduction (each separate sum is three kernels)
    products = jnp.concatenate(
        [
            jnp.stack(
                [
                    z.momentum * v,
                    sub_rho * v,
                    rho * v,
                    other_v * sub_rho,
                    other_v * rho,
                    other_v * other_p,
                    other_v * z.momentum,
                    v * other_p,
                ]
            ),
            ckpt_v * half_last[None],
            ckpt_w * v[None],
        ]
    )
    dots = jnp.sum(products.reshape(products.shape[0], -1), axis=1)
    p_v, sub_v, rho_v, other_sub, other_rho, other_pp, other_z, v_other = dots[:8]
    energy_z = -z.log_density + 0.5 * p_v
    delta = energy_z - h0
    # NaN, +inf AND -inf (a log density of +inf) are divergent: never accepted with probability
    # one, never in the multinomial sums
    diverging = ~(jnp.isfinite(delta) & (delta <= sampler.max_energy_error))
    log_w_leaf = jnp.where(diverging, -jnp.inf, -delta)
    accept = jnp.where(diverging, 0.0, jnp.exp(jnp.minimum(-delta, 0.0)))
    # progressive uniform sampling inside the subtree
    sub_log_w = jnp.logaddexp(flt[_SLOGW], log_w_leaf)
    take_leaf = u[0] < jnp.exp(log_w_leaf - sub_log_w)
    # U-turns of the sub-subtrees closed by this (odd) leaf, checkpoints hi, hi-1, ..., lo.
    # The criterion (as in Stan, NumPyro, BlackJAX) uses the momentum sum with the two end
    # leaves counted half (a trapezoidal integral of the momentum):
    # rho_k = sub_rho - R_k - (p_f + p_last)/2, so with w_k = R_k + p_f/2
    # v_f · rho_k = v_f · (sub_rho - p_last/2) + a_k   and   v · rho_k = sub_v - p_v/2 - v · w_k
    # All checkpoints are checked at once, masked to lo..hi (a nested loop would cost
    # microseconds of control flow per iteration on CPU).
    lo, hi = _ckpt_range(leaf)
    is_even = (leaf % 2) == 0
    slots = jnp.arange(num_ckpt)
    closed = (slots >= lo) & (slots <= hi) & ~is_even
    ckpt_a = flt[_NUM_FLT:]
    start_dot = dots[8 : 8 + num_ckpt] + ckpt_a
    end_dot = sub_v - 0.5 * p_v - dots[8 + num_ckpt :]
    turning_sub = jnp.any(closed & ((start_dot <= 0) | (end_dot <= 0)))
    # checkpoint writes at even leaves (odd leaves write to the spare last row)
    write = slots == jnp.where(is_even, hi, num_ckpt - 1)
    next_leaf = leaf + 1
    sub_done = (next_leaf == (1 << depth)) | turning_sub | diverging
    # merge a finished subtree into the tree (biased progressive sampling), then check the
    # whole tree, whose ends are now z and `other`
    ok = ~(turning_sub | diverging)
    merge = sub_done & ok
    take_sub = live & merge & (u[1] < jnp.exp(sub_log_w - flt[_LOGW]))
    turning_tree = (rho_v + sub_v - 0.5 * (p_v + v_other) <= 0) | (
        other_rho + other_sub - 0.5 * (other_z + other_pp) <= 0
    )
    finished = sub_done & (~ok | turning_tree | (depth + 1 >= sampler.max_tree_depth))
    # a new subtree in the other direction starts from the other end: swap the ends
    forward = jnp.where(sub_done, u[2] < 0.5, old_forward)
    swap = forward != old_forward
    take_leaf, take_sub, merge, swap, sub_done, write = _materialize(
        (take_leaf, take_sub, merge, swap, sub_done), write
    )
    sub_x = jnp.where(take_leaf, z.position, vec[_SX])
    sub_g = jnp.where(take_leaf, z.score, vec[_SG])
    new_rows = [
        jnp.where(swap, vec[_OX], z.position),
        jnp.where(swap, other_p, z.momentum),
        jnp.where(swap, vec[_OG], z.score),
        jnp.where(swap, z.position, vec[_OX]),
        jnp.where(swap, z.momentum, other_p),
        jnp.where(swap, z.score, vec[_OG]),
        jnp.where(take_sub, sub_x, vec[_PX]),
        jnp.where(take_sub, sub_g, vec[_PG]),
        sub_x,
        sub_g,
        jnp.where(merge, rho + sub_rho, rho),
        jnp.where(sub_done, 0.0, sub_rho),
    ]
    if stores_velocity:
        new_rows += [jnp.where(swap, other_v, v), jnp.where(swap, v, other_v)]
    new_vec = (_gather_rows if rows_by_select else jnp.stack)(new_rows)
    # a checkpoint is written in place (a select of the same rows), and both at once
    rows = jnp.concatenate([write, write])
    new_ckpt = jnp.where(
        _expand(rows, v),
        jnp.concatenate(
            [jnp.broadcast_to(v, ckpt_v.shape), jnp.broadcast_to(half_last, ckpt_w.shape)]
        ),
        s.ckpt,
    )
    new_num_leaves = num_leaves + live.astype(jnp.int32)
    sub_logp = jnp.where(take_leaf, z.log_density, flt[_SLOGP])
    sub_e = jnp.where(take_leaf, energy_z, flt[_SE])
    new_flt = jnp.concatenate(
        [
            _gather_scalars(
                [
                    jnp.where(swap, flt[_OLOGP], z.log_density),
                    jnp.where(swap, z.log_density, flt[_OLOGP]),
                    jnp.where(take_sub, sub_logp, flt[_PLOGP]),
                    jnp.where(take_sub, sub_e, flt[_PE]),
                    sub_logp,
                    sub_e,
                    jnp.where(merge, jnp.logaddexp(flt[_LOGW], sub_log_w), flt[_LOGW]),
                    jnp.where(sub_done, -jnp.inf, sub_log_w),
                    flt[_ACC] + jnp.where(live, accept, 0.0),
                ],
                dtype,
            ),
            hash_uniforms(seed, new_num_leaves, 3, dtype),
            jnp.where(write, 0.5 * p_v - sub_v, ckpt_a),
        ]
    )
    new_ints = _gather_scalars(
        [
            jnp.where(live & sub_done, depth + 1, depth),
            jnp.where(sub_done, 0, next_leaf),
            forward.astype(jnp.int32),
            new_num_leaves,
            (ints[_DIV] != 0) | (live & diverging),
            (ints[_TURN] != 0) | (live & ((merge & turning_tree) | turning_sub)),
            ~live | finished,
        ],
        jnp.int32,
    )
    return _Loop(vec=new_vec, ckpt=new_ckpt, flt=new_flt, ints=new_ints)


def _stores_velocity(metric: AbstractMetric) -> bool:
    """Whether the loop carries the velocities `M⁻¹p` of the two ends (a dense or other costly
    metric) rather than recomputing the opposite end's from its momentum (static)."""
    return not isinstance(metric, (IdentityMetric, DiagonalMetric))


def _materialize(flags, mask):
    """The boolean scalars `flags` and vector `mask`, computed once into a buffer that the
    vector selects read. XLA fuses a scalar's whole computation into every kernel that uses it
    and evaluates it there per element (and the CPU backend drops optimization barriers); a
    reduction is never fused into its consumers, so the flags go through a (trivial) one."""
    packed = jnp.concatenate([jnp.stack(flags), mask]).astype(jnp.int32)
    packed = jnp.max(jnp.stack([packed, jnp.zeros_like(packed)]), axis=0) != 0
    return (*packed[: len(flags)], packed[len(flags) :])


def _gather_rows(values) -> Array:
    """`jnp.stack(values)` as ONE elementwise kernel (a chain of selects on the row index)."""
    idx = jnp.arange(len(values)).reshape((-1,) + (1,) * jnp.ndim(values[0]))
    out = jnp.broadcast_to(values[0], (len(values), *jnp.shape(values[0])))
    for i, value in enumerate(values[1:], 1):
        out = jnp.where(idx == i, value[None], out)
    return out


def _gather_scalars(values, dtype) -> Array:
    """`jnp.stack(values)` as ONE elementwise kernel (a chain of selects on the index): XLA does
    not fuse a concatenation of many operands, and gives each operand a kernel of its own."""
    idx = jnp.arange(len(values))
    out = jnp.zeros(len(values), dtype)
    for i, value in enumerate(values):
        out = jnp.where(idx == i, jnp.asarray(value).astype(dtype), out)
    return out


def _expand(mask, like):
    """`mask` (one entry per row) shaped to broadcast against rows shaped like `like`."""
    return mask.reshape((-1,) + (1,) * jnp.ndim(like))


def _build_trajectory(params, loop: _Loop) -> _Loop:
    """`while not done: leaf`, with a batching rule that runs ONE loop over a batch of chains
    until all are done (the leaf freezes finished chains itself), instead of JAX's default of
    selecting the whole loop state of every chain at every leaf."""
    dynamic, static = eqx.partition(params, eqx.is_array)

    def leaf(dynamic, s, rows_by_select=True):
        return _leaf(eqx.combine(dynamic, static), s, rows_by_select)

    @jax.custom_batching.custom_vmap
    def run(dynamic, loop):
        return jax.lax.while_loop(lambda s: s.ints[_DONE] == 0, lambda s: leaf(dynamic, s), loop)

    @run.def_vmap
    def run_batched(axis_size, in_batched, dynamic, loop):
        dyn_batched, loop_batched = in_batched
        loop = jax.tree.map(
            lambda x, b: x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))),
            loop,
            loop_batched,
        )
        axes = jax.tree.map(lambda b: 0 if b else None, dyn_batched)
        by_select = axis_size == 1 or axis_size * loop.vec[0, 0].size <= _SELECT_CHAIN_MAX
        vleaf = jax.vmap(lambda d, s: leaf(d, s, by_select), in_axes=(axes, 0))
        out = jax.lax.while_loop(
            lambda s: jnp.any(s.ints[..., _DONE] == 0), lambda s: vleaf(dynamic, s), loop
        )
        return out, jax.tree.map(lambda _: True, out)

    return run(dynamic, loop)
