"""Shared helpers for the diffusion tests: a smooth 2-D mixture, MMD with its null band."""

import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de


def small_mixture():
    """A smooth, asymmetric 3-component mixture in 2-D (exact fields along any path)."""
    return de.gaussian_mixture(
        np.array([1.0, 2.0, 1.5]),
        np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0]]),
        np.array([0.5, 0.3, 0.8]),
    )


def mmd2(x, y, bandwidth):
    """Unbiased MMD² with a Gaussian kernel between two samples of equal size."""
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)

    def k(a, b):
        d2 = jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, -1)
        return jnp.exp(-0.5 * d2 / bandwidth**2)

    n = x.shape[0]
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    off = 1.0 - jnp.eye(n)
    return (
        jnp.sum(kxx * off) / (n * (n - 1))
        + jnp.sum(kyy * off) / (n * (n - 1))
        - 2.0 * jnp.sum(kxy * off) / (n * (n - 1))
    )


def mmd_null_band(sample_fn, n, bandwidth, *, key, reps=24):
    """Mean and standard deviation of MMD² between two independent exact samples of size `n`."""
    keys = jax.random.split(key, reps)

    def one(k):
        k1, k2 = jax.random.split(k)
        return mmd2(sample_fn(k1, n), sample_fn(k2, n), bandwidth)

    vals = np.asarray(jax.jit(jax.vmap(one))(keys))
    return float(vals.mean()), float(vals.std(ddof=1))
