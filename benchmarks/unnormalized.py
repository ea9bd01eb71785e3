"""Benchmark: samplers of unnormalized densities on the standard targets (method × target).

Targets: gmm25, gmm40, funnel(10), many_well(32), dw4, lj13, phi4 (1-D chain), lgcp(40).
Methods: SMC (adaptive tempering, MALA moves), AIS (the same without resampling), parallel
tempering (through `driftax.sample`), FAB (`driftax.flows.fit_fab`, on gmm40 and many_well,
with an SMC row given the same number of energy evaluations), and the learned diffusion samplers of `driftax.diffusion`
(PIS, DDS, CMCD) where they are available. Every method runs once cold (compilation included)
and once warm with a new key; the warm run's samples are scored.

Metrics, where the target allows them:

- `|Δlog Z|` of the importance-sampling estimate (and of the ELBO for learned samplers) against
  the exact `log Z` (gmm, funnel, many_well, phi4) or the shipped reference (lgcp, with its error);
- EUBO (learned samplers, on exact or reference samples);
- Sinkhorn divergence (ε = 0.1 · mean squared scale) or MMD to exact / reference samples;
- mode coverage and mode-weight TV (gmm25, gmm40; the two-sign modes of phi4);
- energy-W2 and interatomic-distance-W2 (dw4, lj13, against the shipped reference samples);
- wall time (cold and warm) and target evaluations (gradient evaluations).

Output: `out/unnormalized.json` and `out/unnormalized.md` (a table per metric in the layout of
published benchmark tables: rows are methods, columns targets).

Usage: `python benchmarks/unnormalized.py [--quick | --full] [--out out] [--targets ...]
[--methods ...]`. `--quick` is the CPU profile (minutes on 2 cores); `--full` is the GPU profile
(more particles, longer training).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds

# ---------------------------------------------------------------------------------------------
# Targets
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    name: str
    energy: de.AbstractEnergy
    log_z: float | None = None  # exact or reference log Z
    log_z_stderr: float = 0.0  # error of a reference log Z
    truth: np.ndarray | None = None  # exact or reference samples
    scale: float = 1.0  # a typical length, for SMC's reference and Sinkhorn's epsilon
    modes: str | None = None  # "mixture" (GaussianMixture) or "sign" (phi4's two modes)
    particles: tuple[int, int] | None = None  # (n_particles, spatial_dim)
    truth2: np.ndarray | None = None  # an independent second set: the sample-noise baseline


def make_target(name: str, n_truth: int) -> Target:
    """Build a named target with its ground truth (and a second, independent truth set)."""
    t = _make_target(name, 2 * n_truth)
    if t.truth is not None:
        t.truth, t.truth2 = t.truth[:n_truth], t.truth[n_truth:]
    return t


def _make_target(name: str, n_truth: int) -> Target:
    key = jax.random.key(12345)
    if name in ("gmm25", "gmm40"):
        e = getattr(de, name)()
        scale = 4.0 if name == "gmm25" else 30.0
        return Target(name, e, 0.0, 0.0, np.asarray(e.sample(key, n_truth)), scale, "mixture")
    if name == "funnel":
        e = de.funnel(10)
        return Target(name, e, 0.0, 0.0, np.asarray(e.sample(key, n_truth)), 3.0)
    if name == "many_well":
        e = de.many_well(32)
        truth = np.asarray(e.sample(key, n_truth))
        return Target(name, e, float(e.log_normalizer), 0.0, truth, 1.5)
    if name in ("dw4", "lj13"):
        e = getattr(de, name)()
        ref = np.asarray(e.reference_samples())
        truth = ref[np.random.default_rng(0).permutation(len(ref))[:n_truth]]
        scale = 2.0 if name == "dw4" else 1.0
        return Target(name, e, None, 0.0, truth, scale, particles=(e.n_particles, e.spatial_dim))
    if name == "phi4":
        e = de.phi4(64)
        truth = np.asarray(e.sample(key, n_truth)) if isinstance(e, de.AbstractSampleable) else None
        return Target(name, e, float(e.log_normalizer), 0.0, truth, 1.0, "sign")
    if name == "lgcp":
        # the whitened parameterization (f = μ + L e, prior N(0, I) on e), as in AFT/CRAFT: the
        # reference N(0, I) is the prior, so the annealing only tempers the likelihood
        e = de.lgcp(40, whitened=True)
        return Target(name, e, float(e.log_normalizer), float(e.log_normalizer_stderr), None, 1.0)
    raise ValueError(f"unknown target {name!r}")


ALL_TARGETS = ["gmm25", "gmm40", "funnel", "many_well", "dw4", "lj13", "phi4", "lgcp"]


# ---------------------------------------------------------------------------------------------
# Methods: each returns samples (n, d) (equally weighted), log Z estimates and evaluation counts
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Output:
    samples: np.ndarray
    log_z: float | None = None
    log_z_stderr: float | None = None
    elbo: float | None = None
    eubo: float | None = None
    grad_evals: int = 0
    notes: str = ""
    energy_evals: int | None = None  # target evaluations, training included (where counted)


def _resample(key, particles, log_weights, n):
    idx = ds.resample(log_weights, key=key, scheme="multinomial", num_samples=n)
    return np.asarray(particles[idx])


def _smc(resampling: str):
    def method(t: Target, key, quick: bool) -> Output:
        n = 2000 if quick else 10_000
        mcmc_steps = 10 if quick else 20
        if t.name == "lgcp":  # 1600-D with a dense prior: a small population on CPU
            if quick and resampling == "never":
                raise Skip("quick profile: SMC only on lgcp")
            n, mcmc_steps = (512, 10) if quick else (2000, 20)
        step = {"gmm40": 1.0, "gmm25": 0.3, "lgcp": 0.05, "lj13": 0.005, "dw4": 0.05}.get(
            t.name, 0.1
        )
        smc = ds.SMC(
            ds.MALA(step_size=step),
            reference_scale=t.scale,
            target_ess=0.9 if resampling != "never" else 0.95,
            num_mcmc_steps=mcmc_steps,
            resampling=resampling,
        )
        k_run, k_res = jax.random.split(key)
        r = smc.run(t.energy, key=k_run, num_particles=n)
        x = _resample(k_res, r.samples, r.log_weights, n)
        stages = int(r.extras["num_stages"])
        stage_ess = float(np.asarray(r.extras["stage_ess"])[stages - 1])
        return Output(
            samples=x.reshape(n, -1),
            log_z=float(r.log_normalizer.value),
            log_z_stderr=float(r.log_normalizer.stderr),
            elbo=None if r.elbo is None else float(r.elbo.value),  # AIS only
            grad_evals=int(r.num_grad_evals),
            notes=f"{stages} stages, final ESS {stage_ess:.0f}",
        )

    return method


def _pt(t: Target, key, quick: bool) -> Output:
    if quick and t.name == "lgcp":
        raise Skip("quick profile: SMC only on lgcp")
    steps = 1000 if quick else 10_000
    chains = 4
    step = {"gmm40": 0.5, "gmm25": 0.3, "lgcp": 0.05, "lj13": 0.005, "dw4": 0.05}.get(t.name, 0.1)
    max_t = {"gmm40": 300.0, "gmm25": 50.0}.get(t.name, 20.0)
    pt = ds.ParallelTempering(ds.MALA(step_size=step), num_replicas=8, max_temperature=max_t)
    x0 = jnp.zeros(t.energy.event_shape)
    if t.particles is not None:  # start particles apart (coincident particles are singular)
        x0 = jax.random.normal(jax.random.key(7), t.energy.event_shape) * t.scale
    res = dx.sample(
        pt,
        t.energy,
        x0,
        key=key,
        num_steps=steps,
        num_warmup=steps,
        num_chains=chains,
        adaptation=ds.ParallelTemperingAdaptation(),
    )
    x = np.asarray(res.samples).reshape(steps * chains, -1)
    return Output(
        samples=x,
        grad_evals=int(res.num_grad_evals + res.num_grad_evals_warmup),
        notes=f"max R-hat {float(np.nanmax(res.rhat)):.2f}",
    )


class Skip(Exception):
    """A method that does not apply to a target in this profile (reported, not an error)."""


QUICK_LEARNED_TARGETS = ("gmm25", "gmm40", "funnel", "many_well")
# the prior / reference scale of the learned samplers (about the target's spread)
LEARNED_SIGMA = {"gmm25": 8.0, "gmm40": 30.0, "funnel": 3.0, "many_well": 1.5}


def _learned(kind: str, loss: str = "log_variance"):
    """A diffusion sampler of `driftax.diffusion` trained from the energy alone, then sampled."""

    def method(t: Target, key, quick: bool) -> Output:
        import driftax.diffusion as dd

        if quick and t.name not in QUICK_LEARNED_TARGETS:
            raise Skip("full (GPU) profile only")
        if t.name == "lgcp":
            raise Skip("not run: 1600-D")
        d = t.energy.dim
        iters, batch = (400, 128) if quick else (20_000, 256)
        steps = 30 if quick else 100
        sigma = LEARNED_SIGMA.get(t.name, t.scale)
        k_net, k_fit, k_run = jax.random.split(key, 3)
        kw = dict(key=k_net, num_steps=steps, hidden=64 if quick else 128)
        search = None
        if kind == "PIS":
            extra = {"particles": t.particles} if t.particles is not None else {}
            sampler = dd.PIS(d, sigma=sigma, **kw, **extra)
        elif kind == "DDS":
            sampler = dd.DDS(d, sigma=sigma, **kw)
        else:  # CMCD needs off-policy paths (a MALA-refined replay buffer) to keep its ESS
            sampler = dd.CMCD(d, sigma=sigma, **kw)
            search = dd.LocalSearch()
        sampler, info = dd.fit_sampler(
            sampler,
            t.energy,
            key=k_fit,
            num_steps=iters,
            batch_size=batch,
            loss=loss,
            local_search=search,
        )
        n = 2000 if quick else 10_000
        target_samples = None if t.truth is None else jnp.asarray(t.truth.reshape(len(t.truth), -1))
        r = sampler.run(t.energy, key=k_run, num_samples=n, target_samples=target_samples)
        x = _resample(jax.random.fold_in(k_run, 1), r.samples, r.log_weights, n)
        grads = (iters * batch + 2 * n) * steps  # every path step evaluates the target score
        return Output(
            samples=x.reshape(n, -1),
            log_z=float(r.log_normalizer.value),
            log_z_stderr=float(r.log_normalizer.stderr),
            elbo=float(r.elbo.value),
            eubo=None if r.eubo is None else float(r.eubo.value),
            grad_evals=grads,
            notes=f"{iters} steps ({loss}), ESS {float(r.ess):.0f}/{n}, "
            f"{r.num_nonfinite} non-finite paths",
        )

    return method


def learned_methods() -> dict[str, Callable]:
    """PIS / DDS / CMCD from `driftax.diffusion` (log-variance loss), when available."""
    import driftax.diffusion as dd

    names = [k for k in ("PIS", "DDS", "CMCD") if hasattr(dd, k) and hasattr(dd, "fit_sampler")]
    methods = {k: _learned(k) for k in names}
    for m in methods.values():
        m.train_once = True  # training is the cost: one run, compilation included
    return methods


# ---------------------------------------------------------------------------------------------
# FAB (driftax.flows.fit_fab) and SMC given the same number of energy evaluations
# ---------------------------------------------------------------------------------------------

FAB_TARGETS = ("gmm40", "many_well")
FAB_BUDGET: dict[str, int] = {}  # target -> FAB's energy evaluations (training + evaluation)


def fab_initial_flow(energy, name: str, key):
    """The flow FAB starts from: a coupling flow followed by a scale to the target's spread
    (the coupling layers start at the identity). `key` is `fab_run`'s key."""
    import driftax.flows as fl

    d = energy.dim
    base = fl.coupling_flow(
        jax.random.split(key, 4)[0], dim=d, num_layers=8 if d > 2 else 6, hidden=64
    )
    spread = {"gmm40": 20.0, "many_well": 1.5}[name]
    return fl.Flow(base.base, fl.Chain([base.bijection, fl.Affine(0.0, spread * jnp.ones(d))]))


def fab_run(energy, name: str, key, *, iters: int, batch: int, n: int) -> tuple[Output, dict]:
    """Train a coupling flow with FAB (prioritized buffer of 8 batches) on `energy` (`name`
    picks the flow's scale and the AIS settings), then importance-sample `n` draws from it.
    Returns the `Output` and a dict of extra numbers (ESS, the training's energy evaluations)."""
    import optax

    import driftax.flows as fl

    _, k_fit, k_run, k_res = jax.random.split(key, 4)
    flow = fab_initial_flow(energy, name, key)
    ais = ds.AIS(
        ds.HMC(step_size=0.5 if name == "gmm40" else 0.1, num_integration_steps=5),
        schedule=jnp.linspace(0.0, 1.0, 3 if name == "gmm40" else 5),
        num_mcmc_steps=1,
        target_acceptance=0.65,
    )
    flow, losses = fl.fit_fab(
        flow,
        energy,
        key=k_fit,
        optimizer=optax.adam(1e-3),
        num_steps=iters,
        batch_size=batch,
        ais=ais,
        buffer_size=8 * batch,
    )
    x, log_q = flow.sample_and_log_density(k_run, (n,))
    log_w = np.asarray(jax.vmap(energy.log_density)(x) - log_q, np.float64)
    finite = np.isfinite(log_w)
    lw = np.where(finite, log_w, -np.inf)
    m = lw.max()
    w = np.exp(lw - m)
    log_z = float(m + np.log(w.mean()))
    stderr = float(np.std(w / w.mean(), ddof=1) / math.sqrt(n))  # delta method on log Ẑ
    ess = float(w.sum() ** 2 / (w**2).sum())
    train_evals = int(losses["buffer_fill_energy_evals"]) + int(np.sum(losses["num_energy_evals"]))
    evals = train_evals + n
    dropped = int(np.sum(losses["num_nonfinite_weights"]))
    out = Output(
        samples=_resample(k_res, np.asarray(x), jnp.asarray(lw), n).reshape(n, -1),
        log_z=log_z,
        log_z_stderr=stderr,
        elbo=float(np.mean(log_w[finite])),
        grad_evals=evals,  # AIS/HMC: (nearly) every evaluation takes a gradient
        energy_evals=evals,
        notes=f"{iters} steps × {batch} AIS draws, buffer {8 * batch}, ESS {ess:.0f}/{n}, "
        f"{int((~finite).sum())} non-finite IS weights, {dropped} AIS draws dropped in training",
    )
    return out, {"ess": ess, "train_energy_evals": train_evals, "dropped": dropped}


def _fab(t: Target, key, quick: bool) -> Output:
    """FAB with the prioritized buffer, then importance sampling with the trained flow."""
    if t.name not in FAB_TARGETS:
        raise Skip("FAB rows: gmm40 and many_well")
    iters, batch = (400, 128) if quick else (10_000, 512)
    out, _ = fab_run(t.energy, t.name, key, iters=iters, batch=batch, n=2000 if quick else 10_000)
    FAB_BUDGET[t.name] = int(out.energy_evals or 0)
    return out


def _smc_at_fab_budget(t: Target, key, quick: bool) -> Output:
    """SMC (MALA moves, fixed schedule β = (k/K)^4) given FAB's energy evaluations."""
    if t.name not in FAB_BUDGET:
        raise Skip("needs the FAB row on this target first (its budget)")
    budget = FAB_BUDGET[t.name]
    n, moves = 2000, 10
    # evaluations: n (initial) + K · n · (moves + 2) (each MALA move and two re-evaluations)
    stages = max(1, round((budget / n - 1) / (moves + 2)))
    step = {"gmm40": 1.0}.get(t.name, 0.1)
    smc = ds.SMC(
        ds.MALA(step_size=step),
        schedule=jnp.linspace(0.0, 1.0, stages + 1) ** 4,
        reference_scale=t.scale,
        num_mcmc_steps=moves,
    )
    k_run, k_res = jax.random.split(key)
    r = smc.run(t.energy, key=k_run, num_particles=n)
    return Output(
        samples=_resample(k_res, r.samples, r.log_weights, n).reshape(n, -1),
        log_z=float(r.log_normalizer.value),
        log_z_stderr=float(r.log_normalizer.stderr),
        grad_evals=int(r.num_grad_evals),
        energy_evals=int(r.num_energy_evals),
        notes=f"{stages} stages × {moves} MALA moves for FAB's budget of {budget:,} evaluations",
    )


_fab.train_once = True  # training is the cost: one run, compilation included

METHODS: dict[str, Callable] = {
    "SMC": _smc("multinomial"),
    "AIS": _smc("never"),
    "PT": _pt,
    "FAB": _fab,
    "SMC (FAB's budget)": _smc_at_fab_budget,
}


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


def score(t: Target, out: Output, key) -> dict:
    """Every metric the target allows for one method's output."""
    m: dict = {}
    x = out.samples
    finite = np.isfinite(x).all(axis=1)
    m["nonfinite_fraction"] = float(1 - finite.mean())
    x = x[finite]
    if t.log_z is not None and out.log_z is not None:
        m["log_z"] = out.log_z
        m["log_z_stderr"] = out.log_z_stderr
        m["abs_dlogz"] = abs(out.log_z - t.log_z)
    if t.log_z is not None and out.elbo is not None:
        m["abs_dlogz_elbo"] = abs(out.elbo - t.log_z)
    if out.eubo is not None:
        m["eubo"] = out.eubo
    if t.truth is not None and len(x) > 1:
        n = min(len(x), len(t.truth), 2000)
        xs = jnp.asarray(x[:n], jnp.float32)
        ys = jnp.asarray(t.truth[:n].reshape(n, -1), jnp.float32)
        if t.particles is None:
            eps = 0.1 * float(np.mean(np.var(t.truth.reshape(len(t.truth), -1), axis=0)))
            m["sinkhorn"] = float(de.sinkhorn_divergence(xs, ys, epsilon=eps).regularized_cost)
            m["mmd"] = float(de.mmd(xs, ys).unbiased)
        else:
            m["energy_w2"] = float(de.energy_w2(xs, ys, t.energy))
            m["distance_w2"] = float(de.interatomic_distance_w2(xs, ys, *t.particles))
    if t.modes == "mixture":
        cover = de.mode_coverage(jnp.asarray(x), t.energy)
        m["modes_covered"] = int(cover.num_covered)
        m["num_modes"] = int(np.asarray(cover.counts).shape[0])
        m["mode_weight_tv"] = float(cover.weight_tv)
    if t.modes == "sign":
        frac = float(np.mean(x.mean(axis=1) > 0))
        m["positive_mode_weight"] = frac  # exact 0.5
    return m


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


TABLES = [
    ("|Δlog Z| (importance sampling)", "abs_dlogz", 3),
    ("|Δlog Z| (ELBO)", "abs_dlogz_elbo", 3),
    ("Sinkhorn divergence to exact samples", "sinkhorn", 4),
    ("MMD to exact samples", "mmd", 4),
    ("energy W2 (particles)", "energy_w2", 3),
    ("interatomic-distance W2 (particles)", "distance_w2", 3),
    ("modes covered", "modes_covered", 0),
    ("mode-weight TV", "mode_weight_tv", 3),
    ("phi4: weight of the positive mode (exact 0.5)", "positive_mode_weight", 3),
    ("warm wall time (s)", "warm_seconds", 1),
    ("cold wall time incl. compilation (s)", "cold_seconds", 1),
    ("gradient evaluations", "grad_evals", 0),
    ("energy evaluations (where counted; training included)", "energy_evals", 0),
]


def markdown(results: dict, targets: list[str], methods: list[str], quick: bool) -> str:
    lines = [
        "# Unnormalized-density samplers: method × target",
        "",
        f"Profile: {'quick (CPU)' if quick else 'full'}; jax {jax.__version__}, "
        f"backend {jax.default_backend()}. Warm run scored (learned samplers: one run, training "
        "and compilation included, reported as cold); times include the whole run. "
        "The row `exact samples` scores a second independent set of exact (or reference) "
        "samples: the sample-noise floor of each distance.",
        "",
    ]
    for title, field, digits in TABLES:
        cols = [t for t in targets if any(field in results.get(m, {}).get(t, {}) for m in methods)]
        if not cols:
            continue
        lines += [f"## {title}", "", "| method | " + " | ".join(cols) + " |"]
        lines.append("|---|" + "---|" * len(cols))
        for m in methods:
            cells = []
            for t in cols:
                r = results.get(m, {}).get(t, {})
                v = r.get(field)
                if field == "modes_covered" and v is not None:
                    cells.append(f"{v}/{r['num_modes']}")
                elif field == "abs_dlogz" and v is not None and r.get("log_z_stderr") is not None:
                    cells.append(f"{v:.3f} (s.e. {r['log_z_stderr']:.3f})")
                elif "error" in r:
                    cells.append("error")
                else:
                    cells.append(_fmt(v, digits) if not isinstance(v, int) else f"{v:,}")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
    notes = [
        f"- {m} on {t}: {r['notes']}" if "notes" in r else f"- {m} on {t}: error: {r['error']}"
        for m in methods
        for t, r in results.get(m, {}).items()
        if r.get("notes") or r.get("error")
    ]
    if notes:
        lines += ["## Notes", "", *notes, ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", default=True)
    profile.add_argument("--full", action="store_true")
    parser.add_argument("--out", default="out")
    parser.add_argument("--targets", nargs="*", default=ALL_TARGETS)
    parser.add_argument("--methods", nargs="*", default=None)
    args = parser.parse_args(argv)
    quick = not args.full
    methods = dict(METHODS)
    methods.update(learned_methods())
    names = args.methods or list(methods)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {m: {} for m in names}
    results["exact samples"] = {}
    for tname in args.targets:
        try:
            t = make_target(tname, n_truth=2000 if quick else 10_000)
        except Exception as exc:  # noqa: BLE001 - a missing reference must not stop the table
            for m in names:
                results[m][tname] = {"error": f"target: {type(exc).__name__}: {exc}"[:300]}
            continue
        if t.truth2 is not None:  # what an independent set of exact samples scores
            base = score(t, Output(samples=t.truth2.reshape(len(t.truth2), -1)), None)
            results["exact samples"][tname] = base
        for m in names:
            print(f"[unnormalized] {m} on {tname} ...", flush=True)
            try:
                t0 = time.perf_counter()
                o = methods[m](t, jax.random.key(0), quick)
                cold = time.perf_counter() - t0
                warm = None
                if not getattr(methods[m], "train_once", False):
                    t0 = time.perf_counter()
                    o = methods[m](t, jax.random.key(1), quick)
                    warm = time.perf_counter() - t0
                r = score(t, o, jax.random.key(2))
                r.update(cold_seconds=cold, warm_seconds=warm, grad_evals=o.grad_evals)
                if o.energy_evals is not None:
                    r["energy_evals"] = o.energy_evals
                if o.notes:
                    r["notes"] = o.notes
            except Skip as why:
                r = {"skipped": str(why)}
            except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the table
                r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            results[m][tname] = r
            print(f"[unnormalized]   {json.dumps(r)[:300]}", flush=True)
    (out / "unnormalized.json").write_text(json.dumps(results, indent=2))
    rows = [*names, "exact samples"]
    (out / "unnormalized.md").write_text(markdown(results, args.targets, rows, quick))
    print(f"[unnormalized] wrote {out / 'unnormalized.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
