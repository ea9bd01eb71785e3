"""Fast diffusion ODE solvers (DPM-Solver / DPM-Solver++ / UniPC), a small exact analogue.

Papers: Lu et al. (2022) "DPM-Solver" (single-step); Lu et al. (2022) "DPM-Solver++"; Zhao et al. (2023)
"UniPC". Their claim (e.g. DPM-Solver++ Fig. 4, UniPC Tab. 1): at low numbers of field
evaluations (NFE 5-20), multistep exponential integrators (DPM-Solver++(2M/3M), UniPC) are far
more accurate than generic ODE solvers (Euler, Heun); DDIM (a first-order exponential
integrator) sits in between.

How it is checked here, with no training: the probability-flow ODE of a Gaussian mixture pushed
along the VP path has a closed-form score (`driftax.energies.NoisedGaussianMixture`), so the
error of each solver is measured against a tight adaptive diffrax solve (Tsit5, rtol = atol =
1e-9, float64) from the SAME initial noise: mean over the batch of `|x_solver - x_reference|`.
Two targets: `gmm9` in 2-D and a random 8-component anisotropic mixture in 16-D. Each solver
runs on three time grids (uniform in t, quadratic, uniform in log-SNR) and is scored on its best
one, as the papers tune the grid per solver; Heun costs 2 NFE per step, so it runs `NFE // 2`
steps.

Claims (rows): at NFE 5, 10 and 20 every multistep exponential integrator (DPM-Solver++(2M),
DPM-Solver++(3M), UniPC) beats both Euler and Heun on both targets; DDIM beats Euler on every
shared grid; at NFE 10 and 20 the single-step DPM-Solver++(2S)/(3S) (2 and 3 NFE per step,
so they run `NFE // order` steps) also beat Euler and Heun. Figure: error vs NFE, log-log, per target.

Profiles: quick (batch 256, NFE 5/10/20) and full (batch 4096, NFE 5/10/15/20/50).
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax.diffusion as dd
import driftax.energies as de

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "fast_diffusion_solvers"
PAPER = "Lu et al. (2022) DPM-Solver/DPM-Solver++; Zhao et al. (2023) UniPC"

SOLVERS = {
    "Euler": (dd.Euler(), "score"),
    "Heun": (dd.Heun(), "score"),
    "DDIM": (dd.DDIM(), "score"),
    "DPM-Solver++(2M)": (dd.DPMSolverPP2M(), "score"),
    "DPM-Solver++(3M)": (dd.DPMSolverPP3M(), "score"),
    "UniPC": (dd.UniPC(), "data"),
    "DPM-Solver++(2S)": (dd.DPMSolverPP2S(), "score"),
    "DPM-Solver++(3S)": (dd.DPMSolverPP3S(), "score"),
}
EXPONENTIAL = ["DPM-Solver++(2M)", "DPM-Solver++(3M)", "UniPC"]
SINGLESTEP = ["DPM-Solver++(2S)", "DPM-Solver++(3S)"]
GENERIC = ["Euler", "Heun"]
SCHEDULES = ["uniform", "quadratic", "log_snr"]


def _targets(seed: int):
    rng = np.random.default_rng(1000 + seed)
    k, d = 8, 16
    means = 3.0 * rng.standard_normal((k, d))
    variances = np.exp(rng.uniform(np.log(0.05), np.log(1.0), size=(k, d)))
    weights = rng.uniform(0.5, 1.5, size=k)
    return {
        "gmm9 (2-D)": de.gmm9(),
        "8-mode anisotropic (16-D)": de.gaussian_mixture(weights, means, variances),
    }


def _errors(mixture, key, batch, nfes):
    """`{solver: {"nfe": [...], "error": {schedule: [...]}, "best": [...]}}` against diffrax."""
    path = dd.VP()
    exact = de.NoisedGaussianMixture(mixture, path)
    x_init = exact.sample(key, path.t_noise, batch)
    ref = dd.solve_adaptive(exact.score, path, x_init, rtol=1e-9, atol=1e-9, max_steps=100_000)
    out = {}
    for name, (solver, param) in SOLVERS.items():
        field = exact.denoise if param == "data" else exact.score
        used = [max(nfe // solver.evals_per_step, 1) * solver.evals_per_step for nfe in nfes]
        errs = {}
        for schedule in SCHEDULES:
            errs[schedule] = []
            for nfe in used:
                x = dd.solve(
                    solver,
                    field,
                    path,
                    x_init,
                    ts=dd.time_grid(path, nfe // solver.evals_per_step, schedule),
                    parameterization=param,
                )
                errs[schedule].append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
        best = [min(errs[s][i] for s in SCHEDULES) for i in range(len(nfes))]
        out[name] = {"nfe": used, "error": errs, "best": best}
    return out


def _figure(results, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2))
    styles = {"Euler": "o--", "Heun": "s--", "DDIM": "^-.", "DPM-Solver++(2S)": "v:"}
    styles["DPM-Solver++(3S)"] = "<:"
    for ax, (target, res) in zip(np.atleast_1d(axes), results.items()):
        for name, r in res.items():
            ax.loglog(r["nfe"], r["best"], styles.get(name, "D-"), label=name)
        ax.set_xlabel("NFE")
        ax.set_ylabel("mean |x - x_ref| at t_data (best grid)")
        ax.set_title(target)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Probability-flow ODE on exact VP mixture fields: error vs NFE")
    path = save_figure(fig, out, NAME, dpi=120)
    return str(path)


def run(out: Path, quick: bool, seed: int) -> Report:
    batch = 256 if quick else 4096
    nfes = [5, 10, 20] if quick else [5, 10, 15, 20, 50]
    with jax.enable_x64(True):
        key = jax.random.key(seed)
        results = {}
        for i, (target, mixture) in enumerate(_targets(seed).items()):
            results[target] = _errors(mixture, jax.random.fold_in(key, i), batch, nfes)
    rows = []
    for target, res in results.items():
        for i, nfe in enumerate(nfes):
            if nfe > 20:
                continue
            worst_exp = max(res[n]["best"][i] for n in EXPONENTIAL)
            best_gen = min(res[n]["best"][i] for n in GENERIC)
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: every multistep exponential integrator "
                    "(DPM-Solver++ 2M/3M, UniPC) beats Euler and Heun (each on its best grid)",
                    reference="max error(2M, 3M, UniPC) < min error(Euler, Heun)",
                    measured=f"{worst_exp:.2e} < {best_gen:.2e}? ("
                    + ", ".join(f"{n} {res[n]['best'][i]:.1e}" for n in SOLVERS)
                    + ")",
                    passed=worst_exp < best_gen,
                )
            )
        for i, nfe in enumerate(nfes):
            if nfe not in (10, 20):
                continue
            worst_single = max(res[n]["best"][i] for n in SINGLESTEP)
            best_gen = min(res[n]["best"][i] for n in GENERIC)
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: single-step DPM-Solver++ (2S, 3S) beats Euler "
                    "and Heun",
                    reference="max error(2S, 3S) < min error(Euler, Heun)",
                    measured=f"{worst_single:.2e} < {best_gen:.2e}? (2S "
                    f"{res['DPM-Solver++(2S)']['best'][i]:.1e}, 3S "
                    f"{res['DPM-Solver++(3S)']['best'][i]:.1e}; NFE "
                    f"{res['DPM-Solver++(2S)']['nfe'][i]}/{res['DPM-Solver++(3S)']['nfe'][i]})",
                    passed=worst_single < best_gen,
                )
            )
        ratios = [
            res["DDIM"]["error"][s][i] / res["Euler"]["error"][s][i]
            for s in SCHEDULES
            for i in range(len(nfes))
        ]
        rows.append(
            Row(
                claim=f"{target}: DDIM (first-order exponential) beats Euler on the same grid, "
                "every grid and NFE",
                reference="error(DDIM) / error(Euler) < 1",
                measured=f"ratio {min(ratios):.2f} to {max(ratios):.2f}",
                passed=max(ratios) < 1.0,
            )
        )
    figure = _figure(results, out)
    return Report(rows=rows, figure=figure, details={"nfes": nfes, "results": results})


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
