"""The functional core of the driver: run a batch of chains (warmup + sampling) as one pure,
jit- and vmap-able function, with constant-memory streaming statistics.

[`run_chains`][] is what `driftax.sample` is built on; call it inside your own `jax.jit` /
`jax.vmap` (simulation-based calibration, nested loops). It has no Python side effects: no
progress bar, no warnings, no host transfers.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp

from .._custom_types import Array, Key, PyTree
from .._progress import report
from ..energies._base import AbstractEnergy
from ._adaptation import AbstractAdaptation, NoAdaptation
from ._auto import default_adaptation
from ._base import AbstractSampler, Info
from ._random import chain_keys

NUM_BATCHES = 32
"""Number of batch means kept per chain and coordinate (the batch size doubles when full)."""


# ---------------------------------------------------------------------------------------------
# Typed loop state and outputs
# ---------------------------------------------------------------------------------------------


class StreamStats(eqx.Module):
    """Per-chain streaming moments of the sampling phase, in constant memory.

    Welford mean / centred second moment over every sampling step, and `NUM_BATCHES` batch sums
    with a batch size that doubles whenever all batches are full (so the batch means always
    cover most of the run); from them: MCSE, ESS and R-hat without stored samples.
    """

    count: Array  # () int32: sampling steps seen
    mean: Array  # (chains, *event)
    m2: Array  # (chains, *event)
    batch_sums: Array  # (chains, NUM_BATCHES, *event)
    num_batches: Array  # () int32: full batches
    batch_size: Array  # () int32
    current: Array  # (chains, *event): sum of the batch being filled
    current_count: Array  # () int32


def stream_init(num_chains: int, event_shape, dtype) -> StreamStats:
    """Empty streaming statistics."""
    z = jnp.zeros((num_chains, *event_shape), dtype)
    zi = jnp.zeros((), jnp.int32)
    return StreamStats(
        count=zi,
        mean=z,
        m2=z,
        batch_sums=jnp.zeros((num_chains, NUM_BATCHES, *event_shape), dtype),
        num_batches=zi,
        batch_size=jnp.ones((), jnp.int32),
        current=z,
        current_count=zi,
    )


def stream_update(s: StreamStats, x: Array, weight: Array) -> StreamStats:
    """Add one step's positions `x` `(chains, *event)` when `weight` (a bool scalar) is true."""
    w = weight.astype(jnp.int32)
    wf = weight.astype(x.dtype)
    count = s.count + w
    delta = wf * (x - s.mean)
    mean = s.mean + delta / jnp.maximum(count, 1).astype(x.dtype)
    m2 = s.m2 + delta * (x - mean)
    current = s.current + wf * x
    current_count = s.current_count + w

    # the batch being filled is full: store it, and when all batches are full (after 32, 64,
    # 128, ... kept steps) merge neighbours, halving their number and doubling their size. Both
    # are rare, so they sit behind `cond`s: an ordinary step touches no stored batch.
    def merge(batch_sums, num_batches, batch_size):
        shape = batch_sums.shape
        merged = batch_sums.reshape(shape[0], NUM_BATCHES // 2, 2, *shape[2:]).sum(axis=2)
        merged = jnp.concatenate([merged, jnp.zeros_like(merged)], axis=1)
        return merged, jnp.full_like(num_batches, NUM_BATCHES // 2), 2 * batch_size

    def close(batch_sums, num_batches, batch_size, current, current_count):
        batch_sums = jax.lax.dynamic_update_index_in_dim(batch_sums, current, num_batches, axis=1)
        batch_sums, num_batches, batch_size = jax.lax.cond(
            num_batches + 1 == NUM_BATCHES,
            merge,
            lambda *a: a,
            batch_sums,
            num_batches + 1,
            batch_size,
        )
        return batch_sums, num_batches, batch_size, jnp.zeros_like(current), 0 * current_count

    batch_sums, num_batches, batch_size, current, current_count = jax.lax.cond(
        weight & (current_count == s.batch_size),
        close,
        lambda *a: a,
        s.batch_sums,
        s.num_batches,
        s.batch_size,
        current,
        current_count,
    )
    return StreamStats(count, mean, m2, batch_sums, num_batches, batch_size, current, current_count)


class ChainCounts(eqx.Module):
    """Per-chain summaries of the per-step `Info`, reduced on the fly (constant memory).

    Sampling phase: `num_divergent`, `num_grad_evals`, `acceptance_sum`, `energy_error_sum`,
    `max_abs_energy_error`, `num_moved` (steps whose position changed), `sq_jump_sum` (sum of
    squared jump distances). Warmup: `num_divergent_warmup`, `num_grad_evals_warmup`.
    """

    num_divergent: Array
    num_grad_evals: Array
    acceptance_sum: Array
    energy_error_sum: Array
    max_abs_energy_error: Array
    num_moved: Array
    sq_jump_sum: Array
    num_divergent_warmup: Array
    num_grad_evals_warmup: Array


def _counts_init(num_chains: int, dtype) -> ChainCounts:
    zi = jnp.zeros(num_chains, jnp.int32)
    zf = jnp.zeros(num_chains, dtype)
    return ChainCounts(zi, zi, zf, zf, zf, zi, zf, zi, zi)


class ChainsOutput(eqx.Module):
    """What [`run_chains`][] returns (a pytree; leading axis `chains` everywhere).

    - `samples`: `(chains, num_steps // thin, *event_shape)` kernel arrays, or `None`.
    - `info`: an `Info` of `(chains, num_steps // thin)` traces, or `None` (`store_info=False`).
    - `sampler`: the (adapted) batched sampler; `state`: the chains' final states.
    - `stats`: [`StreamStats`][]; `counts`: [`ChainCounts`][].
    """

    samples: Array | None
    info: Info | None
    sampler: AbstractSampler
    state: PyTree
    stats: StreamStats
    counts: ChainCounts


class _Carry(eqx.Module):
    samplers: AbstractSampler
    states: PyTree
    astate: PyTree
    stats: StreamStats
    counts: ChainCounts
    block_grads: Array
    block_div: Array
    samples: Array | None
    info: Info | None


class LoopConfig(eqx.Module):
    """Static settings of the compiled loop (hashable)."""

    num_chains: int = eqx.field(static=True)
    num_warmup: int = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    thin: int = eqx.field(static=True)
    store_samples: bool = eqx.field(static=True)
    store_info: bool = eqx.field(static=True)
    progress_every: int = eqx.field(static=True, default=0)  # 0: no progress bar
    sharding: object = eqx.field(static=True, default=None)


def _constrain(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


def cast_floats(tree, dtype):
    """Cast every floating array leaf of `tree` to `dtype` (the energy's dtype rule)."""

    def cast(a):
        if isinstance(a, (jax.Array, jax.core.Tracer)) and jnp.issubdtype(a.dtype, jnp.floating):
            return a.astype(dtype)
        return a

    return jax.tree.map(cast, tree)


def run_loop(samplers, energy, states, key, offset, bar_id, adaptation, cfg: LoopConfig):
    """Warmup and sampling in ONE loop (the kernel is compiled once): iteration `i` adapts while
    `i < num_warmup`, then records. `offset` is the absolute index of the first sampling step
    (so resuming with the same key continues the same random stream). Pure; returns a
    [`ChainsOutput`][]."""
    num_chains, num_warmup, thin = cfg.num_chains, cfg.num_warmup, cfg.thin
    n_kept = cfg.num_steps // thin
    total = num_warmup + cfg.num_steps
    k_warm, k_samp = jax.random.split(key)
    adapting = num_warmup > 0 and not isinstance(adaptation, NoAdaptation)
    astate = adaptation.init(samplers, states, num_warmup) if adapting else None

    pos = states.position
    dtype = pos.dtype
    # one spare last row takes the writes of the steps that are not kept (warmup, thinning),
    # so every step writes unconditionally: a plain in-place update, no read-select-write
    rows = n_kept + 1
    info_buf = None
    if cfg.store_info:
        info_buf = Info(
            acceptance_rate=jnp.zeros((rows, num_chains), dtype),
            is_divergent=jnp.zeros((rows, num_chains), bool),
            energy_error=jnp.zeros((rows, num_chains), dtype),
            num_grad_evals=jnp.zeros((rows, num_chains), jnp.int32),
        )
    carry = _Carry(
        samplers=samplers,
        states=states,
        astate=astate,
        stats=stream_init(num_chains, pos.shape[1:], dtype),
        counts=_counts_init(num_chains, dtype),
        block_grads=jnp.zeros(num_chains, jnp.int32),
        block_div=jnp.zeros(num_chains, bool),
        samples=jnp.zeros((rows, *pos.shape), dtype) if cfg.store_samples else None,
        info=info_buf,
    )

    def body(i, c: _Carry) -> _Carry:
        in_warmup = i < num_warmup
        j = i - num_warmup  # sampling step index (negative during warmup)
        base = jax.random.wrap_key_data(
            jnp.where(in_warmup, jax.random.key_data(k_warm), jax.random.key_data(k_samp)),
            impl=jax.random.key_impl(key),
        )
        keys = chain_keys(base, jnp.where(in_warmup, i, offset + j), num_chains)
        old = c.states.position
        states, infos = jax.vmap(lambda s, st, kk: s.step(energy, st, key=kk))(
            c.samplers, c.states, keys
        )
        states = _constrain(states, cfg.sharding)
        samplers, astate = c.samplers, c.astate
        if adapting:

            def adapt(samplers, astate):
                samplers, astate = adaptation.update(samplers, astate, states, infos, i)
                samplers = jax.lax.cond(
                    i == num_warmup - 1,
                    lambda s: adaptation.finalize(s, astate),
                    lambda s: s,
                    samplers,
                )
                return samplers, astate

            samplers, astate = jax.lax.cond(in_warmup, adapt, lambda s, a: (s, a), samplers, astate)
        sampling = ~in_warmup
        ws = sampling.astype(dtype)
        si = sampling.astype(jnp.int32)
        wi = in_warmup.astype(jnp.int32)
        x = states.position.astype(dtype)
        jump = (x - old).reshape(num_chains, -1)
        err = infos.energy_error.astype(dtype)
        finite_err = jnp.where(jnp.isfinite(err), err, 0.0)
        k = c.counts
        counts = ChainCounts(
            num_divergent=k.num_divergent + si * infos.is_divergent,
            num_grad_evals=k.num_grad_evals + si * infos.num_grad_evals,
            acceptance_sum=k.acceptance_sum + ws * infos.acceptance_rate.astype(dtype),
            energy_error_sum=k.energy_error_sum + ws * finite_err,
            max_abs_energy_error=jnp.maximum(k.max_abs_energy_error, ws * jnp.abs(finite_err)),
            num_moved=k.num_moved + si * jnp.any(jump != 0, axis=1),
            sq_jump_sum=k.sq_jump_sum + ws * jnp.sum(jump**2, axis=1),
            num_divergent_warmup=k.num_divergent_warmup + wi * infos.is_divergent,
            num_grad_evals_warmup=k.num_grad_evals_warmup + wi * infos.num_grad_evals,
        )
        stats = stream_update(c.stats, x, sampling)
        block_grads = c.block_grads + si * infos.num_grad_evals
        block_div = c.block_div | (sampling & infos.is_divergent)
        write = sampling & ((j + 1) % thin == 0)
        slot = jnp.where(write, j // thin, n_kept)
        samples = c.samples
        if samples is not None:
            samples = samples.at[slot].set(x)
        info = c.info
        if info is not None:
            new_info = Info(
                acceptance_rate=infos.acceptance_rate.astype(dtype),
                is_divergent=block_div,
                energy_error=err,
                num_grad_evals=block_grads,
            )
            info = jax.tree.map(lambda buf, v: buf.at[slot].set(v), info, new_info)
        report(bar_id, i, total, cfg.progress_every)
        return _Carry(
            samplers=samplers,
            states=states,
            astate=astate,
            stats=stats,
            counts=counts,
            block_grads=jnp.where(write, 0, block_grads),
            block_div=jnp.where(write, False, block_div),
            samples=samples,
            info=info,
        )

    c = jax.lax.fori_loop(0, total, body, carry)
    swap = lambda a: jnp.swapaxes(a[:n_kept], 0, 1)  # noqa: E731
    return ChainsOutput(
        samples=None if c.samples is None else swap(c.samples),
        info=None if c.info is None else jax.tree.map(swap, c.info),
        sampler=c.samplers,
        state=c.states,
        stats=c.stats,
        counts=c.counts,
    )


def resolve_adaptation(adaptation, sampler) -> AbstractAdaptation:
    """`"auto"` → the sampler's default, `None` → no adaptation, else checked."""
    if isinstance(adaptation, str) and adaptation == "auto":
        return default_adaptation(sampler)
    if adaptation is None:
        return NoAdaptation()
    if not isinstance(adaptation, AbstractAdaptation):
        raise TypeError(
            f"`adaptation` must be 'auto', None or an AbstractAdaptation, got {adaptation!r}."
        )
    return adaptation


def broadcast_chains(tree, num_chains: int):
    """One copy of every array leaf per chain (leading axis)."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains, *jnp.shape(a))), tree)


def run_chains(
    sampler: AbstractSampler,
    energy: AbstractEnergy,
    x0: Array | ChainsOutput,
    *,
    key: Key,
    num_steps: int,
    num_warmup: int = 0,
    adaptation: AbstractAdaptation | str | None = None,
    thin: int = 1,
    store_samples: bool = True,
    store_info: bool | None = None,
    offset: int | Array = 0,
) -> ChainsOutput:
    """Run chains of `sampler` on `energy` as ONE pure function: jit- and vmap-able, no Python
    side effects (what `driftax.sample` is built on; call it inside your own `jax.jit` /
    `jax.vmap`, e.g. for simulation-based calibration).

    **Arguments:**

    - `sampler`: an `AbstractSampler` (unbatched; its hyperparameters start the warmup).
    - `energy`: the target.
    - `x0`: kernel arrays `(num_chains, *energy.event_shape)` (use `energy.ravel` for pytree
      points), or a previous `ChainsOutput` to continue (its adapted sampler and final states;
      `sampler` then only fixes the type).
    - `key`: a JAX PRNG key (may be traced).
    - `num_steps`, `num_warmup`, `thin`: Python ints (static).
    - `adaptation`: `None` (default: no adaptation), `"auto"` or an `AbstractAdaptation`.
    - `store_samples`: keep the draws; `store_info`: keep per-step `Info` traces (default: as
      `store_samples`). Without them memory does not grow with `num_steps`.
    - `offset`: index of the first sampling step in the random stream (continue a run).

    Points are cast to `energy.dtype`, and so are the sampler's floating hyperparameters.

    **Returns:** a [`ChainsOutput`][].

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(2))

    @jax.jit
    @jax.vmap
    def chain_means(key):
        out = dx.samplers.run_chains(dx.samplers.MALA(step_size=0.5), target, jnp.zeros((2, 2)),
                                     key=key, num_steps=100, store_samples=False)
        return out.stats.mean

    means = chain_means(jax.random.split(jax.random.key(0), 8))  # (8, 2, 2)
    ```
    """
    adaptation = resolve_adaptation(adaptation, sampler)
    dtype = energy.dtype
    if isinstance(x0, ChainsOutput):
        samplers, states = x0.sampler, x0.state
        num_chains = int(jax.tree.leaves(states.position)[0].shape[0])
    else:
        x0 = jnp.asarray(x0)
        if tuple(x0.shape[1:]) != tuple(energy.event_shape) or x0.ndim < 1:
            raise ValueError(
                f"`x0` must have shape (num_chains, *{tuple(energy.event_shape)}), got "
                f"{tuple(x0.shape)}."
            )
        num_chains = int(x0.shape[0])
        sampler = cast_floats(adaptation.prepare(sampler, tuple(energy.event_shape)), dtype)
        x0 = x0.astype(dtype)
        states = jax.vmap(lambda x: sampler.init(energy, x))(x0)
        samplers = broadcast_chains(sampler, num_chains)
    cfg = LoopConfig(
        num_chains=num_chains,
        num_warmup=int(num_warmup),
        num_steps=int(num_steps),
        thin=int(thin),
        store_samples=bool(store_samples),
        store_info=bool(store_samples if store_info is None else store_info),
    )
    if cfg.num_steps % cfg.thin:
        raise ValueError(f"`num_steps` ({num_steps}) must be a multiple of `thin` ({thin}).")
    return run_loop(
        samplers,
        energy,
        states,
        key,
        jnp.asarray(offset, jnp.int32),
        jnp.zeros((), jnp.int32),
        adaptation,
        cfg,
    )
