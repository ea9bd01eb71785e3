"""Schrödinger bridges and minibatch-OT flow matching against the closed-form Gaussian bridge.

torchcfm is not installable here (it needs torch), so every method is measured against the exact
answer instead: between two Gaussians `N(m0, S0)`, `N(m1, S1)` (random covariances, fixed seed)
the Schrödinger bridge with reference `sigma · W` is `driftax.diffusion.GaussianBridge`, and
its coupling covariance `C = Cov(X0, X1)` is the number every method must recover.

1. entropic OT on samples: the ott-jax Sinkhorn plan (`dd.entropic_plan`, cost `|x - y|^2`,
   `epsilon = 2 sigma^2`) between `n` samples of each end; the plan's cross-covariance.
2. LightSB (one full-covariance component, which contains the Gaussian solution exactly),
   fitted by its closed-form objective on `n` samples of each end; and EgNEOT with a quadratic
   potential (which also contains it), trained by its contrastive objective with ULA negatives.
3. DSBM / IMF with `AffineDrift` forward and backward drifts (the exact family of Gaussian
   bridge drifts, so the error is the algorithm's and the data's, not a network's); the coupling
   is read off by simulating the learned forward SDE (200 Euler–Maruyama steps).
4. conditional flow matching (`sigma = 0`) with independent, exact-OT (Hungarian) and entropic
   (SB-CFM, `sigma = 0.5`, velocity target) minibatch couplings, `AffineDrift` velocity: the
   Euler error at NFE 1, 2, 4, 8 against the same model at NFE 256 (how straight the learned
   paths are), and the end-marginal error at NFE 256 (`|mean - m1| / |m1|`, `|cov - S1| / |S1|`).

The error of a method is `|C_hat - C|_F / |C|_F`, next to that of the plug-in estimate (the
closed form between the sample means and covariances, the statistical floor of any fit to the
same samples); for every fitted method it is reported for
three seeds (two for DSBM in the quick profile; different data and initialisation): their mean and spread (seed-to-seed standard
deviation), so a mean far outside the spread is a bias. Time is the wall time of the fit
(compilation included) on this machine.

Usage: `PYTHONPATH=. python benchmarks/bridges.py --quick` (d = 2, 16; minutes on a 2-core CPU)
or `--full` (d = 2, 16, 64; more samples and steps); writes `out/bridges.json` and
`out/bridges.md`.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import driftax.diffusion as dd

SEEDS = (0, 1, 2)


def gaussian_ends(d: int, key=None):
    """Two fixed Gaussians in `d` dimensions with random well-conditioned covariances (eigenvalues
    roughly in [0.5, 3]) and means about one unit apart."""
    key = jax.random.key(100 + d) if key is None else key
    k1, k2, k3, k4 = jax.random.split(key, 4)
    a = jax.random.normal(k1, (d, d)) / jnp.sqrt(d)
    b = jax.random.normal(k2, (d, d)) / jnp.sqrt(d)
    s0 = a @ a.T + 0.5 * jnp.eye(d)
    s1 = b @ b.T + 0.5 * jnp.eye(d)
    return jax.random.normal(k3, (d,)), s0, jax.random.normal(k4, (d,)) + 1.0, s1


def cross_covariance(x, y):
    """The empirical `Cov(X, Y)` of paired rows."""
    return (x - x.mean(0)).T @ (y - y.mean(0)) / x.shape[0]


def relative_error(a, b) -> float:
    return float(jnp.linalg.norm(jnp.asarray(a) - b) / jnp.linalg.norm(b))


def samples(bridge: dd.GaussianBridge, key, n: int):
    """`n` independent samples of each end (not a coupling)."""
    k0, k1 = jax.random.split(key)
    x0 = jax.random.multivariate_normal(k0, bridge.mean0, bridge.cov0, (n,))
    x1 = jax.random.multivariate_normal(k1, bridge.mean1, bridge.cov1, (n,))
    return x0, x1


def plugin_coupling(bridge: dd.GaussianBridge, x0, x1):
    """The closed-form coupling covariance between the EMPIRICAL Gaussians of two sample sets
    (sample means and covariances): the plug-in estimate, the statistical floor of a fit."""
    emp = dd.GaussianBridge(
        x0.mean(0), jnp.cov(x0.T, bias=True), x1.mean(0), jnp.cov(x1.T, bias=True), bridge.sigma
    )
    return emp.coupling_covariance()


def fit_lightsb(bridge: dd.GaussianBridge, key, n: int, steps: int):
    """LightSB (K = 1, full) fitted on `n` samples per end; returns its coupling covariance
    `S0 S` (exact for one component: `E[X1 | X0 = x] = r + S x`), the fitted model and the
    plug-in coupling of the same samples."""
    kd, kf = jax.random.split(key)
    x0, x1 = samples(bridge, kd, n)
    model = dd.LightSB(bridge.dim, 1, sigma=bridge.sigma, key=kf, means=x1[:1])
    opt = optax.adam(optax.cosine_decay_schedule(5e-2, steps, alpha=0.05))
    model, _ = dd.fit_bridge(
        model, dd.LightSBLoss(), x0, x1, key=kf, optimizer=opt, num_steps=steps, batch_size=n
    )
    return bridge.cov0 @ model.component_covariances()[0], model, plugin_coupling(bridge, x0, x1)


def fit_dsbm(bridge: dd.GaussianBridge, key, n: int, steps: int, iterations: int):
    """DSBM-IMF with `AffineDrift` forward / backward drifts on `n` samples per end; returns the
    coupling covariance of the learned forward SDE (fresh source samples), the result and the
    plug-in coupling of the same samples."""
    kd, kf, ks = jax.random.split(key, 3)
    x0, x1 = samples(bridge, kd, n)
    net = dd.BridgeDrift(dd.AffineDrift(bridge.dim), dd.AffineDrift(bridge.dim), bridge.sigma)
    opt = optax.adam(optax.cosine_decay_schedule(2e-2, steps, alpha=0.05))
    result = dd.dsbm(
        net,
        x0,
        x1,
        key=kf,
        optimizer=opt,
        num_iterations=iterations,
        num_steps=steps,
        batch_size=512,
        num_sde_steps=100,
    )
    start = jax.random.multivariate_normal(ks, bridge.mean0, bridge.cov0, (20_000,))
    end = dd.solve_bridge(result.bridge, start, key=ks, num_steps=200)
    return cross_covariance(start, end), result, plugin_coupling(bridge, x0, x1)


def fit_egneot(bridge: dd.GaussianBridge, key, n: int, steps: int):
    """EgNEOT with a `QuadraticPotential` (contains the Gaussian plan exactly) on `n` samples
    per end, ULA negatives (30 steps of size 0.1 epsilon from the source points); returns its
    coupling covariance `S0 K^T` (`E[X1 | X0 = x] = K x + c`)."""
    import driftax.samplers as ds

    kd, kf = jax.random.split(key)
    x0, x1 = samples(bridge, kd, n)
    eps = float(bridge.sigma) ** 2
    model = dd.EgNEOT(dd.QuadraticPotential(bridge.dim), eps, bridge.dim)
    loss = dd.EgNEOTLoss(sampler=ds.ULA(step_size=0.1 * eps), num_mcmc_steps=30)
    opt = optax.adam(optax.cosine_decay_schedule(5e-2, steps, alpha=0.05))
    model, _ = dd.fit_bridge(
        model, loss, x0, x1, key=kf, optimizer=opt, num_steps=steps, batch_size=512
    )
    k, _, _ = dd.quadratic_plan(model)
    return bridge.cov0 @ k.T


def fit_cfm(bridge: dd.GaussianBridge, key, n: int, steps: int, coupling: str, sigma: float):
    """A flow-matching velocity (`AffineDrift`) on `n` samples per end with a minibatch coupling."""
    kd, kf = jax.random.split(key)
    x0, x1 = samples(bridge, kd, n)
    flow = dd.BridgeDrift(dd.AffineDrift(bridge.dim), sigma=sigma, kind="velocity")
    opt = optax.adam(optax.cosine_decay_schedule(2e-2, steps, alpha=0.05))
    loss = dd.BridgeMatchingLoss(sigma=sigma, coupling=coupling)
    flow, _ = dd.fit_bridge(
        flow, loss, x0, x1, key=kf, optimizer=opt, num_steps=steps, batch_size=256
    )
    return flow


def _stats(values) -> dict:
    v = np.asarray(values, float)
    return {"values": v.tolist(), "mean": float(v.mean()), "std": float(v.std(ddof=1))}


def run(quick: bool) -> dict:
    dims = (2, 16) if quick else (2, 16, 64)
    n = 4000 if quick else 20_000
    sigma = 1.0
    results: dict = {"dims": dims, "n": n, "sigma": sigma, "methods": {}}
    for d in dims:
        m0, s0, m1, s1 = gaussian_ends(d)
        bridge = dd.GaussianBridge(m0, s0, m1, s1, sigma)
        c = bridge.coupling_covariance()
        rows = results["methods"].setdefault(str(d), {})

        # 1. Sinkhorn on samples
        n_ot = 1000 if quick else 4000
        plan_fn = jax.jit(lambda x, y: dd.entropic_plan(x, y, epsilon=2.0 * sigma**2))
        errs, t0 = [], time.perf_counter()
        for s in SEEDS:
            x0, x1 = samples(bridge, jax.random.key(s), n_ot)
            plan = plan_fn(x0, x1)
            plan = plan / plan.sum()
            est = (x0 - plan.sum(1) @ x0).T @ plan @ (x1 - plan.sum(0) @ x1)
            errs.append(relative_error(est, c))
        rows[f"Sinkhorn plan (ott-jax), n = {n_ot}"] = _stats(errs) | {
            "seconds": (time.perf_counter() - t0) / len(SEEDS)
        }

        # 2. LightSB
        steps = 500 if quick else 3000
        errs, secs, floor = [], [], []
        for s in SEEDS:
            t0 = time.perf_counter()
            c_hat, _, c_plug = fit_lightsb(bridge, jax.random.key(s), n, steps)
            secs.append(time.perf_counter() - t0)
            errs.append(relative_error(c_hat, c))
            floor.append(relative_error(c_plug, c))
        rows["plug-in closed form (sample moments; the floor)"] = _stats(floor) | {"seconds": 0.0}
        rows[f"LightSB (K = 1, full), {steps} steps"] = _stats(errs) | {
            "seconds": float(np.mean(secs))
        }

        # 2b. EgNEOT (quadratic potential, ULA negatives)
        steps = 500 if quick else 3000
        errs, secs = [], []
        for s in SEEDS[:2] if quick and d > 2 else SEEDS:
            t0 = time.perf_counter()
            errs.append(relative_error(fit_egneot(bridge, jax.random.key(s), n, steps), c))
            secs.append(time.perf_counter() - t0)
        rows[f"EgNEOT (quadratic potential, ULA 30 x 0.1), {steps} steps"] = _stats(errs) | {
            "seconds": float(np.mean(secs))
        }

        # 3. DSBM
        iters, steps = (3, 300) if quick else (5, 1500)
        errs, secs = [], []
        for s in SEEDS[:2] if quick else SEEDS:
            t0 = time.perf_counter()
            c_hat, _, _ = fit_dsbm(bridge, jax.random.key(s), n, steps, iters)
            secs.append(time.perf_counter() - t0)
            errs.append(relative_error(c_hat, c))
        rows[f"DSBM-IMF (AffineDrift), {iters} x {steps} steps"] = _stats(errs) | {
            "seconds": float(np.mean(secs))
        }

        # 4. CFM couplings: straightness (Euler error vs NFE) and end-marginal error
        steps = 500 if quick else 3000
        cfm = results.setdefault("cfm", {}).setdefault(str(d), {})
        x_eval = jax.random.multivariate_normal(jax.random.key(99), m0, s0, (4000,))
        for name, coupling, sig in (
            ("I-CFM (independent)", "independent", 0.0),
            ("OT-CFM (exact OT, Hungarian)", "exact", 0.0),
            ("SB-CFM (entropic, sigma = 0.5)", "entropic", 0.5),
        ):
            t0 = time.perf_counter()
            flow = fit_cfm(bridge, jax.random.key(7), n, steps, coupling, sig)
            secs = time.perf_counter() - t0
            ref = dd.solve_bridge(flow, x_eval, num_steps=256, solver=dd.Euler())
            by_nfe = {}
            for nfe in (1, 2, 4, 8):
                x = dd.solve_bridge(flow, x_eval, num_steps=nfe, solver=dd.Euler())
                by_nfe[nfe] = float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1)))
            cfm[name] = {
                "euler_error": by_nfe,
                "mean_error": relative_error(ref.mean(0), m1),
                "cov_error": relative_error(jnp.cov(ref.T), s1),
                "seconds": secs,
            }
    return results


def markdown(res: dict, mode: str) -> str:
    lines = [
        "# Schrödinger bridges vs the closed-form Gaussian bridge",
        "",
        f"Device: {jax.devices()[0]}; jax {jax.__version__}; {platform.machine()}; mode: {mode}.",
        f"Reference noise sigma = {res['sigma']} (epsilon = sigma^2 = {res['sigma'] ** 2:g} for "
        f"the cost |x - y|^2 / 2); {res['n']} samples per end for the fits.",
        "",
        "## Coupling covariance: relative error |C_hat - C|_F / |C|_F",
        "",
        "Three seeds each (two for DSBM, and for EgNEOT at d > 2, in the quick profile; data and initialisation); `spread` is the seed-to-seed standard "
        "deviation; time per fit, compilation included.",
        "",
        "| d | method | seeds | mean | spread | time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for d, rows in res["methods"].items():
        for name, r in rows.items():
            vals = ", ".join(f"{v:.3f}" for v in r["values"])
            lines.append(
                f"| {d} | {name} | {vals} | {r['mean']:.3f} | {r['std']:.3f} | {r['seconds']:.1f} |"
            )
    lines += [
        "",
        "## Flow matching with minibatch couplings (AffineDrift velocity)",
        "",
        "Mean |x_NFE - x_256| of Euler at NFE 1, 2, 4, 8 against the same model at NFE 256 (lower "
        "= straighter paths), and the NFE-256 end marginal against N(m1, S1) (relative errors).",
        "",
        "| d | coupling | NFE 1 | NFE 2 | NFE 4 | NFE 8 | mean err | cov err | fit (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d, rows in res["cfm"].items():
        for name, r in rows.items():
            e = r["euler_error"]
            lines.append(
                f"| {d} | {name} | "
                + " | ".join(f"{e[k]:.3f}" for k in e)
                + f" | {r['mean_error']:.3f} | {r['cov_error']:.3f} | {r['seconds']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    profile = parser.add_mutually_exclusive_group()
    profile.add_argument("--quick", action="store_true", default=True, help="d = 2, 16 (CPU)")
    profile.add_argument("--full", action="store_true", help="d = 2, 16, 64")
    parser.add_argument("--out", default="out")
    args = parser.parse_args(argv)
    mode = "full" if args.full else "quick"
    res = run(quick=not args.full)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bridges.json").write_text(json.dumps({"mode": mode} | res, indent=2))
    md = markdown(res, mode)
    (out / "bridges.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
