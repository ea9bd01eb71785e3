"""Demo section: interacting particles (SVGD on the banana, a sliced MMD flow to gmm9 samples) and
kernel-thinned points over a NUTS cloud."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.plotting import plot_density_2d, save_figure, subplots

BANANA_BOUNDS = ((-25.0, 25.0), (-8.0, 12.0))
GMM9_BOUNDS = ((-8.0, 8.0), (-8.0, 8.0))


def _timed(fn):
    t0 = time.perf_counter()
    value = jax.block_until_ready(fn())
    return value, time.perf_counter() - t0


def _svgd(quick: bool):
    target = de.banana()
    n, steps = (200, 1000) if quick else (500, 3000)
    x0 = jax.random.normal(jax.random.key(0), (n, 2)) * jnp.array([3.0, 1.0])
    res, secs = _timed(
        lambda: (
            ds.run_particles(
                ds.SVGD(step_size=0.5),
                target,
                x0,
                key=jax.random.key(1),
                num_steps=steps,
                store_samples=False,
            ).particles
        )  # fmt: skip
    )
    ref = target.sample(jax.random.key(2), (2000,))
    return target, np.asarray(res), {
        "particles": n, "steps": steps, "seconds": secs, "grads": n * steps,
        "ed": float(de.energy_distance(res, ref)),
        "ed_iid": float(de.energy_distance(target.sample(jax.random.key(3), (n,)), ref)),
    }  # fmt: skip


def _mmd_flow(quick: bool):
    target = de.gmm9()
    n, steps = (2000, 400) if quick else (10000, 1000)
    y = target.sample(jax.random.key(4), (n,))
    x0 = jax.random.normal(jax.random.key(5), (n, 2))
    x, secs = _timed(
        lambda: ds.mmd_flow(
            x0,
            y,
            key=jax.random.key(6),
            num_steps=steps,
            step_size=1.0,
            momentum=0.8,
            num_projections=32,
        )  # fmt: skip
    )
    ref = target.sample(jax.random.key(7), (n,))
    cover = de.mode_coverage(x, target)
    return target, np.asarray(x), {
        "particles": n, "steps": steps, "seconds": secs,
        "ed": float(de.energy_distance(x, ref)),
        "ed_iid": float(de.energy_distance(target.sample(jax.random.key(8), (n,)), ref)),
        "covered": int(cover.num_covered),
    }  # fmt: skip


def _thinning(quick: bool):
    target = de.gaussian(jnp.zeros(2), jnp.array([[1.0, 0.8], [0.8, 1.0]]))
    steps = 1024 if quick else 4096
    run = dx.sample(ds.NUTS(), target, jnp.zeros(2), key=jax.random.key(9), num_steps=steps,
                    num_warmup=500, num_chains=4)  # fmt: skip
    cloud = run.samples.reshape(-1, 2)
    m = 64
    kt, secs = _timed(lambda: ds.kernel_thin(run, m, key=jax.random.key(10)))
    standard = cloud[:: cloud.shape[0] // m][:m]
    iid = cloud[jax.random.choice(jax.random.key(11), cloud.shape[0], (m,), replace=False)]
    h = float(de.median_heuristic(cloud, cloud))

    def mmd(pts):
        return float(jnp.sqrt(jnp.maximum(de.mmd(cloud, pts, kernel="rbf", bandwidth=h).biased, 0)))

    return target, np.asarray(cloud), np.asarray(kt), {
        "n": int(cloud.shape[0]), "m": m, "seconds": secs, "bandwidth": h,
        "kt": mmd(kt), "standard": mmd(standard), "iid": mmd(iid),
    }  # fmt: skip


def run(out: Path, quick: bool = True) -> str:
    """SVGD on the banana, an MMD flow to gmm9 samples, kernel thinning of a NUTS cloud."""
    banana, svgd_x, svgd = _svgd(quick)
    gmm, flow_x, flow = _mmd_flow(quick)
    gauss, cloud, kt_x, kt = _thinning(quick)
    fig, axes = subplots(1, 3, figsize=(14, 4.2))
    plot_density_2d(banana, svgd_x, bounds=BANANA_BOUNDS, ax=axes[0],
                    title=f"SVGD, {svgd['particles']} particles")  # fmt: skip
    plot_density_2d(gmm, flow_x, bounds=GMM9_BOUNDS, ax=axes[1],
                    title=f"sliced MMD flow, {flow['particles']} particles")  # fmt: skip
    ax = axes[2]
    plot_density_2d(gauss, None, bounds=((-4.0, 4.0), (-4.0, 4.0)), ax=ax,
                    title=f"kernel thinning: {kt['m']} of {kt['n']} NUTS draws")  # fmt: skip
    ax.scatter(cloud[:, 0], cloud[:, 1], s=1, c="0.6", alpha=0.4, label="NUTS draws")
    ax.scatter(kt_x[:, 0], kt_x[:, 1], s=14, c="tab:red", label="kernel-thinned")
    ax.legend(fontsize=8, loc="upper right")
    save_figure(fig, out / "particles.png")
    return (
        "## Interacting particles and thinning\n\n"
        "Energy distance to 2000 (gmm9: as many) fresh exact draws, against an i.i.d. sample of "
        "the same size as the particles (lower is better).\n\n"
        "| method | target | particles × steps | energy distance | i.i.d. of same size | "
        "seconds |\n|---|---|---|---|---|---|\n"
        f"| SVGD (median-heuristic RBF) | banana | {svgd['particles']} × {svgd['steps']} | "
        f"{svgd['ed']:.4f} | {svgd['ed_iid']:.4f} | {svgd['seconds']:.1f} |\n"
        f"| sliced MMD flow (Riesz kernel, from samples only) | gmm9 ({flow['covered']}/9 modes) "
        f"| {flow['particles']} × {flow['steps']} | {flow['ed']:.5f} | {flow['ed_iid']:.5f} | "
        f"{flow['seconds']:.1f} |\n\n"
        "SVGD's deterministic particles cover the banana's centre but not its far arms in this "
        "budget (the known under-dispersion of SVGD with few particles: the kernel repulsion is "
        "weak where the density is low), so its energy distance stays well above the i.i.d. "
        "level; the MMD flow, which sees target samples rather than the score, matches gmm9 at "
        "the i.i.d. level with every mode populated.\n\n"
        f"**Kernel thinning** of {kt['n']} NUTS draws on a correlated Gaussian to {kt['m']} points "
        f"({kt['seconds']:.1f} s): MMD to the whole cloud (RBF, bandwidth {kt['bandwidth']:.2f}) "
        f"{kt['kt']:.4f}, against {kt['standard']:.4f} for standard (evenly spaced) thinning "
        f"and {kt['iid']:.4f} for an i.i.d. subsample.\n\n"
        "![particles](particles.png)\n"
    )
