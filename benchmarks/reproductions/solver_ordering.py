"""The same-network ordering of few-step diffusion ODE solvers, on exact mixture fields.

Source: the zju-pi/diff-sampler comparison (`diff-solvers-main/README.md`; digest in
`/work/shared/research/anchors-2026.md` §4.1), which runs every solver on ONE pretrained EDM network
(CIFAR-10, FID of 50k samples), each on its own recommended grid: Euler and iPNDM on the EDM
polynomial grid (rho = 7), DPM-Solver++(3M) and UniPC on the log-SNR-uniform grid with data
prediction, DEIS-tAB3 on a polynomial grid with rho = 2.

Claimed ordering (FID, lower is better):

- NFE 5: iPNDM 13.59 < DEIS 14.39 < UniPC 23.98 ~ DPM-Solver++(3M) 24.97 << Euler 49.66;
- NFE 10: iPNDM 2.77 < UniPC 2.89 < DPM-Solver++(3M) 3.00 < DEIS 4.09 << Euler 15.69.

How it is checked here, with no network: the "same network" is the exact probability-flow field of a
Gaussian mixture noised along the EDM path (`driftax.energies.NoisedGaussianMixture`), the same
field for every solver, in 2-D (`gmm9`) and 16-D (the 8-component anisotropic mixture of
`fast_diffusion_solvers`, imported from it). FID is
replaced by the solver's error at `t_data` against a tight adaptive diffrax solve (Tsit5, rtol =
atol = 1e-9, float64) from the same initial noise: mean over the batch of `|x - x_ref|`. This
measures discretisation error only (an exact field has no network error for the solvers to
average out), so it tests the part of the ordering that is about the integrators.

Rows, per target and NFE (5 and 10), each solver on the paper's grid: (1) Euler is the worst of
the five; (2) iPNDM is the best; (3) the paper's full order holds (at NFE 5 iPNDM < DEIS <
min(UniPC, 3M), UniPC and 3M counted as tied; at NFE 10 iPNDM < UniPC < 3M < DEIS). The details
also give every solver's error on the other grids (uniform in t, karras rho = 7, log-SNR) and the
order on each solver's best grid. Also run: DPM-Solver-v3 (orders 3 and 2, log-SNR grid) on
empirical model statistics estimated from the same exact field, with its corrector and (for
comparison) without (the predictor alone and order 2 in the full profile only; quick-profile
numbers of the predictor alone: 2-D 1.68 / 1.11, 16-D 1.84 / 0.70 at NFE 5 / 10, against
0.81 / 0.43 and 0.98 / 0.42 with the corrector), with the row (4) it beats
DPM-Solver++(3M) and UniPC (Zheng et al. 2023 report CIFAR-10 FID 12.21 at NFE 5, 2.51 at NFE 10,
15-30 % fewer NFE than the previous best). Figure: error vs NFE per target (paper grids).

Profiles: quick (batch 256, NFE 5 and 10) and full (batch 4096, NFE 3 to 10).
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
from fast_diffusion_solvers import _targets  # noqa: E402  (the same two mixtures)

NAME = "solver_ordering"
PAPER = "zju-pi/diff-sampler same-network comparison (iPNDM, DEIS, UniPC, DPM-Solver++, Euler)"

# name -> (solver, parameterization of the field, the paper's grid as (schedule, rho))
SOLVERS = {
    "iPNDM": (dd.IPNDM(), "score", ("karras", 7.0)),
    "DEIS": (dd.DEIS(), "score", ("karras", 2.0)),
    "UniPC": (dd.UniPC(), "data", ("log_snr", 7.0)),
    "DPM-Solver++(3M)": (dd.DPMSolverPP3M(), "data", ("log_snr", 7.0)),
    "Euler": (dd.Euler(), "score", ("karras", 7.0)),
}
# DPM-Solver-v3 (Zheng et al. 2023, log-SNR grid): name -> (max_order, corrector); statistics
# from EMS_DATA mixture samples on EMS_TIMES log-SNRs. "DPM-Solver-v3" is the paper's method
# (multistep predictor + corrector); the predictor alone is run for comparison.
V3 = {
    "DPM-Solver-v3": (3, True),
    "DPM-Solver-v3 (no corrector)": (3, False),
    "DPM-Solver-v3 (order 2)": (2, True),
}
EMS_DATA, EMS_TIMES = 64, 200
GRIDS = {
    "paper": None,
    "uniform": ("uniform", 7.0),
    "karras7": ("karras", 7.0),
    "log_snr": ("log_snr", 7.0),
}
# the paper's order (best first); a tuple is a tie
PAPER_ORDER = {
    5: ["iPNDM", "DEIS", ("UniPC", "DPM-Solver++(3M)"), "Euler"],
    10: ["iPNDM", "UniPC", "DPM-Solver++(3M)", "DEIS", "Euler"],
}
PAPER_FID = {
    5: {"iPNDM": 13.59, "DEIS": 14.39, "UniPC": 23.98, "DPM-Solver++(3M)": 24.97, "Euler": 49.66},
    10: {"iPNDM": 2.77, "DEIS": 4.09, "UniPC": 2.89, "DPM-Solver++(3M)": 3.00, "Euler": 15.69},
}


def _errors(mixture, key, batch, nfes, quick):
    """`{grid: {solver: [error per NFE]}}` against a tight diffrax solve, same noise for all."""
    path = dd.EDM()
    exact = de.NoisedGaussianMixture(mixture, path)
    x_init = exact.sample(key, path.t_noise, batch)
    ref = dd.solve_adaptive(exact.score, path, x_init, rtol=1e-9, atol=1e-9, max_steps=100_000)
    fields = {"score": exact.score, "data": exact.denoise}
    out: dict[str, dict[str, list[float]]] = {g: {} for g in GRIDS}
    for name, (solver, param, paper_grid) in SOLVERS.items():
        for grid_name, grid in GRIDS.items():
            schedule, rho = paper_grid if grid is None else grid
            errs = []
            for nfe in nfes:
                ts = dd.time_grid(path, nfe, schedule, rho=rho)
                x = dd.solve(solver, fields[param], path, x_init, ts=ts, parameterization=param)
                errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
            out[grid_name][name] = errs
    # DPM-Solver-v3 on statistics estimated from the same exact field (data drawn from the mixture)
    data = mixture.sample(jax.random.fold_in(key, 1), EMS_DATA)
    stats = dd.estimate_model_statistics(
        exact.score, path, data, key=jax.random.fold_in(key, 2), num_times=EMS_TIMES
    )
    for name, (order, corrector) in V3.items():  # on its paper grid only (each NFE compiles)
        if quick and (order != 3 or not corrector):  # quick: the paper's method only
            continue
        solver = dd.DPMSolverV3(stats, max_order=order, corrector=corrector)
        errs = []
        for nfe in nfes:
            ts = dd.time_grid(path, nfe, "log_snr")
            x = dd.solve(solver, exact.score, path, x_init, ts=ts)
            errs.append(float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1))))
        out["paper"][name] = errs
    return out


def _holds(order, err) -> bool:
    """Whether the errors `{solver: e}` follow `order` (best first; a tuple is a tie group: every
    member must beat every later group and lose to every earlier one)."""
    groups = [g if isinstance(g, tuple) else (g,) for g in order]
    for i in range(len(groups) - 1):
        if max(err[n] for n in groups[i]) >= min(err[n] for g in groups[i + 1 :] for n in g):
            return False
    return True


def _ranked(err) -> str:
    return " < ".join(f"{n} {err[n]:.2e}" for n in sorted(err, key=err.get))


def _figure(results, nfes, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results), 4.2))
    styles = {"Euler": "o--", "iPNDM": "s-", "DEIS": "^-", "UniPC": "D-", "DPM-Solver++(3M)": "v-"}
    styles.update(
        {
            "DPM-Solver-v3": "x:",
            "DPM-Solver-v3 (no corrector)": "1:",
            "DPM-Solver-v3 (order 2)": "+:",
        }
    )
    for ax, (target, res) in zip(np.atleast_1d(axes), results.items()):
        for name, errs in res["paper"].items():
            ax.semilogy(nfes, errs, styles[name], label=name)
        ax.set_xlabel("NFE")
        ax.set_ylabel("mean |x - x_ref| at t_data (paper's grid)")
        ax.set_title(target)
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.suptitle("Same exact EDM mixture field, every solver on its paper grid")
    return save_figure(fig, out, NAME, dpi=120)


def run(out: Path, quick: bool, seed: int) -> Report:
    batch = 256 if quick else 4096
    nfes = [5, 10] if quick else [3, 4, 5, 6, 7, 8, 9, 10]
    with jax.enable_x64(True):
        key = jax.random.key(seed)
        results = {}
        for i, (target, mixture) in enumerate(_targets(seed).items()):
            results[target] = _errors(mixture, jax.random.fold_in(key, i), batch, nfes, quick)
    rows = []
    best_grid_order = {}
    for target, res in results.items():
        for nfe in (5, 10):
            i = nfes.index(nfe)
            err = {n: res["paper"][n][i] for n in SOLVERS}
            best = {n: min(res[g][n][i] for g in GRIDS if n in res[g]) for n in res["paper"]}
            best_grid_order[f"{target}, NFE {nfe}"] = _ranked(best)
            fid = PAPER_FID[nfe]
            paper_rank = " < ".join(f"{n} {fid[n]}" for n in sorted(fid, key=fid.get))
            others = [n for n in SOLVERS if n != "Euler"]
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: Euler is the worst of the five (paper grids)",
                    reference=f"FID: {paper_rank}",
                    measured=f"Euler {err['Euler']:.2e} vs worst other "
                    f"{max(err[n] for n in others):.2e}",
                    passed=err["Euler"] > max(err[n] for n in others),
                )
            )
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: iPNDM is the best of the five (paper grids)",
                    reference=f"FID: iPNDM {fid['iPNDM']} best",
                    measured=_ranked(err),
                    passed=err["iPNDM"] < min(err[n] for n in SOLVERS if n != "iPNDM"),
                )
            )
            order = PAPER_ORDER[nfe]
            shown = " < ".join("~".join(g) if isinstance(g, tuple) else g for g in order)
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: the paper's full order {shown} (paper grids)",
                    reference=f"FID: {paper_rank}",
                    measured=_ranked(err),
                    passed=_holds(order, err),
                )
            )
    for target, res in results.items():
        for nfe in (5, 10):
            i = nfes.index(nfe)
            err = {n: res["paper"][n][i] for n in res["paper"]}
            rivals = ("DPM-Solver++(3M)", "UniPC")
            rows.append(
                Row(
                    claim=f"{target}, NFE {nfe}: DPM-Solver-v3 (EMS of the exact field, log-SNR "
                    "grid, with its corrector) beats DPM-Solver++(3M) and UniPC",
                    reference="Zheng et al. 2023: CIFAR-10 FID 12.21 (NFE 5), 2.51 (NFE 10), "
                    "15-30 % faster than the previous best",
                    measured=f"v3 {err['DPM-Solver-v3']:.2e}"
                    + (
                        f" (predictor alone {err[alone]:.2e})"
                        if (alone := "DPM-Solver-v3 (no corrector)") in err
                        else ""
                    )
                    + " vs "
                    + ", ".join(f"{n} {err[n]:.2e}" for n in rivals),
                    passed=err["DPM-Solver-v3"] < min(err[n] for n in rivals),
                )
            )
    figure = _figure(results, nfes, out)
    return Report(
        rows=rows,
        figure=figure,
        details={
            "nfes": nfes,
            "batch": batch,
            "errors": results,
            "order_on_best_grid": best_grid_order,
        },
    )


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
