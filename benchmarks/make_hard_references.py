"""Make the reference posterior moments of the harder targets of issue 13:
`driftax.energies.item_response()` and `driftax.energies.horseshoe_logistic_regression()`.

Same method as `make_logreg_reference.py`: blackjax NUTS with per-chain window adaptation, float64,
warmup and sampling of all chains inside ONE `jax.jit`; posterior mean and variance with their
Monte Carlo standard errors (ArviZ ESS) stored in `driftax/energies/data/<target>_reference.npz`.
As an internal consistency check the two halves of the chains are summarized separately and the
largest standardized difference of their means (`max_abs_z_halves`) is stored too; the independent
check (a different library) is in `tests/energies/test_hard_targets.py`.

    python benchmarks/make_hard_references.py --target irt          # a few CPU minutes
    python benchmarks/make_hard_references.py --target horseshoe    # a few CPU minutes
    python benchmarks/make_hard_references.py --target irt --quick  # a smoke run, writes nothing

Sizes: IRT 4 chains x (800 warmup + 4 000 draws), diagonal metric; horseshoe 4 chains x
(1 000 warmup + 2 000 draws), dense metric, target acceptance 0.9 (its trajectories are long:
about 100-200 leapfrog steps per draw).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import blackjax  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from make_logreg_reference import summarize  # noqa: E402

import driftax.energies as de  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "driftax" / "energies" / "data"

SETTINGS = {
    "irt": dict(chains=4, warmup=800, draws=4000, dense=False, accept=0.8, seed=20261207),
    "horseshoe": dict(chains=4, warmup=1000, draws=2000, dense=True, accept=0.9, seed=20261208),
}


def build(name):
    if name == "irt":
        t = de.item_response(with_reference=False)
        return t, {"num_students": t.num_students, "num_items": t.num_items}
    t = de.horseshoe_logistic_regression(with_reference=False)
    return t, {"slab_scale": t.slab_scale, "global_scale": t.global_scale}


def run_nuts(logdensity, dim, *, seed, chains, warmup, draws, dense, accept):
    def one_chain(key, x0):
        k_warm, k_draw = jax.random.split(key)
        wa = blackjax.window_adaptation(
            blackjax.nuts,
            logdensity,
            is_mass_matrix_diagonal=not dense,
            target_acceptance_rate=accept,
        )
        (state, params), _ = wa.run(k_warm, x0, num_steps=warmup)
        kernel = blackjax.nuts(logdensity, **params).step

        def body(s, k):
            s, info = kernel(k, s)
            return s, (s.position, info.is_divergent, info.num_integration_steps)

        _, (xs, div, steps) = jax.lax.scan(body, state, jax.random.split(k_draw, draws))
        return xs, div.sum(), steps.mean(), params["step_size"]

    k_init, k_chains = jax.random.split(jax.random.key(seed))
    x0 = 0.1 * jax.random.normal(k_init, (chains, dim))
    return jax.jit(jax.vmap(one_chain))(jax.random.split(k_chains, chains), x0)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=sorted(SETTINGS), required=True)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    args = parser.parse_args()
    cfg = dict(SETTINGS[args.target])
    if args.quick:
        cfg.update(chains=2, warmup=300, draws=500)
    target, variant = build(args.target)
    dim = target.event_shape[0]
    t0 = time.perf_counter()
    xs, div, steps, eps = run_nuts(target.log_density, dim, **cfg)
    xs = np.asarray(jax.block_until_ready(xs))
    seconds = time.perf_counter() - t0
    summary = summarize(xs)
    half = cfg["chains"] // 2
    a, b = summarize(xs[:half]), summarize(xs[half:])
    z = (a["mean"] - b["mean"]) / np.sqrt(a["mcse_mean"] ** 2 + b["mcse_mean"] ** 2)
    info = {
        **variant,
        "num_chains": cfg["chains"],
        "num_warmup": cfg["warmup"],
        "num_draws": cfg["draws"],
        "seed": cfg["seed"],
        "dense_metric": float(cfg["dense"]),
        "target_acceptance": cfg["accept"],
        "num_divergent": int(np.asarray(div).sum()),
        "mean_integration_steps": float(np.asarray(steps).mean()),
        "max_abs_z_halves": float(np.abs(z).max()),
        "seconds": seconds,
    }
    print(f"{seconds:.1f} s, step sizes {np.asarray(eps).round(4)}")
    for k, v in {**info, **summary}.items():
        if np.ndim(v) == 0:
            print(f"{k:>24}: {v:.6g}")
    if args.quick:
        return
    path = OUT / f"{args.target}_reference.npz"
    np.savez_compressed(
        path,
        **{k: np.asarray(v, np.float64) for k, v in summary.items()},
        **{k: np.asarray(v, np.float64) for k, v in info.items()},
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
