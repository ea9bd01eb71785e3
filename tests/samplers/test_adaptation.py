"""Adaptation: Stan's window schedule, Welford moments, dual averaging, the energy-error
criterion of unadjusted samplers, pooling across chains, and ChEES."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._adaptation import (
    dual_averaging_init,
    dual_averaging_update,
    regularized_covariance,
    welford_init,
    welford_pool,
    welford_update,
    window_schedule,
)


def test_window_schedule_is_stans():
    slow, ends = window_schedule(1000)
    assert not slow[:75].any() and not slow[950:].any() and slow[75:950].all()
    assert np.flatnonzero(ends).tolist() == [99, 149, 249, 449, 949]
    slow, ends = window_schedule(100)  # short warmup: 15% / 75% / 10%
    assert np.flatnonzero(ends).tolist() == [89] and slow[15:90].all() and not slow[:15].any()
    slow, ends = window_schedule(10)  # too short for windows
    assert not slow.any() and not ends.any()


@pytest.mark.parametrize("dense", [False, True])
def test_welford_and_pooling(dense):
    x = np.random.default_rng(0).normal(size=(3, 50, 4)) * [1.0, 2.0, 0.5, 3.0]
    states = []
    for c in range(3):
        w = welford_init(4, dense, jnp.float32)
        for i in range(50):
            w = welford_update(w, jnp.asarray(x[c, i], jnp.float32))
        states.append(w)
    one = states[0]
    ref = np.cov(x[0].T) if dense else x[0].var(0, ddof=1)
    np.testing.assert_allclose(one.m2 / (one.count - 1), ref, rtol=1e-4, atol=1e-5)
    pooled = welford_pool(jax.tree.map(lambda *a: jnp.stack(a), *states))
    allx = x.reshape(-1, 4)
    ref = np.cov(allx.T) if dense else allx.var(0, ddof=1)
    np.testing.assert_allclose(pooled.m2 / (pooled.count - 1), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(pooled.mean, allx.mean(0), rtol=1e-5, atol=1e-6)
    # Stan's regularization n/(n+5) Σ + 1e-3·5/(n+5)
    reg = np.asarray(regularized_covariance(pooled))
    n = 150.0
    expect = n / (n + 5) * ref + 1e-3 * 5 / (n + 5) * (np.eye(4) if dense else 1.0)
    np.testing.assert_allclose(reg, expect, rtol=1e-4, atol=1e-6)


def test_dual_averaging_finds_the_target():
    # acceptance exp(-ε) with target 0.8 → ε* = -log 0.8
    state = dual_averaging_init(jnp.asarray(1.0))
    for _ in range(300):
        eps = jnp.exp(state.log_step)
        state = dual_averaging_update(state, 0.8 - jnp.exp(-eps))
    assert abs(float(jnp.exp(state.log_step_avg)) + np.log(0.8)) < 0.01


def test_pooled_unadjusted_adaptation_hits_the_energy_variance_target():
    target = de.gaussian(jnp.zeros(10))
    adaptation = ds.WindowAdaptation(pooled=True, target=1e-3)
    r = dx.sample(
        ds.UnderdampedLangevin(step_size=0.05, integrator="UBU"),
        target,
        jnp.zeros(10),
        key=jax.random.key(0),
        num_steps=1000,
        num_warmup=500,
        num_chains=4,
        adaptation=adaptation,
    )
    h = np.asarray(r.step_size)
    assert np.all(h == h[0])  # one step size shared by all chains
    m = np.asarray(r.sampler.metric.inverse_mass)
    assert np.all(m == m[0])  # one metric
    per_dim = float(np.mean(np.asarray(r.info.energy_error) ** 2) / 10)
    assert 0.3e-3 < per_dim < 3e-3, per_dim


def test_chees_adapts_step_size_and_trajectory_length():
    target = de.ill_conditioned_gaussian(5, 10.0)
    r = dx.sample(
        ds.ChEESHMC(step_size=0.05, trajectory_length=0.1),
        target,
        jnp.ones(5),
        key=jax.random.key(0),
        num_steps=300,
        num_warmup=400,
        num_chains=8,
    )
    h = np.asarray(r.step_size)
    length = np.asarray(r.sampler.trajectory_length)
    assert np.all(h == h[0]) and np.all(length == length[0])  # shared across chains
    assert length[0] > 1.0  # grew from 0.1 towards the scale of the (whitened) target
    acc = float(np.mean(r.acceptance_rate))
    assert 0.5 < acc < 0.9, acc  # harmonic-mean target 0.651
