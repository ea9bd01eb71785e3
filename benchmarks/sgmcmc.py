"""Stochastic-gradient MCMC against full-batch NUTS and MALA on data energies, counted in
per-datum gradient evaluations (what a minibatch saves) to a stated posterior accuracy.

    python benchmarks/sgmcmc.py --quick        # CPU, minutes: writes out/sgmcmc.json, out/sgmcmc.md
    python benchmarks/sgmcmc.py                # more data sizes and longer runs

Targets: Bayesian linear regression (d = 5, exact Gaussian posterior) at a few data sizes N, and
the breast-cancer logistic regression (N = 569, d = 31, stored NUTS reference moments).

Samplers (4 chains each, all starting at the origin, so the transient is counted):

- `NUTS`, `MALA`: full batch (one gradient = N data gradients), driftax's default window
  adaptation; warmup gradients are counted.
- `SGLD`, `SGHMC` (friction 2·√λ_max, see `_sg_samplers`): minibatch `n = max(32, N/100)`
  drawn with replacement (O(n) per step; without replacement `jax.random.choice` permutes all
  N indices every step, which dominates the wall time at large N); `SGLD-CV`: SGLD with a control variate at the posterior mode found by
  BFGS (its gradients, N each, are counted, and each step costs 2n).
  The SG step size is the best of a grid (two values in the quick profile, three in the full;
  the grid's own cost is NOT counted: an optimistic assumption for SG-MCMC, stated in the
  report). SG chains burn in for a quarter of their sampling steps (counted, like the full-batch
  samplers' warmup); the accuracy is measured on the draws after it.

Accuracy: the running bias² of E[x²] (max over coordinates, in units of Var[x²];
`driftax.energies.running_bias_squared`, chains pooled) must stay below `THRESHOLD` = 0.01 for
good; `data_grads` is the per-chain data-gradient count at that point (`inf`: never, e.g. an
SG sampler whose stationary bias exceeds the threshold). The final bias² is reported too.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import jax
import jax.numpy as jnp
import jax.scipy.optimize
import numpy as np

import driftax as dx
import driftax.samplers as ds

THRESHOLD = 0.01
CHAINS = 4


def _targets(quick: bool):
    sizes = (1000, 10000) if quick else (1000, 10000, 100000)
    out = []
    for n in sizes:
        design, y = dx.energies.simulate_linear_regression(jax.random.key(n), n, 5)
        out.append((f"linreg_N{n}", dx.energies.linear_regression(design, y)))
    out.append(("logreg_N569", dx.energies.logistic_regression()))
    return out


def _truth(target):
    mean = np.asarray(target.mean, np.float64)
    var = np.asarray(target.variance, np.float64)
    return mean, var


def _bias_curve(samples, target):
    mean, var = _truth(target)
    b2 = dx.energies.running_bias_squared(
        jnp.asarray(samples, jnp.float64 if jax.config.jax_enable_x64 else jnp.float32), mean, var
    )
    return np.asarray(b2.x2_max, np.float64)


def _mode(target):
    """Posterior mode by BFGS; returns (mode, data gradients spent)."""
    res = jax.scipy.optimize.minimize(
        lambda w: -target.log_density(w),
        jnp.zeros(target.event_shape),
        method="BFGS",
        options={"maxiter": 200},
    )
    return res.x, int(res.njev) * target.num_data


def _sg_samplers(target, batch, quick):
    """Step-size grids (in units of 1/λ_max of the posterior precision at the mode)."""
    mode, _ = _mode(target)
    hess = jax.hessian(target.log_density)(mode)
    lam = float(np.max(np.linalg.eigvalsh(-np.asarray(hess, np.float64))))
    grid = (0.01, 0.002) if quick else (0.01, 0.003, 0.001)
    sg = {
        "SGLD": [ds.SGLD(step_size=c / lam, batch_size=batch, replace=True) for c in grid],
        "SGLD-CV": [ds.SGLD(step_size=c / lam, batch_size=batch, replace=True) for c in grid],
        "SGHMC": [
            ds.SGHMC(
                step_size=math.sqrt(c) / math.sqrt(lam),
                friction=2.0 * math.sqrt(lam),
                batch_size=batch,
                replace=True,
            )
            for c in grid
        ],
    }
    return sg


def _run(sampler, target, steps, warmup, key):
    t0 = time.perf_counter()
    res = dx.sample(
        sampler,
        target,
        jnp.zeros(target.event_shape),
        key=key,
        num_steps=steps,
        num_warmup=warmup,
        num_chains=CHAINS,
        check_health=False,
    )
    jax.block_until_ready(res.kernel_samples)
    return res, time.perf_counter() - t0


def _record(name, res, target, wall, extra_grads=0, warmup=0):
    curve = _bias_curve(res.kernel_samples, target)
    total = ds.data_gradient_evaluations(res).astype(np.float64).mean() + extra_grads
    steps = res.num_steps
    per_step = (total - extra_grads - target.num_data) / (steps + warmup)
    start = extra_grads + target.num_data + per_step * warmup
    t_star = float(dx.energies.gradients_to_threshold(jnp.asarray(curve), 1.0, THRESHOLD))
    to_acc = start + per_step * t_star if math.isfinite(t_star) else math.inf
    return {
        "sampler": name,
        "data_grads_to_threshold": to_acc,
        "final_bias2": float(curve[-1]),
        "data_grads_total": float(total),
        "wall_s": wall,
    }


def bench(quick: bool, seed: int, sg_steps: int | None = None):
    rows = []
    for tname, target in _targets(quick):
        big_n = target.num_data
        batch = max(32, big_n // 100)
        key = jax.random.key(seed)
        print(f"== {tname} (N={big_n}, batch={batch})", flush=True)
        full_steps = 1000 if quick else 4000
        for name, sampler, warm in (
            ("NUTS", ds.NUTS(step_size=0.1), 300),
            ("MALA", ds.MALA(step_size=0.01), 500),
        ):
            res, wall = _run(
                sampler, target, full_steps if name == "NUTS" else 3 * full_steps, warm, key
            )
            rows.append(
                {
                    "target": tname,
                    "N": big_n,
                    "batch": big_n,
                    **_record(name, res, target, wall, warmup=warm),
                }
            )
            print(rows[-1], flush=True)
        if sg_steps is None:
            sg_steps = 10000 if quick else 100000
        sg_burn = sg_steps // 4  # burn-in from the origin, counted in the cost like warmup
        mode, mode_grads = _mode(target)
        cv_target = target.with_control_variate(mode)
        for name, grid in _sg_samplers(target, batch, quick).items():
            best = None
            for sampler in grid:
                tgt, extra = (cv_target, mode_grads) if name == "SGLD-CV" else (target, 0)
                res, wall = _run(sampler, tgt, sg_steps, sg_burn, key)
                rec = _record(name, res, tgt, wall, extra_grads=extra, warmup=sg_burn)
                rec["step_size"] = float(sampler.step_size)
                if best is None or (rec["data_grads_to_threshold"], rec["final_bias2"]) < (
                    best["data_grads_to_threshold"],
                    best["final_bias2"],
                ):
                    best = rec
            rows.append({"target": tname, "N": big_n, "batch": batch, **best})
            print(rows[-1], flush=True)
    return rows


def _fmt(v):
    if isinstance(v, float):
        if math.isinf(v):
            return "not reached"
        return f"{v:.3g}"
    return str(v)


def write(rows, out, quick, seconds):
    os.makedirs(out, exist_ok=True)
    payload = {
        "quick": quick,
        "threshold": THRESHOLD,
        "chains": CHAINS,
        "platform": platform.platform(),
        "jax": jax.__version__,
        "devices": [str(d) for d in jax.devices()],
        "seconds": seconds,
        "rows": rows,
    }
    with open(os.path.join(out, "sgmcmc.json"), "w") as f:
        json.dump(payload, f, indent=1, default=float)
    lines = [
        "# SG-MCMC vs full-batch NUTS / MALA: data gradients to a posterior accuracy",
        "",
        f"Profile: {'quick' if quick else 'full'}; {CHAINS} chains from the origin; accuracy: "
        f"running bias² of E[x²] (max over coordinates, pooled chains) below {THRESHOLD} for "
        "good. `data grads`: per chain, per-datum gradients (a full gradient counts N; warmup, "
        "the initial gradient and SGLD-CV's BFGS mode search included). SG step sizes: the "
        "best of the grid (its cost not counted), after a burn-in of a quarter of the sampling steps (counted). Devices: "
        f"{', '.join(payload['devices'])}; {seconds:.0f} s.",
        "",
        "| target | N | sampler | batch | step size | data grads to bias² < 0.01 | final bias² | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['target']} | {r['N']} | {r['sampler']} | {r['batch']} | "
            f"{_fmt(r.get('step_size', float('nan'))) if 'step_size' in r else 'adapted'} | "
            f"{_fmt(r['data_grads_to_threshold'])} | {_fmt(r['final_bias2'])} | {r['wall_s']:.1f} |"
        )
    with open(os.path.join(out, "sgmcmc.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--quick", action="store_true", help="CPU settings (minutes)")
    p.add_argument("--out", default="out")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sg-steps", type=int, default=None, help="SG sampling steps per chain")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    rows = bench(args.quick, args.seed, args.sg_steps)
    write(rows, args.out, args.quick, time.perf_counter() - t0)
    print(open(os.path.join(args.out, "sgmcmc.md")).read())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
