"""Adaptive ODE/SDE solves and probability-flow likelihoods (through diffrax)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de

from .helpers import mmd2, mmd_null_band, small_mixture


@pytest.fixture
def exact():
    path = dd.VP()
    return path, de.NoisedGaussianMixture(small_mixture(), path)


def test_likelihood_equals_exact_log_density(x64, exact):
    path, field = exact
    x = field.sample(jax.random.key(0), path.t_data, 6)
    prior = lambda y: field.log_density(path.t_noise, y)
    want = jax.vmap(lambda y: field.log_density(path.t_data, y))(x)
    got = dd.log_likelihood(field.score, path, x, prior_log_density=prior, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.slow
def test_likelihood_is_differentiable(x64, exact):
    path, field = exact
    x = jnp.array([0.3, -1.1])
    prior = lambda y: field.log_density(path.t_noise, y)
    grad = jax.grad(
        lambda y: dd.log_likelihood(
            field.score, path, y[None], prior_log_density=prior, rtol=1e-9, atol=1e-9
        )[0]
    )(x)
    np.testing.assert_allclose(grad, field.score(path.t_data, x), rtol=1e-5)


def test_hutchinson_likelihood_is_unbiased(x64, exact):
    path, field = exact
    n = 48
    x = jnp.tile(jnp.array([[0.5, -0.8]]), (n, 1))
    prior = lambda y: field.log_density(path.t_noise, y)
    est = dd.log_likelihood(
        field.score,
        path,
        x,
        divergence="hutchinson",
        key=jax.random.key(1),
        prior_log_density=prior,
        rtol=1e-6,
        atol=1e-6,
    )
    want = field.log_density(path.t_data, x[0])
    est = np.asarray(est)
    assert est.std() > 0  # the probes differ between examples
    assert abs(est.mean() - want) < 5 * est.std(ddof=1) / np.sqrt(n)


def test_adaptive_ode_matches_fixed_step(x64, exact):
    path, field = exact
    x0 = field.sample(jax.random.key(2), path.t_noise, 8)
    sol = dd.solve_adaptive(field.score, path, x0, rtol=1e-9, atol=1e-9, full_output=True)
    assert bool(jnp.all(sol.successful)) and int(sol.num_steps.min()) > 0
    ref = dd.solve(dd.DPMSolverPP3M(), field.score, path, x0, num_steps=400)
    np.testing.assert_allclose(sol.x, ref, atol=1e-5)
    np.testing.assert_allclose(
        dd.solve_adaptive(field.denoise, path, x0, parameterization="data", rtol=1e-9, atol=1e-9),
        sol.x,
        atol=1e-7,
    )


@pytest.mark.slow
def test_adaptive_sde_samples_match(exact):
    path, field = exact
    n, bw = 400, 1.0
    mean, sd = mmd_null_band(
        lambda k, m: field.sample(k, path.t_data, m), n, bw, key=jax.random.key(3)
    )
    x0 = field.sample(jax.random.key(4), path.t_noise, n)
    x = dd.solve_adaptive(
        field.score, path, x0, sde=True, key=jax.random.key(5), rtol=1e-2, atol=1e-2
    )
    reference = field.sample(jax.random.key(6), path.t_data, n)
    assert float(mmd2(x, reference, bw)) < mean + 5 * sd


def test_adaptive_bad_input(exact):
    path, field = exact
    x0 = jnp.zeros((2, 2))
    with pytest.raises(ValueError, match="key"):
        dd.solve_adaptive(field.score, path, x0, sde=True)
    with pytest.raises(ValueError, match="rtol"):
        dd.solve_adaptive(field.score, path, x0, rtol=-1.0)
    with pytest.raises(ValueError, match="divergence"):
        dd.log_likelihood(field.score, path, x0, divergence="trace")
    with pytest.raises(ValueError, match="key"):
        dd.log_likelihood(field.score, path, x0, divergence="hutchinson")
