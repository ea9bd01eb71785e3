"""Critically-damped Langevin diffusion and the linear drift -(D + Q) grad U_ref: the forward
(x, v) marginal against Van Loan's exponential, the stationary law, critical damping, and the
symmetric splitting sampler on the exact Gaussian score reaching the data law (MCSE)."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import driftax.diffusion as dd


def _van_loan(f, ll, t):
    """exp(tF) and int_0^t exp(sF) LL exp(sF)^T ds by Van Loan's block exponential."""
    k = f.shape[0]
    e = scipy.linalg.expm(np.block([[-f, ll], [np.zeros((k, k)), f.T]]) * t)
    phi = e[k:, k:].T
    return phi, phi @ e[:k, k:]


@pytest.mark.parametrize("t", [0.05, 0.3, 1.0])
def test_forward_marginal_matches_van_loan(x64, t):
    """Mean E(t) (x0, 0) and covariance E Sigma_0 E^T + int E 2 beta D E^T equal the closed form,
    for CLD and for a 3-block linear drift with a general D, Q, P."""
    cld = dd.critically_damped()
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 3))
    q = a - a.T
    d = np.diag([0.0, 0.5, 1.2])
    p = np.array([[1.0, 0.2, 0.0], [0.2, 2.0, 0.3], [0.0, 0.3, 0.8]])
    general = dd.LinearDiffusion(d, q, p, np.diag([0.3, 0.1]), beta=1.5)
    for proc in (cld, general):
        f = np.asarray(proc.drift_matrix)
        phi, noise = _van_loan(f, 2 * proc.beta * np.asarray(proc.D), t)
        s0 = np.asarray(proc.initial_covariance(0.7))
        mean, cov = proc.marginal(t, 1.3, 0.7)
        np.testing.assert_allclose(mean, phi[:, 0] * 1.3, rtol=1e-8, atol=1e-12)
        # Van Loan's block exponential carries e^{+-beta t |lambda|} and loses ~4e-8 absolute to
        # cancellation at t = 1 (its result is not even symmetric there): atol 1e-7.
        np.testing.assert_allclose(cov, phi @ s0 @ phi.T + noise, rtol=1e-8, atol=1e-7)
    # CLD's explicit form: D = diag(0, Gamma), Q = [[0, -1], [1, 0]], P = diag(1, 1/M)
    np.testing.assert_allclose(cld.drift_matrix, 4.0 * np.array([[0.0, 4.0], [-1.0, -4.0]]))


def test_stationary_law_and_critical_damping(x64):
    """Long times reach N(0, P^-1) = N(0, 1) x N(0, M) (Lyapunov equation holds); CLD's drift
    matrix has a double eigenvalue -beta Gamma / (2 M) (critical damping)."""
    cld = dd.critically_damped(mass=0.25)
    f, s_inf = np.asarray(cld.drift_matrix), np.asarray(cld.stationary_covariance)
    np.testing.assert_allclose(f @ s_inf + s_inf @ f.T + 2 * 4.0 * np.asarray(cld.D), 0, atol=1e-12)
    _, cov = cld.marginal(20.0, 3.0, 0.5)
    np.testing.assert_allclose(cov, np.diag([1.0, 0.25]), atol=1e-10)
    eig = np.linalg.eigvals(f)
    np.testing.assert_allclose(eig, [-8.0, -8.0], atol=1e-5)
    assert np.linalg.matrix_rank(f + 8.0 * np.eye(2)) == 1  # a Jordan block, not diagonalizable


def test_perturb_draws_the_marginal():
    """`perturb` draws have the closed-form block mean and covariance (4 MCSE)."""
    cld = dd.critically_damped()
    n, t = 20_000, 0.2
    x0 = jnp.full((n, 1), 1.5)
    u = np.asarray(cld.perturb(jax.random.key(0), x0, t))[:, 0, :]
    mean, cov = (np.asarray(a) for a in cld.marginal(t, 1.5, 0.0))
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(u.mean(0) - mean) < 4 * sd / math.sqrt(n))
    emp = np.cov(u, rowvar=False)
    assert np.all(np.abs(emp - cov) < 4 * np.sqrt((cov**2 + np.outer(sd**2, sd**2)) / n))


@pytest.mark.slow
def test_sscs_on_the_exact_gaussian_score_reaches_the_data_law():
    """From the stationary prior, SSCS (1000 steps) with the exact score of N(mu, 0.3^2 I) data
    ends with x of mean mu and variance 0.09 (the exact marginal at t_data) within 4 MCSE
    (n = 2000; the splitting bias at 1000 steps, ~1e-3 in the variance, is below that); the
    same key gives the same draws and a second call does not retrace."""
    cld = dd.critically_damped()
    mu, s2, n = jnp.array([1.5, -0.5]), 0.09, 2000
    exact = cld.gaussian_score(mu, s2)
    traces = []

    def score(t, u):
        traces.append(1)  # runs only while tracing
        return exact(t, u)

    u0 = cld.prior_sample(jax.random.key(0), (n, 2))
    u = dd.solve_cld(cld, score, u0, num_steps=1000, key=jax.random.key(1))
    x = np.asarray(u[..., 0])
    mean, cov = cld.marginal(cld.t_data, 1.0, s2)
    want_mean = np.asarray(mu) * float(mean[0])
    var = float(cov[0, 0])
    assert np.all(np.abs(x.mean(0) - want_mean) < 4 * math.sqrt(var / n))
    assert np.all(np.abs(x.var(0) - var) < 4 * var * math.sqrt(2 / n))
    n_traces = len(traces)
    again = dd.solve_cld(cld, score, u0, num_steps=1000, key=jax.random.key(1))
    np.testing.assert_array_equal(u, again)
    assert len(traces) == n_traces  # the second call with the same shapes does not retrace


def test_bad_input():
    eye = np.eye(2)
    with pytest.raises(ValueError, match="`D`"):
        dd.LinearDiffusion(-eye, np.zeros((2, 2)), eye, [[1.0]])
    with pytest.raises(ValueError, match="`Q`"):
        dd.LinearDiffusion(eye, eye, eye, [[1.0]])
    with pytest.raises(ValueError, match="`P`"):
        dd.LinearDiffusion(eye, np.zeros((2, 2)), -eye, [[1.0]])
    with pytest.raises(ValueError, match="`beta`"):
        dd.LinearDiffusion(eye, np.zeros((2, 2)), eye, [[1.0]], beta=0.0)
    with pytest.raises(ValueError, match="`mass`"):
        dd.critically_damped(mass=0.0)
    with pytest.raises(ValueError, match="`gamma`"):
        dd.critically_damped(gamma=-1.0)
    cld = dd.critically_damped()
    with pytest.raises(ValueError, match="`u_init`"):
        dd.solve_cld(cld, lambda t, u: u, jnp.zeros((4, 2)), num_steps=3, key=jax.random.key(0))
    with pytest.raises(ValueError, match="`num_steps`"):
        dd.solve_cld(cld, lambda t, u: u, jnp.zeros((4, 2, 2)), num_steps=0, key=jax.random.key(0))
    with pytest.raises(TypeError, match="`process`"):
        dd.solve_cld(
            dd.VP(), lambda t, u: u, jnp.zeros((4, 2, 2)), num_steps=3, key=jax.random.key(0)
        )
