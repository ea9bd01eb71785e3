"""Data energies: exact log density, unbiased minibatch estimates (with and without replacement,
with a control variate), and clear errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
from driftax.energies import AbstractDataEnergy

NUM_DRAWS = 4000


@pytest.fixture(scope="module")
def regression():
    design, targets = dx.energies.simulate_linear_regression(jax.random.key(0), 60, 3)
    return dx.energies.linear_regression(design, targets, noise_scale=0.7, prior_scale=2.0)


def _estimates(energy, x, batch_size, replace, with_variance=False):
    keys = jax.random.split(jax.random.key(3), NUM_DRAWS)
    f = jax.jit(
        jax.vmap(
            lambda k: energy.minibatch_estimate(
                x, key=k, batch_size=batch_size, replace=replace, with_variance=with_variance
            )
        )
    )
    return f(keys)


def test_log_density_is_prior_plus_sum(regression):
    """The vectorized log density equals the generic prior + per-datum sum, and its score."""
    x = jnp.array([0.3, -0.2, 0.5])
    generic = AbstractDataEnergy.log_density(regression, x)
    np.testing.assert_allclose(regression.log_density(x), generic, rtol=1e-6)
    assert regression.num_data == 60


@pytest.mark.parametrize("replace", [False, True])
def test_minibatch_estimate_is_unbiased(regression, replace):
    """The mean of many minibatch estimates equals the exact value and score within 4 MCSE, and
    the reported score variance matches the spread of the estimates."""
    x = jnp.array([0.3, -0.2, 0.5])
    est = _estimates(regression, x, 8, replace, with_variance=True)
    value, score = regression.value_and_score(x)
    vals, scores = np.asarray(est.value, np.float64), np.asarray(est.score, np.float64)
    assert abs(vals.mean() - float(value)) < 4 * vals.std() / np.sqrt(NUM_DRAWS)
    se = scores.std(0) / np.sqrt(NUM_DRAWS)
    assert np.all(np.abs(scores.mean(0) - np.asarray(score)) < 4 * se)
    # the per-batch variance estimate is unbiased for the estimator's variance (±10% at 4000)
    np.testing.assert_allclose(np.asarray(est.score_variance).mean(0), scores.var(0), rtol=0.1)


def test_full_batch_without_replacement_is_exact(regression):
    x = jnp.array([0.3, -0.2, 0.5])
    est = regression.minibatch_estimate(x, key=jax.random.key(0), batch_size=60)
    value, score = regression.value_and_score(x)
    np.testing.assert_allclose(est.value, value, rtol=1e-5)
    np.testing.assert_allclose(est.score, score, rtol=1e-4, atol=1e-4)


def test_control_variate_is_unbiased_with_lower_variance(regression):
    """Around the reference point the control-variate estimate stays unbiased and its variance
    falls by orders of magnitude."""
    ref = regression.mean
    cv_energy = regression.with_control_variate(ref)
    assert cv_energy.cv is not None and regression.cv is None
    x = ref + 0.05  # posterior sd ~0.09
    plain = _estimates(regression, x, 8, False)
    cv = _estimates(cv_energy, x, 8, False)
    score = np.asarray(regression.score(x))
    s = np.asarray(cv.score, np.float64)
    assert np.all(np.abs(s.mean(0) - score) < 4 * s.std(0) / np.sqrt(NUM_DRAWS) + 1e-4)
    # half a posterior standard deviation from the reference point: ~100x less variance
    assert np.all(s.var(0) < 0.05 * np.asarray(plain.score, np.float64).var(0))
    # exact at the reference point itself (every difference vanishes)
    at_ref = cv_energy.minibatch_estimate(ref, key=jax.random.key(1), batch_size=8)
    np.testing.assert_allclose(at_ref.score, regression.score(ref), atol=1e-3)
    assert cv_energy.without_control_variate().cv is None
    assert cv_energy.data_grads_per_estimate(8) == 16


def test_pytree_data_energy():
    """A data energy over a dict of arrays (pytree data) with a user likelihood."""
    key = jax.random.key(0)
    data = {"x": jax.random.normal(key, (40, 2)), "y": jnp.arange(40.0) % 2}

    def loglik(w, d):
        z = d["x"] @ w
        return d["y"] * z - jax.nn.softplus(z)

    energy = dx.energies.data_energy(loglik, data, lambda w: -0.5 * jnp.sum(w**2), (2,))
    w = jnp.array([0.2, -0.1])
    manual = -0.5 * jnp.sum(w**2) + jnp.sum(jax.vmap(lambda d: loglik(w, d))(data))
    np.testing.assert_allclose(energy.log_density(w), manual, rtol=1e-6)
    est = energy.minibatch_estimate(w, key=key, batch_size=40)
    np.testing.assert_allclose(est.value, manual, rtol=1e-5)


def test_logistic_regression_is_a_data_energy():
    """The shipped logistic regression is a data energy whose per-datum sum is its log
    density (which is unchanged)."""
    target = dx.energies.logistic_regression()
    assert isinstance(target, AbstractDataEnergy) and target.num_data == 569
    x = jnp.linspace(-0.2, 0.2, 31)
    np.testing.assert_allclose(
        AbstractDataEnergy.log_density(target, x), target.log_density(x), rtol=1e-5
    )


def test_same_key_same_estimate(regression):
    x = jnp.zeros(3)
    a = regression.minibatch_estimate(x, key=jax.random.key(5), batch_size=7)
    b = regression.minibatch_estimate(x, key=jax.random.key(5), batch_size=7)
    np.testing.assert_array_equal(a.score, b.score)


def test_bad_input(regression):
    x = jnp.zeros(3)
    for bad in (0, 61, -1):
        with pytest.raises(ValueError, match="batch_size"):
            regression.minibatch_estimate(x, key=jax.random.key(0), batch_size=bad)
    with pytest.raises(ValueError, match="batch_size"):
        regression.minibatch_estimate(x, key=jax.random.key(0), batch_size=2.5)
    with pytest.raises(ValueError, match="leading dimension"):
        dx.energies.data_energy(
            lambda w, d: 0.0, {"a": jnp.zeros((5, 2)), "b": jnp.zeros(4)}, lambda w: 0.0, (2,)
        )
    with pytest.raises(ValueError, match="leading data axis"):
        dx.energies.data_energy(lambda w, d: 0.0, jnp.float32(1.0), lambda w: 0.0, (2,))
    with pytest.raises(ValueError, match="leading dimension"):
        dx.energies.linear_regression(jnp.zeros((5, 2)), jnp.zeros(4))
    with pytest.raises(TypeError, match="log_likelihood"):
        dx.energies.data_energy(3, jnp.zeros(4), lambda w: 0.0, (1,))
    with pytest.raises(ValueError, match="point"):
        regression.with_control_variate(jnp.zeros(2))
