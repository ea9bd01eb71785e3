"""Resampling schemes: unbiased offspring counts, their variance, zero weights, bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.samplers as ds
from driftax.samplers._resampling import RESAMPLING_SCHEMES, offspring_counts

N = 16
REPS = 4000


@pytest.fixture(scope="module")
def weights():
    w = np.random.default_rng(0).gamma(0.5, size=N)
    w[3] = 0.0  # a zero weight must never be drawn
    return w / w.sum()


@pytest.fixture(scope="module")
def counts(weights):
    log_w = jnp.log(jnp.asarray(weights))
    keys = jax.random.split(jax.random.key(1), REPS)

    def draw(scheme):
        fn = jax.jit(
            jax.vmap(lambda k: offspring_counts(ds.resample(log_w, key=k, scheme=scheme), N))
        )
        return np.asarray(fn(keys))

    return {s: draw(s) for s in RESAMPLING_SCHEMES}


@pytest.mark.parametrize("scheme", RESAMPLING_SCHEMES)
def test_offspring_counts_unbiased(counts, weights, scheme):
    c = counts[scheme]
    assert np.all(c.sum(axis=1) == N)
    expected = N * weights
    # the exact multinomial variance N W (1 - W) bounds every scheme's variance
    se = np.sqrt(N * weights * (1 - weights) / REPS)
    err = np.abs(c.mean(axis=0) - expected)
    assert np.all(err <= 5 * se + 1e-12), (err, se)
    assert np.all(c[:, 3] == 0)


def test_multinomial_variance(counts, weights):
    var = counts["multinomial"].var(axis=0, ddof=1)
    expected = N * weights * (1 - weights)
    # chi-square-ish tolerance for a sample variance from REPS draws
    assert np.allclose(var, expected, rtol=6 / np.sqrt(REPS) * 2, atol=1e-3)


def test_systematic_counts_are_floor_or_ceil(counts, weights):
    c = counts["systematic"]
    nw = N * weights
    assert np.all((c >= np.floor(nw) - 1e-9) & (c <= np.ceil(nw) + 1e-9))


@pytest.mark.parametrize("scheme", RESAMPLING_SCHEMES)
def test_degenerate_and_nan_weights(scheme):
    log_w = jnp.array([-jnp.inf, 0.0, jnp.nan, -jnp.inf])
    idx = ds.resample(log_w, key=jax.random.key(0), scheme=scheme, num_samples=50)
    assert idx.shape == (50,) and np.all(np.asarray(idx) == 1)


def test_bad_input():
    with pytest.raises(ValueError, match="scheme"):
        ds.resample(jnp.zeros(3), key=jax.random.key(0), scheme="residual")
    with pytest.raises(ValueError, match="log_weights"):
        ds.resample(jnp.zeros((2, 3)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="num_samples"):
        ds.resample(jnp.zeros(3), key=jax.random.key(0), num_samples=0)


@pytest.mark.parametrize("scheme", RESAMPLING_SCHEMES)
def test_traced_inside_a_scan(scheme):
    """The one resampler works on traced log-weights inside a compiled loop (as SMC and the
    Feynman-Kac samplers use it): a particle of weight 1 takes over the population."""

    def body(x, log_w):
        idx = ds.resample(log_w, key=jax.random.key(0), scheme=scheme)
        return x[idx], idx

    log_ws = jnp.log(jnp.eye(N)[jnp.array([5, 2])])  # step 1: all weight on 5; step 2: on 2 (now a 5)
    x, idxs = jax.jit(lambda lw: jax.lax.scan(body, jnp.arange(N), lw))(log_ws)
    assert np.all(np.asarray(idxs[0]) == 5) and np.all(np.asarray(x) == 5)


def test_importance_ess_under_jit_and_vmap():
    """The one importance ESS (driftax.energies.importance_ess) is usable inside jit / vmap."""
    import driftax.energies as de

    log_w = jnp.log(jnp.array([[1.0, 1.0, 1.0, 1.0], [1.0, 0.0, 0.0, 0.0], [2.0, 1.0, 1.0, 0.0]]))
    ess = jax.jit(jax.vmap(lambda lw: de.importance_ess(lw).ess))(log_w)
    np.testing.assert_allclose(np.asarray(ess), [4.0, 1.0, 16.0 / 6.0], rtol=1e-6)
