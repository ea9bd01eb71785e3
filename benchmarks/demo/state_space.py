"""Demo section: filtering and smoothing a state-space model.

A 1-D linear-Gaussian model (exact Kalman / RTS bands for reference) and Kitagawa's growth
model: true states, observations, particle-filter and FFBSi bands (mean ± 2 sd)."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds
from driftax.plotting import save_figure, subplots


def _bands(particles, log_weights):
    w = np.exp(np.asarray(log_weights))
    x = np.asarray(particles)[..., 0]
    m = np.sum(w * x, axis=1)
    sd = np.sqrt(np.maximum(np.sum(w * x**2, axis=1) - m**2, 0.0))
    return m, sd


def run(out: Path, quick: bool = True) -> str:
    """Particle filter + FFBSi bands against Kalman / RTS; the growth model's bimodal filter."""
    T = 60 if quick else 150
    n = 300 if quick else 1000
    with jax.enable_x64(True):
        model = de.linear_gaussian_ssm(
            jnp.array([[0.95]]), jnp.array([[0.3]]), jnp.eye(1), jnp.array([[0.8]]),
            jnp.zeros(1), jnp.eye(1),
        )  # fmt: skip
        xs, ys = model.simulate(jax.random.key(0), T)
        t0 = time.perf_counter()
        pf = ds.particle_filter(model, ys, key=jax.random.key(1), num_particles=n)
        paths = np.asarray(ds.ffbsi(model, pf, key=jax.random.key(2), num_samples=200))[..., 0]
        seconds = time.perf_counter() - t0
        exact = de.rts_smoother(model, ys)
        assert exact.smoothed_means is not None and exact.smoothed_covs is not None
        f_mean, f_sd = _bands(pf.particles, pf.log_weights)
        s_mean, s_sd = paths.mean(0), paths.std(0)
        k_mean = np.asarray(exact.smoothed_means[:, 0])
        k_sd = np.sqrt(np.asarray(exact.smoothed_covs[:, 0, 0]))
        kf_mean = np.asarray(exact.filtered_means[:, 0])
        gm = de.growth_model()
        gxs, gys = gm.simulate(jax.random.key(3), T)
        gpf = ds.particle_filter(gm, gys, key=jax.random.key(4), num_particles=n)
        gpaths = np.asarray(ds.ffbsi(gm, gpf, key=jax.random.key(5), num_samples=200))[..., 0]
    t = np.arange(T)
    fig, axes = subplots(1, 2, figsize=(13, 4.2))
    ax = axes[0]
    ax.plot(t, np.asarray(xs)[:, 0], "k-", lw=1, label="true state")
    ax.plot(t, np.asarray(ys)[:, 0], "k.", ms=3, label="observation")
    ax.fill_between(t, f_mean - 2 * f_sd, f_mean + 2 * f_sd, alpha=0.25, label="filter ± 2 sd")
    ax.fill_between(t, s_mean - 2 * s_sd, s_mean + 2 * s_sd, alpha=0.35, label="FFBSi ± 2 sd")
    ax.plot(t, k_mean, "C3--", lw=1, label="RTS mean (exact)")
    ax.plot(t, k_mean + 2 * k_sd, "C3:", lw=0.8)
    ax.plot(t, k_mean - 2 * k_sd, "C3:", lw=0.8)
    ax.set_title(f"linear-Gaussian, {n} particles", fontsize=9)
    ax.legend(fontsize=7)
    ax = axes[1]
    gf_mean, gf_sd = _bands(gpf.particles, gpf.log_weights)
    ax.plot(t, np.asarray(gxs)[:, 0], "k-", lw=1, label="true state")
    ax.plot(t, np.asarray(gys)[:, 0], "k.", ms=3, label="observation (x²/20 + noise)")
    ax.fill_between(t, gf_mean - 2 * gf_sd, gf_mean + 2 * gf_sd, alpha=0.25, label="filter ± 2 sd")
    ax.fill_between(
        t,
        np.percentile(gpaths, 2.5, axis=0),
        np.percentile(gpaths, 97.5, axis=0),
        alpha=0.35,
        label="FFBSi 95%",
    )
    ax.set_title("Kitagawa growth model (bimodal filter)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, out / "state_space.png")
    smooth_err = np.max(np.abs(s_mean - k_mean) / k_sd)
    filt_err = np.max(np.abs(f_mean - kf_mean) / k_sd)
    return (
        "## State-space models\n\n"
        f"**Linear-Gaussian model** (T = {T}): bootstrap particle filter ({n} particles) and FFBSi "
        f"(200 paths) in {seconds:.1f} s. Log-likelihood {float(pf.log_likelihood):.2f} against "
        f"the exact Kalman {float(exact.log_likelihood):.2f}; the largest gap of the filtering / "
        f"smoothing means to Kalman / RTS is {filt_err:.2f} / {smooth_err:.2f} smoothing sd. "
        "**Growth model**: the squared observation leaves the sign of the state ambiguous, and the "
        "bands show it.\n\n![filtering and smoothing](state_space.png)\n"
    )
