"""Diffusion samplers for unnormalized densities (Sendera et al. 2024 benchmark; CMCD, Vargas
et al. 2024): a learned control on annealed Langevin dynamics beats the uncontrolled dynamics.

Claim. Controlled Monte Carlo diffusion (CMCD) — Langevin kernels along the geometric path
`pi_beta ∝ q_0^(1-beta) p̃^beta` plus a learned control `u(t, x)` in the forward and backward
kernels — estimates `log Z` better than the same dynamics without control (uncontrolled MCD:
annealed importance sampling with unadjusted Langevin moves, same number of steps), on the
benchmark targets gmm25, funnel(10) and many_well(32).

How it is checked. `driftax.diffusion.CMCD` trained by `fit_sampler` (reverse-KL loss), against
two uncontrolled baselines with the same K steps: the untrained sampler with its control set to
zero (the initial step size), and the trained sampler with its control set to zero (so it keeps
the learned step size — the stronger baseline). Both estimates come from `run`: the ELBO
`mean log w` (Δlog Z of the papers' tables) and the importance-sampling `log mean w`
(Δlog Z^RW), against the exact log Z (0 for gmm25 and funnel; the quadrature value for
many_well). Table in the papers' layout (rows: methods; columns: targets).

Pass: on every target, CMCD's ELBO error is below both uncontrolled baselines' (one row per
target); a further row asks the same of the importance-sampling estimate.

Profiles. quick: K = 32 steps, 300 iterations of batch 128, 4 000 evaluation paths. full:
K = 128, 5 000 iterations of batch 512, 20 000 paths.
"""

from __future__ import annotations

import sys
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

import driftax.diffusion as dd  # noqa: E402
import driftax.energies as de  # noqa: E402

NAME = "diffusion_samplers"
PAPER = "Sendera et al. (2024), Improved off-policy training of diffusion samplers; CMCD"

# target -> (energy factory, reference scale sigma, initial step size)
TARGETS = {
    "gmm25": (de.gmm25, 8.0, 0.05),
    "funnel(10)": (lambda: de.funnel(10), 1.0, 0.02),
    "many_well(32)": (lambda: de.many_well(32), 1.5, 0.01),
}


def zero_control(sampler):
    last = sampler.control.last
    return eqx.tree_at(
        lambda s: (s.control.last.weight, s.control.last.bias),
        sampler,
        replace=(jnp.zeros_like(last.weight), jnp.zeros_like(last.bias)),
    )


def run(out: Path, quick: bool, seed: int) -> Report:
    k_steps, iters, batch, n_eval = (32, 300, 128, 4000) if quick else (128, 5000, 512, 20_000)
    key = jax.random.key(seed)
    table: dict[str, dict[str, dict[str, float]]] = {}
    histories = {}
    for i, (name, (make, sigma, h0)) in enumerate(TARGETS.items()):
        energy = make()
        exact = float(energy.log_normalizer)
        kk = jax.random.fold_in(key, i)
        k_init, k_fit, k1, k2, k3 = jax.random.split(kk, 5)
        cmcd0 = dd.CMCD(
            energy.dim, key=k_init, num_steps=k_steps, sigma=sigma, step_size=h0, hidden=32, depth=2
        )
        trained, info = dd.fit_sampler(
            cmcd0,
            energy,
            key=k_fit,
            num_steps=iters,
            batch_size=batch,
            loss="kl",
            optimizer=optax.chain(optax.clip_by_global_norm(1.0), optax.adam(3e-3)),
        )
        histories[name] = np.asarray(info.elbo)
        methods = {
            "MCD (uncontrolled, initial step)": zero_control(cmcd0),
            "MCD (uncontrolled, learned step)": zero_control(trained),
            "CMCD (learned control)": trained,
        }
        table[name] = {}
        for j, (label, sampler) in enumerate(methods.items()):
            res = sampler.run(energy, key=jax.random.fold_in(k1, j), num_samples=n_eval)
            table[name][label] = {
                "elbo_error": abs(float(res.elbo.value) - exact),
                "is_error": abs(float(res.log_normalizer.value) - exact),
                "is_stderr": float(res.log_normalizer.stderr),
                "ess_fraction": float(res.ess) / n_eval,
                "step_size": float(jnp.exp(sampler.log_step_size)),
            }
    rows = []
    labels = list(next(iter(table.values())).keys())
    for name, per in table.items():
        c = per["CMCD (learned control)"]["elbo_error"]
        u = min(per[k]["elbo_error"] for k in labels if k.startswith("MCD"))
        rows.append(
            Row(
                f"{name}: CMCD's log Z error below uncontrolled annealed Langevin (K = {k_steps})",
                f"uncontrolled |Δlog Z| (ELBO) {u:.2f} (best of the two step sizes)",
                f"CMCD {c:.2f}; IS: CMCD {per['CMCD (learned control)']['is_error']:.2f} vs "
                f"uncontrolled {min(per[k]['is_error'] for k in labels if k.startswith('MCD')):.2f}",
                c < u,
            )
        )
    is_c = {t: per["CMCD (learned control)"]["is_error"] for t, per in table.items()}
    is_u = {
        t: min(per[k]["is_error"] for k in labels if k.startswith("MCD"))
        for t, per in table.items()
    }
    rows.append(
        Row(
            "reweighted (IS) log Z error Δlog Z^RW: CMCD below uncontrolled on every target",
            "uncontrolled: " + ", ".join(f"{t} {v:.2f}" for t, v in is_u.items()),
            "CMCD: " + ", ".join(f"{t} {v:.2f}" for t, v in is_c.items()),
            all(is_c[t] < is_u[t] for t in table),
        )
    )
    # the papers' layout: methods x targets
    lines = ["| method | " + " | ".join(f"{t} Δlog Z | {t} Δlog Z^RW" for t in table) + " |"]
    lines.append("|---|" + "---|---|" * len(table))
    for label in labels:
        cells = []
        for t in table:
            r = table[t][label]
            cells += [f"{r['elbo_error']:.2f}", f"{r['is_error']:.2f} ± {r['is_stderr']:.2f}"]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    details = {"table": table, "markdown_table": "\n".join(lines)}
    print("\n".join(lines))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(table), figsize=(5 * len(table), 3.8))
    for ax, name in zip(axes, table, strict=True):
        h = histories[name]
        exact = float(TARGETS[name][0]().log_normalizer)
        ax.plot(h, color="tab:blue", label="CMCD training ELBO")
        for label, col in zip(labels[:2], ["tab:red", "tab:orange"], strict=True):
            ax.axhline(exact - table[name][label]["elbo_error"], color=col, ls=":", label=label)
        ax.axhline(exact, color="k", label="exact log Z")
        ax.set_title(name)
        ax.set_xlabel("iteration")
        ax.set_ylim(exact - 3 * max(1.0, table[name][labels[0]]["elbo_error"]), exact + 1)
        ax.legend(fontsize=7)
    fig_path = save_figure(fig, out, NAME, dpi=110)
    return Report(rows=rows, figure=str(fig_path), details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
