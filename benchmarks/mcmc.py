"""MCMC benchmark: driftax against BlackJAX and NumPyro, side by side in ONE process.

    python benchmarks/mcmc.py --quick          # CPU, QUICK_TARGETS: writes out/mcmc.json, out/mcmc.md
    python benchmarks/mcmc.py                  # the full settings (meant for a GPU)
    python benchmarks/mcmc.py --quick --targets gauss100_k100 logreg

Targets: ill-conditioned Gaussians d=100 (κ=100 and κ=1e5), Bayesian logistic regression, Neal's
funnel (d=10 and d=100), the banana, U(1) lattice gauge theory (L=8, β=6; its observable is the
plaquette), and the harder targets of issue 13: the 2PL item-response posterior (200 students × 20
items, 240 dims), the regularized-horseshoe logistic regression (62 dims) and the probabilistic
Rosenbrock (36 dims). Samplers: driftax NUTS, HMC, UnderdampedLangevin (UBU) and ChEES-HMC (many
chains), and when this driftax has them MCLMC, MAMS and NUTS with the Fisher / low-rank metric
adaptations (`WindowAdaptation(metric="fisher" | "low_rank")`; a sampler or adaptation that this
driftax lacks is listed as skipped); BlackJAX NUTS and HMC with its window adaptation, and BlackJAX
MCLMC and adjusted MCLMC (MAMS) with its own recommended tuning (`mclmc_find_L_and_step_size`,
`adjusted_mclmc_find_L_and_step_size`), each with tuning and sampling under ONE `jax.jit` (as its
documentation recommends) and vmapped over chains; NumPyro NUTS (`chain_method="vectorized"`);
nutpie NUTS (diagonal and low-rank mass matrix) driving the JAX log density through its
Python-function interface (`nutpie.compiled_pyfunc.from_pyfunc`; skipped if nutpie is missing:
`pip install driftax[bench]`). All samplers start every chain at the origin (the mode of the
Gaussians), except nutpie, which refuses a start with a zero gradient coordinate and starts at
0.1·N(0, I).

Recorded per (target, sampler):

- `cold_s`: first call after `jax.clear_caches()` (compilation included); `warm_s`: median of
  `--repeats` further calls with new keys (same shapes); `compile_s = cold_s - warm_s`. NumPyro
  recompiles on every `run()`.
- gradient evaluations per chain in warmup and sampling; `us_per_grad` (warm wall time / all
  gradients) and its ratio to a bare vmapped value-and-gradient in a `lax.scan` (`overhead`).
- `min_ess` (bulk, ArviZ, all chains; the plaquette's for U(1)), `ess_per_grad` (min ESS / all
  sampling gradients), `ess_per_s` (min ESS / warm wall time of warmup + sampling),
  `grads_per_s`, divergences in sampling.
- `grads_to_bias_avg` / `_max`: gradient evaluations per chain until the bias² of E[x²]
  (averaged over chains, avg or max over coordinates, `driftax.energies.running_bias_squared`)
  stays below 0.01, without and with (`_tuned`) the warmup's gradients.
- `ess_per_grad_total`: min ESS / all gradients, warmup included.

The goals of issue 3 and of issue 13 are evaluated at the end (ratios within this one run).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers import _driver

# ---------------------------------------------------------------------------------------------
# Targets and ground truth
# ---------------------------------------------------------------------------------------------


@dataclass
class Target:
    name: str
    energy: de.AbstractEnergy
    mean: np.ndarray | None = None
    variance: np.ndarray | None = None
    second_moment_variance: np.ndarray | None = None
    observable: object = None  # f(x) -> scalar (replaces x for ESS when set)
    exact_observable: float | None = None
    max_tree_depth: int = 10


def _targets(names):
    out = {}
    if "gauss100_k100" in names:
        t = de.ill_conditioned_gaussian(100, 100.0)
        out["gauss100_k100"] = Target(
            "gauss100_k100", t, np.asarray(t.mean), np.asarray(t.variance)
        )
    if "gauss100_k1e5" in names:
        t = de.ill_conditioned_gaussian(100, 1e5)
        out["gauss100_k1e5"] = Target(
            "gauss100_k1e5", t, np.asarray(t.mean), np.asarray(t.variance)
        )
    if "logreg" in names:
        t = de.logistic_regression()
        out["logreg"] = Target("logreg", t, np.asarray(t.mean), np.asarray(t.variance))
    if "funnel" in names:
        t = de.funnel(10)
        v = np.asarray(t.variance, np.float64)
        # Var[x²]: 2·9² for x₀; E[x_i⁴] - E[x_i²]² = 3e^{2·9} - e^{9} for x_i | x₀ ~ N(0, e^{x₀})
        v2 = np.full(10, 3.0 * math.exp(18.0) - math.exp(9.0))
        v2[0] = 2.0 * 81.0
        out["funnel"] = Target("funnel", t, np.zeros(10), v, v2)
    if "funnel100" in names:
        t = de.funnel(100)
        v = np.asarray(t.variance, np.float64)
        v2 = np.full(100, 3.0 * math.exp(18.0) - math.exp(9.0))
        v2[0] = 2.0 * 81.0
        out["funnel100"] = Target("funnel100", t, np.zeros(100), v, v2)
    if "rosenbrock" in names:
        t = de.rosenbrock(36)
        out["rosenbrock"] = Target(
            "rosenbrock",
            t,
            np.asarray(t.mean),
            np.asarray(t.variance),
            np.asarray(t.second_moment_variance),
        )
    for name, build in (("irt", de.item_response), ("horseshoe", de.horseshoe_logistic_regression)):
        if name in names:
            t = build()
            try:
                out[name] = Target(name, t, np.asarray(t.mean), np.asarray(t.variance))
            except NotImplementedError:  # no stored reference: no bias² columns
                out[name] = Target(name, t)
    if "banana" in names:
        t = de.banana()
        exact = np.asarray(t.sample(jax.random.key(99), 2_000_000), np.float64)
        out["banana"] = Target("banana", t, np.zeros(2), np.asarray(t.variance), (exact**2).var(0))
    if "u1_L8" in names:
        t = de.u1_lattice(8, 6.0)
        out["u1_L8"] = Target(
            "u1_L8",
            t,
            observable=t.mean_plaquette,
            exact_observable=float(t.exact_plaquette),
            max_tree_depth=6,  # gauge directions are flat: cap every library's trajectories
        )
    return out


# ---------------------------------------------------------------------------------------------
# Runners: each returns a callable key -> dict of numpy arrays (samples, grads per step, ...)
# ---------------------------------------------------------------------------------------------


@dataclass
class Run:
    library: str
    sampler: str
    num_chains: int
    num_warmup: int
    num_steps: int
    fn: object = None
    extra: dict = field(default_factory=dict)


def driftax_runner(sampler, target, chains, warmup, steps, adaptation="auto"):
    x0 = jnp.zeros(target.energy.event_shape)

    def run(key):
        r = dx.sample(
            sampler,
            target.energy,
            x0,
            key=key,
            num_steps=steps,
            num_warmup=warmup,
            num_chains=chains,
            adaptation=adaptation,
        )
        jax.block_until_ready(r.samples)
        return dict(
            samples=np.asarray(r.samples),
            grads=np.asarray(r.info.num_grad_evals),
            warm_grads=r.num_grad_evals_warmup / chains,
            divergent=r.num_divergent,
        )

    return run


def _vmapped_run(one, chains, x0s):
    """A runner for a per-chain `one(key, x0) -> (samples, grads, divergent, warmup_grads)`:
    vmapped over chains under ONE `jax.jit` (tuning and sampling together)."""
    fn = jax.jit(jax.vmap(one))

    def run(key):
        xs, n, div, wn = jax.block_until_ready(fn(jax.random.split(key, chains), x0s))
        return dict(
            samples=np.asarray(xs),
            grads=np.asarray(n),
            warm_grads=float(np.mean(np.asarray(wn))),
            divergent=int(np.sum(np.asarray(div))),
        )

    return run


def blackjax_runner(kind, target, chains, warmup, steps, num_integration_steps=10):
    import blackjax

    logdensity = target.energy.log_density
    x0s = jnp.zeros((chains, *target.energy.event_shape))

    def one(key, x0):
        k1, k2 = jax.random.split(key)
        if kind == "nuts":
            wa = blackjax.window_adaptation(
                blackjax.nuts, logdensity, max_num_doublings=target.max_tree_depth
            )
        else:
            wa = blackjax.window_adaptation(
                blackjax.hmc, logdensity, num_integration_steps=num_integration_steps
            )
        (state, params), winfo = wa.run(k1, x0, num_steps=warmup)
        params = dict(params)
        if kind == "nuts":
            params.setdefault("max_num_doublings", target.max_tree_depth)
            kernel = blackjax.nuts(logdensity, **params)
        else:
            params.setdefault("num_integration_steps", num_integration_steps)
            kernel = blackjax.hmc(logdensity, **params)

        def body(s, k):
            s, info = kernel.step(k, s)
            return s, (s.position, info.num_integration_steps, info.is_divergent)

        _, (xs, n, div) = jax.lax.scan(body, state, jax.random.split(k2, steps))
        return xs, n, div, jnp.sum(winfo.info.num_integration_steps)

    return _vmapped_run(one, chains, x0s)


def blackjax_mclmc_runner(adjusted, target, chains, warmup, steps):
    """BlackJAX (adjusted) MCLMC with its own recommended tuning, under one `jax.jit`.

    Tuning: `mclmc_find_L_and_step_size` (step size from the energy-error variance, L from the
    ESS; fractions 0.1/0.1/0.1 of its `num_steps`) or `adjusted_mclmc_find_L_and_step_size`
    (dual averaging to acceptance 0.9 at its default trajectory length; fractions 0.1/0.1/0),
    both with diagonal preconditioning and the default minimal-norm (McLachlan) integrator, two
    gradients per integrator step. `num_steps` is chosen so the tuning takes about `warmup`
    integrator steps.
    """
    import blackjax
    from blackjax.mcmc import adjusted_mclmc_dynamic as amd, integrators

    logdensity = target.energy.log_density
    x0s = jnp.zeros((chains, *target.energy.event_shape))
    grads_per_step = 2  # isokinetic_mclachlan
    tune_num_steps = max(int(round(warmup / (0.2 if adjusted else 0.3))), 10)

    def one(key, x0):
        k_init, k_tune, k_run = jax.random.split(key, 3)
        if adjusted:
            state = amd.init(position=x0, logdensity_fn=logdensity, random_generator_arg=k_init)
            kernel = amd.build_kernel(
                integrator=integrators.isokinetic_mclachlan,
                integration_steps_fn=amd.make_random_trajectory_length_fn(True),
            )
            state, params, n_tune = blackjax.adjusted_mclmc_find_L_and_step_size(
                mclmc_kernel=kernel,
                logdensity_fn=logdensity,
                num_steps=tune_num_steps,
                state=state,
                rng_key=k_tune,
                target=0.9,
                diagonal_preconditioning=True,
            )
            avg = params.L / params.step_size

            def body(s, k):
                s, info = kernel(
                    rng_key=k,
                    state=s,
                    logdensity_fn=logdensity,
                    step_size=params.step_size,
                    inverse_mass_matrix=params.inverse_mass_matrix,
                    integration_steps_params=(avg,),
                )
                return s, (
                    s.position,
                    grads_per_step * info.num_integration_steps,
                    info.is_divergent,
                )

        else:
            state = blackjax.mcmc.mclmc.init(position=x0, logdensity_fn=logdensity, rng_key=k_init)
            kernel = blackjax.mcmc.mclmc.build_kernel(integrator=integrators.isokinetic_mclachlan)
            state, params, n_tune = blackjax.mclmc_find_L_and_step_size(
                mclmc_kernel=kernel,
                num_steps=tune_num_steps,
                state=state,
                rng_key=k_tune,
                logdensity_fn=logdensity,
                diagonal_preconditioning=True,
            )
            alg = blackjax.mclmc(
                logdensity,
                L=params.L,
                step_size=params.step_size,
                inverse_mass_matrix=params.inverse_mass_matrix,
            )

            def body(s, k):
                s, info = alg.step(k, s)
                return s, (
                    s.position,
                    jnp.full((), grads_per_step),
                    ~jnp.isfinite(info.energy_change),
                )

        _, (xs, n, div) = jax.lax.scan(body, state, jax.random.split(k_run, steps))
        return xs, n, div, grads_per_step * jnp.asarray(n_tune)

    return _vmapped_run(one, chains, x0s)


def nutpie_runner(target, chains, warmup, steps, low_rank=False):
    """nutpie NUTS driving the JAX log density through `nutpie.compiled_pyfunc.from_pyfunc`:
    nutpie's Rust sampler calls a jitted value-and-gradient from Python once per leapfrog step
    (float64 positions, the target's own dtype inside). Chains run on nutpie's threads."""
    import nutpie
    from nutpie.compiled_pyfunc import from_pyfunc

    energy = target.energy
    shape = tuple(energy.event_shape)
    d = int(np.prod(shape))
    dtype = jnp.result_type(float)
    vg = jax.jit(jax.value_and_grad(lambda x: energy.log_density(x.reshape(shape))))

    def make_logp():
        def logp(x):
            v, g = vg(jnp.asarray(x, dtype))
            return float(v), np.asarray(g, np.float64)

        return logp

    def make_expand(seed1, seed2, chain):
        return lambda x: {"x": np.asarray(x, np.float64)}

    model = from_pyfunc(
        d,
        make_logp,
        make_expand,
        [np.dtype("float64")],
        [(d,)],
        ["x"],
        make_initial_point_fn=lambda seed: 0.1 * np.random.default_rng(seed).standard_normal(d),
    )

    def run(key):
        seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
        trace = nutpie.sample(
            model,
            draws=steps,
            tune=warmup,
            chains=chains,
            cores=min(chains, os.cpu_count() or 1),
            seed=seed,
            progress_bar=False,
            low_rank_modified_mass_matrix=low_rank,
            maxdepth=target.max_tree_depth,
        )
        xs = np.asarray(trace.posterior["x"].values).reshape(chains, steps, *shape)
        wn = np.asarray(trace.warmup_sample_stats["n_steps"].values)
        return dict(
            samples=xs,
            grads=np.asarray(trace.sample_stats["n_steps"].values),
            warm_grads=float(wn.sum(1).mean()),
            divergent=int(np.sum(np.asarray(trace.sample_stats["diverging"].values))),
        )

    return run


def numpyro_runner(target, chains, warmup, steps):
    from numpyro.infer import MCMC, NUTS

    energy = target.energy
    x0s = jnp.zeros((chains, *energy.event_shape))

    def run(key):
        kernel = NUTS(potential_fn=energy.energy, max_tree_depth=target.max_tree_depth)
        mcmc = MCMC(
            kernel,
            num_warmup=warmup,
            num_samples=steps,
            num_chains=chains,
            chain_method="vectorized",
            progress_bar=False,
        )
        mcmc.run(key, init_params=x0s, extra_fields=("num_steps", "diverging"))
        xs = mcmc.get_samples(group_by_chain=True)
        extra = mcmc.get_extra_fields(group_by_chain=True)
        jax.block_until_ready(xs)
        return dict(
            samples=np.asarray(xs),
            grads=np.asarray(extra["num_steps"]),
            warm_grads=float("nan"),  # numpyro does not report its warmup trajectories
            divergent=int(np.sum(np.asarray(extra["diverging"]))),
        )

    return run


def bare_gradient_us(target, chains, iters=2000, repeats=5):
    """Wall time of one vmapped value-and-gradient (per chain-batch) inside a lax.scan."""
    energy = target.energy

    @jax.jit
    def loop(x):
        def body(x, _):
            lp, g = jax.vmap(energy.value_and_score)(x)
            return x + 1e-6 * g, lp

        return jax.lax.scan(body, x, None, length=iters)[1]

    x = 0.01 * jnp.ones((chains, *energy.event_shape))
    jax.block_until_ready(loop(x))
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(loop(x))
        ts.append(time.perf_counter() - t0)
    return 1e6 * statistics.median(ts) / iters


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def _min_ess(samples, target):
    x = np.asarray(samples, np.float64)
    if target.observable is not None:
        obs = jax.jit(jax.vmap(jax.vmap(target.observable)))(jnp.asarray(samples))
        return float(ds.ess(np.asarray(obs, np.float64)[..., None])[0]), np.asarray(obs)
    return float(np.min(ds.ess(x.reshape(*x.shape[:2], -1)))), None


def _grads_to_bias(out, target, threshold=0.01):
    """Per-chain running bias² of E[x²] averaged over chains → gradients per chain (or inf)."""
    if target.mean is None:
        return float("nan"), float("nan")
    x = jnp.asarray(out["samples"], jnp.float32)
    x = x.reshape(*x.shape[:2], -1)
    res = []
    per_chain = jax.vmap(
        lambda c: de.running_bias_squared(
            c, target.mean, target.variance, second_moment_variance=target.second_moment_variance
        )
    )(x)
    for field_name in ("x2_avg", "x2_max"):
        b = jnp.mean(getattr(per_chain, field_name), axis=0)
        t_star = float(de.gradients_to_threshold(b, grads_per_step=1, threshold=threshold))
        if not math.isfinite(t_star):
            res.append(float("inf"))
            continue
        cum = np.cumsum(np.asarray(out["grads"], np.float64), axis=1).mean(0)
        res.append(float(cum[int(t_star) - 1]))
    return tuple(res)


def _timed(fn, key):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(key)
    return out, time.perf_counter() - w0, time.process_time() - c0


def cold_start(run: Run) -> None:
    """The first call (compilation included); keeps its output for the metrics."""
    run.extra["out"], run.extra["cold_s"], run.extra["cold_cpu_s"] = _timed(
        run.fn, jax.random.key(0)
    )


def warm_repeat(run: Run, r: int) -> None:
    """One more call with a new key (same shapes); driftax's must not retrace."""
    n0 = jax_traces()
    _, wall, cpu = _timed(run.fn, jax.random.key(r + 1))
    run.extra.setdefault("warm", []).append(wall)
    run.extra.setdefault("warm_cpu", []).append(cpu)
    run.extra["retraced"] = run.extra.get("retraced", False) or jax_traces() != n0


def record(run: Run, target: Target) -> dict:
    out = run.extra["out"]
    warm = statistics.median(run.extra["warm"])
    cpu = statistics.median(run.extra["warm_cpu"])
    chains = run.num_chains
    grads_sampling = float(np.sum(out["grads"]))
    grads_warm = out["warm_grads"] * chains if math.isfinite(out["warm_grads"]) else 0.0
    grads_total = grads_sampling + grads_warm
    min_ess, obs = _min_ess(out["samples"], target)
    g_avg, g_max = _grads_to_bias(out, target)
    wpc = out["warm_grads"] if math.isfinite(out["warm_grads"]) else float("nan")
    rec = dict(
        target=target.name,
        library=run.library,
        sampler=run.sampler,
        num_chains=chains,
        num_warmup=run.num_warmup,
        num_steps=run.num_steps,
        cold_s=run.extra["cold_s"],
        warm_s=warm,
        compile_s=run.extra["cold_s"] - warm,
        cold_cpu_s=run.extra["cold_cpu_s"],
        warm_cpu_s=cpu,
        warm_runs_s=run.extra["warm"],
        grads_per_chain_warmup=wpc,
        grads_per_chain_sampling=grads_sampling / chains,
        us_per_grad=1e6 * warm / grads_total,
        us_per_grad_cpu=1e6 * cpu / grads_total,
        min_ess=min_ess,
        ess_per_grad=min_ess / grads_sampling,
        ess_per_grad_total=min_ess / grads_total if grads_warm else float("nan"),
        ess_per_s=min_ess / warm,
        ess_per_cpu_s=min_ess / cpu,
        grads_per_s=grads_total / warm,
        divergent=out["divergent"],
        grads_to_bias_avg=g_avg,
        grads_to_bias_max=g_max,
        grads_to_bias_avg_tuned=g_avg + wpc,
        grads_to_bias_max_tuned=g_max + wpc,
        retraced_on_second_call=None if run.library != "driftax" else bool(run.extra["retraced"]),
    )
    if obs is not None:
        mcse = float(ds.mcse(np.asarray(obs, np.float64)[..., None], "mean")[0])
        rec["observable_mean"] = float(np.mean(obs))
        rec["observable_exact"] = target.exact_observable
        rec["observable_error_in_mcse"] = abs(float(np.mean(obs)) - target.exact_observable) / mcse
    return rec


def jax_traces():
    import equinox as eqx

    return eqx.debug.get_num_traces(_driver._run_traced)


# ---------------------------------------------------------------------------------------------
# Goals and report
# ---------------------------------------------------------------------------------------------


def _find(records, target, library, sampler):
    for r in records:
        if r["target"] == target and r["library"] == library and r["sampler"] == sampler:
            return r
    return None


def goals(records, bare):
    out = []

    def add(name, value, threshold, op, detail=""):
        ok = (
            None
            if value is None or not math.isfinite(value)
            else (value >= threshold if op == ">=" else value <= threshold)
        )
        out.append(dict(goal=name, value=value, threshold=threshold, op=op, met=ok, detail=detail))

    for t in sorted({r["target"] for r in records}):
        ours = _find(records, t, "driftax", "NUTS")
        bj = _find(records, t, "blackjax", "NUTS")
        npy = _find(records, t, "numpyro", "NUTS")
        if ours and bj:
            add(
                f"{t}: NUTS min-ESS per CPU-second vs blackjax (warm)",
                ours["ess_per_cpu_s"] / bj["ess_per_cpu_s"],
                1.2,
                ">=",
                f"wall-clock: {ours['ess_per_s'] / bj['ess_per_s']:.2f}",
            )
            add(f"{t}: NUTS cold seconds vs blackjax", ours["cold_s"] / bj["cold_s"], 1.0, "<=")
        if ours and npy:
            add(
                f"{t}: NUTS min-ESS per CPU-second vs numpyro (warm)",
                ours["ess_per_cpu_s"] / npy["ess_per_cpu_s"],
                1.0,
                ">=",
                f"wall-clock: {ours['ess_per_s'] / npy['ess_per_s']:.2f}",
            )
        if ours:
            add(f"{t}: second call recompiles", float(ours["retraced_on_second_call"]), 0.0, "<=")
    if "logreg" in bare:
        for s in ("HMC", "UBU"):
            r = _find(records, "logreg", "driftax", s)
            if r:
                add(
                    f"logreg: {s} per-gradient cost / bare value-and-gradient",
                    r["overhead"],
                    1.5,
                    "<=",
                )
    t = "gauss100_k100"
    for s in ("HMC", "NUTS"):
        ours, bj = _find(records, t, "driftax", s), _find(records, t, "blackjax", s)
        if ours and bj:
            add(
                f"{t}: {s} per-gradient CPU cost vs blackjax",
                ours["us_per_grad_cpu"] / bj["us_per_grad_cpu"],
                0.5,
                "<=",
                f"wall-clock: {ours['us_per_grad'] / bj['us_per_grad']:.2f}",
            )
    nuts = _find(records, t, "driftax", "NUTS")
    if nuts:
        for s in ("UBU", "ChEES"):
            r = _find(records, t, "driftax", s)
            if r:
                add(
                    f"{t}: {s} gradients to bias²<0.01 (avg, tuning incl.) vs driftax NUTS",
                    r["grads_to_bias_avg_tuned"] / nuts["grads_to_bias_avg_tuned"],
                    0.3,
                    "<=",
                )
    return out


def _ratio(a, b):
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)) or b == 0:
        return float("nan")
    return a / b


def goals_issue13(records):
    """The Goals section of issue 13, measured in this run (`met` is None where the run lacks
    a sampler or a value is infinite: not measured)."""
    out = []

    def add(name, value, threshold, op, detail=""):
        ok = (
            None
            if value is None or not math.isfinite(value)
            else (value >= threshold if op == ">=" else value <= threshold)
        )
        out.append(dict(goal=name, value=value, threshold=threshold, op=op, met=ok, detail=detail))

    targets = sorted({r["target"] for r in records})
    # NUTS per-gradient (≈ per-leaf) cost against blackjax; the fixed-step-size per-leaf
    # measurement is benchmarks/nuts_per_leaf.py
    for t in ("gauss100_k100", "logreg"):
        ours, bj = _find(records, t, "driftax", "NUTS"), _find(records, t, "blackjax", "NUTS")
        if ours and bj:
            add(
                f"{t}: NUTS CPU µs per gradient (≈ per leaf) / blackjax NUTS",
                _ratio(ours["us_per_grad_cpu"], bj["us_per_grad_cpu"]),
                1.0,
                "<=",
                "per-leaf at fixed step size: benchmarks/nuts_per_leaf.py",
            )
    for t in targets:
        ours, bj = _find(records, t, "driftax", "NUTS"), _find(records, t, "blackjax", "NUTS")
        if ours and bj:
            add(
                f"{t}: NUTS min-ESS per CPU-second / blackjax NUTS",
                _ratio(ours["ess_per_cpu_s"], bj["ess_per_cpu_s"]),
                1.2,
                ">=",
            )
    # MAMS against blackjax's adjusted MCLMC
    for t in targets:
        ours, bj = _find(records, t, "driftax", "MAMS"), _find(records, t, "blackjax", "MAMS")
        if not (ours and bj):
            continue
        for key, label in (
            ("grads_to_bias_avg", "avg, tuning excl."),
            ("grads_to_bias_max", "worst, tuning excl."),
            ("grads_to_bias_avg_tuned", "avg, tuning incl."),
            ("grads_to_bias_max_tuned", "worst, tuning incl."),
        ):
            a, b = ours[key], bj[key]
            # reaching the threshold where blackjax never does counts as met (a ratio of 0)
            beaten = a is not None and b is not None and math.isfinite(a) and math.isinf(b)
            add(
                f"{t}: MAMS gradients to bias²<0.01 ({label}) / blackjax adjusted MCLMC",
                0.0 if beaten else _ratio(a, b),
                1.0,
                "<=",
                f"{_fmt(ours[key])} vs {_fmt(bj[key])}",
            )
    mams = _find(records, "gauss100_k100", "driftax", "MAMS")
    if mams:
        add(
            "gauss100_k100: MAMS gradients to bias²<0.01, worst, tuning excl.",
            mams["grads_to_bias_max"],
            3250,
            "<=",
        )
        add(
            "gauss100_k100: MAMS gradients to bias²<0.01, avg, tuning excl.",
            mams["grads_to_bias_avg"],
            434,
            "<=",
        )
        add(
            "gauss100_k100: MAMS tuning gradients per chain",
            mams["grads_per_chain_warmup"],
            10_000,
            "<=",
        )
    # metric adaptations against Stan's window diagonal (driftax NUTS, same run)
    fisher, lowrank = [], {}
    for t in targets:
        base = _find(records, t, "driftax", "NUTS")
        f = _find(records, t, "driftax", "NUTS-fisher")
        lr = _find(records, t, "driftax", "NUTS-lowrank")
        if base and f:
            fisher.append(_ratio(f["ess_per_grad_total"], base["ess_per_grad_total"]))
        if base and lr:
            lowrank[t] = _ratio(lr["ess_per_grad_total"], base["ess_per_grad_total"])
    fisher = [v for v in fisher if math.isfinite(v)]
    if fisher:
        add(
            "Fisher diagonal / window diagonal: min-ESS per gradient (warmup incl.), median",
            statistics.median(fisher),
            1.3,
            ">=",
            f"over {len(fisher)} targets",
        )
    for t in ("irt", "horseshoe"):
        if t in lowrank:
            add(
                f"{t}: low-rank / window diagonal: min-ESS per gradient (warmup incl.)",
                lowrank[t],
                2.0,
                ">=",
            )
    # the best driftax sampler against the best peer
    for t in targets:
        # runs whose min ESS is below 50 have no trustworthy ESS: left out of "best"
        rs = [r for r in records if r["target"] == t and r["min_ess"] >= 50]
        ours = [r for r in rs if r["library"] == "driftax"]
        peers = [r for r in rs if r["library"] != "driftax"]
        if ours and peers:
            a = max(ours, key=lambda r: r["ess_per_cpu_s"])
            b = max(peers, key=lambda r: r["ess_per_cpu_s"])
            add(
                f"{t}: best driftax / best peer min-ESS per CPU-second",
                _ratio(a["ess_per_cpu_s"], b["ess_per_cpu_s"]),
                1.5,
                ">=",
                f"{a['sampler']} vs {b['library']} {b['sampler']}",
            )
    add(
        "GPU: MAMS/ChEES ≥1024 chains vs vmapped blackjax NUTS, ESS per second",
        None,
        5.0,
        ">=",
        "not measured: no GPU in this run",
    )
    return out


def _fmt(v, digits=3):
    if v is None:
        return "–"
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return str(v)
    if not math.isfinite(v):
        return "∞" if v > 0 else "nan"
    if abs(v) >= 1000:
        return f"{v:.0f}"
    return f"{v:.{digits}g}"


def markdown(payload):
    lines = ["# MCMC benchmark", ""]
    m = payload["meta"]
    lines.append(
        f"{m['mode']} mode · {m['device']} · jax {m['jax']} · blackjax {m['blackjax']} · numpyro "
        f"{m['numpyro']} · {m['num_chains']} chains (ChEES: {m['num_chains_many']}) · warm = median "
        f"of {m['repeats']} runs · ratios only compare within this run."
    )
    if m.get("complete") is False:
        lines += ["", "**Partial: the run stopped before its last target.**"]
    for part in m.get("merged_from", []):
        lines += [
            "",
            f"Merged (`--merge`): targets {', '.join(part['targets'])} with "
            f"{', '.join(part.get('samplers', []))} ran in their own process"
            f" (load average before {tuple(round(x, 1) for x in part['load_average_before'])},"
            f" after {tuple(round(x, 1) for x in part['load_average_after'])}); a later run's rows"
            " replace an earlier run's.",
        ]
    if "load_average_before" in m:
        lines.append("")
        lines.append(
            f"nutpie {m['nutpie']} · machine load average (1, 5, 15 min) before "
            f"{tuple(round(x, 1) for x in m['load_average_before'])}, after "
            f"{tuple(round(x, 1) for x in m['load_average_after'])} (a shared machine: CPU-time "
            "ratios are the robust ones)."
        )
    lines.append("")
    cols = [
        ("library", "library"),
        ("sampler", "sampler"),
        ("cold_s", "cold s"),
        ("warm_s", "warm s"),
        ("warm_cpu_s", "warm CPU s"),
        ("compile_s", "compile s"),
        ("grads_per_chain_warmup", "grads/chain warmup"),
        ("grads_per_chain_sampling", "grads/chain sampling"),
        ("min_ess", "min ESS"),
        ("ess_per_grad", "ESS/grad"),
        ("ess_per_grad_total", "ESS/grad incl. warmup"),
        ("ess_per_s", "ESS/s"),
        ("ess_per_cpu_s", "ESS/CPU-s"),
        ("grads_per_s", "grads/s"),
        ("us_per_grad", "µs/grad"),
        ("overhead", "× bare grad"),
        ("divergent", "div."),
        ("grads_to_bias_avg", "grads→b²<.01 avg"),
        ("grads_to_bias_max", "grads→b²<.01 max"),
        ("grads_to_bias_avg_tuned", "…avg incl. tuning"),
        ("grads_to_bias_max_tuned", "…max incl. tuning"),
    ]
    for t in payload["targets"]:
        lines += [
            f"## {t}",
            "",
            f"bare value-and-gradient: {payload['bare_us'][t]:.2f} µs per chain-batch",
            "",
        ]
        lines.append("| " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|" + "---|" * len(cols))
        for r in payload["runs"]:
            if r["target"] == t:
                lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
        obs = [r for r in payload["runs"] if r["target"] == t and "observable_mean" in r]
        if obs:
            lines.append("")
            lines.append(f"plaquette (exact {obs[0]['observable_exact']:.5f}):")
            for r in obs:
                lines.append(
                    f"- {r['library']} {r['sampler']}: {r['observable_mean']:.5f} "
                    f"({r['observable_error_in_mcse']:.2f} MCSE)"
                )
        lines.append("")
    lines += [
        "## Goals (issue 3)",
        "",
        "Speed ratios use CPU time (all threads of this process): on a shared machine it is far",
        "less noisy than wall-clock time, which is given alongside.",
        "",
        "| goal | value | target | met | note |",
        "|---|---|---|---|---|",
    ]
    for g in payload["goals"]:
        met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
        lines.append(
            f"| {g['goal']} | {_fmt(g['value'])} | {g['op']} {g['threshold']} | {met} | {g['detail']} |"
        )
    lines += [
        "",
        "## Goals (issue 13)",
        "",
        "Measured in this run; n/a: a sampler of the goal did not run here or the value is ∞",
        "(bias² never stayed below 0.01 within the run).",
        "",
        "| goal | value | target | met | note |",
        "|---|---|---|---|---|",
    ]
    for g in payload.get("goals13", []):
        met = {True: "yes", False: "**no**", None: "n/a"}[g["met"]]
        lines.append(
            f"| {g['goal']} | {_fmt(g['value'])} | {g['op']} {g['threshold']} | {met} | {g['detail']} |"
        )
    if payload.get("skipped"):
        lines += ["", "## Skipped", ""]
        for k in payload["skipped"]:
            lines.append(f"- {k['target']}: {k['library']} {k['sampler']}: {k['why']}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Main
# ---------------------------------------------------------------------------------------------

ALL_TARGETS = [
    "gauss100_k100",
    "gauss100_k1e5",
    "logreg",
    "funnel",
    "banana",
    "u1_L8",
    "irt",
    "horseshoe",
    "rosenbrock",
    "funnel100",
]

HARD_TARGETS = ["irt", "horseshoe", "rosenbrock", "funnel100"]
QUICK_TARGETS = ["gauss100_k100", "logreg", *HARD_TARGETS]
"""The quick profile (a 2-core CPU, about 15 minutes when the machine is not shared): issue 13's
harder targets plus the two standard ones; the others run with `--targets` or in the full
profile."""


def _version(module):
    try:
        return __import__(module).__version__
    except ImportError:
        return "not installed"


def make_runner(run: Run, target: Target):
    """The callable for `run`, or `None` when this installation lacks the sampler."""
    lib, name = run.library, run.sampler
    args = (target, run.num_chains, run.num_warmup, run.num_steps)
    if lib == "blackjax":
        if name in ("MCLMC", "MAMS"):
            return blackjax_mclmc_runner(name == "MAMS", *args)
        return blackjax_runner(name.lower(), *args)
    if lib == "numpyro":
        return numpyro_runner(*args)
    if lib == "nutpie":
        return nutpie_runner(*args, low_rank=name == "NUTS-lowrank")
    adaptation = "auto"
    if name in ("MCLMC", "MAMS"):
        if not hasattr(ds, name):
            return None
        sampler = getattr(ds, name)()
    elif name in ("NUTS-fisher", "NUTS-lowrank"):
        metric = {"NUTS-fisher": "fisher", "NUTS-lowrank": "low_rank"}[name]
        adaptation = ds.WindowAdaptation(metric=metric)  # ValueError where not supported
        sampler = ds.NUTS(step_size=0.1, max_tree_depth=target.max_tree_depth)
    else:
        sampler = {
            "NUTS": lambda: ds.NUTS(step_size=0.1, max_tree_depth=target.max_tree_depth),
            "HMC": lambda: ds.HMC(step_size=0.1, num_integration_steps=10),
            "UBU": lambda: ds.UnderdampedLangevin(step_size=0.1, integrator="UBU"),
            "ChEES": lambda: ds.ChEESHMC(step_size=0.1, trajectory_length=1.0),
        }[name]()
    return driftax_runner(sampler, *args, adaptation=adaptation)


def _write(
    args,
    quick,
    chains,
    chains_many,
    warmup,
    steps,
    repeats,
    load_before,
    targets,
    bare,
    records,
    skipped,
    final=True,
):
    """Write out/mcmc.json and out/mcmc.md (also after every target, so a long run that is
    stopped keeps the targets it finished)."""
    for rec in records:  # against the least loaded bare measurement of the target
        per_chain_bare = bare[rec["target"]] / chains
        rec["overhead"] = rec["us_per_grad"] / per_chain_bare
    payload = dict(
        meta=dict(
            mode="quick" if quick else "full",
            device=f"{jax.devices()[0].platform} × {len(jax.devices())} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)",
            jax=jax.__version__,
            blackjax=__import__("blackjax").__version__,
            numpyro=__import__("numpyro").__version__,
            driftax=dx.__version__,
            python=sys.version.split()[0],
            num_chains=chains,
            num_chains_many=chains_many,
            num_warmup=warmup,
            num_steps=steps,
            repeats=repeats,
            nutpie=_version("nutpie"),
            load_average_before=load_before,
            load_average_after=os.getloadavg(),
            complete=final,
        ),
        targets=[t for t in targets if t in bare],
        bare_us=bare,
        runs=records,
        goals=goals(records, bare),
        goals13=goals_issue13(records),
        skipped=skipped,
    )
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "mcmc.json"), "w") as f:
        json.dump(payload, f, indent=1, default=float)
    with open(os.path.join(args.out, "mcmc.md"), "w") as f:
        f.write(markdown(payload))
    return payload


def merge(paths, out):
    """One report from the `mcmc.json` of several runs (e.g. processes run side by side over
    disjoint targets); a later file's record of the same (target, library, sampler) replaces
    an earlier one (a re-run of one sampler), and the goals are re-evaluated over all."""
    parts = []
    for path in paths:
        with open(path) as f:
            parts.append(json.load(f))
    meta = dict(parts[0]["meta"])
    meta["complete"] = all(q["meta"].get("complete", True) for q in parts)
    meta["merged_from"] = [
        dict(
            targets=q["targets"],
            samplers=sorted({f"{r['library']}:{r['sampler']}" for r in q["runs"]}),
            load_average_before=q["meta"]["load_average_before"],
            load_average_after=q["meta"]["load_average_after"],
        )
        for q in parts
    ]
    by_key = {}
    for q in parts:
        for r in q["runs"]:
            by_key[(r["target"], r["library"], r["sampler"])] = r
    records = list(by_key.values())
    bare = {}
    for q in parts:  # the least loaded bare measurement of each target
        for k, v in q["bare_us"].items():
            bare[k] = min(v, bare.get(k, v))
    targets = list(dict.fromkeys(t for q in parts for t in q["targets"]))
    payload = dict(
        meta=meta,
        targets=targets,
        bare_us=bare,
        runs=records,
        goals=goals(records, bare),
        goals13=goals_issue13(records),
        skipped=[s for q in parts for s in q["skipped"]],
    )
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "mcmc.json"), "w") as f:
        json.dump(payload, f, indent=1, default=float)
    with open(os.path.join(out, "mcmc.md"), "w") as f:
        f.write(markdown(payload))
    return payload


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="CPU settings (minutes)")
    p.add_argument(
        "--targets",
        nargs="*",
        default=None,
        choices=ALL_TARGETS,
        help="default: QUICK_TARGETS with --quick, else all",
    )
    p.add_argument(
        "--samplers", nargs="*", default=None, help="subset, e.g. driftax:NUTS blackjax:NUTS"
    )
    p.add_argument("--out", default="out")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--chains", type=int, default=4, help="chains per sampler (ChEES: 4x)")
    p.add_argument("--num-warmup", type=int, default=None, help="override (smoke runs)")
    p.add_argument("--num-steps", type=int, default=None, help="override (smoke runs)")
    p.add_argument(
        "--merge",
        nargs="*",
        default=None,
        help="combine the mcmc.json of runs over disjoint targets into --out (no sampling)",
    )
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)
    quick = args.quick
    chains = args.chains
    chains_many = 4 * chains
    warmup, steps = (500, 1000) if quick else (1000, 5000)
    warmup_u, steps_u = (500, 4000) if quick else (1000, 20000)
    if args.num_warmup is not None:
        warmup = warmup_u = args.num_warmup
    if args.num_steps is not None:
        steps, steps_u = args.num_steps, 4 * args.num_steps
    repeats = args.repeats or (3 if quick else 5)

    targets = _targets(args.targets or (QUICK_TARGETS if quick else ALL_TARGETS))
    records, bare, skipped = [], {}, []
    load_before = os.getloadavg()

    def write(final=True):
        return _write(
            args,
            quick,
            chains,
            chains_many,
            warmup,
            steps,
            repeats,
            load_before,
            list(targets),
            bare,
            records,
            skipped,
            final=final,
        )

    for name, target in targets.items():
        bare_runs = [bare_gradient_us(target, chains)]
        runs = [
            Run("driftax", "NUTS", chains, warmup, steps),
            Run("blackjax", "NUTS", chains, warmup, steps),
            Run("numpyro", "NUTS", chains, warmup, steps),
            Run("nutpie", "NUTS", chains, warmup, steps),
            Run("nutpie", "NUTS-lowrank", chains, warmup, steps),
            Run("driftax", "HMC", chains, warmup, steps),
            Run("blackjax", "HMC", chains, warmup, steps),
            Run("driftax", "UBU", chains, warmup_u, steps_u),
            Run("driftax", "ChEES", chains_many, warmup, steps),
            Run("driftax", "NUTS-fisher", chains, warmup, steps),
            Run("driftax", "NUTS-lowrank", chains, warmup, steps),
            Run("driftax", "MCLMC", chains, warmup, steps_u),
            Run("blackjax", "MCLMC", chains, warmup, steps_u),
            Run("driftax", "MAMS", chains, warmup, steps),
            Run("blackjax", "MAMS", chains, warmup, steps),
        ]
        if args.samplers:
            runs = [r for r in runs if f"{r.library}:{r.sampler}" in args.samplers]
        elif quick and name in HARD_TARGETS:  # fixed-length HMC / UBU: not this issue's question
            runs = [r for r in runs if r.sampler not in ("HMC", "UBU")]
        kept = []
        for run in runs:
            why = None
            try:
                run.fn = make_runner(run, target)
            except (ImportError, AttributeError, TypeError, ValueError) as e:
                why = f"{type(e).__name__}: {e}"
            if run.fn is None:
                why = why or "not available in this installation"
            if why:
                skipped.append(dict(target=name, library=run.library, sampler=run.sampler, why=why))
                print(f"  {name}: {run.library} {run.sampler} skipped ({why})", flush=True)
            else:
                kept.append(run)
        runs = kept
        # cold starts (nothing compiled for an earlier target is reused), then the warm repeats
        # round-robin over the samplers, so that a change of machine load hits all of them
        jax.clear_caches()
        kept = []
        for run in runs:
            try:
                cold_start(run)
            except Exception as e:  # a peer that cannot run this target is reported, not fatal
                why = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}"
                skipped.append(dict(target=name, library=run.library, sampler=run.sampler, why=why))
                print(f"  {name}: {run.library} {run.sampler} {why}", flush=True)
                continue
            kept.append(run)
            print(
                f"  {name}: {run.library} {run.sampler} cold {run.extra['cold_s']:.1f}s", flush=True
            )
        runs = kept
        for r in range(repeats):
            bare_runs.append(bare_gradient_us(target, chains))
            for run in runs:
                warm_repeat(run, r)
        bare[name] = min(bare_runs)  # the least loaded measurement
        for run in runs:
            rec = record(run, target)
            records.append(rec)
            print(
                f"{name:14s} {run.library:9s} {run.sampler:12s} "
                f"cold {rec['cold_s']:.2f}s warm {rec['warm_s']:.3f}s (cpu {rec['warm_cpu_s']:.3f}s) "
                f"minESS {rec['min_ess']:.0f} ESS/s {rec['ess_per_s']:.0f} µs/grad "
                f"{rec['us_per_grad']:.2f} grads→b² {rec['grads_to_bias_avg']:.0f}",
                flush=True,
            )
            run.extra.clear()
        write(final=False)  # after every target: a stopped run keeps what finished
    payload = write()
    print(markdown(payload))


if __name__ == "__main__":
    main()
