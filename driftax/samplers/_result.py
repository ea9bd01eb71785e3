"""`SampleResult`: what `driftax.sample` returns — draws in the user's structure, bounded-memory
summaries, diagnostics, health flags, ArviZ export, save / load / resume."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._custom_types import Array, PyTree
from ..energies._base import AbstractEnergy
from . import _diagnostics as diag
from ._base import AbstractSampler, Info
from ._core import ChainCounts, StreamStats, broadcast_chains, cast_floats, resolve_adaptation
from ._health import HealthReport


def _uses_default(energy: AbstractEnergy, name: str) -> bool:
    return getattr(type(energy), name) is getattr(AbstractEnergy, name)


def scalar_names(name: str, shape) -> list[str]:
    """Row names of a variable: `a` for a scalar, `a[0]`, `b[1, 0]` otherwise."""
    shape = tuple(shape)
    if not shape:
        return [name]
    return [f"{name}[{', '.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def coordinate_names(energy: AbstractEnergy) -> list[str]:
    """Names of the kernel array's coordinates (flat order), from `energy.variables(...,
    constrained=False)` when it is a rearrangement of the coordinates, else `x[i]`."""
    shape = tuple(energy.event_shape)
    dim = int(np.prod(shape))
    try:
        probe = jnp.arange(dim, dtype=jnp.float32).reshape(shape)
        named = energy.variables(probe, constrained=False)
        index: list[int] = []
        names: list[str] = []
        for name, value in named.items():
            v = np.asarray(value)
            index += [int(i) for i in v.reshape(-1)]
            names += scalar_names(name, v.shape)
        if sorted(index) == list(range(dim)):
            out = [""] * dim
            for i, n in zip(index, names):
                out[i] = n
            return out
    except Exception:  # noqa: BLE001 - fall back to plain coordinate names
        pass
    return scalar_names("x", shape)


def _chain_total(field: str, doc: str) -> property:
    """A read-only property: `counts.<field>` summed over the chains, as an int."""
    return property(
        lambda self: int(np.sum(np.asarray(getattr(self.counts, field), np.int64))), doc=doc
    )


@dataclass
class SampleResult:
    """What `driftax.sample` returns.

    - `samples`: the draws in the user's structure (the energy's `unravel`): for an array
      energy `(num_chains, num_steps // thin, *event_shape)`; for a pytree energy the example's
      pytree with leading `(num_chains, num_steps // thin)` axes on every leaf; `None` with
      `store_samples=False`. `kernel_samples`: the same draws as the kernels' flat arrays.
    - `info`: an `Info` of `(num_chains, num_steps // thin)` traces (kept by default when
      samples are; `store_info=`); `None` otherwise — nothing in the result then grows with
      `num_steps`.
    - `stats` (streaming moments and batch means) and `counts` (per-chain reductions of `Info`):
      over ALL sampling steps, constant memory. `mean`, `variance`: per chain.
    - `sampler`: the adapted sampler (one copy of every array hyperparameter per chain);
      `initial_sampler`: the sampler the run started from; `final_state`: the chains' last
      states. Pass the result as `x0` to resume.
    - counts: `num_divergent`, `num_grad_evals` (sampling phase, all chains),
      `num_divergent_warmup`, `num_grad_evals_warmup`; `acceptance_rate` per chain.
    - diagnostics (kernel coordinates): `ess` (bulk), `ess_tail`, `rhat`, `mcse_mean`,
      `mcse_sd` (ArviZ, rank-normalized; from batch means when samples were not stored).
    - `health`: a `HealthReport` (flags); `warnings`: its sentences.
    - `summary()`, `to_arviz()`, `draws()`, `save()` / `SampleResult.load()`.
    """

    energy: AbstractEnergy
    kernel_samples: Array | None
    info: Info | None
    stats: StreamStats
    counts: ChainCounts
    sampler: AbstractSampler
    initial_sampler: AbstractSampler
    final_state: PyTree
    num_chains: int
    num_steps: int
    num_warmup: int
    thin: int
    sampling_offset: int = 0
    health: HealthReport = field(default_factory=HealthReport)
    _cache: dict = field(default_factory=dict, repr=False)

    # -- draws --------------------------------------------------------------------------------

    @property
    def samples(self) -> PyTree | None:
        """The draws in the user's structure (see the class docstring); `None` if not stored."""
        x = self.kernel_samples
        if x is None or _uses_default(self.energy, "unravel"):
            return x
        if "samples" not in self._cache:
            self._cache["samples"] = jax.vmap(jax.vmap(self.energy.unravel))(x)
        return self._cache["samples"]

    def _needs_samples(self) -> Array:
        if self.kernel_samples is None:
            raise ValueError("this result has no stored samples (`store_samples=False`).")
        return self.kernel_samples

    def draws(self, *, constrained: bool = True) -> dict[str, np.ndarray]:
        """`{variable name: (num_chains, num_draws, *shape)}` from `energy.variables` (numpyro
        energies: the model's sites, on the constrained scale unless `constrained=False`)."""
        key = ("draws", constrained)
        if key not in self._cache:
            x = self._needs_samples()
            fn = jax.vmap(jax.vmap(lambda p: self.energy.variables(p, constrained=constrained)))
            self._cache[key] = {k: np.asarray(v) for k, v in fn(x).items()}
        return self._cache[key]

    # -- counts -------------------------------------------------------------------------------

    @property
    def mean(self) -> Array:
        """Per-chain mean of the kernel coordinates over every sampling step."""
        return self.stats.mean

    @property
    def variance(self) -> Array:
        """Per-chain variance of the kernel coordinates over every sampling step."""
        n = jnp.maximum(self.stats.count - 1, 1).astype(self.stats.m2.dtype)
        return self.stats.m2 / n

    num_divergent = _chain_total("num_divergent", "Divergent transitions after warmup, all chains.")
    num_grad_evals = _chain_total(
        "num_grad_evals", "Gradient evaluations after warmup, all chains."
    )
    num_divergent_warmup = _chain_total(
        "num_divergent_warmup", "Divergent transitions during warmup, all chains."
    )
    num_grad_evals_warmup = _chain_total(
        "num_grad_evals_warmup", "Gradient evaluations during warmup, all chains."
    )

    @property
    def acceptance_rate(self) -> np.ndarray:
        """Mean acceptance rate of each chain after warmup."""
        return np.asarray(self.counts.acceptance_sum) / max(self.num_steps, 1)

    @property
    def step_size(self) -> Array:
        """The (adapted) step size of each chain."""
        return self.sampler.step_size  # pyright: ignore[reportAttributeAccessIssue]

    @property
    def warnings(self) -> tuple[str, ...]:
        """The health problems found (the `SamplingWarning` sentences); empty when healthy."""
        return self.health.messages

    # -- diagnostics --------------------------------------------------------------------------

    def _streamed(self) -> dict[str, np.ndarray]:
        if "streamed" not in self._cache:
            self._cache["streamed"] = diag.batch_means_estimates(self.stats)
        return self._cache["streamed"]

    def _diag(self, name, fn, streamed: str | None = None):
        if name not in self._cache:
            if self.kernel_samples is None:
                if streamed is None:
                    raise ValueError(
                        f"`{name}` needs stored samples (`store_samples=False`); mean, sd, "
                        "MCSE, ESS and R-hat are estimated from batch means instead."
                    )
                shape = tuple(self.energy.event_shape)
                self._cache[name] = self._streamed()[streamed].reshape(shape)
            else:
                self._cache[name] = fn(self.kernel_samples)
        return self._cache[name]

    @property
    def ess(self) -> np.ndarray:
        """Bulk effective sample size per kernel coordinate (all chains together)."""
        return self._diag("ess", lambda s: diag.ess(s, "bulk"), "ess")

    @property
    def ess_tail(self) -> np.ndarray:
        """Tail effective sample size per kernel coordinate (needs stored samples)."""
        return self._diag("ess_tail", lambda s: diag.ess(s, "tail"))

    @property
    def rhat(self) -> np.ndarray:
        """Rank-normalized split R-hat per kernel coordinate (batch-means Gelman–Rubin
        without stored samples)."""
        return self._diag("rhat", diag.rhat, "rhat")

    @property
    def mcse_mean(self) -> np.ndarray:
        """Monte Carlo standard error of the mean per kernel coordinate."""
        return self._diag("mcse_mean", lambda s: diag.mcse(s, "mean"), "mcse")

    @property
    def mcse_sd(self) -> np.ndarray:
        """Monte Carlo standard error of the sd per kernel coordinate (needs stored samples)."""
        return self._diag("mcse_sd", lambda s: diag.mcse(s, "sd"))

    # -- presentation -------------------------------------------------------------------------

    def _rows(self, constrained: bool):
        """`(names, columns)` of the summary table."""
        if self.kernel_samples is None:
            est = self._streamed()
            names = coordinate_names(self.energy)
            nan = np.full_like(est["mean"], np.nan)
            cols = [est["mean"], est["sd"], est["mcse"], est["ess"], nan, est["rhat"]]
            return names, [np.asarray(c).reshape(-1) for c in cols]
        names, flats = [], []
        for name, v in self.draws(constrained=constrained).items():
            names += scalar_names(name, v.shape[2:])
            flats.append(np.asarray(v, np.float64).reshape(v.shape[0], v.shape[1], -1))
        x = np.concatenate(flats, axis=-1)
        cols = [
            x.mean(axis=(0, 1)),
            x.std(axis=(0, 1)),
            diag.mcse(x, "mean"),
            diag.ess(x, "bulk"),
            diag.ess(x, "tail"),
            diag.rhat(x),
        ]
        return names, [np.asarray(c).reshape(-1) for c in cols]

    def summary(self, max_rows: int = 20, *, constrained: bool = True) -> str:
        """A table of mean, sd, MCSE, bulk/tail ESS and R-hat, one row per scalar of
        `energy.variables` (`a[0]`, `b[1, 0]`; numpyro energies: site names on the constrained
        scale unless `constrained=False`), first `max_rows` rows, then the run's counts and any
        health warnings. Without stored samples: the kernel coordinates, from batch means."""
        names, cols = self._rows(constrained)
        width = max([8, *(len(n) for n in names[:max_rows])])
        head = ["mean", "sd", "mcse", "ess_bulk", "ess_tail", "r_hat"]
        lines = [f"{'':>{width}} " + " ".join(f"{h:>10}" for h in head[:-1]) + f" {'r_hat':>7}"]
        for i in range(min(len(names), max_rows)):
            m, s, e, b, t, r = (c[i] for c in cols)
            lines.append(
                f"{names[i]:>{width}} {m:10.4f} {s:10.4f} {e:10.4f} {b:10.1f} {t:10.1f} {r:7.3f}"
            )
        if len(names) > max_rows:
            lines.append(f"... ({len(names) - max_rows} more rows)")
        ess, rhat = diag_finite(cols[3]), diag_finite(cols[5])
        lines.append(
            f"chains={self.num_chains} steps={self.num_steps} warmup={self.num_warmup} "
            f"thin={self.thin} acceptance={float(np.mean(self.acceptance_rate)):.3f} "
            f"divergent={self.num_divergent} grad_evals={self.num_grad_evals} "
            f"(+{self.num_grad_evals_warmup} warmup) min_ess={ess[0]:.1f} max_rhat={rhat[1]:.3f}"
        )
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)

    def __repr__(self) -> str:
        try:
            ess, rhat = float(np.nanmin(self.ess)), float(np.nanmax(self.rhat))
        except Exception:  # noqa: BLE001 - a repr never fails
            ess = rhat = float("nan")
        text = (
            f"SampleResult({type(self.initial_sampler).__name__}, {self.num_chains} chains x "
            f"{self.num_steps // self.thin} draws, divergences={self.num_divergent}, "
            f"min_ess={ess:.0f}, max_rhat={rhat:.3f}, "
        )
        if self.warnings:
            h = self.health
            flags = [
                name
                for name, on in (
                    ("step_size_collapsed", h.step_size_collapsed),
                    ("step_size_exploded", h.step_size_exploded),
                    ("frozen_chains", bool(h.frozen_chains)),
                    ("low_acceptance", h.low_acceptance),
                    ("divergent", h.divergent),
                    ("high_rhat", h.high_rhat),
                    ("low_ess", h.low_ess),
                )
                if on
            ]
            return text + f"warnings=[{', '.join(flags)}] (see .warnings))"
        return text + "healthy)"

    def to_arviz(self, *, constrained: bool = True):
        """An `arviz.InferenceData`: one posterior variable per name of `energy.variables`
        (numpyro: the sites, constrained unless `constrained=False`) and, when `Info` traces
        were kept, `sample_stats` (`acceptance_rate`, `diverging`, `energy_error`, `n_steps`)."""
        az = diag._arviz()
        stats = None
        if self.info is not None:
            stats = dict(
                acceptance_rate=np.asarray(self.info.acceptance_rate),
                diverging=np.asarray(self.info.is_divergent),
                energy_error=np.asarray(self.info.energy_error),
                n_steps=np.asarray(self.info.num_grad_evals),
            )
        return az.from_dict(posterior=dict(self.draws(constrained=constrained)), sample_stats=stats)

    # -- save / load --------------------------------------------------------------------------

    def save(self, path) -> None:
        """Save to an `.npz` file: the draws, `Info` traces, streaming statistics, counts, the
        health flags, and (serialised with equinox) the adapted sampler, the initial sampler
        and the final chain states, so that a loaded result can be resumed. Load it with
        [`SampleResult.load`][]."""
        buf = io.BytesIO()
        eqx.tree_serialise_leaves(buf, (self.sampler, self.initial_sampler, self.final_state))
        h = self.health
        meta = dict(
            num_chains=self.num_chains,
            num_steps=self.num_steps,
            num_warmup=self.num_warmup,
            thin=self.thin,
            sampling_offset=self.sampling_offset,
            sampler=type(self.initial_sampler).__name__,
            health=dict(
                step_size_collapsed=h.step_size_collapsed,
                step_size_exploded=h.step_size_exploded,
                frozen_chains=list(h.frozen_chains),
                low_acceptance=h.low_acceptance,
                divergent=h.divergent,
                high_rhat=h.high_rhat,
                low_ess=h.low_ess,
                messages=list(h.messages),
            ),
        )
        arrays: dict[str, Any] = dict(
            meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
            chains_state=np.frombuffer(buf.getvalue(), np.uint8),
        )
        if self.kernel_samples is not None:
            arrays["kernel_samples"] = np.asarray(self.kernel_samples)
        if self.info is not None:
            for k in ("acceptance_rate", "is_divergent", "energy_error", "num_grad_evals"):
                arrays[f"info.{k}"] = np.asarray(getattr(self.info, k))
        for prefix, obj in (("stats", self.stats), ("counts", self.counts)):
            for f in obj.__dataclass_fields__:
                arrays[f"{prefix}.{f}"] = np.asarray(getattr(obj, f))
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    @classmethod
    def load(
        cls, path, sampler: AbstractSampler, energy: AbstractEnergy, adaptation="auto"
    ) -> SampleResult:
        """Load a result written by [`SampleResult.save`][].

        The saved file holds arrays only; the code objects are rebuilt from what you pass:
        `sampler` — the sampler the run started from (same type and structure, e.g.
        `NUTS(step_size=0.5)`), `energy` — the same target, `adaptation` — the adaptation of
        the run (it fixes the adapted sampler's structure, e.g. a diagonal metric). The loaded
        result can be summarised, exported and resumed (`dx.sample(sampler, energy, loaded,
        ...)`) exactly as the original."""
        with np.load(path) as z:
            data = {k: z[k] for k in z.files}
        meta = json.loads(bytes(data.pop("meta")).decode())
        if meta["sampler"] != type(sampler).__name__:
            raise TypeError(
                f"`sampler` must be a {meta['sampler']} (the saved run's), got "
                f"{type(sampler).__name__}."
            )
        num_chains = meta["num_chains"]
        adaptation = resolve_adaptation(adaptation, sampler)
        dtype = energy.dtype
        prepared = cast_floats(adaptation.prepare(sampler, tuple(energy.event_shape)), dtype)
        x0s = jnp.zeros((num_chains, *energy.event_shape), dtype)
        states_shape = jax.eval_shape(jax.vmap(lambda x: prepared.init(energy, x)), x0s)
        like_states = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), states_shape)
        like = (broadcast_chains(prepared, num_chains), sampler, like_states)
        blob = io.BytesIO(bytes(data.pop("chains_state")))
        adapted, initial, final_state = eqx.tree_deserialise_leaves(blob, like)
        info = None
        if "info.acceptance_rate" in data:
            info = Info(
                acceptance_rate=jnp.asarray(data["info.acceptance_rate"]),
                is_divergent=jnp.asarray(data["info.is_divergent"]),
                energy_error=jnp.asarray(data["info.energy_error"]),
                num_grad_evals=jnp.asarray(data["info.num_grad_evals"]),
            )
        stats = StreamStats(
            **{f: jnp.asarray(data[f"stats.{f}"]) for f in StreamStats.__dataclass_fields__}
        )
        counts = ChainCounts(
            **{f: jnp.asarray(data[f"counts.{f}"]) for f in ChainCounts.__dataclass_fields__}
        )
        h = meta["health"]
        health = HealthReport(
            step_size_collapsed=bool(h["step_size_collapsed"]),
            step_size_exploded=bool(h["step_size_exploded"]),
            frozen_chains=tuple(int(c) for c in h["frozen_chains"]),
            low_acceptance=bool(h["low_acceptance"]),
            divergent=bool(h["divergent"]),
            high_rhat=bool(h["high_rhat"]),
            low_ess=bool(h["low_ess"]),
            messages=tuple(str(m) for m in h["messages"]),
        )
        samples = data.get("kernel_samples")
        return cls(
            energy=energy,
            kernel_samples=None if samples is None else jnp.asarray(samples),
            info=info,
            stats=stats,
            counts=counts,
            sampler=adapted,
            initial_sampler=initial,
            final_state=final_state,
            num_chains=num_chains,
            num_steps=meta["num_steps"],
            num_warmup=meta["num_warmup"],
            thin=meta["thin"],
            sampling_offset=meta["sampling_offset"],
            health=health,
        )


def diag_finite(values) -> tuple[float, float]:
    """`(min, max)` over the finite entries (`nan` if none)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not v.size:
        return float("nan"), float("nan")
    return float(v.min()), float(v.max())
