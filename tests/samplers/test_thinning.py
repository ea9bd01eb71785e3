"""Kernel thinning, Compress++ and Stein thinning: better-than-i.i.d. MMD over seeds, exact
identities, usable on driftax results, clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.samplers as ds
from driftax.samplers._particles._thinning import stein_kernel

N, M, H = 256, 16, 1.0


def _mmd2(x, sub):
    return float(dx.energies.mmd(x, sub, kernel="rbf", bandwidth=H).biased)


@pytest.fixture(scope="module")
def clouds():
    return [jax.random.normal(jax.random.key(s), (N, 2)) for s in range(3)]


@pytest.mark.parametrize("method", ["kt", pytest.param("compress++", marks=pytest.mark.slow)])
def test_kernel_thin_beats_iid_subsampling(clouds, method):
    """Over three seeds, the thinned points' MMD² to the whole cloud is below a quarter of that
    of an i.i.d. subsample of the same size (and of standard thinning)."""
    for s, x in enumerate(clouds):
        pts = ds.kernel_thin(x, M, key=jax.random.key(10 + s), bandwidth=H, method=method)
        assert pts.shape == (M, 2)
        iid = x[jax.random.choice(jax.random.key(20 + s), N, (M,), replace=False)]
        kt, ref = _mmd2(x, pts), _mmd2(x, iid)
        assert kt < 0.25 * ref, (s, kt, ref)
        assert kt < 0.25 * _mmd2(x, x[:: N // M])


@pytest.mark.slow
def test_kernel_thin_deterministic_indices_and_callable_kernel(clouds):
    x = clouds[0]
    a, ia = ds.kernel_thin(x, M, key=jax.random.key(1), bandwidth=H, return_indices=True)
    b = ds.kernel_thin(x, M, key=jax.random.key(1), bandwidth=H)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, x[ia])

    def rbf(u, v):
        return jnp.exp(-0.5 * jnp.sum((u - v) ** 2) / H**2)

    c = ds.kernel_thin(x, M, key=jax.random.key(1), kernel=rbf)
    np.testing.assert_allclose(c, a)
    plus = ds.kernel_thin(x, M, key=jax.random.key(1), bandwidth=H, split_kernel="kt+")
    assert _mmd2(x, plus) < 0.25 * _mmd2(x, x[:: N // M])


def test_kernel_thin_on_a_sample_result():
    target = dx.energies.gaussian(jnp.zeros(2))
    res = dx.sample(ds.MALA(step_size=0.9), target, jnp.zeros(2), key=jax.random.key(0),
                    num_steps=128, num_warmup=0, num_chains=2, adaptation=None,
                    check_health=False)  # fmt: skip
    pts = ds.kernel_thin(res, 16, key=jax.random.key(1))
    pool = np.asarray(res.samples).reshape(-1, 2)
    assert pts.shape == (16, 2)
    assert all(np.any(np.all(pool == p, axis=1)) for p in np.asarray(pts))


def test_thinning_bad_input(clouds):
    x = clouds[0]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="num_points"):
        ds.kernel_thin(x, N + 1, key=key)
    with pytest.raises(ValueError, match="num_points"):
        ds.kernel_thin(x, 0, key=key)
    with pytest.raises(ValueError, match="num_points"):
        ds.kernel_thin(x, 12, key=key, method="compress++")
    with pytest.raises(ValueError, match="compress"):
        ds.kernel_thin(x, 32, key=key, method="compress++")
    with pytest.raises(ValueError, match="kt\\+"):
        ds.kernel_thin(x, 16, key=key, kernel="laplace", split_kernel="kt+")
    with pytest.raises(ValueError, match="bandwidth"):
        ds.kernel_thin(x, 16, key=key, bandwidth=0.0)
    with pytest.raises(ValueError, match="delta"):
        ds.kernel_thin(x, 16, key=key, delta=1.5)
    with pytest.raises(ValueError, match="kernel"):
        ds.kernel_thin(x, 16, key=key, kernel="cauchy")
    with pytest.raises(ValueError, match="samples"):
        ds.kernel_thin(jnp.ones(10), 2, key=key)
    with pytest.raises(ValueError, match="num_points"):
        ds.stein_thin(x, N + 1, scores=-x)
    with pytest.raises(ValueError, match="energy"):
        ds.stein_thin(x, 4)
    with pytest.raises(ValueError, match="scores"):
        ds.stein_thin(x, 4, scores=x[:3])


def test_stein_kernel_closed_form(x64):
    """The closed-form Langevin Stein kernel equals its definition written with autodiff."""
    kx, ky = jax.random.split(jax.random.key(0))
    x, y = jax.random.normal(kx, (3,), jnp.float64), jax.random.normal(ky, (3,), jnp.float64)
    sx, sy = -x, 0.5 - y
    h = 1.3

    def k(a, b):
        return (1.0 + jnp.sum((a - b) ** 2) / h**2) ** -0.5

    div = jnp.trace(jax.jacfwd(jax.grad(k, 0), 1)(x, y))
    ref = div + jax.grad(k, 0)(x, y) @ sy + jax.grad(k, 1)(x, y) @ sx + k(x, y) * sx @ sy
    np.testing.assert_allclose(stein_kernel(x, y, sx, sy, h), ref, rtol=1e-12)


def test_stein_thin_corrects_a_biased_sample():
    """From a sample of N(0.7, I) for the target N(0, I), Stein thinning's points have a
    smaller kernel Stein discrepancy than i.i.d. subsamples (three seeds), and their mean moves
    toward the target's by more than half the bias."""
    target = dx.energies.gaussian(jnp.zeros(2))
    for s in range(3):
        x = jax.random.normal(jax.random.key(s), (400, 2)) + 0.7
        pts = ds.stein_thin(x, 20, energy=target, bandwidth=1.0)
        iid = x[:20]

        def ksd(p):
            sc = -p
            kp = jax.vmap(lambda a, sa: jax.vmap(lambda b, sb: stein_kernel(a, b, sa, sb, 1.0))(
                p, sc))(p, sc)  # fmt: skip
            return float(jnp.mean(kp))

        assert ksd(pts) < ksd(iid)
        assert np.all(np.abs(np.asarray(pts).mean(0)) < 0.35)
    same = ds.stein_thin(x, 20, scores=-x, bandwidth=1.0)
    np.testing.assert_array_equal(same, pts)
