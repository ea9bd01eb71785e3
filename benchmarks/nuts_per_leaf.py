"""Micro-benchmark: cost per NUTS leaf (one integrator step + tree bookkeeping), driftax vs
blackjax, with the same fixed step size and identity metric, whole loop under one `jax.jit`.

Isolates the trajectory builder from adaptation and diagnostics (`benchmarks/mcmc.py` measures
the whole pipeline). For each target (the 100-d ill-conditioned Gaussian and the logistic
regression) both libraries run in the same process, their repeats interleaved, and the script
prints the leaves per chain and the median µs per leaf of the slowest chain (chains are vmapped
and run in lock-step), in wall time and in process CPU time (the steadier one on a shared
machine), and the driftax / blackjax ratio.

Usage: `python benchmarks/nuts_per_leaf.py [--target gauss100 logreg] [--chains 4] [--steps 300]
[--repeats 7] [--out benchmarks/results/nuts_per_leaf.md]`.
"""

from __future__ import annotations

import argparse
import platform
import time

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds

TARGETS = {
    "gauss100": ("100-d Gaussian (κ=100)", lambda: de.ill_conditioned_gaussian(100, 100.0)),
    "logreg": ("logistic regression (31-d)", lambda: de.logistic_regression()),
}


def _runner(init, step, x0, num_chains, num_steps):
    def run(key):
        def chain(k):
            st, n = jax.lax.scan(step, init(x0), jax.random.split(k, num_steps))
            # the final position is an output too, so that nothing of the chain is dead code
            return n.sum(), st.position

        return jax.vmap(chain)(jax.random.split(key, num_chains))

    return jax.jit(run)


def measure(target, step_size: float, num_chains: int, num_steps: int, repeats: int) -> dict:
    """Median µs per leaf (wall and CPU) of driftax and blackjax NUTS on `target`."""
    x0 = jnp.zeros(target.dim)
    nuts = ds.NUTS(step_size=step_size)
    kernel = blackjax.nuts(de.to_logdensity_fn(target), step_size, jnp.ones(target.dim))

    def dx_step(st, k):
        st, info = nuts.step(target, st, key=k)
        return st, info.extras["num_integration_steps"]

    def bj_step(st, k):
        st, info = kernel.step(k, st)
        return st, info.num_integration_steps

    runners = {
        "driftax": _runner(lambda x: nuts.init(target, x), dx_step, x0, num_chains, num_steps),
        "blackjax": _runner(kernel.init, bj_step, x0, num_chains, num_steps),
    }
    leaves, wall, cpu = {}, {k: [] for k in runners}, {k: [] for k in runners}
    for name, run in runners.items():
        n, _ = jax.block_until_ready(run(jax.random.key(1)))  # compile; leaves of this key
        leaves[name] = np.asarray(n)
    for _ in range(repeats):  # interleaved, so that both see the same machine load
        for name, run in runners.items():
            t0, c0 = time.perf_counter(), time.process_time()
            jax.block_until_ready(run(jax.random.key(1)))
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    out = {}
    for name in runners:
        m = float(np.max(leaves[name]))
        out[name] = dict(
            leaves=leaves[name].tolist(),
            wall=1e6 * float(np.median(wall[name])) / m,
            cpu=1e6 * float(np.median(cpu[name])) / m,
        )
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", nargs="+", default=list(TARGETS), choices=list(TARGETS))
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--step-size", type=float, default=0.05)
    parser.add_argument("--out", default=None, help="also write the table as markdown here")
    args = parser.parse_args(argv)
    rows = [
        "| target | chains | leaves/chain (driftax; blackjax) | driftax µs/leaf (wall; CPU) "
        "| blackjax µs/leaf (wall; CPU) | ratio (wall; CPU) |",
        "|---|---|---|---|---|---|",
    ]
    for key in args.target:
        label, make = TARGETS[key]
        r = measure(make(), args.step_size, args.chains, args.steps, args.repeats)
        dx, bj = r["driftax"], r["blackjax"]
        for name in r:
            print(
                f"{key:9s} {name:9s} leaves/chain {r[name]['leaves']}  "
                f"{r[name]['wall']:.1f} µs/leaf wall, {r[name]['cpu']:.1f} µs/leaf CPU"
            )
        ratio_w, ratio_c = dx["wall"] / bj["wall"], dx["cpu"] / bj["cpu"]
        print(f"{key:9s} driftax / blackjax per leaf: {ratio_w:.2f} wall, {ratio_c:.2f} CPU")
        rows.append(
            f"| {label} | {args.chains} | {max(dx['leaves'])}; {max(bj['leaves'])} "
            f"| {dx['wall']:.1f}; {dx['cpu']:.1f} | {bj['wall']:.1f}; {bj['cpu']:.1f} "
            f"| {ratio_w:.2f}; {ratio_c:.2f} |"
        )
    if args.out:
        head = (
            f"NUTS cost per leaf, fixed step size {args.step_size}, identity metric, "
            f"{args.steps} transitions per chain, median of {args.repeats} interleaved repeats "
            f"(jax {jax.__version__}, blackjax {blackjax.__version__}, {platform.machine()}, "
            f"{jax.devices()[0].platform}).\n\n"
        )
        with open(args.out, "w") as f:
            f.write(head + "\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
