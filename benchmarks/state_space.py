"""State-space benchmark: particle-filter log-likelihood variance per second and PMMH ESS per
second, with the exact Kalman filter (and NUTS on the exact Kalman marginal) as the bound.

    python benchmarks/state_space.py --quick     # CPU, a few minutes
    python benchmarks/state_space.py             # larger runs

No particle-filter peer is installed in the environment (`particles` would downgrade numpy;
`dynamax` has Kalman / EKF / UKF but no particle filter), so the reference is the exact answer:
Kalman's log-likelihood (zero variance, its time measured) and NUTS on Kalman's marginal
likelihood (the best a sampler of θ can do with the exact likelihood).

Recorded: (1) for a 2-D linear-Gaussian model (T = 100), bootstrap, guided (locally optimal
proposal) and auxiliary (fully adapted) filters at several particle counts: the seconds per run
(CPU seconds of the process, all threads; R runs vmapped in one compiled call, compile
excluded), the variance of the log-likelihood
over the runs, its efficiency 1 / (variance · seconds), and the bias of the log-mean-exp against
Kalman; (2) PMMH (window adaptation) and particle Gibbs on θ = atanh(A) of a scalar model
(T = 100) against NUTS on the exact marginal: min bulk ESS per CPU second (compile excluded by an
identical warm-up call) and the posterior mean. Writes `out/state_space.md` and `.json`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds


def _timed(fn, *args):
    """Run once to compile, then time a second call: (output, CPU seconds of this process).

    CPU time (all threads of the process) rather than wall time, so that a machine shared with
    other jobs does not inflate the numbers; the wall time is kept in `_timed.wall`."""
    jax.block_until_ready(fn(*args))  # compile
    t0, w0 = time.process_time(), time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    _timed.wall = time.perf_counter() - w0
    return out, time.process_time() - t0


def filters(quick: bool):
    model = de.linear_gaussian_ssm(
        jnp.array([[0.9, 0.1], [0.0, 0.8]]), 0.4 * jnp.eye(2), jnp.eye(2), 0.5 * jnp.eye(2),
        jnp.zeros(2), jnp.eye(2),
    )  # fmt: skip
    _, ys = model.simulate(jax.random.key(0), 100)
    kalman = jax.jit(lambda y: de.kalman_filter(model, y).log_likelihood)
    exact, k_sec = _timed(kalman, ys)
    rows = [
        dict(method="Kalman (exact)", particles=0, seconds=k_sec, variance=0.0, bias=0.0, eff=None)
    ]
    runs = 32 if quick else 128
    proposals = {
        "bootstrap": None,
        "guided (optimal)": _GuidedOnly(model.optimal_proposal()),
        "auxiliary (fully adapted)": model.optimal_proposal(),
    }
    for n in (100, 1000) if quick else (100, 1000, 10000):
        for name, prop in proposals.items():

            def many(keys, prop=prop, n=n):
                return jax.vmap(
                    lambda k: (
                        ds.particle_filter(
                            model, ys, key=k, num_particles=n, proposal=prop
                        ).log_likelihood
                    )
                )(keys)

            f = jax.jit(many)
            lls, sec = _timed(f, jax.random.split(jax.random.key(n), runs))
            lls = np.asarray(lls)
            var = float(lls.var(ddof=1))
            lme = float(np.log(np.mean(np.exp(lls - lls.max()))) + lls.max())
            per_run = sec / runs
            rows.append(
                dict(
                    method=name,
                    particles=n,
                    seconds=per_run,
                    variance=var,
                    bias=lme - float(exact),
                    eff=1.0 / (var * per_run),
                )
            )
    return float(exact), rows


class _GuidedOnly(de.AbstractProposal):
    inner: de.AbstractAuxiliaryProposal

    def initial_sample(self, key, y):
        return self.inner.initial_sample(key, y)

    def initial_log_density(self, x, y):
        return self.inner.initial_log_density(x, y)

    def sample(self, key, x_prev, y, t):
        return self.inner.sample(key, x_prev, y, t)

    def log_density(self, x_prev, x, y, t):
        return self.inner.log_density(x_prev, x, y, t)


def _theta_model(theta):
    return de.linear_gaussian_ssm(
        jnp.tanh(theta[:1])[None], jnp.array([[0.5]]), jnp.eye(1), jnp.eye(1), jnp.zeros(1),
        jnp.eye(1),
    )  # fmt: skip


def pmcmc(quick: bool):
    _, ys = _theta_model(jnp.array([1.0])).simulate(jax.random.key(1), 100)
    prior = de.gaussian(jnp.zeros(1))
    steps = 1000 if quick else 4000
    x0 = jnp.array([0.5])
    kw = dict(num_chains=4, check_health=False)
    configs = {
        "NUTS on Kalman marginal (exact)": (ds.NUTS(step_size=0.3), de.kalman_marginal(_theta_model, prior, ys), 300),
        "PMMH, 100 particles": (ds.PMMH(_theta_model, ys, num_particles=100, step_size=0.3), prior, 300),
        "ParticleGibbs, 20 particles": (
            ds.ParticleGibbs(_theta_model, ys, num_particles=20, theta_sampler=ds.RandomWalk(step_size=0.3), num_theta_steps=5),
            prior,
            0,
        ),
    }  # fmt: skip
    rows = []
    for name, (kernel, energy, warm) in configs.items():
        # the same step counts in both calls (they are static): the first call compiles
        dx.sample(kernel, energy, x0, key=jax.random.key(2), num_steps=steps, num_warmup=warm, **kw)
        t0 = time.process_time()
        res = dx.sample(
            kernel, energy, x0, key=jax.random.key(3), num_steps=steps, num_warmup=warm, **kw
        )
        sec = time.process_time() - t0
        x = np.asarray(res.samples)[..., 0]
        ess = float(np.min(np.asarray(ds.ess(x[..., None]))))
        rows.append(
            dict(
                method=name,
                seconds=sec,
                ess=ess,
                ess_per_s=ess / sec,
                mean=float(x.mean()),
                sd=float(x.std()),
            )
        )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", default="out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with jax.enable_x64(True):
        exact, frows = filters(args.quick)
    prows = pmcmc(args.quick)
    record = dict(
        quick=args.quick,
        kalman_log_likelihood=exact,
        filters=frows,
        pmcmc=prows,
        device=str(jax.devices()[0]),
    )
    (out / "state_space.json").write_text(json.dumps(record, indent=2))
    lines = [
        "# State-space benchmark" + (" (quick profile)" if args.quick else ""),
        "",
        f"Device: {record['device']}. No particle-filter peer is installed (see the script's "
        "docstring); the exact Kalman filter and NUTS on the exact Kalman marginal are the bounds. "
        "Times are CPU seconds of the process (all threads), compile excluded.",
        "",
        f"## Particle-filter log-likelihood, 2-D linear-Gaussian model, T = 100 (Kalman: {exact:.3f})",
        "",
        "| method | particles | CPU seconds / run | Var(log Ẑ) | log-mean-exp − exact | efficiency 1/(Var·s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in frows:
        eff = "∞ (exact)" if r["eff"] is None else f"{r['eff']:.3g}"
        lines.append(
            f"| {r['method']} | {r['particles'] or '—'} | {r['seconds']:.2e} | {r['variance']:.3g} | "
            f"{r['bias']:+.3f} | {eff} |"
        )
    lines += [
        "",
        "## θ = atanh(A) of a scalar linear-Gaussian model, T = 100, 4 chains",
        "",
        "| method | CPU seconds (incl. warmup) | min bulk ESS | ESS / CPU s | posterior mean | sd |",
        "|---|---|---|---|---|---|",
    ]
    for r in prows:
        lines.append(
            f"| {r['method']} | {r['seconds']:.1f} | {r['ess']:.0f} | {r['ess_per_s']:.1f} | "
            f"{r['mean']:.4f} | {r['sd']:.4f} |"
        )
    (out / "state_space.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
