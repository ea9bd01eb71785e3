"""driftax.diffusion solvers vs diffrax, side by side in ONE process, on exact mixture fields.

Exact time-dependent fields of Gaussian mixtures along a VP path (no training), so the only error
is the solver's:

1. error vs NFE (5, 10, 20, 50) of every deterministic solver, against a tight diffrax Dopri8
   reference (rtol = atol = 1e-10, float64), in 2-D (gmm9), 16-D and 64-D (four_mode_gmm); the
   mean over the batch of `|x - x_ref|`, each solver on its default grid
   (`dd.default_schedule`). diffrax's Euler and Heun (`ConstantStepSize`, uniform in t, which
   is also driftax's default grid for them on VP paths) are the peers; the measured log-log
   slopes give the orders.
2. the stochastic solvers (Euler–Maruyama, ancestral DDIM, predictor–corrector, Heun with
   churn): MMD² of their samples to exact samples at each NFE, against the sample-noise band.
3. time to accuracy in float32 (2-D, batch 4096): the target is the error of diffrax Euler at
   NFE 50; each
   driftax solver runs at the smallest NFE that reaches it; wall time warm (best of repeats) and
   cold (the first call in a fresh process: tracing, compilation and the run), against diffrax
   Euler at NFE 50 (uniform steps) and diffrax Tsit5 (adaptive, loosest tolerance reaching it).

Usage: `python benchmarks/diffusion.py --quick` (a few minutes on a 2-core CPU) writes
`out/diffusion.json` and `out/diffusion.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

import driftax.diffusion as dd
import driftax.energies as de

NFES = (5, 10, 20, 50)
ERROR_PROBLEMS = ("2-D gmm9", "16-D four_mode_gmm", "64-D four_mode_gmm")
SECTIONS = ("errors", "grids", "aligned", "sde", "tta")
ALIGNED_SOLVERS = ("iPNDM (order 3)", "DEIS (tAB3)", "UniPC(bh2, p=2)", "DPM-Solver++(3M)")


def _ode_solvers():
    return {
        "Euler": dd.Euler(),
        "Heun": dd.Heun(),
        "DDIM": dd.DDIM(),
        "DPM-Solver++(2M)": dd.DPMSolverPP2M(),
        "DPM-Solver++(3M)": dd.DPMSolverPP3M(),
        "DPM-Solver++(2S)": dd.DPMSolverPP2S(),
        "DPM-Solver++(3S)": dd.DPMSolverPP3S(),
        "UniPC(bh2, p=2)": dd.UniPC(),
        "iPNDM": dd.IPNDM(),
        "iPNDM (order 3)": dd.IPNDM(max_order=3),
        "DEIS (tAB3)": dd.DEIS(),
    }


def _sde_solvers():
    return {
        "Euler–Maruyama": dd.EulerMaruyama(),
        "DDIM η=1 (ancestral)": dd.DDIM(eta=1.0),
        "PredictorCorrector(EM + Langevin)": dd.PredictorCorrector(),
        "Heun churn=10": dd.Heun(churn=10.0),
    }


def _steps_for(solver, nfe):
    steps = nfe // solver.evals_per_step
    if steps < 1 or steps * solver.evals_per_step < solver.order:
        return None
    return steps


def _timeit(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best


# -------------------------------------------------------------------------------- diffrax


def _diffrax_run(field, path, x0, *, solver, ts=None, num_steps=None, rtol=None):
    """diffrax on the probability-flow ODE of the whole batch (one state (batch, d))."""

    # The same field function driftax's solvers evaluate (score -> velocity by the path).
    model = dd.ParameterizedField(field=field.score, path=path, parameterization="score")

    def vf(t, y, args):
        return jax.vmap(lambda z: model.velocity(t, z))(y)

    if rtol is not None:
        controller = diffrax.PIDController(rtol=rtol, atol=rtol)
        dt0 = (path.t_data - path.t_noise) / 50
    elif ts is not None:
        controller = diffrax.StepTo(ts=ts)
        dt0 = None
    else:
        controller = diffrax.ConstantStepSize()
        dt0 = (path.t_data - path.t_noise) / num_steps

    @jax.jit
    def run(x0):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(vf),
            solver,
            path.t_noise,
            path.t_data,
            dt0,
            x0,
            stepsize_controller=controller,
            max_steps=100_000,
        )
        return sol.ys[0], sol.stats["num_steps"]

    return run


# ---------------------------------------------------------------------------- 1. error table


def _problem(name, path):
    if name == "2-D gmm9":
        mix = de.gmm9()
    elif name == "16-D four_mode_gmm":
        mix = de.four_mode_gmm(16)
    else:
        mix = de.four_mode_gmm(64)
    return de.NoisedGaussianMixture(mix, path)


def error_tables(quick, problems=ERROR_PROBLEMS):
    out = {}
    path = dd.VP()
    batch = 128 if quick else 1024
    with jax.enable_x64(True):
        for name in problems:
            field = _problem(name, path)
            x0 = field.sample(jax.random.key(0), path.t_noise, batch)
            ref, _ = _diffrax_run(field, path, x0, solver=diffrax.Dopri8(), rtol=1e-10)(x0)
            err = lambda x, ref=ref: float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1)))
            rows = {}
            for label, solver in _ode_solvers().items():
                row = {}
                for nfe in NFES:
                    steps = _steps_for(solver, nfe)
                    if steps is None:
                        row[nfe] = None
                        continue
                    x = dd.solve(solver, field.score, path, x0, num_steps=steps)
                    row[nfe] = {"nfe": steps * solver.evals_per_step, "error": err(x)}
                rows[label] = row
            for label, solver, evals in [
                ("diffrax Euler (uniform t)", diffrax.Euler(), 1),
                ("diffrax Heun (uniform t)", diffrax.Heun(), 2),
            ]:
                row = {}
                for nfe in NFES:
                    steps = max(nfe // evals, 1)
                    run = _diffrax_run(field, path, x0, solver=solver, num_steps=steps)
                    row[nfe] = {"nfe": steps * evals, "error": err(run(x0)[0])}
                rows[label] = row
            slopes = {}
            for label, row in rows.items():
                pts = [
                    (v["nfe"], v["error"]) for v in row.values() if v is not None and v["nfe"] >= 10
                ]
                if len(pts) >= 2:
                    n, e = np.array(pts).T
                    slopes[label] = float(-np.polyfit(np.log(n), np.log(e), 1)[0])
            out[name] = {"rows": rows, "slopes": slopes, "batch": batch}
            print(f"[diffusion] error table {name} done", flush=True)
    return out


def grid_sensitivity():
    """Error at NFE 10 of the multistep solvers on each time grid (2-D gmm9, float64)."""
    path = dd.VP()
    out = {}
    with jax.enable_x64(True):
        field = _problem("2-D gmm9", path)
        x0 = field.sample(jax.random.key(0), path.t_noise, 128)
        ref, _ = _diffrax_run(field, path, x0, solver=diffrax.Dopri8(), rtol=1e-10)(x0)
        for label in (
            "Euler",
            "DPM-Solver++(2M)",
            "DPM-Solver++(3M)",
            "UniPC(bh2, p=2)",
            "iPNDM",
            "iPNDM (order 3)",
            "DEIS (tAB3)",
        ):
            solver = _ode_solvers()[label]
            out[label] = {
                sched: float(
                    jnp.mean(
                        jnp.linalg.norm(
                            dd.solve(solver, field.score, path, x0, num_steps=10, schedule=sched)
                            - ref,
                            axis=-1,
                        )
                    )
                )
                for sched in ("uniform", "quadratic", "log_snr", "karras")
            }
    print("[diffusion] grid sensitivity done", flush=True)
    return out


def aligned_grids(quick, problems=ERROR_PROBLEMS[:2]):
    """Error at NFE 5 and 10 on grids fitted by `dd.optimize_grid` ("align your steps"), against
    the default grid: fitted on one batch, measured on the error table's batch (float64)."""
    path = dd.VP()
    out = {}
    iters = 200 if quick else 500
    with jax.enable_x64(True):
        for name in problems:
            field = _problem(name, path)
            x0 = field.sample(jax.random.key(0), path.t_noise, 128 if quick else 1024)
            x_fit = field.sample(jax.random.key(5), path.t_noise, 256)
            ref, _ = _diffrax_run(field, path, x0, solver=diffrax.Dopri8(), rtol=1e-10)(x0)
            err = lambda x, ref=ref: float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1)))
            rows = {}
            for label in ALIGNED_SOLVERS:
                solver = _ode_solvers()[label]
                row = {}
                for nfe in (5, 10):
                    t = time.process_time()
                    ts = dd.optimize_grid(
                        solver, field.score, path, x_fit, nfe, num_iterations=iters
                    )
                    fit_cpu = time.process_time() - t
                    row[nfe] = {
                        "default": err(dd.solve(solver, field.score, path, x0, num_steps=nfe)),
                        "aligned": err(dd.solve(solver, field.score, path, x0, ts=ts)),
                        "fit_cpu_s": fit_cpu,
                        "ts": np.asarray(ts).tolist(),
                    }
                rows[label] = row
            out[name] = {"rows": rows, "iterations": iters}
            print(f"[diffusion] aligned grids {name} done", flush=True)
    return out


# -------------------------------------------------------------------------- 2. SDE solvers


def sde_table(quick):
    path = dd.VP()
    field = _problem("2-D gmm9", path)
    n = 500 if quick else 2000
    nfes = (10, 20, 50, 200) if quick else (10, 20, 50, 200, 1000)
    ref = field.sample(jax.random.key(1), path.t_data, n)
    x0 = field.sample(jax.random.key(2), path.t_noise, n)
    h = 1.0
    null = [
        float(
            de.mmd(field.sample(jax.random.key(10 + i), path.t_data, n), ref, bandwidth=h).unbiased
        )
        for i in range(8)
    ]
    rows = {}
    for label, solver in _sde_solvers().items():
        row = {}
        for nfe in nfes:
            steps = _steps_for(solver, nfe)
            x = dd.solve(solver, field.score, path, x0, num_steps=steps, key=jax.random.key(3))
            row[nfe] = {
                "nfe": steps * solver.evals_per_step,
                "mmd2": float(de.mmd(x, ref, bandwidth=h).unbiased),
            }
        rows[label] = row
    print("[diffusion] SDE table done", flush=True)
    return {
        "rows": rows,
        "n": n,
        "bandwidth": h,
        "null_mean": float(np.mean(null)),
        "null_sd": float(np.std(null, ddof=1)),
    }


# ----------------------------------------------------------------------- 3. time to accuracy

TSIT5_RTOLS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)


def _method(label, nfe, field, path, x0):
    """A zero-argument callable running `label` at `nfe` on the batch `x0`."""
    if label == "diffrax Euler":
        run = _diffrax_run(field, path, x0, solver=diffrax.Euler(), num_steps=nfe)
        return lambda: run(x0)[0]
    if label.startswith("diffrax Tsit5"):
        rtol = float(label.split("rtol=")[1])
        run = _diffrax_run(field, path, x0, solver=diffrax.Tsit5(), rtol=rtol)
        return lambda: run(x0)[0]
    solver = _ode_solvers()[label]
    steps = _steps_for(solver, nfe)
    return lambda: dd.solve(solver, field.score, path, x0, num_steps=steps)


class _CompileLog:
    """Counts what a cold call traces and compiles (JAX's compile log): compiled functions and
    the seconds spent tracing and in XLA."""

    def __init__(self):
        import logging

        self.compiles, self.compile_s, self.trace_s = 0, 0.0, 0.0
        handler = logging.Handler()
        handler.emit = self._emit  # type: ignore[method-assign]
        logger = logging.getLogger("jax._src.dispatch")
        logger.addHandler(handler)
        logger.setLevel(logging.WARNING)
        logger.propagate = False
        jax.config.update("jax_log_compiles", True)

    def _emit(self, record):
        msg = record.getMessage()
        secs = float(msg.rsplit(" in ", 1)[-1].split()[0]) if " in " in msg else 0.0
        if msg.startswith("Finished XLA compilation"):
            self.compiles += 1
            self.compile_s += secs
        elif msg.startswith("Finished tracing"):
            self.trace_s += secs


def _probe(label, nfe, batch):
    """Cold timing in a fresh process: the first call, with tracing and compilation."""
    path = dd.VP()
    field = _problem("2-D gmm9", path)
    x0 = field.sample(jax.random.key(0), path.t_noise, batch)
    jax.block_until_ready(x0)
    fn = _method(label, nfe, field, path, x0)
    log = _CompileLog() if os.environ.get("DRIFTAX_BENCH_COMPILE_LOG") else None
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    rec = {"cold_s": time.perf_counter() - t, "cold_cpu_s": time.process_time() - c}
    if log is not None:
        rec.update(compiles=log.compiles, compile_s=log.compile_s, trace_s=log.trace_s)
    print(json.dumps(rec))


def _cold_subprocess(label, nfe, batch, reps):
    import subprocess
    import sys

    times, cpus = [], []
    cmd = [sys.executable, __file__, "--probe", label, "--nfe", str(nfe), "--batch", str(batch)]
    for _ in range(reps):
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        rec = json.loads(out.stdout.strip().splitlines()[-1])
        times.append(rec["cold_s"])
        cpus.append(rec["cold_cpu_s"])
    # one more fresh process with JAX's compile log on (not timed): what a cold call compiles
    env = dict(os.environ, DRIFTAX_BENCH_COMPILE_LOG="1")
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    profile = {k: rec[k] for k in ("compiles", "compile_s", "trace_s")}
    return float(np.median(times)), float(np.median(cpus)), profile


def time_to_accuracy(quick):
    path = dd.VP()
    batch = 4096 if quick else 65536
    repeats = 5 if quick else 20
    cold_reps = 3
    candidates = (3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50)
    # Errors in float64 (to pick the NFE), timings in float32.
    with jax.enable_x64(True):
        field64 = _problem("2-D gmm9", path)
        x064 = field64.sample(jax.random.key(0), path.t_noise, batch)
        ref, _ = _diffrax_run(field64, path, x064, solver=diffrax.Dopri8(), rtol=1e-10)(x064)

        def err(x):
            return float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1)))

        target = err(_method("diffrax Euler", 50, field64, path, x064)())
        picks = {"diffrax Euler": (50, target)}
        for label, solver in _ode_solvers().items():
            for nfe in candidates:
                steps = _steps_for(solver, nfe)
                if steps is None:
                    continue
                e = err(_method(label, nfe, field64, path, x064)())
                if e <= target:
                    picks[label] = (steps * solver.evals_per_step, e)
                    break
        for rtol in TSIT5_RTOLS:
            x, nsteps = _diffrax_run(field64, path, x064, solver=diffrax.Tsit5(), rtol=rtol)(x064)
            if err(x) <= target:
                picks[f"diffrax Tsit5 rtol={rtol:g}"] = (6 * int(nsteps), err(x))
                break
    field = _problem("2-D gmm9", path)
    x0 = field.sample(jax.random.key(0), path.t_noise, batch)
    results = {}
    for label, (nfe, e) in picks.items():
        fn = _method(label, nfe, field, path, x0)
        jax.block_until_ready(fn())
        results[label] = {
            "nfe": nfe,
            "error": e,
            "warm_s": _timeit(fn, repeats),
        }
        cold, cold_cpu, profile = _cold_subprocess(label, nfe, batch, cold_reps)
        results[label].update(cold_s=cold, cold_cpu_s=cold_cpu, **profile)
        print(f"[diffusion] timed {label}", flush=True)
    base = results["diffrax Euler"]
    for r in results.values():
        r["warm_ratio_vs_diffrax_euler"] = r["warm_s"] / base["warm_s"]
        r["cold_ratio_vs_diffrax_euler"] = r["cold_s"] / base["cold_s"]
        r["cold_cpu_ratio"] = r["cold_cpu_s"] / base["cold_cpu_s"]
    # The same algorithm: driftax Euler vs diffrax Euler, 50 uniform steps.
    fn = lambda: dd.solve(dd.Euler(), field.score, path, x0, num_steps=50, schedule="uniform")
    jax.block_until_ready(fn())
    same = {
        "driftax Euler 50 steps": _timeit(fn, repeats),
        "diffrax Euler 50 steps": base["warm_s"],
    }
    print("[diffusion] time to accuracy done", flush=True)
    return {
        "target_error": target,
        "batch": batch,
        "cold_reps": cold_reps,
        "load": " ".join(f"{v:.1f}" for v in os.getloadavg()),
        "results": results,
        "same_algorithm_warm_s": same,
    }


# ------------------------------------------------------------------------------- markdown


def _fmt(v, digits=3):
    return "–" if v is None else f"{v:.{digits}g}"


def markdown(record) -> str:
    lines = ["# driftax.diffusion solvers vs diffrax (exact mixture fields, VP path)", ""]
    lines.append(f"Device: {record['device']}; jax {record['jax']}; mode: {record['mode']}.")
    lines.append("")
    for name, tab in record.get("errors", {}).items():
        lines.append(f"## Error vs NFE — {name} (mean |x − x_ref|, batch {tab['batch']}, float64)")
        lines.append("")
        lines.append("| solver | " + " | ".join(f"NFE {n}" for n in NFES) + " | slope (NFE ≥ 10) |")
        lines.append("|---|" + "---|" * (len(NFES) + 1))
        for label, row in tab["rows"].items():
            cells = []
            for n in NFES:
                v = row[n]
                if v is None:
                    cells.append("–")
                else:
                    mark = "" if v["nfe"] == n else f" ({v['nfe']})"
                    cells.append(f"{v['error']:.2e}{mark}")
            lines.append(
                f"| {label} | " + " | ".join(cells) + f" | {_fmt(tab['slopes'].get(label))} |"
            )
        lines.append("")
        lines.append(
            "(A number in brackets is the NFE actually used when NFE is not a multiple of "
            "the solver's evaluations per step.)"
        )
        lines.append("")
    if "grids" in record:
        grids = record["grids"]
        lines.append("## Time-grid sensitivity at NFE 10 — 2-D gmm9 (mean |x − x_ref|)")
        lines.append("")
        scheds = list(next(iter(grids.values())).keys())
        lines.append("| solver | " + " | ".join(scheds) + " |")
        lines.append("|---|" + "---|" * len(scheds))
        for label, row in grids.items():
            lines.append(f"| {label} | " + " | ".join(f"{row[k]:.3f}" for k in scheds) + " |")
        lines.append("")
        lines.append(
            "Defaults (`dd.default_schedule`): uniform in t for Euler/Heun, iPNDM and DEIS on VP "
            "paths, quadratic for the other exponential integrators (best at NFE ≥ 20)."
        )
        lines.append("")
    for name, tab in record.get("aligned", {}).items():
        lines.append(f'## Fitted ("align your steps") grids — {name} (mean |x − x_ref|, float64)')
        lines.append("")
        lines.append(
            f"`dd.optimize_grid` ({tab['iterations']} Adam steps, fitted on 256 other starting "
            "points against a DPM-Solver++(3M) 400-step reference) vs the solver's default grid."
        )
        lines.append("")
        lines.append(
            "| solver | NFE 5 default | NFE 5 fitted | NFE 10 default | NFE 10 fitted | fit CPU s |"
        )
        lines.append("|---|---|---|---|---|---|")
        for label, row in tab["rows"].items():
            a, b = row[5], row[10]
            lines.append(
                f"| {label} | {a['default']:.3g} | {a['aligned']:.3g} | {b['default']:.3g} | "
                f"{b['aligned']:.3g} | {a['fit_cpu_s'] + b['fit_cpu_s']:.1f} |"
            )
        lines.append("")
    if "sde" in record:
        sde = record["sde"]
        lines.append(
            f"## Stochastic solvers — 2-D gmm9, MMD² (RBF, h = {sde['bandwidth']}) to {sde['n']} exact samples"
        )
        lines.append("")
        band = sde["null_mean"] + 5 * sde["null_sd"]
        lines.append(f"Sample-noise band (exact vs exact, mean + 5 sd): {band:.2e}.")
        lines.append("")
        nfes = list(next(iter(sde["rows"].values())).keys())
        lines.append("| solver | " + " | ".join(f"NFE {n}" for n in nfes) + " |")
        lines.append("|---|" + "---|" * len(nfes))
        for label, row in sde["rows"].items():
            lines.append(f"| {label} | " + " | ".join(f"{row[n]['mmd2']:.2e}" for n in nfes) + " |")
        lines.append("")
    if "time_to_accuracy" in record:
        tta = record["time_to_accuracy"]
        lines.append(f"## Time to accuracy — 2-D gmm9, float32, batch {tta['batch']}")
        lines.append("")
        lines.append(
            f"Target error: diffrax Euler at NFE 50 (uniform steps in t) = {tta['target_error']:.3e}. "
            "Each driftax solver runs at the smallest NFE reaching it (default schedule). Cold = the "
            "first call in a fresh process (tracing + compilation + run), wall and process CPU "
            f"time (median of {tta.get('cold_reps', 1)}); load average (1, 5, 15 min) at the end: "
            f"{tta.get('load', '?')}."
        )
        lines.append("")
        lines.append(
            "| method | NFE | error | warm s | cold s | cold CPU s | warm / diffrax Euler "
            "| cold / diffrax Euler | cold CPU / diffrax Euler | compiles | XLA s | trace s |"
        )
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for label, r in tta["results"].items():
            lines.append(
                f"| {label} | {r['nfe']} | {r['error']:.2e} | {r['warm_s']:.4f} | {r['cold_s']:.3f} | "
                f"{r['cold_cpu_s']:.3f} | {r['warm_ratio_vs_diffrax_euler']:.2f} | "
                f"{r['cold_ratio_vs_diffrax_euler']:.2f} | {r['cold_cpu_ratio']:.2f} | "
                f"{r.get('compiles', '–')} | {_fmt(r.get('compile_s'), 2)} | "
                f"{_fmt(r.get('trace_s'), 2)} |"
            )
        lines.append("")
        same = tta["same_algorithm_warm_s"]
        a, b = same["driftax Euler 50 steps"], same["diffrax Euler 50 steps"]
        lines.append(
            f"Same algorithm (Euler, 50 uniform steps): driftax warm {a:.4f} s vs diffrax {b:.4f} s "
            f"(ratio {a / b:.2f})."
        )
        lines.append("")
    lines.append("## Goals (this run)")
    lines.append("")
    lines.append("| goal | result | met? |")
    lines.append("|---|---|---|")
    for row in record["goals"]:
        lines.append(f"| {row['goal']} | {row['result']} | {'yes' if row['met'] else '**no**'} |")
    lines.append("")
    return "\n".join(lines)


def goals(record):
    """The issue's goals, each a row `{goal, result, met}` (met: True/False)."""
    g = []
    aligned = record.get("aligned", {})
    for name in ("2-D gmm9", "16-D four_mode_gmm"):
        if name not in record.get("errors", {}):
            continue
        rows = record["errors"][name]["rows"]
        ours = {k: v for k, v in rows.items() if not k.startswith("diffrax")}
        for nfe, euler_nfe in ((5, 20), (10, 50)):
            cands = {k: v[nfe]["error"] for k, v in ours.items() if v[nfe] and v[nfe]["nfe"] == nfe}
            best = min(cands, key=lambda k: cands[k])
            eu = rows["Euler"][euler_nfe]["error"]
            result = f"{best} {cands[best]:.3g} vs Euler {eu:.3g}"
            if name in aligned:
                arows = aligned[name]["rows"]
                abest = min(arows, key=lambda k: arows[k][nfe]["aligned"])
                result += f"; on a fitted grid: {abest} {arows[abest][nfe]['aligned']:.3g}"
            g.append(
                {
                    "goal": f"{name}: best solver at NFE {nfe} ≤ Euler at NFE {euler_nfe} "
                    "(default grids)",
                    "result": result,
                    "met": bool(cands[best] <= eu),
                }
            )
    res = record.get("time_to_accuracy", {}).get("results", {})
    ours = {k: v for k, v in res.items() if not k.startswith("diffrax")}
    if ours:
        best = min(ours, key=lambda k: ours[k]["warm_s"])
        r = ours[best]["warm_ratio_vs_diffrax_euler"]
        g.append(
            {
                "goal": "best solver reaches diffrax Euler's NFE-50 error in ≤ 0.3× its warm time",
                "result": f"{best} {r:.2f}×",
                "met": bool(r <= 0.3),
            }
        )
        for key, what in (("cold_ratio_vs_diffrax_euler", "wall"), ("cold_cpu_ratio", "CPU")):
            worst = max(ours, key=lambda k: ours[k][key])
            w = ours[worst][key]
            met = [k for k, v in ours.items() if v[key] <= 0.5]
            g.append(
                {
                    "goal": f"every fixed-step solver cold ≤ 0.5× diffrax Euler's ({what} time)",
                    "result": f"worst {worst} {w:.2f}×, best "
                    f"{min(v[key] for v in ours.values()):.2f}×; {len(met)} of {len(ours)} meet it",
                    "met": bool(w <= 0.5),
                }
            )
    return g


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches (CPU, minutes)")
    parser.add_argument("--out", default="out")
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}"
    )
    parser.add_argument(
        "--problems", default=",".join(ERROR_PROBLEMS), help="error-table problems, comma-separated"
    )
    parser.add_argument("--probe", help=argparse.SUPPRESS)
    parser.add_argument("--nfe", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        _probe(args.probe, args.nfe, args.batch)
        return
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()
    record = {
        "device": str(jax.devices()[0]),
        "platform": platform.platform(),
        "jax": jax.__version__,
        "mode": "quick" if args.quick else "full",
    }
    sections = args.sections.split(",")
    record["sections"] = sections
    if "errors" in sections:
        record["errors"] = error_tables(args.quick, args.problems.split(","))
    if "grids" in sections:
        record["grids"] = grid_sensitivity()
    if "aligned" in sections:
        record["aligned"] = aligned_grids(args.quick, args.problems.split(",")[:2])
    if "sde" in sections:
        record["sde"] = sde_table(args.quick)
    if "tta" in sections:
        record["time_to_accuracy"] = time_to_accuracy(args.quick)
    record["goals"] = goals(record)
    record["wall_s"] = time.perf_counter() - t0
    with open(os.path.join(args.out, "diffusion.json"), "w") as f:
        json.dump(record, f, indent=2, default=str)
    md = markdown(record)
    with open(os.path.join(args.out, "diffusion.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
