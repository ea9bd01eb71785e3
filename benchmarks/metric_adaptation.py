"""Metric adaptation benchmark: NUTS with Stan's window diagonal against nutpie's Fisher
diagonal and low-rank + diagonal metrics (`WindowAdaptation(metric=...)`), same keys and
budgets, on the quick targets.

    python benchmarks/metric_adaptation.py            # CPU, a few minutes
    python benchmarks/metric_adaptation.py --seeds 3 --warmup 1000 --steps 1000

Targets: the ill-conditioned Gaussian (d=100, κ=100), Bayesian logistic regression, Neal's
funnel (d=10), a correlated Gaussian with a low-rank structure (d=50: three common factors
plus independent noise, coordinates on scales spread over e^{±1.5}), and, when
`driftax.energies` has them, the item-response and sparse-regression targets of issue 13.

Recorded per (target, metric), summed over seeds: min-ESS (bulk, over coordinates and all
chains) per gradient with the warmup's gradients INCLUDED, divergences, and the ratio to Stan's
window diagonal. Writes `out/metric_adaptation.md` (and `.json`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds

METRICS = {
    "stan_diag": lambda d: ds.WindowAdaptation(metric="diagonal"),
    "fisher": lambda d: ds.WindowAdaptation(metric="fisher"),
    "fisher_nutpie": lambda d: ds.WindowAdaptation(metric="fisher", schedule="nutpie"),
    "low_rank": lambda d: ds.WindowAdaptation(metric="low_rank", rank=min(10, d)),
}

# candidate names of the targets helper m-bench adds (whichever exists is used)
OPTIONAL = {
    "item_response": ("item_response", "item_response_2pl", "irt_2pl"),
    "sparse_logreg": (
        "sparse_logistic_regression",
        "horseshoe_logistic_regression",
        "sparse_regression",
    ),
}
LOW_RANK_GOAL_TARGETS = ("item_response", "sparse_logreg")


def factor_gaussian(d: int = 50, k: int = 3, seed: int = 0):
    """`N(0, S (F Fᵀ + 0.1 I) S)`: `k` common factors, independent noise, scales `S`."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(d, k))
    s = np.exp(rng.uniform(-1.5, 1.5, d))
    cov = s[:, None] * (f @ f.T + 0.1 * np.eye(d)) * s[None, :]
    return de.gaussian(jnp.zeros(d), jnp.asarray(cov, jnp.float32))


def targets():
    out = {
        "gauss100_k100": de.ill_conditioned_gaussian(100, 100.0),
        "logreg": de.logistic_regression(),
        "funnel10": de.funnel(10),
        "factor_gauss50": factor_gaussian(),
    }
    notes = []
    for name, candidates in OPTIONAL.items():
        found = [c for c in candidates if getattr(de, c, None) is not None]
        if found:
            out[name] = getattr(de, found[0])()
        else:
            notes.append(
                f"`{name}`: not in `driftax.energies` in this tree (looked for "
                + ", ".join(f"`{c}`" for c in candidates)
                + "); its low-rank goal is not measured."
            )
    return out, notes


def run_one(energy, metric, seed, warmup, steps, chains):
    d = int(np.prod(energy.event_shape))
    t = time.perf_counter()
    r = dx.sample(
        ds.NUTS(),
        energy,
        jnp.zeros(energy.event_shape),
        key=jax.random.key(seed),
        num_steps=steps,
        num_warmup=warmup,
        num_chains=chains,
        adaptation=METRICS[metric](d),
        check_health=False,
    )
    x = np.asarray(r.samples, np.float64).reshape(chains, steps, -1)
    return {
        "min_ess": float(np.min(ds.ess(x))),
        "grads": int(r.num_grad_evals + r.num_grad_evals_warmup),
        "grads_warmup": int(r.num_grad_evals_warmup),
        "divergent": int(r.num_divergent),
        "seconds": time.perf_counter() - t,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--targets", nargs="*", default=None)
    p.add_argument("--metrics", nargs="*", default=None, help="a subset (stan_diag always runs)")
    p.add_argument("--out", default="out")
    a = p.parse_args(argv)
    all_targets, notes = targets()
    names = a.targets or list(all_targets)
    metrics = ["stan_diag", *[m for m in (a.metrics or METRICS) if m != "stan_diag"]]
    records = {}
    for name in names:
        energy = all_targets[name]
        for metric in metrics:
            runs = [
                run_one(energy, metric, seed, a.warmup, a.steps, a.chains)
                for seed in range(a.seeds)
            ]
            rec = {
                "min_ess": [r["min_ess"] for r in runs],
                "grads": [r["grads"] for r in runs],
                "divergent": sum(r["divergent"] for r in runs),
                "seconds": sum(r["seconds"] for r in runs),
            }
            # ESS per gradient pooled over seeds: Σ ESS / Σ gradients
            rec["ess_per_grad"] = sum(rec["min_ess"]) / sum(rec["grads"])
            records[(name, metric)] = rec
            print(name, metric, f"{rec['ess_per_grad']:.2e}", rec, flush=True)
    rows, ratios = [], {m: [] for m in metrics if m != "stan_diag"}
    for name in names:
        base = records[(name, "stan_diag")]["ess_per_grad"]
        for metric in metrics:
            rec = records[(name, metric)]
            ratio = rec["ess_per_grad"] / base
            if metric != "stan_diag":
                ratios[metric].append((name, ratio))
            rows.append(
                f"| {name} | {metric} | {statistics.mean(rec['min_ess']):.0f} | "
                f"{statistics.mean(rec['grads']):,.0f} | {rec['ess_per_grad']:.2e} | "
                f"{ratio:.2f}× | {rec['divergent']} |"
            )
    med = {m: statistics.median([r for _, r in v]) for m, v in ratios.items()}
    labels = {
        "fisher": "Fisher diagonal (Stan's windows)",
        "fisher_nutpie": "Fisher diagonal (nutpie's schedule)",
    }
    goals = [
        f"- {labels[m]}, median ratio over the targets: **{med[m]:.2f}×** "
        f"(goal ≥ 1.3×: {'met' if med[m] >= 1.3 else 'missed'})."
        for m in labels
        if m in med
    ]
    if "low_rank" in med:
        goals.append(
            f"- Low-rank, median ratio over the targets: {med['low_rank']:.2f}× (no goal)."
        )
    for t in LOW_RANK_GOAL_TARGETS:
        got = [r for n, r in ratios.get("low_rank", []) if n == t]
        if got:
            goals.append(
                f"- Low-rank on `{t}`: **{got[0]:.2f}×** "
                f"(goal ≥ 2×: {'met' if got[0] >= 2 else 'missed'})."
            )
    md = [
        "# Metric adaptation: Stan's window diagonal vs nutpie's Fisher diagonal and low rank",
        "",
        f"NUTS, {a.chains} chains, {a.warmup} warmup + {a.steps} sampling steps per chain, "
        f"seeds 0..{a.seeds - 1} (same keys for every metric), every chain started at the "
        "origin. `min ESS`: bulk ESS of the worst coordinate (mean over seeds); `grads`: "
        "gradient evaluations over all chains, warmup INCLUDED (mean over seeds); "
        "`ESS/grad`: Σ min-ESS / Σ grads over seeds; ratio: against `stan_diag` on the same "
        f"target. JAX {jax.__version__}, {jax.devices()[0].platform}, "
        f"{os.cpu_count()} CPUs visible.",
        "",
        "| target | metric | min ESS | grads | ESS/grad | ratio | divergent |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Goals of issue 13 (item 2)",
        "",
        *goals,
        *[f"- {n}" for n in notes],
        "",
    ]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "metric_adaptation.md"), "w") as f:
        f.write("\n".join(md))
    with open(os.path.join(a.out, "metric_adaptation.json"), "w") as f:
        json.dump(
            {f"{n}/{m}": v for (n, m), v in records.items()} | {"median_ratio": med}, f, indent=1
        )
    print("\n".join(md))


if __name__ == "__main__":
    main()
