"""`driftax.sample`: warmup + sampling of many chains, compiled once, with diagnostics."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, Key, PyTree
from ..energies._base import AbstractEnergy
from . import _diagnostics as diag
from ._adaptation import AbstractAdaptation, NoAdaptation, default_adaptation
from ._base import AbstractSampler, Info
from ._random import chain_keys

# ---------------------------------------------------------------------------------------------
# Progress bar (host callback; absent from the compiled graph when off)
# ---------------------------------------------------------------------------------------------

_BARS: dict[int, object] = {}
_BAR_IDS = itertools.count(1)


def _tick(bar_id, done):
    bar = _BARS.get(int(bar_id))
    if bar is not None:
        done = int(done)
        if done > bar.n:
            bar.update(done - bar.n)


# ---------------------------------------------------------------------------------------------
# The result
# ---------------------------------------------------------------------------------------------


@dataclass
class SampleResult:
    """What `driftax.sample` returns.

    - `samples`: `(num_chains, num_steps // thin, *event_shape)` (or `None` with
      `store_samples=False`).
    - `info`: an `Info` whose fields are `(num_chains, num_steps // thin)` arrays (the step that
      produced each kept sample; `num_grad_evals` counts the whole thinning block).
    - `mean`, `variance`: streaming per-chain moments over ALL sampling steps (bounded memory).
    - `sampler`: the adapted sampler, one copy of every array hyperparameter per chain;
      `final_state`: the chains' last states — pass the result as `x0` to resume.
    - counts: `num_divergent`, `num_grad_evals` (sampling phase, all chains),
      `num_divergent_warmup`, `num_grad_evals_warmup`; `acceptance_rate` per chain.
    - diagnostics (ArviZ, computed on demand): `ess` (bulk), `ess_tail`, `rhat` (rank-normalized
      split), `mcse_mean`, `mcse_sd`; `summary()` and `to_arviz()`.
    """

    samples: Array | None
    info: Info | None
    mean: Array
    variance: Array
    sampler: AbstractSampler
    final_state: PyTree
    num_chains: int
    num_steps: int
    num_warmup: int
    thin: int
    num_divergent: int
    num_grad_evals: int
    num_divergent_warmup: int
    num_grad_evals_warmup: int
    acceptance_rate: np.ndarray
    sampling_offset: int = 0
    _cache: dict = field(default_factory=dict, repr=False)

    def _needs_samples(self):
        if self.samples is None:
            raise ValueError("this result has no stored samples (`store_samples=False`).")
        return self.samples

    def _diag(self, name, fn):
        if name not in self._cache:
            self._cache[name] = fn(self._needs_samples())
        return self._cache[name]

    @property
    def ess(self) -> np.ndarray:
        """Bulk effective sample size per coordinate (all chains together)."""
        return self._diag("ess", lambda s: diag.ess(s, "bulk"))

    @property
    def ess_tail(self) -> np.ndarray:
        """Tail effective sample size per coordinate."""
        return self._diag("ess_tail", lambda s: diag.ess(s, "tail"))

    @property
    def rhat(self) -> np.ndarray:
        """Rank-normalized split R-hat per coordinate."""
        return self._diag("rhat", diag.rhat)

    @property
    def mcse_mean(self) -> np.ndarray:
        """Monte Carlo standard error of the posterior mean per coordinate."""
        return self._diag("mcse_mean", lambda s: diag.mcse(s, "mean"))

    @property
    def mcse_sd(self) -> np.ndarray:
        """Monte Carlo standard error of the posterior standard deviation per coordinate."""
        return self._diag("mcse_sd", lambda s: diag.mcse(s, "sd"))

    @property
    def step_size(self) -> Array:
        """The (adapted) step size of each chain."""
        return self.sampler.step_size

    def to_arviz(self):
        """An `arviz.InferenceData` with the samples as variable `x` and per-step
        `sample_stats` (`acceptance_rate`, `diverging`, `energy_error`, `n_steps`)."""
        az = diag._arviz()
        x = np.asarray(self._needs_samples())
        stats = None
        if self.info is not None:
            stats = dict(
                acceptance_rate=np.asarray(self.info.acceptance_rate),
                diverging=np.asarray(self.info.is_divergent),
                energy_error=np.asarray(self.info.energy_error),
                n_steps=np.asarray(self.info.num_grad_evals),
            )
        return az.from_dict(posterior={"x": x}, sample_stats=stats)

    def summary(self, max_rows: int = 20) -> str:
        """A table of mean, sd, MCSE, bulk/tail ESS and R-hat per coordinate (first `max_rows`),
        with the run's counts; returned as a string (and printable)."""
        x = np.asarray(self._needs_samples(), dtype=np.float64)
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        mean, sd = flat.mean(axis=(0, 1)), flat.std(axis=(0, 1))
        cols = [
            mean,
            sd,
            self.mcse_mean.reshape(-1),
            self.ess.reshape(-1),
            self.ess_tail.reshape(-1),
            self.rhat.reshape(-1),
        ]
        lines = [
            f"{'':>8} {'mean':>10} {'sd':>10} {'mcse':>10} {'ess_bulk':>10} {'ess_tail':>10} {'r_hat':>7}"
        ]
        for i in range(min(flat.shape[-1], max_rows)):
            m, s, e, b, t, r = (c[i] for c in cols)
            lines.append(
                f"{'x[' + str(i) + ']':>8} {m:10.4f} {s:10.4f} {e:10.4f} {b:10.1f} {t:10.1f} {r:7.3f}"
            )
        if flat.shape[-1] > max_rows:
            lines.append(f"... ({flat.shape[-1] - max_rows} more coordinates)")
        lines.append(
            f"chains={self.num_chains} steps={self.num_steps} warmup={self.num_warmup} thin={self.thin} "
            f"acceptance={float(np.mean(self.acceptance_rate)):.3f} divergent={self.num_divergent} "
            f"grad_evals={self.num_grad_evals} (+{self.num_grad_evals_warmup} warmup) "
            f"min_ess={float(np.min(self.ess)):.1f} max_rhat={float(np.max(self.rhat)):.3f}"
        )
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# The compiled core
# ---------------------------------------------------------------------------------------------


class _Config(eqx.Module):
    num_chains: int = eqx.field(static=True)
    num_warmup: int = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    thin: int = eqx.field(static=True)
    store_samples: bool = eqx.field(static=True)
    progress_every: int = eqx.field(static=True)  # 0: no progress bar
    sharding: object = eqx.field(static=True)


def _constrain(tree, sharding):
    if sharding is None:
        return tree
    return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, sharding), tree)


@eqx.filter_jit
def _init_states(sampler, energy, x0s):
    return jax.vmap(lambda x: sampler.init(energy, x))(x0s)


def _run_impl(samplers, energy, states, key, offset, bar_id, adaptation, cfg: _Config):
    """Warmup and sampling in ONE loop (the kernel is compiled once, not twice): iteration `i`
    adapts while `i < num_warmup`, then records. `offset` is the absolute index of the first
    sampling step (so that resuming with the same key continues the same random stream)."""
    num_chains, num_warmup, thin = cfg.num_chains, cfg.num_warmup, cfg.thin
    n_kept = cfg.num_steps // thin
    total = num_warmup + cfg.num_steps
    k_warm, k_samp = jax.random.split(key)
    adapting = num_warmup > 0 and not isinstance(adaptation, NoAdaptation)
    astate = adaptation.init(samplers, states, num_warmup) if adapting else None

    pos = states.position
    dtype = pos.dtype
    zero_i = jnp.zeros(num_chains, jnp.int32)
    # one spare last row takes the writes of the steps that are not kept (warmup, thinning),
    # so every step writes unconditionally: a plain in-place update, no read-select-write
    rows = n_kept + 1
    buf = jnp.zeros((rows, *pos.shape), dtype) if cfg.store_samples else None
    info_buf = Info(
        acceptance_rate=jnp.zeros((rows, num_chains), dtype),
        is_divergent=jnp.zeros((rows, num_chains), bool),
        energy_error=jnp.zeros((rows, num_chains), dtype),
        num_grad_evals=jnp.zeros((rows, num_chains), jnp.int32),
    )
    carry = dict(
        samplers=samplers,
        states=states,
        astate=astate,
        mean=jnp.zeros_like(pos),
        m2=jnp.zeros_like(pos),
        grads=zero_i,
        divs=zero_i,
        acc=jnp.zeros(num_chains, dtype),
        w_grads=zero_i,
        w_divs=zero_i,
        block_grads=zero_i,
        block_div=jnp.zeros(num_chains, bool),
        samples=buf,
        info=info_buf,
    )

    def body(i, c):
        c = dict(c)
        in_warmup = i < num_warmup
        j = i - num_warmup  # sampling step index (negative during warmup)
        base = jax.random.wrap_key_data(
            jnp.where(in_warmup, jax.random.key_data(k_warm), jax.random.key_data(k_samp)),
            impl=jax.random.key_impl(key),
        )
        keys = chain_keys(base, jnp.where(in_warmup, i, offset + j), num_chains)
        states, infos = jax.vmap(lambda s, st, kk: s.step(energy, st, key=kk))(
            c["samplers"], c["states"], keys
        )
        c["states"] = states = _constrain(states, cfg.sharding)
        if num_warmup > 0:
            w = in_warmup.astype(jnp.int32)
            c["w_grads"] = c["w_grads"] + w * infos.num_grad_evals
            c["w_divs"] = c["w_divs"] + w * infos.is_divergent
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

            c["samplers"], c["astate"] = jax.lax.cond(
                in_warmup, adapt, lambda s, a: (s, a), c["samplers"], c["astate"]
            )
        # sampling-phase bookkeeping (masked during warmup)
        sampling = ~in_warmup
        ws = sampling.astype(dtype)
        n = jnp.maximum(j + 1, 1).astype(dtype)
        x = states.position.astype(dtype)
        delta = ws * (x - c["mean"])
        c["mean"] = c["mean"] + delta / n
        c["m2"] = c["m2"] + delta * (x - c["mean"])
        si = sampling.astype(jnp.int32)
        c["grads"] = c["grads"] + si * infos.num_grad_evals
        c["divs"] = c["divs"] + si * infos.is_divergent
        c["acc"] = c["acc"] + ws * infos.acceptance_rate.astype(dtype)
        block_grads = c["block_grads"] + si * infos.num_grad_evals
        block_div = c["block_div"] | (sampling & infos.is_divergent)
        write = sampling & ((j + 1) % thin == 0)
        slot = jnp.where(write, j // thin, n_kept)
        if cfg.store_samples:
            c["samples"] = c["samples"].at[slot].set(x)
        new_info = Info(
            acceptance_rate=infos.acceptance_rate.astype(dtype),
            is_divergent=block_div,
            energy_error=infos.energy_error.astype(dtype),
            num_grad_evals=block_grads,
        )
        c["info"] = jax.tree.map(lambda buf, v: buf.at[slot].set(v), c["info"], new_info)
        c["block_grads"] = jnp.where(write, 0, block_grads)
        c["block_div"] = jnp.where(write, False, block_div)
        if cfg.progress_every:
            done = i + 1
            jax.lax.cond(
                (done % cfg.progress_every == 0) | (done == total),
                lambda: jax.debug.callback(_tick, bar_id, done),
                lambda: None,
            )
        return c

    c = jax.lax.fori_loop(0, total, body, carry)
    swap = lambda a: jnp.swapaxes(a[:n_kept], 0, 1)  # noqa: E731
    n = jnp.asarray(cfg.num_steps, dtype)
    return dict(
        samples=None if c["samples"] is None else swap(c["samples"]),
        info=jax.tree.map(swap, c["info"]),
        mean=c["mean"],
        variance=c["m2"] / jnp.maximum(n - 1.0, 1.0),
        sampler=c["samplers"],
        final_state=c["states"],
        grads=c["grads"],
        divs=c["divs"],
        acceptance=c["acc"] / n,
        warm_grads=c["w_grads"],
        warm_divs=c["w_divs"],
    )


_run_traced = eqx.debug.assert_max_traces(_run_impl, max_traces=None)
_run = eqx.filter_jit(_run_traced)


# ---------------------------------------------------------------------------------------------
# The front door
# ---------------------------------------------------------------------------------------------


def _check_int(value, name, minimum):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}.")
    return int(value)


def _broadcast_chains(tree, num_chains):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (num_chains, *jnp.shape(a))), tree)


def sample(
    sampler: AbstractSampler,
    energy: AbstractEnergy,
    x0,
    *,
    key: Key,
    num_steps: int,
    num_warmup: int | None = None,
    num_chains: int | None = None,
    thin: int = 1,
    adaptation: AbstractAdaptation | str | None = "auto",
    store_samples: bool = True,
    progress: bool = False,
    shard: bool | None = None,
) -> SampleResult:
    """Run `num_chains` chains of `sampler` on `energy`: warmup with adaptation, then
    `num_steps` sampling steps, all compiled once (a second call with the same shapes and
    settings reuses the compiled loop).

    **Arguments:**

    - `sampler`: an `AbstractSampler` (its hyperparameters are the starting point of warmup).
    - `energy`: the target, an `AbstractEnergy`.
    - `x0`: one point (`event_shape`: every chain starts there), one point per chain
      (`(num_chains, *event_shape)`), or a previous `SampleResult` to resume from (its final
      states and adapted sampler; `num_warmup` then defaults to 0).
    - `key`: a JAX PRNG key (same key → bitwise-identical results). Resuming with the key of
      the previous run continues its random stream: the chains are those of one longer run.
    - `num_steps`: sampling steps per chain (after warmup); must be a multiple of `thin`.
    - `num_warmup`: adaptation steps per chain (default 1000, or 0 when resuming).
    - `num_chains`: number of chains (default: the leading axis of a batched `x0`, else 4).
    - `thin`: keep every `thin`-th sample (moments still use every step).
    - `adaptation`: `"auto"` (a sensible default per sampler: windowed diagonal metric and
      dual averaging; ChEES for `ChEESHMC`), `None` (no adaptation), or an `AbstractAdaptation`.
    - `store_samples`: if `False`, keep only streaming moments and counts (bounded memory).
    - `progress`: show a tqdm progress bar (zero cost when `False`).
    - `shard`: shard chains over all devices (`None`: when more than one device is visible and
      `num_chains` divides evenly; `True`: require it).

    **Returns:** a `SampleResult`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp
    import driftax as dx

    target = dx.energies.gaussian(jnp.zeros(3))
    result = dx.sample(dx.samplers.NUTS(step_size=0.5), target, jnp.zeros(3),
                       key=jax.random.key(0), num_steps=200, num_warmup=200, num_chains=2)
    result.samples.shape  # (2, 200, 3)
    ```
    """
    if not isinstance(sampler, AbstractSampler):
        raise TypeError(f"`sampler` must be an AbstractSampler, got {type(sampler).__name__}.")
    if not isinstance(energy, AbstractEnergy):
        raise TypeError(f"`energy` must be a driftax AbstractEnergy, got {type(energy).__name__}.")
    if not jnp.issubdtype(getattr(key, "dtype", np.float32), jax.dtypes.prng_key):
        try:  # a legacy uint32 key
            key = jax.random.wrap_key_data(jnp.asarray(key, jnp.uint32))
        except Exception as e:
            raise TypeError(f"`key` must be a JAX PRNG key, got {key!r}.") from e
    num_steps = _check_int(num_steps, "num_steps", 1)
    thin = _check_int(thin, "thin", 1)
    if num_steps % thin:
        raise ValueError(f"`num_steps` ({num_steps}) must be a multiple of `thin` ({thin}).")
    event_shape = tuple(energy.event_shape)
    resume = isinstance(x0, SampleResult)
    if num_warmup is None:
        num_warmup = 0 if resume else 1000
    num_warmup = _check_int(num_warmup, "num_warmup", 0)

    if adaptation == "auto":
        adaptation = default_adaptation(sampler)
    elif adaptation is None:
        adaptation = NoAdaptation()
    elif not isinstance(adaptation, AbstractAdaptation):
        raise TypeError(
            f"`adaptation` must be 'auto', None or an AbstractAdaptation, got {adaptation!r}."
        )

    if resume:
        prev = x0
        if type(prev.sampler) is not type(sampler):
            raise TypeError(
                f"resuming a {type(prev.sampler).__name__} run with a {type(sampler).__name__}."
            )
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
        samplers, states = prev.sampler, prev.final_state
        offset = prev.sampling_offset + prev.num_steps
    else:
        x0 = np.asarray(x0) if not isinstance(x0, jax.Array) else x0
        shape = tuple(np.shape(x0))
        if shape == event_shape:
            num_chains = 4 if num_chains is None else _check_int(num_chains, "num_chains", 1)
            x0s = jnp.broadcast_to(jnp.asarray(x0), (num_chains, *event_shape))
        elif shape[1:] == event_shape and len(shape) == len(event_shape) + 1:
            if num_chains is not None and num_chains != shape[0]:
                raise ValueError(
                    f"`num_chains` ({num_chains}) differs from x0's leading axis ({shape[0]})."
                )
            num_chains = shape[0]
            x0s = jnp.asarray(x0)
        else:
            raise ValueError(
                f"`x0` must have the energy's event shape {event_shape} or "
                f"(num_chains, *{event_shape}), got shape {shape}."
            )
        if not jnp.issubdtype(x0s.dtype, jnp.floating):
            x0s = x0s.astype(jnp.result_type(float))
        if not np.all(np.isfinite(np.asarray(x0s))):
            raise ValueError("`x0` must be finite.")
        sampler = adaptation.prepare(sampler, event_shape)
        offset = 0

    sharding = None
    devices = jax.devices()
    if shard is None:
        shard = len(devices) > 1 and num_chains % len(devices) == 0
    if shard:
        if num_chains % len(devices):
            raise ValueError(
                f"`num_chains` ({num_chains}) must be divisible by the number of devices "
                f"({len(devices)}) to shard chains; pass shard=False or change num_chains."
            )
        mesh = jax.sharding.Mesh(np.array(devices), ("chains",))
        sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("chains"))

    if not resume:
        if sharding is not None:
            x0s = jax.device_put(x0s, sharding)
        states = _init_states(sampler, energy, x0s)
        bad = ~np.isfinite(np.asarray(states.log_density))
        score = getattr(states, "score", None)
        if score is not None:
            bad |= ~np.all(np.isfinite(np.asarray(score).reshape(num_chains, -1)), axis=1)
        if np.any(bad):
            raise ValueError(
                "the log density (or its score) is not finite at `x0` for chain(s) "
                f"{np.flatnonzero(bad).tolist()}."
            )
        samplers = _broadcast_chains(sampler, num_chains)
    if sharding is not None:
        samplers = jax.device_put(samplers, sharding)
        states = jax.device_put(states, sharding)

    bar, bar_id, every = None, 0, 0
    total = num_warmup + num_steps
    if progress:
        from tqdm.auto import tqdm

        bar_id = next(_BAR_IDS)
        bar = tqdm(total=total, desc=type(sampler).__name__)
        _BARS[bar_id] = bar
        every = max(1, total // 100)
    cfg = _Config(
        num_chains=num_chains,
        num_warmup=num_warmup,
        num_steps=num_steps,
        thin=thin,
        store_samples=store_samples,
        progress_every=every,
        sharding=sharding,
    )
    try:
        out = _run(
            samplers,
            energy,
            states,
            key,
            jnp.asarray(offset, jnp.int32),
            jnp.asarray(bar_id, jnp.int32),
            adaptation,
            cfg,
        )
        if bar is not None:
            jax.block_until_ready(out)
            jax.effects_barrier()
    finally:
        if bar is not None:
            bar.close()
            _BARS.pop(bar_id, None)

    def total_of(a):
        return int(np.sum(np.asarray(a, dtype=np.int64)))

    return SampleResult(
        samples=out["samples"],
        info=out["info"],
        mean=out["mean"],
        variance=out["variance"],
        sampler=out["sampler"],
        final_state=out["final_state"],
        num_chains=num_chains,
        num_steps=num_steps,
        num_warmup=num_warmup,
        thin=thin,
        num_divergent=total_of(out["divs"]),
        num_grad_evals=total_of(out["grads"]),
        num_divergent_warmup=total_of(out["warm_divs"]),
        num_grad_evals_warmup=total_of(out["warm_grads"]),
        acceptance_rate=np.asarray(out["acceptance"]),
        sampling_offset=offset,
    )
