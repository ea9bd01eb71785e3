"""Make the reference posterior moments of `driftax.energies.logistic_regression()`.

Runs blackjax NUTS (per-chain window adaptation of step size and dense mass matrix) in float64,
with warmup and sampling of all chains inside ONE `jax.jit`, then stores the posterior mean and
variance with their Monte Carlo standard errors (from ArviZ's ESS) into
`driftax/energies/data/logreg_reference.npz`.

    python benchmarks/make_logreg_reference.py            # 8 chains x 50k draws, ~3 CPU minutes
    python benchmarks/make_logreg_reference.py --quick    # a smoke run, writes nothing

MCSEs: `mcse_mean = sd / sqrt(ess_mean(x))`; `mcse_variance = sd((x − mean)²) / sqrt(ess_mean((x −
mean)²))`, the ESS computed with ArviZ (`method="mean"`, rank-free) over all chains.
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import arviz as az  # noqa: E402
import blackjax  # noqa: E402
import numpy as np  # noqa: E402

import driftax.energies as de  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "driftax" / "energies" / "data"


def run_nuts(logdensity, dim, *, seed, num_chains, num_warmup, num_draws):
    def one_chain(key, x0):
        k_warm, k_draw = jax.random.split(key)
        warmup = blackjax.window_adaptation(
            blackjax.nuts, logdensity, is_mass_matrix_diagonal=False
        )
        (state, params), _ = warmup.run(k_warm, x0, num_steps=num_warmup)
        kernel = blackjax.nuts(logdensity, **params).step

        def body(s, k):
            s, info = kernel(k, s)
            return s, (s.position, info.is_divergent, info.num_integration_steps)

        _, (xs, div, steps) = jax.lax.scan(body, state, jax.random.split(k_draw, num_draws))
        return xs, div.sum(), steps.mean(), params["step_size"]

    key = jax.random.key(seed)
    k_init, k_chains = jax.random.split(key)
    x0 = 0.1 * jax.random.normal(k_init, (num_chains, dim))
    run = jax.jit(jax.vmap(one_chain))
    return run(jax.random.split(k_chains, num_chains), x0)


def _per_coordinate(fn, draws, **kwargs):
    ds = az.convert_to_dataset(draws)  # (chain, draw, dim) -> variable "x" of shape (dim,)
    return np.asarray(fn(ds, **kwargs)["x"]).reshape(-1)


def summarize(draws):
    """Mean, variance and their MCSEs from draws of shape (chains, draws, dim)."""
    flat = draws.reshape(-1, draws.shape[-1])
    mean, var = flat.mean(0), flat.var(0)
    sq = (draws - mean) ** 2
    ess_mean = _per_coordinate(az.ess, draws, method="mean")
    ess_sq = _per_coordinate(az.ess, sq, method="mean")
    ess_bulk = _per_coordinate(az.ess, draws, method="bulk")
    rhat = _per_coordinate(az.rhat, draws)
    return {
        "mean": mean,
        "variance": var,
        "mcse_mean": np.sqrt(var / ess_mean),
        "mcse_variance": sq.reshape(-1, draws.shape[-1]).std(0) / np.sqrt(ess_sq),
        "min_ess_mean": ess_mean.min(),
        "min_ess_variance": ess_sq.min(),
        "min_ess_bulk": ess_bulk.min(),
        "max_rhat": rhat.max(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=50_000)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--quick", action="store_true", help="smoke run; writes nothing")
    args = parser.parse_args()
    if args.quick:
        args.chains, args.warmup, args.draws = 2, 300, 500

    target = de.logistic_regression(with_reference=False)
    dim = target.event_shape[0]
    t0 = time.perf_counter()
    xs, div, steps, eps = run_nuts(
        target.log_density,
        dim,
        seed=args.seed,
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_draws=args.draws,
    )
    xs = np.asarray(jax.block_until_ready(xs))
    seconds = time.perf_counter() - t0
    summary = summarize(xs)
    info = {
        "num_chains": args.chains,
        "num_warmup": args.warmup,
        "num_draws": args.draws,
        "seed": args.seed,
        "num_divergent": int(np.asarray(div).sum()),
        "mean_integration_steps": float(np.asarray(steps).mean()),
        "seconds": seconds,
    }
    print(f"{seconds:.1f} s, step sizes {np.asarray(eps).round(3)}")
    for k, v in {**info, **summary}.items():
        if np.ndim(v) == 0:
            print(f"{k:>24}: {v:.6g}")
    print("mean[:5]", summary["mean"][:5], "\nmcse_mean[:5]", summary["mcse_mean"][:5])
    if args.quick:
        return
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "logreg_reference.npz"
    np.savez_compressed(
        path,
        **{k: np.asarray(v, np.float64) for k, v in summary.items()},
        **{k: np.asarray(v, np.float64) for k, v in info.items()},
    )
    print("wrote", path)


if __name__ == "__main__":
    main()
