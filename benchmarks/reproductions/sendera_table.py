"""Sendera et al. (2024), "Improved off-policy training of diffusion samplers": the table of
GFlowNet losses for a PIS-style diffusion sampler, in the paper's layout.

Claims. (i) Off-policy exploration — local search on a replay buffer, or exploration noise on
the forward policy — improves trajectory balance (TB) on a multimodal target (log Z and mode
coverage on the 25-mode GMM); (ii) the Langevin parameterization (the drift sees
`g(t) ⊙ ∇log p̃`) improves TB over the plain network drift.

How it is checked. `driftax.diffusion.PIS` trained by `fit_sampler` with each loss: TB, TB +
exploration (`exploration=σ_e`, annealed to 0), TB + local search (MALA replay buffer,
`LocalSearch`), VarGrad (the log-variance loss) and SubTB (learned log-flow, λ = 0.9), all
with the Langevin parameterization, plus TB without it. Each trained sampler's `run` gives
the ELBO `mean log w` (Δlog Z, the paper's first column per target) and the importance
sampling `log mean w` (Δlog Z^RW), against the exact log Z; on gmm25 also the number of
modes with a sample within 1.5 of the centre. Rows: sampler × loss; columns: targets.

Pass: on gmm25 the better of TB + exploration and TB + local search has a lower ELBO error
than plain TB or covers more modes (claim i); on every target of the profile TB with the
Langevin parameterization has a lower ELBO error than TB without (claim ii).

Profiles. quick (~1 CPU-minute): gmm25 only, K = 10 steps, 150 iterations of batch 64, width
32, 2 000 evaluation paths, and only the four claim-bearing rows (TB, TB + exploration, TB +
local search, TB without LP; each loss is its own compiled fit, so VarGrad and SubTB, reported
alongside in the paper's table, run in the full profile only). full: gmm25, funnel(10) and
many_well(32), K = 50, 3 000 iterations of batch 256, width 64, 10 000 paths, all six rows.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

import driftax.diffusion as dd  # noqa: E402
import driftax.energies as de  # noqa: E402

NAME = "sendera_table"
PAPER = "Sendera et al. (2024), Improved off-policy training of diffusion samplers"

# target -> (energy factory, PIS sigma (σ√T about the target's spread), exploration σ_e)
TARGETS = {
    "gmm25": (de.gmm25, 8.0, 2.0),
    "funnel(10)": (lambda: de.funnel(10), 2.0, 0.5),
    "many_well(32)": (lambda: de.many_well(32), 1.5, 0.5),
}

# row label -> (loss, langevin, exploration?, local search?)
METHODS = {
    "PIS + TB": ("trajectory_balance", True, False, False),
    "PIS + TB + exploration": ("trajectory_balance", True, True, False),
    "PIS + TB + local search": ("trajectory_balance", True, False, True),
    "PIS + VarGrad": ("vargrad", True, False, False),
    "PIS + SubTB": ("subtrajectory_balance", True, False, False),
    "PIS + TB, no Langevin parameterization": ("trajectory_balance", False, False, False),
}

# rows reported alongside in the paper's table that no claim reads (full profile only)
REPORTED_ONLY = ("PIS + VarGrad", "PIS + SubTB")


def run(out: Path, quick: bool, seed: int) -> Report:
    if quick:
        k_steps, iters, batch, width, n_eval = 10, 150, 64, 32, 2000
        targets = ["gmm25"]
    else:
        k_steps, iters, batch, width, n_eval = 50, 3000, 256, 64, 10_000
        targets = list(TARGETS)
    methods = {k: v for k, v in METHODS.items() if not quick or k not in REPORTED_ONLY}
    opt = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3))
    key = jax.random.key(seed)
    table: dict[str, dict[str, dict[str, float]]] = {}
    curves: dict[str, dict[str, np.ndarray]] = {}
    for i, name in enumerate(targets):
        make, sigma, sigma_e = TARGETS[name]
        energy = make()
        exact = float(energy.log_normalizer)
        k_init, k_fit, k_eval = jax.random.split(jax.random.fold_in(key, i), 3)
        table[name], curves[name] = {}, {}
        for label, (loss, langevin, explore, search) in methods.items():
            sampler = dd.PIS(
                energy.dim,
                key=k_init,
                num_steps=k_steps,
                sigma=sigma,
                langevin=langevin,
                hidden=width,
                depth=2,
            )
            extra = {}
            if explore:
                extra["exploration"] = sigma_e
            if search:
                extra["local_search"] = dd.LocalSearch(num_steps=5, buffer_size=20 * batch)
            trained, info = dd.fit_sampler(
                sampler,
                energy,
                key=k_fit,
                num_steps=iters,
                batch_size=batch,
                optimizer=opt,
                loss=loss,
                **extra,
            )
            res = trained.run(energy, key=k_eval, num_samples=n_eval)
            row = {
                "elbo_error": abs(float(res.elbo.value) - exact),
                "is_error": abs(float(res.log_normalizer.value) - exact),
                "is_stderr": float(res.log_normalizer.stderr),
                "ess_fraction": float(res.ess) / n_eval,
                "nonfinite_steps": int(info.num_nonfinite),
            }
            if name == "gmm25":
                cover = de.mode_coverage(res.samples, energy, max_distance=1.5)
                row["modes"] = int(cover.num_covered)
            if info.learned_log_normalizer is not None:
                row["learned_log_z_error"] = abs(float(info.learned_log_normalizer[-1]) - exact)
            table[name][label] = row
            curves[name][label] = np.asarray(info.elbo)

    rows = []
    g = table["gmm25"]
    tb = g["PIS + TB"]
    off = min(
        (g["PIS + TB + exploration"], g["PIS + TB + local search"]),
        key=lambda r: (-r["modes"], r["elbo_error"]),
    )
    rows.append(
        Row(
            "gmm25: exploration or local search improves TB (ELBO log Z error or mode coverage)",
            "Sendera et al.: local search / exploration improve TB on multimodal targets",
            f"TB {tb['elbo_error']:.2f} nats, {tb['modes']}/25 modes; best off-policy "
            f"{off['elbo_error']:.2f} nats, {off['modes']}/25 modes (exploration "
            f"{g['PIS + TB + exploration']['elbo_error']:.2f}, local search "
            f"{g['PIS + TB + local search']['elbo_error']:.2f})",
            off["elbo_error"] < tb["elbo_error"] or off["modes"] > tb["modes"],
        )
    )
    for name, per in table.items():
        a = per["PIS + TB"]["elbo_error"]
        b = per["PIS + TB, no Langevin parameterization"]["elbo_error"]
        rows.append(
            Row(
                f"{name}: TB with the Langevin parameterization beats TB without (ELBO Δlog Z)",
                "Sendera et al.: LP improves TB",
                f"with {a:.2f}, without {b:.2f}",
                a < b,
            )
        )

    lines = ["| sampler + loss | " + " | ".join(f"{t} Δlog Z | {t} Δlog Z^RW" for t in table)]
    lines[0] += " | gmm25 modes |"
    lines.append("|---|" + "---|---|" * len(table) + "---|")
    for label in methods:
        cells = []
        for t in table:
            r = table[t][label]
            cells += [f"{r['elbo_error']:.2f}", f"{r['is_error']:.2f} ± {r['is_stderr']:.2f}"]
        cells.append(str(table["gmm25"][label]["modes"]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    markdown = "\n".join(lines)
    print(markdown)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5.5 * len(table), 3.8), squeeze=False)
    for ax, name in zip(axes[0], table, strict=True):
        exact = float(TARGETS[name][0]().log_normalizer)
        for label, h in curves[name].items():
            ax.plot(h, label=label, lw=1)
        ax.axhline(exact, color="k", label="exact log Z")
        ax.set_ylim(exact - 15, exact + 2)
        ax.set_title(f"{name}: training ELBO")
        ax.set_xlabel("iteration")
        ax.legend(fontsize=6)
    fig_path = save_figure(fig, out, NAME, dpi=110)
    details = {
        "table": table,
        "markdown_table": markdown,
        "profile": dict(K=k_steps, iterations=iters, batch=batch, width=width, paths=n_eval),
    }
    return Report(rows=rows, figure=str(fig_path), details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
