"""Make the shipped stochastic Lotka–Volterra problem of `driftax.energies.lotka_volterra_problem`:
the synthetic data set and the reference posterior of θ = (log prey_growth, log predator_death)
from a long particle marginal Metropolis–Hastings (PMMH) run.

    python benchmarks/make_lotka_volterra_reference.py          # ~10 CPU-minutes
    python benchmarks/make_lotka_volterra_reference.py --quick  # a smoke run, writes only the data file

Data: `lotka_volterra_model_fn(LV_TRUE_THETA).simulate(jax.random.key(LV_SEED), 25)` in float64,
written to `driftax/energies/data/lotka_volterra_data.npz` (the constants live in
`driftax/energies/_ssm.py`). Reference: driftax's `PMMH` through `dx.sample` (bootstrap filter,
systematic resampling), several chains started from draws of the prior, one step size and one
dense metric for all chains tuned by window adaptation (pooled over the chains); posterior means and sds of θ
with their Monte Carlo standard errors (ArviZ, rank-normalized bulk ESS and split R-hat) in
`lotka_volterra_reference.npz`. As an internal consistency check the first and second halves of
the draws are summarized separately (`max_abs_z_halves`).
"""

from __future__ import annotations

import argparse
import pathlib
import time

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import driftax as dx  # noqa: E402
import driftax.energies._ssm as ssm  # noqa: E402
import driftax.samplers as ds  # noqa: E402

OUT = pathlib.Path(__file__).resolve().parents[1] / "driftax" / "energies" / "data"


def summarize(draws: np.ndarray) -> dict:
    """Means, sds, their MCSEs, ESS and R-hat of draws `(chains, draws, dim)`."""
    flat = draws.reshape(-1, draws.shape[-1])
    half = draws.shape[1] // 2
    first, second = draws[:, :half], draws[:, half:]
    se = np.sqrt(ds.mcse(first) ** 2 + ds.mcse(second) ** 2)
    z_halves = (
        first.reshape(-1, flat.shape[1]).mean(0) - second.reshape(-1, flat.shape[1]).mean(0)
    ) / se
    return {
        "mean": flat.mean(0),
        "sd": flat.std(0, ddof=1),
        "mcse_mean": ds.mcse(draws, method="mean"),
        "mcse_sd": ds.mcse(draws, method="sd"),
        "ess_bulk": ds.ess(draws, method="bulk"),
        "ess_tail": ds.ess(draws, method="tail"),
        "rhat": ds.rhat(draws),
        "max_abs_z_halves": np.max(np.abs(z_halves)),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--draws", type=int, default=16000)
    parser.add_argument("--particles", type=int, default=64)
    parser.add_argument("--seed", type=int, default=20261209)
    parser.add_argument(
        "--quick", action="store_true", help="smoke run; writes only the (deterministic) data file"
    )
    args = parser.parse_args()
    if args.quick:
        args.chains, args.warmup, args.draws = 2, 100, 200

    states, observations = ssm.simulate_lotka_volterra_data()
    np.savez(  # deterministic: the same file every run
        OUT / ssm.LV_DATA_FILE,
        observations=observations,
        states=states,
        theta=np.asarray(ssm.LV_TRUE_THETA),
        seed=ssm.LV_SEED,
        num_steps=ssm.LV_NUM_STEPS,
    )
    problem = dx.energies.lotka_volterra_problem(with_reference=False)
    np.testing.assert_array_equal(np.asarray(problem.observations), observations)
    key_init, key_run = jax.random.split(jax.random.key(args.seed))
    x0 = ssm.LV_PRIOR_SD * jax.random.normal(key_init, (args.chains, 2), jnp.float64)
    kernel = ds.PMMH(problem.model_fn, problem.observations, num_particles=args.particles)
    start = time.process_time()
    result = dx.sample(
        kernel,
        problem.prior,
        x0,
        key=key_run,
        num_steps=args.draws,
        num_warmup=args.warmup,
        num_chains=args.chains,
        adaptation=ds.WindowAdaptation(metric="dense", pooled=True),
        progress=False,
    )
    seconds = time.process_time() - start
    draws = np.asarray(result.samples)
    out = summarize(draws)
    acceptance = float(np.mean(np.asarray(result.info.acceptance_rate)))
    out.update(
        num_chains=args.chains,
        num_warmup=args.warmup,
        num_draws=args.draws,
        num_particles=args.particles,
        seed=args.seed,
        acceptance=acceptance,
        cpu_seconds=seconds,
    )
    for k, v in out.items():
        print(f"{k:>18}: {np.round(v, 5)}")
    if not args.quick:
        np.savez(OUT / ssm.LV_REFERENCE_FILE, **{k: np.asarray(v) for k, v in out.items()})
        print("wrote", OUT / ssm.LV_REFERENCE_FILE)


if __name__ == "__main__":
    main()
