"""Closed-form diffusion models: memorization versus smoothing, a small exact reproduction.

Paper: Scarvelis, Sáez de Ocáriz Borde & Solomon (TMLR 2025), "Closed-form diffusion models".
Claims: the closed-form score of a finite training set memorizes it; smoothing that score
("σ-CFDM") generates novel samples near the data without training; a nearest-neighbour
estimator of the smoothed score makes it cheap on a CPU.

How it is checked here: N training points on the unit circle (radius noise 0.01), the EDM path
(sigma from 80 down to 0.002), 100 DDIM steps in the data parameterization from the same prior
draws, and the denoised last step (`field.denoise(t_data, x)`) as the sample. The final noise
level must sit well below the spacing of the training points for memorization to be exact: on
the VP path (final sigma 0.0105, against a median spacing of 0.017) only 94.6% of the exact
field's samples were within 1e-2 of a training point (measured, seed 0). Rows:

1. smoothing 0 (`dd.ClosedFormDiffusion(data, path)`): >= 99% of samples lie within 1e-2 of a
   training point;
2. smoothing = 0.5 x the median nearest-neighbour spacing of the training set (M = 8 fixed
   perturbations): >= 50% of samples lie farther than 1e-2 from every training point (novel;
   with N = 200 points on the circle no sample can be farther than about half a spacing, 0.016,
   so the novelty threshold is the memorization tolerance, not an absolute 0.05), while their
   mean distance to the circle is <= 0.05;
3. the nearest-neighbour estimator (k = 16) gives samples indistinguishable from the full sum:
   MMD permutation test (RBF, median-heuristic bandwidth, 200 permutations), p > 0.05.

The wall time of the smoothed k-NN run is reported (not a claim: the machine is shared).
Profiles: quick (N = 200, 2000 samples) and full (N = 200, 10000 samples).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax.diffusion as dd
import driftax.energies as de

sys.path.insert(0, str(Path(__file__).parent))
from _common import Report, Row, main, save_figure  # noqa: E402

NAME = "closed_form_diffusion"
PAPER = "Scarvelis, Sáez de Ocáriz Borde & Solomon (2025), Closed-form diffusion models"


def _circle(key, n):
    k1, k2 = jax.random.split(key)
    angle = jax.random.uniform(k1, (n,), maxval=2 * np.pi)
    radius = 1.0 + 0.01 * jax.random.normal(k2, (n,))
    return radius[:, None] * jnp.stack([jnp.cos(angle), jnp.sin(angle)], axis=1)


def _sample(field, path, x0):
    x = dd.solve(dd.DDIM(), field.denoise, path, x0, num_steps=100, parameterization="data")
    return jax.vmap(lambda z: field.denoise(path.t_data, z))(x)


def _nearest(x, data):
    return jnp.min(jnp.linalg.norm(x[:, None] - data[None], axis=-1), axis=1)


def _mmd_permutation_p(x, y, key, num_perm=200):
    z = jnp.concatenate([x, y])
    n = x.shape[0]
    d2 = jnp.sum((z[:, None] - z[None]) ** 2, axis=-1)
    bw2 = jnp.median(d2[jnp.triu_indices(z.shape[0], 1)])
    k = jnp.exp(-d2 / (2 * bw2))

    def stat(perm):
        a, b = perm[:n], perm[n:]
        kxx, kyy, kxy = k[a][:, a], k[b][:, b], k[a][:, b]
        m = a.shape[0]
        off = lambda kk: (jnp.sum(kk) - jnp.trace(kk)) / (m * (m - 1))  # noqa: E731
        return off(kxx) + off(kyy) - 2 * jnp.mean(kxy)

    observed = stat(jnp.arange(z.shape[0]))
    perms = jax.vmap(lambda kk: jax.random.permutation(kk, z.shape[0]))(
        jax.random.split(key, num_perm)
    )
    null = jax.lax.map(stat, perms)
    return float((1 + jnp.sum(null >= observed)) / (num_perm + 1)), float(observed)


def _figure(out, data, samples):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(samples), figsize=(4 * len(samples), 4))
    for ax, (label, x) in zip(axes, samples.items(), strict=True):
        ax.scatter(*np.asarray(x[:2000]).T, s=2, alpha=0.5, label="samples")
        ax.scatter(*np.asarray(data).T, s=8, c="k", label="training points")
        ax.set_title(label)
        ax.set_aspect("equal")
    axes[0].legend(loc="lower left", fontsize=7)
    return save_figure(fig, out, NAME, dpi=100)


def run(out: Path, quick: bool, seed: int) -> Report:
    num_train, num_samples = 200, (2000 if quick else 10000)
    key = jax.random.key(seed)
    k_data, k_x, k_pert, k_test = jax.random.split(key, 4)
    data = _circle(k_data, num_train)
    path = dd.EDM()  # final noise sigma_min = 0.002, well below the training-point spacing
    x0 = path.prior_sample(k_x, (num_samples, 2))
    gaps = jnp.linalg.norm(data[:, None] - data[None], axis=-1) + 1e9 * jnp.eye(num_train)
    spacing = float(jnp.median(jnp.min(gaps, axis=1)))
    smoothing = 0.5 * spacing

    exact = _sample(dd.ClosedFormDiffusion(data, path), path, x0)
    kw = dict(smoothing=smoothing, num_draws=8, key=k_pert)
    full = _sample(dd.ClosedFormDiffusion(data, path, **kw), path, x0)
    knn_field = dd.ClosedFormDiffusion(data, path, num_neighbors=16, **kw)
    jax.block_until_ready(_sample(knn_field, path, x0[:8]))  # compile at another batch size
    t = time.perf_counter()
    knn = jax.block_until_ready(_sample(knn_field, path, x0))
    knn_s = time.perf_counter() - t

    memorized = float(jnp.mean(_nearest(exact, data) <= 1e-2))
    novel = float(jnp.mean(_nearest(full, data) > 1e-2))
    to_circle = float(jnp.mean(jnp.abs(jnp.linalg.norm(full, axis=1) - 1.0)))
    n_test = min(num_samples, 1000)
    p_value, mmd2 = _mmd_permutation_p(full[:n_test], knn[:n_test], k_test)
    rows = [
        Row(
            "smoothing 0 memorizes: samples within 1e-2 of a training point",
            ">= 99%",
            f"{100 * memorized:.1f}%",
            memorized >= 0.99,
        ),
        Row(
            f"smoothing {smoothing:.3g} (0.5 x NN spacing): novel samples (> 1e-2 from every "
            "training point)",
            ">= 50%",
            f"{100 * novel:.1f}%",
            novel >= 0.5,
        ),
        Row(
            "smoothed samples stay near the data: mean distance to the circle",
            "<= 0.05",
            f"{to_circle:.4f}",
            to_circle <= 0.05,
        ),
        Row(
            "k-NN estimator (k = 16) vs full sum: MMD permutation test",
            "p > 0.05",
            f"p = {p_value:.3f} (MMD² {mmd2:.2e})",
            p_value > 0.05,
        ),
    ]
    figure = _figure(
        out,
        data,
        {"smoothing 0 (memorizes)": exact, "smoothed, full sum": full, "smoothed, k-NN": knn},
    )
    details = {
        "num_train": num_train,
        "num_samples": num_samples,
        "nn_spacing": spacing,
        "knn_run_seconds": knn_s,
        "median_distance_exact": float(jnp.median(_nearest(exact, data))),
        "median_distance_smoothed": float(jnp.median(_nearest(full, data))),
        "mmd_bandwidth_rule": "median heuristic",
        "de_mmd_full_vs_knn": float(de.mmd(full[:n_test], knn[:n_test], bandwidth=0.1).unbiased),
    }
    return Report(rows=rows, figure=figure, details=details)


if __name__ == "__main__":
    raise SystemExit(main(run, NAME, PAPER))
