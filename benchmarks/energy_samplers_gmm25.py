"""Diffusion samplers trained from the energy alone on gmm25 (exact log Z = 0): IS log Z, ELBO,
EUBO, ESS and mode coverage for PIS, DDS, CMCD and Adjoint Sampling at the settings of the slow
tests in `tests/diffusion/test_energy_samplers.py` (a small CPU budget: 400 iterations of 128
paths). Writes `<out>/energy_samplers_gmm25.md`.

    python benchmarks/energy_samplers_gmm25.py --out out
"""

import argparse
import time
from pathlib import Path

import jax

import driftax.diffusion as dd
import driftax.energies as de


def main(out: Path) -> str:
    gmm = de.gmm25()
    net = dict(num_steps=30, hidden=64, depth=2)
    search = dict(local_search=dd.LocalSearch(num_steps=5))
    configs = {
        "PIS, log-variance": (
            lambda k: dd.PIS(2, key=k, sigma=8.0, schedule="quadratic", **net),
            dict(loss="log_variance"),
        ),
        "DDS, log-variance": (
            lambda k: dd.DDS(2, key=k, sigma=8.0, **net),
            dict(loss="log_variance"),
        ),
        "CMCD, log-variance + MALA buffer": (
            lambda k: dd.CMCD(2, key=k, sigma=8.0, step_size=0.05, **net),
            dict(loss="log_variance", **search),
        ),
        "PIS, adjoint + MALA buffer (K = 50, 2 updates)": (
            lambda k: dd.PIS(2, key=k, sigma=8.0, schedule="quadratic", **{**net, "num_steps": 50}),
            dict(loss="adjoint", num_updates=2, **search),
        ),
    }
    ys = gmm.sample(jax.random.key(8), 1000)
    rows = [
        "| method | IS log Z ± se | ELBO | EUBO | ESS / 4000 | modes | near a mode | train s |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def row(name, sampler, seconds):
        r = sampler.run(gmm, key=jax.random.key(7), num_samples=4000, target_samples=ys)
        c = de.mode_coverage(r.samples, gmm, max_distance=1.5)
        return (
            f"| {name} | {float(r.log_normalizer.value):.3f} ± {float(r.log_normalizer.stderr):.3f} | "
            f"{float(r.elbo.value):.2f} | {float(r.eubo.value):.2f} | {float(r.ess):.0f} | "
            f"{int(c.num_covered)} | {1 - float(c.unassigned_fraction):.2f} | {seconds} |"
        )

    for i, (name, (make, kwargs)) in enumerate(configs.items()):
        sampler = make(jax.random.key(0))
        if i == 0:
            rows.append(row("untrained PIS (IS from N(0, 8²I))", sampler, "—"))
        t = time.perf_counter()
        sampler, _ = dd.fit_sampler(
            sampler,
            gmm,
            key=jax.random.key(1),
            num_steps=400 * kwargs.get("num_updates", 1),  # 400 simulated batches
            batch_size=128,
            **kwargs,
        )
        rows.append(row(name, sampler, f"{time.perf_counter() - t:.0f}"))
        print(rows[-1], flush=True)
    text = "# Diffusion samplers on gmm25 (exact log Z = 0)\n\n" + "\n".join(rows) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "energy_samplers_gmm25.md").write_text(text)
    return text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("out"))
    print(main(parser.parse_args().out))
