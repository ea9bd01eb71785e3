"""Micro-benchmark: cost per NUTS leaf (one integrator step + tree bookkeeping), driftax vs
blackjax, with the same fixed step size and identity metric, whole loop under one `jax.jit`.

Isolates the trajectory builder from adaptation and diagnostics (`benchmarks/mcmc.py` measures
the whole pipeline). Prints leaves per chain, the median warm time of 3 repeats, and µs per leaf
of the slowest chain (chains are vmapped and run in lock-step).

Usage: `python benchmarks/nuts_per_leaf.py [--target logreg|gauss100] [--chains 4] [--steps 300]`.
"""

from __future__ import annotations

import argparse
import time

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds


def _runner(init, step, x0, num_chains, num_steps):
    def run(key):
        def chain(k):
            def body(st, kk):
                st, n = step(st, kk)
                return st, n

            _, n = jax.lax.scan(body, init(x0), jax.random.split(k, num_steps))
            return n.sum()

        return jax.vmap(chain)(jax.random.split(key, num_chains))

    return jax.jit(run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="logreg", choices=["logreg", "gauss100"])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args(argv)
    if args.target == "logreg":
        target, step_size = de.logistic_regression(), 0.05
    else:
        target, step_size = de.ill_conditioned_gaussian(100, 100.0), 0.05
    d = target.dim
    x0 = jnp.zeros(d)
    nuts = ds.NUTS(step_size=step_size)

    def dx_step(st, k):
        st, info = nuts.step(target, st, key=k)
        return st, info.extras["num_integration_steps"]

    kernel = blackjax.nuts(de.to_logdensity_fn(target), step_size, jnp.ones(d))

    def bj_step(st, k):
        st, info = kernel.step(k, st)
        return st, info.num_integration_steps

    runners = {
        "driftax": _runner(lambda x: nuts.init(target, x), dx_step, x0, args.chains, args.steps),
        "blackjax": _runner(kernel.init, bj_step, x0, args.chains, args.steps),
    }
    per_leaf = {}
    for name, run in runners.items():
        run(jax.random.key(0)).block_until_ready()  # compile
        times = []
        for i in range(3):
            t0 = time.perf_counter()
            n = run(jax.random.key(i + 1)).block_until_ready()
            times.append(time.perf_counter() - t0)
        t = float(np.median(times))
        per_leaf[name] = 1e6 * t / float(np.max(np.asarray(n)))
        print(
            f"{name:9s} leaves/chain {np.asarray(n)}  warm {t:.3f} s  {per_leaf[name]:.1f} µs/leaf"
        )
    print(f"driftax / blackjax per leaf: {per_leaf['driftax'] / per_leaf['blackjax']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
