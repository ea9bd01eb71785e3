"""Benchmark: samplers of unnormalized densities on the standard targets (method × target).

Targets: gmm25, gmm40, funnel(10), many_well(32), dw4, lj13, phi4 (1-D chain), lgcp(40).

Rows:

- SMC (adaptive tempering, MALA moves), AIS (the same without resampling), parallel tempering
  (through `driftax.sample`);
- FAB (`driftax.flows.fit_fab`, on gmm40 and many_well) and the learned diffusion samplers of
  `driftax.diffusion` (PIS, DDS, CMCD; log-variance loss);
- the honest baseline: `"<kind> @ <row>"` gives SMC (fixed schedule), MALA, HMC and NUTS
  (through `driftax.sample` with its default adaptation, several chains, warmup included) the
  energy evaluations that the learned row `<row>` spent on that target, training included
  (`units_for_budget` picks the number of moves; `smc_at_budget`, `mcmc_at_budget`).

Every row reports its energy evaluations (a value, a gradient or both at one point count once):
counted by the sampler (SMC, AIS, MCMC, FAB) or computed from the configuration
(`learned_sampler_evals`, marked `*`). Each method runs once cold (compilation included) and
warm with a new key (repeated three times when under 2 s, median); the warm run's draws are
scored. Learned samplers and FAB run once (training is the cost).

Metrics, where the target allows them: `|Δlog Z|` of the importance-sampling estimate and of
the ELBO against the exact (or reference) `log Z`; EUBO − log Z on exact samples (learned
samplers); exact W2 (scipy's assignment solver, 1,000 against 1,000, raw coordinates, the
centre of mass removed on dw4 / lj13);
Sinkhorn divergence and MMD; mode coverage (gmm) and the signs of the 16 double wells
(many_well); energy-W2 and interatomic-distance W2 (dw4, lj13); phi4's mode weight; energy and
gradient evaluations; warm, compilation and cold wall time. The output ends with the goals of
issue 18 (met / missed with the measured value).

Profiles (sizes):

- `--quick` (CPU): SMC/AIS 2,000 particles × 10 MALA moves (lgcp 512); PT 8 replicas × 4 chains
  × (1,000 warmup + 1,000 steps); PIS/DDS/CMCD 400 iterations × 128 paths of 30 steps, width
  64 (gmm25, gmm40, funnel, many_well; PIS also on dw4); FAB 400 steps × 128 AIS draws, buffer
  1,024 (gmm40, many_well); baselines: SMC 2,000 particles, MCMC 8 chains, 2,000 kept draws;
  2,000 exact samples per target.
- `--full` (a GPU; not run here): SMC/AIS 10,000 particles × 20 moves (lgcp 2,000); PT 10,000
  + 10,000 steps; learned samplers 20,000 iterations × 256 paths of 100 steps, width 128, on
  every target but lgcp; FAB 10,000 steps × 512; baselines: SMC 10,000 particles, MCMC 32 chains,
  10,000 kept draws; 10,000 exact samples.

Output: `<out>/unnormalized.json` and `<out>/unnormalized.md` (a table per metric, rows are
methods and columns targets; the command lines in the header), rewritten after every cell.

Usage: `python benchmarks/unnormalized.py [--quick | --full] [--out out] [--targets ...]
[--methods ...] [--merge] [--render]`. `--merge` adds to the results already in `--out` (and
takes the budgets of the learned rows run before from them); `--render` only rewrites the
markdown from the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
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
    # target evaluations (value, gradient or both at one point count as one), training included
    energy_evals: int = 0
    evals_counted: bool = True  # False: computed from the method's configuration


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
            energy_evals=int(r.num_energy_evals),
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
        check_health=False,
    )
    x = np.asarray(res.samples).reshape(steps * chains, -1)
    grads = int(res.num_grad_evals + res.num_grad_evals_warmup)
    return Output(
        samples=x,
        grad_evals=grads,
        energy_evals=grads,  # MALA moves: one value-and-gradient per replica step
        notes=f"max R-hat {float(np.nanmax(res.rhat)):.2f}",
    )


class Skip(Exception):
    """A method that does not apply to a target in this profile (reported, not an error)."""


QUICK_LEARNED_TARGETS = ("gmm25", "gmm40", "funnel", "many_well")
QUICK_PARTICLE_LEARNED = ("PIS",)  # the learned samplers with a particle (CoM-free) mode
# the prior / reference scale of the learned samplers (about the target's spread)
LEARNED_SIGMA = {"gmm25": 8.0, "gmm40": 30.0, "funnel": 3.0, "many_well": 1.5, "dw4": 2.0}

# (method, target) -> the energy evaluations that method spent (training included): the budget
# the equal-budget baselines below are given
BUDGET: dict[tuple[str, str], int] = {}


def learned_sampler_evals(
    *,
    num_steps: int,
    iters: int,
    batch: int,
    num_samples: int,
    uses_score: bool = True,
    local_search_moves: int = 0,
    local_search_fraction: float = 0.0,
) -> int:
    """Energy evaluations of `fit_sampler(loss="log_variance")` then `run`, computed from the
    configuration: a path of `num_steps` steps evaluates the target's score at its
    `num_steps + 1` states and its log density at the terminal one (counted once with that
    state's score); without the score term only the terminal log density. Local search moves
    the batch's on-policy share (`batch - round(batch · fraction)`) by `local_search_moves`
    MALA steps (one value-and-gradient each, plus one at the start) every iteration. The EUBO's
    backward paths from target samples are evaluation, not sampling, and are not counted."""
    per_path = num_steps + 1 if uses_score else 1
    train = iters * batch * per_path
    if local_search_moves:
        on_policy = batch - int(round(batch * local_search_fraction))
        train += iters * on_policy * (local_search_moves + 1)
    return train + num_samples * per_path


def _learned(kind: str, loss: str = "log_variance"):
    """A diffusion sampler of `driftax.diffusion` trained from the energy alone, then sampled."""

    def method(t: Target, key, quick: bool) -> Output:
        import driftax.diffusion as dd

        if quick and t.name not in QUICK_LEARNED_TARGETS:
            if not (t.name == "dw4" and kind in QUICK_PARTICLE_LEARNED):
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
        evals = learned_sampler_evals(
            num_steps=steps,
            iters=iters,
            batch=batch,
            num_samples=n,
            uses_score=sampler.uses_score,
            local_search_moves=0 if search is None else search.num_steps,
            local_search_fraction=0.0 if search is None else search.fraction,
        )
        BUDGET[(kind, t.name)] = evals
        return Output(
            samples=x.reshape(n, -1),
            log_z=float(r.log_normalizer.value),
            log_z_stderr=float(r.log_normalizer.stderr),
            elbo=float(r.elbo.value),
            eubo=None if r.eubo is None else float(r.eubo.value),
            grad_evals=evals,
            energy_evals=evals,
            evals_counted=False,
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
    BUDGET[("FAB", t.name)] = out.energy_evals
    return out


# ---------------------------------------------------------------------------------------------
# The honest baseline: SMC and tuned MCMC given a learned sampler's energy evaluations
# ---------------------------------------------------------------------------------------------


def units_for_budget(budget: int, per_unit: float, fixed: int = 0) -> int:
    """The number `u >= 1` of moves of cost `per_unit` (after a fixed cost `fixed`) whose total
    `fixed + u · per_unit` is nearest to `budget`: within half a move of it whenever the budget
    affords one move. `per_unit` may be a measured average (NUTS)."""
    if not per_unit > 0:
        raise ValueError(f"`per_unit` must be a positive cost, got {per_unit!r}.")
    return max(1, round((budget - fixed) / per_unit))


BASELINE_KINDS = ("SMC", "MALA", "HMC", "NUTS")
BUDGET_SOURCES = ("PIS", "DDS", "CMCD", "FAB")
HMC_LEAPFROG = 10  # HMC's integration steps (its step size and metric are adapted)
MCMC_STEP = {"gmm40": 1.0, "gmm25": 0.3, "lgcp": 0.05, "lj13": 0.005, "dw4": 0.05}


def _keep_every(num_steps: int, keep: int) -> int:
    return max(1, num_steps // max(1, keep))


def _mcmc_x0(t: Target, chains: int, key) -> jax.Array:
    """Per-chain starting points drawn from SMC's reference `N(0, scale²)` (particles apart)."""
    shape = (chains, *t.energy.event_shape)
    return jax.random.normal(key, shape) * t.scale


def smc_at_budget(t: Target, key, budget: int, *, num_particles: int = 2000, moves: int = 10):
    """SMC (MALA moves, fixed schedule `β = (k/K)^4`) with `K` stages chosen so that its energy
    evaluations `n + K · n · (moves + 2)` (the initial draws; per stage each move and two
    re-evaluations) are nearest to `budget`. Returns `(WeightedSampleResult, K)`."""
    n = num_particles
    stages = units_for_budget(budget, n * (moves + 2), fixed=n)
    smc = ds.SMC(
        ds.MALA(step_size=MCMC_STEP.get(t.name, 0.1)),
        schedule=jnp.linspace(0.0, 1.0, stages + 1) ** 4,
        reference_scale=t.scale,
        num_mcmc_steps=moves,
    )
    return smc.run(t.energy, key=key, num_particles=n), stages


def mcmc_at_budget(
    t: Target, kind: str, key, budget: int, *, chains: int = 8, keep: int = 2000
) -> tuple[np.ndarray, int, str]:
    """`kind` ("MALA", "HMC" or "NUTS") through `dx.sample` with its default adaptation
    (windowed diagonal metric, dual-averaged step size), `chains` chains started from SMC's
    reference, warmup included in `budget`. MALA (one value-and-gradient per chain step) and HMC
    (`HMC_LEAPFROG` per chain step) take the number of steps whose count is nearest to the
    budget, half of them warmup. NUTS's cost per step is not fixed: a first segment (warmup of at most 500
    steps, sized to about a quarter of the budget) measures the gradients per step, and a
    resumed second segment spends the rest (its total is within about one step of every chain
    of the budget, or over it when the first segment alone exceeds it). About `keep` draws are kept (thinned). Returns `(draws (m, d), counted
    evaluations, note)`."""
    k_x0, k1, k2 = jax.random.split(key, 3)
    x0 = _mcmc_x0(t, chains, k_x0)
    step = MCMC_STEP.get(t.name, 0.1)
    per_chain_keep = max(1, keep // chains)
    common = dict(num_chains=chains, check_health=False)
    if kind in ("MALA", "HMC"):
        cost = 1 if kind == "MALA" else HMC_LEAPFROG
        total = units_for_budget(budget, chains * cost)  # steps per chain, warmup included
        sampling = max(1, total - total // 2)
        thin = _keep_every(sampling, per_chain_keep)
        sampling = max(thin, thin * (sampling // thin))
        warmup = max(0, total - sampling)
        kernel = (
            ds.MALA(step_size=step)
            if kind == "MALA"
            else ds.HMC(step_size=step, num_integration_steps=HMC_LEAPFROG)
        )
        res = dx.sample(
            kernel,
            t.energy,
            x0,
            key=k1,
            num_steps=sampling,
            num_warmup=warmup,
            thin=thin,
            **common,
        )
        counted = int(res.num_grad_evals + res.num_grad_evals_warmup)
        draws = np.asarray(res.samples).reshape(-1, t.energy.dim)
        rhat = float(np.nanmax(np.asarray(res.rhat)))
        note = f"{chains} chains × ({warmup:,} warmup + {sampling:,} steps), max R-hat {rhat:.2f}"
        return draws, counted, note
    if kind != "NUTS":
        raise ValueError(f"unknown MCMC kind {kind!r}")
    # the first segment takes about a quarter of the budget at a guessed 16 gradients per step
    warm_n = int(np.clip(budget // (chains * 16 * 4), 20, 500))
    first_n = max(10, warm_n // 5)
    first = dx.sample(
        ds.NUTS(step_size=step),
        t.energy,
        x0,
        key=k1,
        num_steps=first_n,
        num_warmup=warm_n,
        **common,
    )
    counted = int(first.num_grad_evals + first.num_grad_evals_warmup)
    per_step = max(1.0, int(first.num_grad_evals) / (first_n * chains))  # per chain step
    parts = [np.asarray(first.samples).reshape(-1, t.energy.dim)]
    more = 0
    if budget - counted >= chains * per_step:
        more = units_for_budget(budget - counted, chains * per_step)
        thin = _keep_every(more, per_chain_keep)
        more = max(thin, thin * (more // thin))
        second = dx.sample(
            ds.NUTS(step_size=step),  # resuming: the first segment's adapted kernel is used
            t.energy,
            first,
            key=k2,
            num_steps=more,
            thin=thin,
            **common,
        )
        counted += int(second.num_grad_evals)
        parts.append(np.asarray(second.samples).reshape(-1, t.energy.dim))
        rhat = float(np.nanmax(np.asarray(second.rhat)))
    else:
        rhat = float(np.nanmax(np.asarray(first.rhat)))
    draws = np.concatenate(parts)
    note = (
        f"{chains} chains × ({warm_n} warmup + {first_n + more:,} steps), {per_step:.1f} gradients "
        f"per step, max R-hat {rhat:.2f}"
    )
    return draws, counted, note


def _at_budget(kind: str, source: str):
    """A baseline row: `kind` given the energy evaluations of `source`'s row on the target."""

    def method(t: Target, key, quick: bool) -> Output:
        if (source, t.name) not in BUDGET:
            raise Skip(f"needs the {source} row on this target first (its budget)")
        budget = BUDGET[(source, t.name)]
        if kind == "SMC":
            r, stages = smc_at_budget(t, key, budget, num_particles=2000 if quick else 10_000)
            n = int(r.samples.shape[0])
            return Output(
                samples=_resample(jax.random.fold_in(key, 1), r.samples, r.log_weights, n).reshape(
                    n, -1
                ),
                log_z=float(r.log_normalizer.value),
                log_z_stderr=float(r.log_normalizer.stderr),
                grad_evals=int(r.num_grad_evals),
                energy_evals=int(r.num_energy_evals),
                notes=f"{stages} stages × 10 MALA moves for {source}'s {budget:,} evaluations",
            )
        draws, counted, note = mcmc_at_budget(
            t, kind, key, budget, chains=8 if quick else 32, keep=2000 if quick else 10_000
        )
        return Output(
            samples=draws,
            grad_evals=counted,
            energy_evals=counted,
            notes=f"{note}; {source}'s budget {budget:,}",
        )

    method.budget_source = source
    return method


def baseline_methods() -> dict[str, Callable]:
    """`"<kind> @ <source>"`: SMC, MALA, HMC and NUTS at each learned row's budget."""
    return {f"{k} @ {src}": _at_budget(k, src) for src in BUDGET_SOURCES for k in BASELINE_KINDS}


_fab.train_once = True  # training is the cost: one run, compilation included

METHODS: dict[str, Callable] = {
    "SMC": _smc("multinomial"),
    "AIS": _smc("never"),
    "PT": _pt,
    "FAB": _fab,
}


# ---------------------------------------------------------------------------------------------
# Scoring
# ---------------------------------------------------------------------------------------------


W2_SAMPLES = 1000  # exact OT (scipy's assignment solver) between this many draws and truths


def many_well_positive_weight(a: float = 1.0, b: float = 6.0, c: float = 0.5) -> float:
    """The exact probability that a double-well coordinate of many_well is positive (1-D
    quadrature of `exp(-a x⁴ + b x² + c x)`)."""
    x = np.linspace(-6.0, 6.0, 240_001)
    log_p = -a * x**4 + b * x**2 + c * x
    p = np.exp(log_p - log_p.max())
    return float(p[x > 0].sum() / p.sum())


MANY_WELL_POSITIVE = many_well_positive_weight()


def _centred(x, particles):
    """Configurations `(n, N·d)` with each one's centre of mass removed. dw4 and lj13 are
    invariant under translations, so MCMC chains (and samplers without a CoM-free base) drift
    freely in the centre of mass while the reference samples are CoM-free: raw-coordinate W2
    would then measure the drift, not the configurations."""
    n_particles, dim = particles
    x = x.reshape(x.shape[0], n_particles, dim)
    return (x - x.mean(axis=1, keepdims=True)).reshape(x.shape[0], -1)


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
        if t.log_z is not None:
            m["eubo_gap"] = out.eubo - t.log_z  # KL(p‖q) >= 0 up to noise
    if t.truth is not None and len(x) > 1:
        n = min(len(x), len(t.truth), 2000)
        xs = jnp.asarray(x[:n], jnp.float32)
        ys = jnp.asarray(t.truth[:n].reshape(n, -1), jnp.float32)
        if t.particles is not None:  # translation-invariant energies: compare CoM-free shapes
            xs, ys = _centred(xs, t.particles), _centred(ys, t.particles)
        if t.particles is None:
            eps = 0.1 * float(np.mean(np.var(t.truth.reshape(len(t.truth), -1), axis=0)))
            m["sinkhorn"] = float(de.sinkhorn_divergence(xs, ys, epsilon=eps).regularized_cost)
            m["mmd"] = float(de.mmd(xs, ys).unbiased)
        else:
            m["energy_w2"] = float(de.energy_w2(xs, ys, t.energy))
            m["distance_w2"] = float(de.interatomic_distance_w2(xs, ys, *t.particles))
        k = min(n, W2_SAMPLES)
        pick = np.random.default_rng(0).permutation(n)[:k]  # MCMC draws are ordered in time
        m["w2"] = de.wasserstein2_exact(np.asarray(xs)[pick], np.asarray(ys)[:k])
    if t.modes == "mixture":
        cover = de.mode_coverage(jnp.asarray(x), t.energy)
        m["modes_covered"] = int(cover.num_covered)
        m["num_modes"] = int(np.asarray(cover.counts).shape[0])
        m["mode_weight_tv"] = float(cover.weight_tv)
    if t.name == "many_well":  # 16 double wells, 2^16 modes: the sign of each well
        signs = x[:, 0::2] > 0
        m["wells_both_signs"] = int(np.sum(signs.any(axis=0) & (~signs).any(axis=0)))
        m["num_wells"] = int(signs.shape[1])
        m["well_sign_error"] = float(np.mean(np.abs(signs.mean(axis=0) - MANY_WELL_POSITIVE)))
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
    ("EUBO − log Z (on exact samples; ≥ 0 up to noise)", "eubo_gap", 3),
    ("W2 to exact / reference samples (exact OT, raw coordinates; dw4 / lj13 CoM-free)", "w2", 3),
    ("Sinkhorn divergence to exact samples", "sinkhorn", 4),
    ("MMD to exact samples", "mmd", 4),
    ("energy W2 (particles)", "energy_w2", 3),
    ("interatomic-distance W2 (particles)", "distance_w2", 3),
    ("modes covered", "modes_covered", 0),
    ("mode-weight TV", "mode_weight_tv", 3),
    ("many_well: double wells visited with both signs", "wells_both_signs", 0),
    ("many_well: mean |P(x > 0) − exact| over the double wells", "well_sign_error", 3),
    ("phi4: weight of the positive mode (exact 0.5)", "positive_mode_weight", 3),
    (
        "energy evaluations (training included; * computed from the configuration)",
        "energy_evals",
        0,
    ),
    ("gradient evaluations", "grad_evals", 0),
    ("warm wall time (s; median of repeats when under 2 s)", "warm_seconds", 2),
    ("compilation (s; cold minus warm)", "compile_seconds", 1),
    ("cold wall time incl. compilation (s)", "cold_seconds", 1),
]

EVALUATORS = (
    "Evaluators: `|Δlog Z|` against the exact log Z (gmm, funnel, many_well, phi4) or the "
    "shipped reference (lgcp); ELBO = mean log-weight, EUBO = mean log-weight of backward paths "
    "from exact samples (learned samplers only). W2: exact optimal transport on raw coordinates "
    f"(`driftax.energies.wasserstein2_exact`, scipy's assignment solver), {W2_SAMPLES:,} draws "
    f"against {W2_SAMPLES:,} exact (or reference) samples; on dw4 / lj13 each configuration's "
    "centre of mass is removed first (the energies are translation invariant, so MCMC chains "
    "drift in it), with no rotation / permutation alignment "
    "(published DW-4 / LJ-13 W2 of ASBS use an aligned W2; Aggarwal et al.'s raw W2 of exact "
    "samples is about 2.1 / 4.3). Energy-W2 and interatomic-distance W2: exact 1-D W2 on 2,000 "
    "against 2,000. Sinkhorn: ε = 0.1 · mean variance, 2,000 against 2,000. Mode coverage: "
    "most probable component (gmm), sign of each double-well coordinate (many_well; exact "
    f"P(x > 0) = {MANY_WELL_POSITIVE:.4f}). Energy evaluations: a value, a gradient or both "
    "at one point count once; counted by the samplers (SMC, AIS, MCMC, FAB) or computed from the "
    "configuration (`*`, learned diffusion samplers). `X @ Y`: method X given the energy "
    "evaluations of row Y on that target (training included), warmup included for MCMC; MCMC "
    "has no log Z estimate (—)."
)

# the goals: (target, label, threshold)
GOAL_LOGZ = {"many_well": 0.015, "funnel": 0.002, "gmm40": 0.01}
GOAL_W2 = {"dw4": 0.45, "lj13": 1.6}
LEARNED_ROWS = ("PIS", "DDS", "CMCD", "FAB")


def _best(results: dict, rows, target: str, field: str):
    vals = [
        (r[field], m)
        for m in rows
        if isinstance(r := results.get(m, {}).get(target, {}), dict) and field in r
    ]
    return min(vals) if vals else None


def goals(results: dict) -> list[tuple[str, str, str]]:
    """The issue's goals: `(goal, measured, verdict)` rows (met / missed / not run)."""
    rows: list[tuple[str, str, str]] = []
    for t, thr in GOAL_LOGZ.items():
        best = _best(results, LEARNED_ROWS, t, "abs_dlogz")
        every = _best(results, [m for m in results if m != "exact samples"], t, "abs_dlogz")
        extra = "" if every is None else f"; best of every row: {every[1]} {every[0]:.4f}"
        goal = f"{t}: best learned sampler |Δlog Z| ≤ {thr}"
        if t == "gmm40":
            goal += " and 40/40 modes"
        if best is None:
            rows.append((goal, "no learned row run" + extra, "not run"))
            continue
        met = best[0] <= thr
        measured = f"{best[1]} {best[0]:.4f}"
        if t == "gmm40":
            modes = results[best[1]][t].get("modes_covered")
            measured += f", {modes}/40 modes"
            met = met and modes == 40
        rows.append((goal, measured + extra, "met" if met else "missed"))
    for t, thr in GOAL_W2.items():
        goal = f"{t}: learned sampler W2 ≤ {thr} and energy-W2 below the equal-budget MCMC"
        best = _best(results, LEARNED_ROWS, t, "energy_w2")
        if best is None:
            rows.append((goal, "no learned row run on this target", "not run"))
            continue
        name = best[1]
        r = results[name][t]
        mcmc = _best(results, [f"{k} @ {name}" for k in ("MALA", "HMC", "NUTS")], t, "energy_w2")
        measured = f"{name}: W2 {r.get('w2', float('nan')):.3f} (CoM-free), energy-W2 {best[0]:.3f}"
        met = r.get("w2", math.inf) <= thr
        if mcmc is None:
            measured += "; no equal-budget MCMC row"
            met = False
        else:
            measured += f"; {mcmc[1]} energy-W2 {mcmc[0]:.3f}"
            met = met and best[0] < mcmc[0]
        rows.append((goal, measured, "met" if met else "missed"))
    return rows


def markdown(results: dict, targets: list[str], methods: list[str], meta: dict) -> str:
    lines = [
        "# Unnormalized-density samplers: method × target",
        "",
        *[f"Command: `{c}`" for c in meta.get("commands", [])],
        "",
        f"Profile: {meta.get('profile', '?')}; jax {jax.__version__}, backend "
        f"{jax.default_backend()}. Each method runs once cold (compilation included) and warm "
        "with a new key (the warm run is scored); learned samplers and FAB run once (training "
        "and compilation included, reported as cold). The row `exact samples` scores a second "
        "independent set of exact (or reference) samples: the sample-noise floor of each distance.",
        "",
        EVALUATORS,
        "",
        "## Goals of issue 18",
        "",
        "| goal | measured | verdict |",
        "|---|---|---|",
        *["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in goals(results)],
        "",
    ]
    for title, field, digits in TABLES:
        cols = [t for t in targets if any(field in results.get(m, {}).get(t, {}) for m in methods)]
        rows = [m for m in methods if any(field in results.get(m, {}).get(t, {}) for t in cols)]
        if not cols:
            continue
        lines += [f"## {title}", "", "| method | " + " | ".join(cols) + " |"]
        lines.append("|---|" + "---|" * len(cols))
        for m in rows:
            cells = []
            for t in cols:
                r = results.get(m, {}).get(t, {})
                v = r.get(field)
                if field in ("modes_covered", "wells_both_signs") and v is not None:
                    total = r["num_modes" if field == "modes_covered" else "num_wells"]
                    cells.append(f"{v}/{total}")
                elif field == "abs_dlogz" and v is not None and r.get("log_z_stderr") is not None:
                    cells.append(f"{v:.3f} (s.e. {r['log_z_stderr']:.3f})")
                elif field == "energy_evals" and v is not None:
                    cells.append(f"{v:,}" + ("" if r.get("evals_counted", True) else "*"))
                elif "error" in r:
                    cells.append("error")
                else:
                    cells.append(_fmt(v, digits))
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


def all_methods() -> dict[str, Callable]:
    """Every row: the classical samplers, FAB, the learned samplers, then the baselines at
    their budgets (a baseline runs after its budget's row on each target)."""
    methods = dict(METHODS)
    methods.update(learned_methods())
    methods.update(baseline_methods())
    return methods


def _timed(fn, *args):
    t0 = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t0


def run_cell(method: Callable, t: Target, quick: bool) -> dict:
    """Run one method on one target: cold, then warm (repeated up to three times when under
    2 s, median), score the warm run's draws."""
    o, cold = _timed(method, t, jax.random.key(0), quick)
    warm = None
    if not getattr(method, "train_once", False):
        o, warm = _timed(method, t, jax.random.key(1), quick)
        if warm < 2.0:
            repeats = [warm] + [_timed(method, t, jax.random.key(i), quick)[1] for i in (2, 3)]
            warm = float(np.median(repeats))
    r = score(t, o, jax.random.key(2))
    r.update(cold_seconds=cold, warm_seconds=warm, grad_evals=o.grad_evals)
    if warm is not None:
        r["compile_seconds"] = max(0.0, cold - warm)
    r["energy_evals"] = o.energy_evals
    r["evals_counted"] = o.evals_counted
    if o.notes:
        r["notes"] = o.notes
    return r


def _same_budget_row(results: dict, name: str, source: str, target: str) -> str | None:
    """A baseline row of the same kind already measured at the same budget on `target`."""
    kind = name.split(" @ ")[0]
    for other in BUDGET_SOURCES:
        row = f"{kind} @ {other}"
        cell = results.get(row, {}).get(target, {})
        same = BUDGET.get((other, target)) == BUDGET[(source, target)]
        if other != source and same and cell and not ({"skipped", "error"} & set(cell)):
            return row
    return None


def _write(out: Path, results: dict, meta: dict, methods: dict) -> None:
    (out / "unnormalized.json").write_text(json.dumps({"_meta": meta, **results}, indent=2))
    order = [m for m in [*methods, "exact samples"] if m in results]
    targets = [t for t in ALL_TARGETS if any(t in results[m] for m in order)]
    (out / "unnormalized.md").write_text(markdown(results, targets, order, meta))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", default=True)
    profile.add_argument("--full", action="store_true")
    parser.add_argument("--out", default="out")
    parser.add_argument("--targets", nargs="*", default=ALL_TARGETS)
    parser.add_argument("--methods", nargs="*", default=None)
    parser.add_argument(
        "--render", action="store_true", help="only rewrite unnormalized.md from the JSON in --out"
    )
    parser.add_argument(
        "--merge",
        action="store_true",
        help="add the cells missing from the results already in --out (same profile)",
    )
    args = parser.parse_args(argv)
    quick = not args.full
    methods = all_methods()
    names = args.methods or list(methods)
    unknown = [m for m in names if m not in methods]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {list(methods)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "unnormalized.json"
    results: dict = {}
    meta = {"profile": "quick (CPU)" if quick else "full (GPU)", "commands": []}
    if (args.merge or args.render) and json_path.exists():
        results = json.loads(json_path.read_text())
        meta = results.pop("_meta", meta)
        for src in BUDGET_SOURCES:  # the budgets of rows run before
            for tname, r in results.get(src, {}).items():
                if "energy_evals" in r:
                    BUDGET[(src, tname)] = int(r["energy_evals"])
    command = "python benchmarks/unnormalized.py " + " ".join(
        f'"{a}"' if " " in a else a for a in (sys.argv[1:] if argv is None else argv)
    )
    if args.render:
        args.targets, names = [], []
    else:
        meta["commands"] = [*meta.get("commands", []), command]
    for m in [*names, "exact samples"]:
        results.setdefault(m, {})
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
            old = results[m].get(tname, {})
            if args.merge and old and not ({"skipped", "error"} & set(old)):
                continue  # already measured
            print(f"[unnormalized] {m} on {tname} ...", flush=True)
            source = getattr(methods[m], "budget_source", None)
            same = None
            if source is not None and (source, tname) in BUDGET:
                same = _same_budget_row(results, m, source, tname)
            if same is not None:  # e.g. PIS and DDS spend the same evaluations
                r = dict(results[same][tname])
                r["notes"] = f"the same budget as `{same}`: that run. " + r.get("notes", "")
                results[m][tname] = r
                _write(out, results, meta, methods)
                continue
            try:
                r = run_cell(methods[m], t, quick)
            except Skip as why:
                r = {"skipped": str(why)}
            except Exception as exc:  # noqa: BLE001 - one failing cell must not stop the table
                r = {"error": f"{type(exc).__name__}: {exc}"[:300]}
            results[m][tname] = r
            print(f"[unnormalized]   {json.dumps(r)[:300]}", flush=True)
            _write(out, results, meta, methods)  # after every cell: a cut-off run keeps its rows
    _write(out, results, meta, methods)
    print("[unnormalized] goals:")
    for g, measured, verdict in goals(results):
        print(f"[unnormalized]   {verdict:8s} {g}: {measured}")
    print(f"[unnormalized] wrote {out / 'unnormalized.md'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
