"""PFGM++: the kernel is normalized and its radius is BetaPrime-distributed; at D = 1e6 the
kernel's moments and density and the exact field match the Gaussian (EDM) ones; at finite D
the exact empirical field is the posterior mean of the kernel, its ODE returns training points,
and it minimises the PFGM++ loss; bad input raises."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats

import driftax.diffusion as dd

DATA = np.array([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.0], [0.5, 0.5], [-1.0, 1.5]])


@pytest.mark.parametrize("n,D", [(1, 1.0), (2, 3.0), (3, 8.0)])
def test_kernel_is_normalized(x64, n, D):
    """The radial integral of exp(kernel_log_density) over R^n is 1 (scipy quad)."""
    pfgm = dd.PFGMPP(D=D)
    sigma = 0.7
    y = jnp.zeros(n)
    log_p = jax.jit(lambda r: pfgm.kernel_log_density(jnp.zeros(n).at[0].set(r), y, sigma))
    area = 2 * math.pi ** (n / 2) / math.gamma(n / 2)  # surface of the unit sphere in R^n
    total, _ = scipy.integrate.quad(
        lambda r: area * r ** (n - 1) * math.exp(float(log_p(r))), 0, np.inf, limit=200
    )
    assert abs(total - 1) < 1e-6


def test_radius_is_beta_prime_and_moments_match(x64):
    """|x - y|^2 / r^2 ~ BetaPrime(N/2, D/2) (KS test) and E|x - y|^2 = N sigma^2 D / (D - 2)
    (4 MCSE) at D = 8; the draws are symmetric about y."""
    pfgm, sigma, n_pts = dd.PFGMPP(D=8.0), 1.3, 20_000
    y = jnp.tile(jnp.array([[1.0, -2.0, 0.5]]), (n_pts, 1))
    x = np.asarray(pfgm.perturb(jax.random.key(0), y, sigma))
    d2 = np.sum((x - np.asarray(y)) ** 2, axis=1)
    r2 = float(pfgm.radius(sigma)) ** 2
    assert scipy.stats.kstest(d2 / r2, scipy.stats.betaprime(1.5, 4.0).cdf).pvalue > 1e-3
    want = 3 * sigma**2 * 8 / 6
    assert abs(d2.mean() - want) < 4 * d2.std() / math.sqrt(n_pts)
    mean = (x - np.asarray(y)).mean(0)
    assert np.all(np.abs(mean) < 4 * (x - np.asarray(y)).std(0) / math.sqrt(n_pts))


@pytest.mark.slow
def test_large_D_recovers_the_gaussian_kernel(x64):
    """At D = 1e6: log density within 1e-4 of N(y, sigma^2 I) at points up to 3 sigma away;
    per-coordinate variance sigma^2 and kurtosis 3 within 4 MCSE (sample of 10,000)."""
    pfgm, sigma = dd.PFGMPP(D=1e6), 0.8
    y = jnp.array([0.3, -0.4])
    for x in (y, y + jnp.array([0.5, 0.0]), y + jnp.array([1.5, -1.7])):
        gauss = jax.scipy.stats.norm.logpdf(x, y, sigma).sum()
        assert abs(float(pfgm.kernel_log_density(x, y, sigma) - gauss)) < 1e-4
    n = 10_000
    z = np.asarray(pfgm.perturb(jax.random.key(1), jnp.tile(y, (n, 1)), sigma)) - np.asarray(y)
    var = z.var(0)
    assert np.all(np.abs(var - sigma**2) < 4 * sigma**2 * math.sqrt(2 / n))
    kurt = (z**4).mean(0) / var**2
    assert np.all(np.abs(kurt - 3) < 4 * math.sqrt(96 / n))


@pytest.fixture(scope="module")
def starts():
    return jax.random.normal(jax.random.key(5), (64, 2)) * 3.0


def test_large_D_exact_field_and_solve_match_the_gaussian(x64, starts):
    """At D = 1e6 the exact empirical denoiser equals ClosedFormDiffusion on EDM (1e-4), and a
    Heun solve from the same points ends at the same places (1e-3); at D = 2 it does not."""
    pfgm = dd.PFGMPP(D=1e6, sigma_max=10.0)
    field = dd.PFGMPPEmpiricalField(pfgm, DATA)
    gauss = dd.ClosedFormDiffusion(DATA, pfgm.path)
    far = dd.PFGMPPEmpiricalField(dd.PFGMPP(D=2.0, sigma_max=10.0), DATA)
    x = starts[:8]
    for t in (0.3, 1.0, 4.0):
        got = jax.vmap(field.denoise, (None, 0))(t, x)
        want = jax.vmap(gauss.denoise, (None, 0))(t, x)
        np.testing.assert_allclose(got, want, atol=1e-4)
        other = jax.vmap(far.denoise, (None, 0))(t, x)
        assert float(jnp.max(jnp.abs(other - want))) > 1e-2
    xs = starts * 3.0
    a = dd.solve(dd.Heun(), field.denoise, pfgm.path, xs, num_steps=30, parameterization="data")
    b = dd.solve(dd.Heun(), gauss.denoise, pfgm.path, xs, num_steps=30, parameterization="data")
    np.testing.assert_allclose(a, b, atol=1e-3)


def test_finite_D_field_is_the_kernel_posterior_mean_and_its_ode_memorizes(x64):
    """At D = 4 the denoiser is sum_i y_i p(x | y_i) / sum_i p(x | y_i) from
    `kernel_log_density`; from kernel draws at sigma_max the ODE (Heun and DPM-Solver++(2M),
    in the data parameterization) ends at kernel scale sigma_min around the training points
    (median distance < 3 sigma_min), and the denoised endpoint is a training point (1e-6)."""
    pfgm = dd.PFGMPP(D=4.0, sigma_max=20.0)
    field = dd.PFGMPPEmpiricalField(pfgm, DATA)
    x = jnp.array([0.4, -0.3])
    for t in (0.2, 1.0, 5.0):
        logk = jax.vmap(pfgm.kernel_log_density, (None, 0, None))(x, jnp.asarray(DATA), t)
        want = jax.nn.softmax(logk) @ DATA
        np.testing.assert_allclose(field.denoise(t, x), want, rtol=1e-10)
    x_init = pfgm.prior_sample(jax.random.key(2), (256, 2))
    for solver in (dd.Heun(), dd.DPMSolverPP2M()):
        out = dd.solve(
            solver, field.denoise, pfgm.path, x_init, num_steps=40, parameterization="data"
        )
        dist = jnp.min(jnp.linalg.norm(out[:, None] - DATA[None], axis=-1), axis=1)
        assert float(jnp.median(dist)) < 3 * pfgm.sigma_min, type(solver).__name__
        denoised = jax.vmap(field.denoise, (None, 0))(pfgm.sigma_min, out)
        dist = jnp.min(jnp.linalg.norm(denoised[:, None] - DATA[None], axis=-1), axis=1)
        assert float(jnp.max(dist)) < 1e-6, type(solver).__name__


@pytest.mark.slow
def test_exact_field_minimises_the_pfgm_loss():
    """With the training set as the batch and common random numbers, offsetting the exact
    denoiser by +-delta raises PFGMPPLoss and the symmetric difference quotient is ~0 (MCSE)."""
    pfgm = dd.PFGMPP(D=4.0)
    field = dd.PFGMPPEmpiricalField(pfgm, DATA)
    batch = jnp.tile(jnp.asarray(DATA, jnp.float32), (100, 1))
    loss = dd.PFGMPPLoss(pfgm)

    def at(delta, key):
        model = dd.ParameterizedField(
            field=lambda t, x: field.denoise(t, x) + delta, path=pfgm.path, parameterization="data"
        )
        return loss(model, batch, key=key)

    keys = jax.random.split(jax.random.key(3), 8)
    run = jax.jit(jax.vmap(lambda k: jnp.stack([at(d, k) for d in (0.0, 0.2, -0.2)])))
    l0, lp, lm = np.asarray(run(keys)).T
    assert l0.mean() < lp.mean() and l0.mean() < lm.mean()
    cross = (lp - lm) / (4 * 0.2)  # per key: the mean weighted residual, zero in expectation
    assert abs(cross.mean()) < 4 * cross.std(ddof=1) / math.sqrt(len(cross))


def test_bad_input():
    for bad in (0.0, -3.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="`D`"):
            dd.PFGMPP(D=bad)
    with pytest.raises(TypeError, match="`D`"):
        dd.PFGMPP(D="8")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigma_min"):
        dd.PFGMPP(D=8.0, sigma_min=1.0, sigma_max=0.5)
    with pytest.raises(TypeError, match="pfgm"):
        dd.PFGMPPEmpiricalField(dd.EDM(), DATA)  # type: ignore[arg-type]
    model = dd.ParameterizedField(field=lambda t, x: -x, path=dd.EDM(), parameterization="score")
    with pytest.raises(ValueError, match="score"):
        dd.PFGMPPLoss(dd.PFGMPP(D=8.0))(model, jnp.zeros((4, 2)), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`y`"):
        dd.PFGMPP(D=8.0).perturb(jax.random.key(0), jnp.zeros(3), 1.0)
