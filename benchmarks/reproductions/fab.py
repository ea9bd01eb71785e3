"""FAB, flow annealed importance sampling bootstrap (Midgley et al. 2023): a flow trained by the
α = 2 divergence with AIS towards p²/q and a prioritized replay buffer learns multimodal targets
well enough to estimate log Z by importance sampling.

Claims checked.
- 2-D GMM (gmm40, 40 modes, means in [-40, 40]²): the trained flow covers all 40 modes (the
  paper's figure of FAB with the buffer), and |Δlog Z| of importance sampling with 2,000 draws
  at most 0.01 (the issue's goal for the best learned sampler; the digests hold no FAB log Z
  number for this target).
- many_well(32): |Δlog Z| of importance sampling with 2,000 draws at most 0.0316 (the FAB
  record, mean absolute error over 5 seeds, fab-jax README, as quoted by Sendera et al. 2024).
- On both targets FAB improves on its initial flow (importance ESS and |Δlog Z|), a sanity row.

How. `driftax.flows.fit_fab` (α = 2, AIS with HMC moves, buffer of 8 batches) trains a coupling
flow scaled to the target's spread; `log Ẑ = log mean(p̃/q)` over 2,000 flow draws; exact log Z
(0 for gmm40, the quadrature value for many_well). The ESS is Kish's of the same weights.

Profiles. quick (about a minute of CPU): 150 steps of 64 AIS draws on gmm40, 100 steps of 64 on
many_well(32) — far below the paper's budget (FAB trained for hours on a GPU), so the log Z
rows are expected to fail in the quick profile and are reported as such. full: 10,000 steps of
512 on each.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))
from _common import Report, Row, main, save_figure  # noqa: E402
from unnormalized import fab_initial_flow, fab_run  # noqa: E402

import driftax.energies as de  # noqa: E402
import driftax.flows as fl  # noqa: E402

NAME = "fab"
PAPER = "Midgley et al. (2023), Flow annealed importance sampling bootstrap (FAB)"


def run(out: Path, quick: bool, seed: int) -> Report:
    n = 2000 if quick else 10_000
    budgets = {"gmm40": (150, 64), "many_well": (100, 64)} if quick else None
    targets = {"gmm40": (de.gmm40(), 0.0), "many_well": (de.many_well(32), None)}
    rows, details, samples = [], {}, {}
    for i, (name, (energy, log_z)) in enumerate(targets.items()):
        if log_z is None:
            log_z = float(energy.log_normalizer)
        iters, batch = budgets[name] if budgets else (10_000, 512)
        key = jax.random.key(1000 * seed + i)
        o, extra = fab_run(energy, name, key, iters=iters, batch=batch, n=n)
        start = fab_initial_flow(energy, name, key)
        before = fl.importance_diagnostics(start, energy, key=jax.random.key(99), num_samples=n)
        err = abs(float(o.log_z) - log_z)
        err0 = abs(before["log_normalizer"] - log_z)
        details[name] = dict(
            steps=iters,
            batch=batch,
            log_z=o.log_z,
            log_z_stderr=o.log_z_stderr,
            exact_log_z=log_z,
            abs_dlogz=err,
            ess=extra["ess"],
            initial_abs_dlogz=err0,
            initial_ess=before["ess"],
            energy_evals=o.energy_evals,
            dropped_ais_draws=extra["dropped"],
        )
        samples[name] = o.samples
        label = "gmm40 (2-D, 40 modes)" if name == "gmm40" else "many_well(32)"
        rows.append(
            Row(
                f"{label}: FAB improves on its initial flow (IS ESS and |Δlog Z|)",
                "better than the initial flow",
                f"ESS {before['ess']:.0f} -> {extra['ess']:.0f} of {n}; |Δlog Z| {err0:.3f} -> {err:.3f}",
                extra["ess"] > before["ess"] and err < err0,
            )
        )
        if name == "gmm40":
            cover = de.mode_coverage(jax.numpy.asarray(o.samples), energy)
            k = int(cover.num_covered)
            details[name]["modes_covered"] = k
            rows.append(
                Row(
                    f"{label}: all 40 modes covered by the trained flow",
                    "40 / 40 (paper's figure, FAB with buffer)",
                    f"{k} / 40",
                    k == 40,
                )
            )
            ref = "≤ 0.01 (issue goal; no FAB number for this target in the digests)"
            limit = 0.01
        else:
            ref = "≤ 0.0316 (FAB, fab-jax README: MAE over 5 seeds, 2,000 samples)"
            limit = 0.0316
        rows.append(
            Row(
                f"{label}: |Δlog Z| of importance sampling, {n:,} flow draws",
                ref,
                f"{err:.4f} (s.e. {o.log_z_stderr:.4f}; ESS {extra['ess']:.0f}/{n}; "
                f"{iters} steps × {batch}, {o.energy_evals:,} energy evaluations)",
                err <= limit,
            )
        )
    figure = _figure(out, samples)
    return Report(rows, figure, details)


def _figure(out, samples):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    ax = fig.add_subplot(1, 2, 1)
    x = np.asarray(samples["gmm40"])
    means = np.asarray(de.gmm40().means)
    ax.scatter(x[:, 0], x[:, 1], s=2, alpha=0.4, label="FAB flow (resampled)")
    ax.scatter(means[:, 0], means[:, 1], s=12, c="k", marker="x", label="modes")
    ax.set_title("gmm40")
    ax.legend(fontsize=7)
    ax = fig.add_subplot(1, 2, 2)
    y = np.asarray(samples["many_well"])
    ax.hist2d(y[:, 0], y[:, 2], bins=40)
    ax.set_title("many_well(32): x1 vs x3")
    return save_figure(fig, out, NAME)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
