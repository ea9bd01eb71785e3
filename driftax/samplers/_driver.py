"""`driftax.sample`: warmup + sampling of many chains, compiled once, with diagnostics and
health checks. The compiled loop is the functional core in `_core.py` (`run_chains`)."""

from __future__ import annotations

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.core
import jax.numpy as jnp
import numpy as np

from .._checks import check_int
from .._custom_types import Key
from .._progress import bar_id_array, progress_bar
from ..energies._base import AbstractEnergy, AbstractInitializable
from . import _diagnostics as diag, _health
from ._adaptation import AbstractAdaptation
from ._base import AbstractSampler
from ._core import LoopConfig, broadcast_chains, cast_floats, resolve_adaptation, run_loop
from ._distributed import chain_sharding, replicate, to_global, to_local
from ._result import SampleResult

_run_traced = eqx.debug.assert_max_traces(run_loop, max_traces=None)
_run = eqx.filter_jit(_run_traced)


@eqx.filter_jit
def _init_states(sampler, energy, x0s):
    return jax.vmap(lambda x: sampler.init(energy, x))(x0s)


def _is_traced(tree) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


def _same(a, b) -> bool:
    """Tree equality of two hyperparameter values (structure and every leaf)."""
    la, ta = jax.tree.flatten(a)
    lb, tb = jax.tree.flatten(b)
    if ta != tb:
        return False
    for x, y in zip(la, lb):
        if isinstance(x, (jax.Array, np.ndarray)) or isinstance(y, (jax.Array, np.ndarray)):
            if np.shape(x) != np.shape(y) or not np.array_equal(np.asarray(x), np.asarray(y)):
                return False
        elif x != y:
            return False
    return True


def _user_points(energy: AbstractEnergy, x0, num_chains):
    """`(num_chains, kernel points)` of one user point or of per-chain points."""
    try:
        single = energy.ravel(x0)
    except (ValueError, TypeError) as e:
        try:
            per_chain = jax.vmap(energy.ravel)(x0)
        except Exception:  # noqa: BLE001 - report the single-point error, it is the clearer one
            raise ValueError(
                f"{e} (`x0` must be one point of the energy or per-chain points with a leading "
                "chains axis on every leaf.)"
            ) from e
        n = int(per_chain.shape[0])
        if num_chains is not None and num_chains != n:
            raise ValueError(
                f"`num_chains` ({num_chains}) differs from x0's leading axis ({n})."
            ) from None
        return n, per_chain
    n = 4 if num_chains is None else check_int(num_chains, "num_chains", 1)
    return n, jnp.broadcast_to(single, (n, *single.shape))


def _resume_sampler(prev: SampleResult, sampler, adaptation, energy):
    """The sampler to continue with: the adapted one, except for the hyperparameters the caller
    changed relative to the sampler the previous run started from (they apply, with a note)."""
    if type(prev.initial_sampler) is not type(sampler):
        raise TypeError(
            f"resuming a {type(prev.initial_sampler).__name__} run with a {type(sampler).__name__}."
        )
    changed = [
        f.name
        for f in dataclasses.fields(sampler)
        if not _same(getattr(sampler, f.name), getattr(prev.initial_sampler, f.name))
    ]
    samplers = prev.sampler
    if changed:
        prepared = cast_floats(adaptation.prepare(sampler, tuple(energy.event_shape)), energy.dtype)
        batched = broadcast_chains(prepared, prev.num_chains)
        for name in changed:
            samplers = eqx.tree_at(
                lambda s, n=name: getattr(s, n),
                samplers,
                getattr(batched, name),
                is_leaf=lambda x: x is None,
            )
        warnings.warn(
            f"resuming with the passed sampler's {', '.join(f'`{n}`' for n in changed)} instead "
            "of the previous run's adapted value(s); pass the sampler the previous run started "
            "from to continue with the adapted ones.",
            UserWarning,
            stacklevel=3,
        )
    return samplers


def sample(
    sampler: AbstractSampler,
    energy: AbstractEnergy,
    x0=None,
    *,
    key: Key,
    num_steps: int,
    num_warmup: int | None = None,
    num_chains: int | None = None,
    thin: int = 1,
    adaptation: AbstractAdaptation | str | None = "auto",
    store_samples: bool = True,
    store_info: bool | None = None,
    check_health: bool = True,
    progress: bool = False,
    shard: bool | None = None,
) -> SampleResult:
    """Run `num_chains` chains of `sampler` on `energy`: warmup with adaptation, then
    `num_steps` sampling steps, all compiled once (a second call with the same shapes and
    settings reuses the compiled loop), then health checks.

    **Arguments:**

    - `sampler`: an `AbstractSampler` (its hyperparameters are the starting point of warmup).
    - `energy`: the target, an `AbstractEnergy`.
    - `x0`: one point in the energy's structure (an array of shape `event_shape`, or a pytree
      like the example of a pytree energy: every chain starts there), per-chain points (a
      leading `num_chains` axis on every leaf), `None` (dispersed starting points from
      `energy.initial_points` for energies that supply them, e.g. numpyro models), or a
      previous `SampleResult` to resume from (its final states and adapted sampler;
      `num_warmup` then defaults to 0). Points are cast to `energy.dtype`: the energy's
      floating dtype decides (a float32 `x0` under x64 and the reverse both work), and so do
      the sampler's floating hyperparameters.
    - `key`: a JAX PRNG key (same key → bitwise-identical results). Resuming with the key of
      the previous run continues its random stream: the chains are those of one longer run.
    - `num_steps`: sampling steps per chain (after warmup); must be a multiple of `thin`.
    - `num_warmup`: adaptation steps per chain (default 1000, or 0 when resuming).
    - `num_chains`: number of chains (default: the leading axis of per-chain `x0`, else 4).
    - `thin`: keep every `thin`-th sample (moments and counts still use every step).
    - `adaptation`: `"auto"` (a sensible default per sampler: windowed diagonal metric and
      dual averaging; ChEES for `ChEESHMC`), `None` (no adaptation), or an `AbstractAdaptation`.
    - `store_samples`: if `False`, keep only streaming moments, batch means and per-chain
      counts: nothing in the result grows with `num_steps`.
    - `store_info`: keep the per-step `Info` traces (default: as `store_samples`).
    - `check_health`: check the run and raise a `driftax.SamplingWarning` per problem (collapsed
      or exploded step size, frozen chains, acceptance near 0, divergences, R-hat > 1.01, bulk
      ESS < 100 per chain); the flags are in `result.health` either way when on.
    - `progress`: show a tqdm progress bar (zero cost when `False`).
    - `shard`: shard chains over all devices (`None`: when more than one device is visible and
      `num_chains` divides evenly, and always in a multi-process run; `True`: require it;
      `False`: every chain on the default device, in a multi-process run in every process).

    **Many processes.** In a multi-process `jax.distributed` run (one process per GPU or host,
    `jax.distributed.initialize()` called first), every process makes the same `sample` call;
    the chains are split over the devices of all processes (`num_chains` must divide evenly,
    else a `ValueError`), each process runs its own chains in one SPMD program, and the results
    are gathered so that every process returns the same complete `SampleResult` with local
    arrays (`summary`, `ess`, `rhat` over all chains). The per-chain keys depend only on `key`
    and the chain index: the chains are those of a one-process run with the same `key` and
    `num_chains`. Gathering copies all samples to every process; `store_samples=False` keeps
    that small. A progress bar advances in process 0.

    On resume, a hyperparameter of `sampler` that differs from the sampler the previous run
    started from replaces the adapted value (with a `UserWarning` saying so); pass the same
    sampler to continue with the adapted values.

    `sample` runs eagerly and cannot be called inside `jax.jit` / `jax.vmap`; use
    [`driftax.samplers.run_chains`][] (the pure core it is built on) there.

    **Returns:** a `SampleResult`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(3))
    result = dx.sample(dx.samplers.NUTS(step_size=0.5), target, jnp.zeros(3),
                       key=jax.random.key(0), num_steps=200, num_warmup=200, num_chains=2,
                       check_health=False)
    result.samples.shape  # (2, 200, 3)
    ```
    """
    if _is_traced(key) or (not isinstance(x0, SampleResult) and _is_traced(x0)):
        raise TypeError(
            "`driftax.sample` runs eagerly (it checks inputs, compiles and warns) and cannot be "
            "called inside jax.jit / jax.vmap (`key` or `x0` is traced); call the pure core "
            "`driftax.samplers.run_chains(sampler, energy, x0s, key=..., num_steps=...)` there."
        )
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(f"`sampler` must be an AbstractSampler, got {type(sampler).__name__}.")
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    if not jnp.issubdtype(getattr(key, "dtype", np.float32), jax.dtypes.prng_key):
        try:  # a legacy uint32 key
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        except Exception as e:
            raise TypeError(f"`key` must be a JAX PRNG key, got {key!r}.") from e
    num_steps = check_int(num_steps, "num_steps", 1)
    thin = check_int(thin, "thin", 1)
    if num_steps % thin:
        raise ValueError(f"`num_steps` ({num_steps}) must be a multiple of `thin` ({thin}).")
    event_shape = tuple(energy.event_shape)
    dtype = energy.dtype
    resume = isinstance(x0, SampleResult)
    if num_warmup is None:
        num_warmup = 0 if resume else 1000
    num_warmup = check_int(num_warmup, "num_warmup", 0)
    adaptation = resolve_adaptation(adaptation, sampler)

    x0s = samplers = states = None
    if resume:
        prev = x0
        if tuple(prev.final_state.position.shape[1:]) != event_shape:
            raise ValueError(
                f"the result to resume has event shape {prev.final_state.position.shape[1:]}, "
                f"the energy {event_shape}."
            )
        if num_chains is not None and num_chains != prev.num_chains:
            raise ValueError(
                f"`num_chains` ({num_chains}) differs from the result's ({prev.num_chains})."
            )
        num_chains = prev.num_chains
        samplers = _resume_sampler(prev, sampler, adaptation, energy)
        states = prev.final_state
        initial_sampler = prev.initial_sampler
        offset = prev.sampling_offset + prev.num_steps
    else:
        if x0 is None:
            if not isinstance(energy, AbstractInitializable):
                raise ValueError(
                    f"`x0` is None but the energy ({type(energy).__name__}) does not supply "
                    "starting points; pass one point or per-chain points."
                )
            num_chains = 4 if num_chains is None else check_int(num_chains, "num_chains", 1)
            x0s = jnp.asarray(
                energy.initial_points(jax.random.fold_in(key, 0x5EED), num_chains)
            ).reshape(num_chains, *event_shape)
        else:
            if num_chains is not None:
                num_chains = check_int(num_chains, "num_chains", 1)
            num_chains, x0s = _user_points(energy, x0, num_chains)
        x0s = x0s.astype(dtype)
        if not np.all(np.isfinite(np.asarray(x0s))):
            raise ValueError("`x0` must be finite.")
        initial_sampler = sampler
        sampler = cast_floats(adaptation.prepare(sampler, event_shape), dtype)
        offset = 0

    sharding = chain_sharding(num_chains, shard)

    if not resume:
        if sharding is not None:
            x0s = to_global(x0s, sharding)
        placed_sampler, placed_energy = replicate((sampler, energy), sharding)
        states = _init_states(placed_sampler, placed_energy, x0s)
        checked = to_local((states.log_density, getattr(states, "score", None)))
        bad = ~np.isfinite(np.asarray(checked[0]))
        score = checked[1]
        if score is not None:
            bad |= ~np.all(np.isfinite(np.asarray(score).reshape(num_chains, -1)), axis=1)
        if np.any(bad):
            raise ValueError(
                "the log density (or its score) is not finite at `x0` for chain(s) "
                f"{np.flatnonzero(bad).tolist()}."
            )
        samplers = broadcast_chains(sampler, num_chains)
    start_samplers = samplers
    if sharding is not None:
        samplers = to_global(samplers, sharding)
        states = to_global(states, sharding)

    total = num_warmup + num_steps
    with progress_bar(total, type(sampler).__name__, progress) as (bar_id, every):
        cfg = LoopConfig(
            num_chains=num_chains,
            num_warmup=num_warmup,
            num_steps=num_steps,
            thin=thin,
            store_samples=bool(store_samples),
            store_info=bool(store_samples if store_info is None else store_info),
            progress_every=every,
            sharding=sharding,
        )
        run_energy, run_key, run_offset, run_bar, run_adaptation = replicate(
            (energy, key, jnp.asarray(offset, jnp.int32), bar_id_array(bar_id), adaptation),
            sharding,
        )
        out = _run(samplers, run_energy, states, run_key, run_offset, run_bar, run_adaptation, cfg)
        if every:
            jax.block_until_ready(out)
    out = to_local(out)  # multi-process: every process gets all the chains

    result = SampleResult(
        energy=energy,
        kernel_samples=out.samples,
        info=out.info,
        stats=out.stats,
        counts=out.counts,
        sampler=out.sampler,
        initial_sampler=initial_sampler,
        final_state=out.state,
        num_chains=num_chains,
        num_steps=num_steps,
        num_warmup=num_warmup,
        thin=thin,
        sampling_offset=offset,
    )
    if check_health:
        result.health = _check(result, start_samplers, resume)
        _health.warn(result.health, stacklevel=3)
    return result


def _check(result: SampleResult, start_samplers, resume: bool) -> _health.HealthReport:
    """The health report of a finished run."""
    step = getattr(result.sampler, "step_size", None)
    initial = getattr(start_samplers, "step_size", None)
    init_step = None
    if initial is not None:
        init_step = float(np.median(np.asarray(initial, np.float64)))
    c = result.counts
    try:
        if result.kernel_samples is None:
            ess, rhat = result.ess, result.rhat  # batch means: already cheap
        else:  # ArviZ's definitions, vectorized over coordinates (a fraction of its cost)
            samples = np.asarray(result.kernel_samples)
            stride = -(-samples.shape[1] // _health.MAX_CHECKED_DRAWS)
            ess, rhat = diag.fast_ess_rhat(samples[:, ::stride])
    except ValueError:  # fewer than 4 draws
        ess = rhat = None
    return _health.check_run(
        sampler_name=type(result.initial_sampler).__name__,
        is_adjusted=bool(getattr(result.initial_sampler, "is_adjusted", True)),
        initial_step=init_step,
        adapted_step=None if step is None else np.asarray(step, np.float64),
        num_warmup=result.num_warmup,
        num_steps=result.num_steps,
        num_divergent=result.num_divergent,
        acceptance=result.acceptance_rate,
        num_moved=np.asarray(c.num_moved),
        sq_jump=np.asarray(c.sq_jump_sum),
        chain_variance=np.asarray(result.variance),
        ess=ess,
        rhat=rhat,
    )
