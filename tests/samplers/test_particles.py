"""Ensembles and interacting particles: ALDI, EKI, SVGD, MMD flows, mean-field Langevin, the
ensemble score sampler (statistical checks with Monte Carlo standard errors, exact identities,
bad input)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.samplers as ds
from driftax.samplers._particles import _base as pbase

A = jnp.array([[1.0, 0.5], [0.0, 1.0], [1.0, -1.0]])
Y = jnp.array([1.0, 0.0, 0.5])
NOISE = 0.1


def _problem():
    return ds.InverseProblem(
        lambda x: A @ x, Y, noise_cov=NOISE, prior_mean=jnp.zeros(2), prior_cov=1.0
    )


def _posterior():
    """The exact Gaussian posterior of the linear problem."""
    a, y = np.asarray(A, float), np.asarray(Y, float)
    cov = np.linalg.inv(a.T @ a / NOISE + np.eye(2))
    return cov @ (a.T @ y / NOISE), cov


@pytest.fixture(scope="module")
def aldi_runs():
    """ALDI (score and gradient-free) on the linear problem: draws `(N, T, 2)` per variant."""
    problem = _problem()
    x0 = problem.sample_prior(jax.random.key(3), 16)
    out = {}
    for free in (False, True):
        res = ds.run_particles(
            ds.ALDI(step_size=0.05, gradient_free=free), problem, x0,
            key=jax.random.key(4), num_warmup=300, num_steps=1600, thin=2,
        )  # fmt: skip
        out[free] = res
    return out


@pytest.mark.parametrize("free", [False, True], ids=["score", "gradient_free"])
def test_aldi_recovers_gaussian_posterior(aldi_runs, free):
    """Mean within 4 MCSE; variance within 4 MCSE plus the Euler–Maruyama bias (at most a
    relative `step_size / 2 / (1 - step_size / 2)` for the preconditioned OU process)."""
    res = aldi_runs[free]
    mean, cov = _posterior()
    x = np.asarray(res.samples, float)
    est = x.mean(axis=(0, 1))
    se = np.asarray(ds.mcse(x))
    assert np.all(np.abs(est - mean) < 4 * se), (est, mean, se)
    sq = (x - est) ** 2
    var_est = sq.mean(axis=(0, 1))
    se_var = np.asarray(ds.mcse(sq))
    h = 0.05
    bias = np.diag(cov) * (h / 2) / (1 - h / 2)
    assert np.all(np.abs(var_est - np.diag(cov)) < 4 * se_var + bias), (var_est, cov, se_var)
    expected = 0 if free else 16 * (300 + 1600)
    assert int(res.num_grad_evals) == expected
    assert res.num_divergent == 0


def test_aldi_too_few_particles():
    target = dx.energies.gaussian(jnp.zeros(3))
    with pytest.raises(ValueError, match="num_particles"):
        ds.run_particles(ds.ALDI(step_size=0.1), target, jnp.ones((3, 3)),
                         key=jax.random.key(0), num_steps=1)  # fmt: skip


def test_eki_recovers_gaussian_posterior():
    """Ten independent EKI ensembles (N = 300, ten tempering steps): the mean and variance over
    replicates lie within 4 standard errors of the exact posterior (the variance allowing the
    O(1/N) under-dispersion of the stochastic ensemble Kalman update, `2 d / N` relative)."""
    problem = _problem()
    mean, cov = _posterior()
    means, variances = [], []
    for seed in range(10):
        x0 = problem.sample_prior(jax.random.key(100 + seed), 300)
        res = ds.run_particles(ds.EKI(step_size=0.1), problem, x0,
                               key=jax.random.key(seed), num_steps=10, store_samples=False)  # fmt: skip
        p = np.asarray(res.particles, float)
        means.append(p.mean(axis=0))
        variances.append(p.var(axis=0, ddof=1))
        assert int(res.num_grad_evals) == 0
    means, variances = np.array(means), np.array(variances)
    se_m = means.std(axis=0, ddof=1) / np.sqrt(10)
    se_v = variances.std(axis=0, ddof=1) / np.sqrt(10)
    assert np.all(np.abs(means.mean(0) - mean) < 4 * se_m), (means.mean(0), mean, se_m)
    allowance = np.diag(cov) * 2 * 2 / 300
    assert np.all(np.abs(variances.mean(0) - np.diag(cov)) < 4 * se_v + allowance)


def test_eki_bad_input():
    target = dx.energies.gaussian(jnp.zeros(2))
    with pytest.raises(TypeError, match="InverseProblem"):
        ds.run_particles(ds.EKI(step_size=0.5), target, jnp.ones((4, 2)) * jnp.arange(4)[:, None],
                         key=jax.random.key(0), num_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="step_size"):
        ds.EKI(step_size=1.5)
    with pytest.raises(ValueError, match="observations"):
        ds.InverseProblem(lambda x: A @ x, jnp.zeros(2), noise_cov=1.0,
                          prior_mean=jnp.zeros(2), prior_cov=1.0)  # fmt: skip
    with pytest.raises(ValueError, match="noise_cov"):
        ds.InverseProblem(lambda x: A @ x, Y, noise_cov=-1.0, prior_mean=jnp.zeros(2),
                          prior_cov=1.0)  # fmt: skip


def test_inverse_problem_log_density_is_the_posterior(x64):
    """The log density differs from the exact Gaussian posterior's by a constant."""
    problem = _problem()
    mean, cov = _posterior()
    exact = dx.energies.gaussian(jnp.asarray(mean), jnp.asarray(cov))
    xs = jax.random.normal(jax.random.key(0), (5, 2), jnp.float64)
    diff = jax.vmap(problem.log_density)(xs) - jax.vmap(exact.log_density)(xs)
    np.testing.assert_allclose(diff, diff[0], rtol=0, atol=1e-10)


@pytest.fixture(scope="module")
def svgd_run():
    target = dx.energies.gaussian(jnp.array([1.0, -1.0]), jnp.array([[1.0, 0.6], [0.6, 1.0]]))
    x0 = jax.random.normal(jax.random.key(1), (100, 2)) * 0.5 - 3.0
    res = ds.run_particles(ds.SVGD(step_size=0.3), target, x0, key=jax.random.key(0),
                           num_steps=400, thin=100)  # fmt: skip
    return target, x0, res


def test_svgd_moves_particles_to_target_moments(svgd_run):
    """From particles centred at (-3, -3), SVGD's mean and covariance match the target at least
    as well as 100 i.i.d. draws would (2 standard errors of the i.i.d. estimates)."""
    _, _, res = svgd_run
    p = np.asarray(res.particles, float)
    n = p.shape[0]
    assert np.all(np.abs(p.mean(0) - np.array([1.0, -1.0])) < 2 / np.sqrt(n))
    cov = np.cov(p.T)
    assert np.all(np.abs(np.diag(cov) - 1.0) < 2 * np.sqrt(2 / n))
    assert abs(cov[0, 1] - 0.6) < 2 * np.sqrt((1 + 0.6**2) / n)
    assert res.samples.shape == (100, 4, 2)
    assert int(res.num_grad_evals) == 100 * 400


def test_svgd_direction_is_the_stein_operator(x64):
    """`φ` equals `1/N Σ_j [k(x_j, x) s_j + ∇_{x_j} k(x_j, x)]` written with jax.grad."""
    x = jax.random.normal(jax.random.key(2), (7, 3), jnp.float64)
    s = -x + 0.3
    svgd = ds.SVGD(step_size=0.1, bandwidth=0.8)

    def k(a, b):
        return jnp.exp(-0.5 * jnp.sum((a - b) ** 2) / 0.8**2)

    def phi(xi):
        terms = jax.vmap(lambda xj, sj: k(xj, xi) * sj + jax.grad(k)(xj, xi))(x, s)
        return terms.mean(0)

    np.testing.assert_allclose(svgd.direction(x, s), jax.vmap(phi)(x), rtol=1e-12, atol=1e-12)


def test_svgd_bad_input():
    with pytest.raises(ValueError, match="bandwidth"):
        ds.SVGD(step_size=0.1, bandwidth=0.0)
    with pytest.raises(ValueError, match="bandwidth"):
        ds.SVGD(step_size=0.1, bandwidth=-1.0)
    with pytest.raises(ValueError, match="step_size"):
        ds.SVGD(step_size=0.0)
    target = dx.energies.gaussian(jnp.zeros(2))
    with pytest.raises(ValueError, match="x0"):
        ds.run_particles(ds.SVGD(step_size=0.1), target, jnp.ones((4, 3)),
                         key=jax.random.key(0), num_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="x0"):
        ds.run_particles(ds.SVGD(step_size=0.1), target, jnp.full((4, 2), jnp.nan),
                         key=jax.random.key(0), num_steps=1)  # fmt: skip
    with pytest.raises(ValueError, match="thin"):
        ds.run_particles(ds.SVGD(step_size=0.1), target, jnp.ones((4, 2)),
                         key=jax.random.key(0), num_steps=3, thin=2)  # fmt: skip


def test_run_particles_deterministic_and_compiled_once(svgd_run):
    target, x0, _ = svgd_run
    method = ds.ALDI(step_size=0.05)
    kw = dict(key=jax.random.key(7), num_steps=5)
    a = ds.run_particles(method, target, x0[:8], **kw)
    before = eqx.debug.get_num_traces(pbase._run_traced)
    b = ds.run_particles(method, target, x0[:8], **kw)
    assert eqx.debug.get_num_traces(pbase._run_traced) == before
    np.testing.assert_array_equal(a.samples, b.samples)
    c = ds.run_particles(ds.ALDI(step_size=0.07), target, x0[:8], **kw)  # new value, same trace
    assert eqx.debug.get_num_traces(pbase._run_traced) == before
    assert not np.array_equal(a.samples, c.samples)


# ---------------------------------------------------------------------------------------------
# MMD flows with the Riesz kernel
# ---------------------------------------------------------------------------------------------


def test_sorting_gradient_equals_pairwise(x64):
    """In 1-D the sorting gradient is the pairwise gradient to round-off; in 3-D every slice is
    the 1-D case on projections, and the sliced average approaches the exact 3-D gradient."""
    from driftax.samplers._particles._mmd_flow import (
        riesz_gradient,
        riesz_gradient_1d,
        sliced_constant,
    )

    kx, ky = jax.random.split(jax.random.key(0))
    x = jax.random.normal(kx, (300, 3), jnp.float64)
    y = jax.random.normal(ky, (200, 3), jnp.float64) + 0.5
    xi = jnp.array([0.6, -0.8, 0.0])
    exact_1d = riesz_gradient((x @ xi)[:, None], (y @ xi)[:, None])[:, 0]
    np.testing.assert_allclose(riesz_gradient_1d(x @ xi, y @ xi), exact_1d, rtol=0, atol=1e-14)
    np.testing.assert_allclose(
        [sliced_constant(1), sliced_constant(2), sliced_constant(3)], [1.0, np.pi / 2, 2.0]
    )
    exact = riesz_gradient(x, y)
    g = ds.sliced_mmd_gradient(x, y, key=jax.random.key(1), num_projections=4096)
    assert float(jnp.linalg.norm(g - exact) / jnp.linalg.norm(exact)) < 0.05


def test_mmd_flow_moves_particles_to_target_moments():
    """The flow's particles match the target sample: mean within 5% of a standard deviation,
    standard deviations within 3%, and an energy distance below that of a fresh i.i.d. sample
    of the same size."""
    scale = jnp.array([1.0, 0.5])
    y = jax.random.normal(jax.random.key(0), (500, 2)) * scale + 2.0
    x0 = jax.random.normal(jax.random.key(1), (500, 2))
    x = ds.mmd_flow(x0, y, key=jax.random.key(2), num_steps=400, step_size=0.5, momentum=0.5,
                    num_projections=16)  # fmt: skip
    sd = np.asarray(y.std(0))
    assert np.all(np.abs(np.asarray(x.mean(0) - y.mean(0))) < 0.05 * sd)
    assert np.all(np.abs(np.asarray(x.std(0)) / sd - 1) < 0.03)
    fresh = jax.random.normal(jax.random.key(9), (500, 2)) * scale + 2.0
    assert dx.energies.energy_distance(x, y) < dx.energies.energy_distance(fresh, y)


@pytest.mark.slow
def test_conditional_mmd_flow_samples_the_posterior():
    """Joint draws of x ~ N(0, 1), y = 2x + N(0, 0.25): particles (z_i, y_i) with the target's
    y_i move only in x. The particles' regression of x on y (posterior mean slope 2/4.25) and
    residual variance (posterior variance 0.25/4.25) match the target sample's within 2%; the
    y coordinates never move."""
    kx, ke, kz = jax.random.split(jax.random.key(5), 3)
    xs = jax.random.normal(kx, (500,))
    ys = 2 * xs + 0.5 * jax.random.normal(ke, (500,))
    p0 = jnp.stack([jax.random.normal(kz, (500,)), ys], 1)
    p = ds.mmd_flow(p0, jnp.stack([xs, ys], 1), key=jax.random.key(3), num_steps=600,
                    step_size=0.5, momentum=0.9, num_projections=16, conditional_dim=1)  # fmt: skip
    np.testing.assert_array_equal(p[:, 1], ys)

    def fit(x, y):
        b = np.polyfit(np.asarray(y, float), np.asarray(x, float), 1)
        return b[0], float(np.var(np.asarray(x) - np.polyval(b, np.asarray(y))))

    slope, resvar = fit(p[:, 0], ys)
    slope_t, resvar_t = fit(xs, ys)
    assert abs(slope - slope_t) < 0.02 * slope_t and abs(resvar / resvar_t - 1) < 0.02
    assert abs(slope - 2 / 4.25) < 0.05  # and both near the exact posterior (500 draws)


def test_mmd_flow_bad_input():
    x = jnp.ones((10, 2)) * jnp.arange(10)[:, None]
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="conditional_dim"):
        ds.mmd_flow(x, x, key=key, num_steps=1, conditional_dim=2)
    with pytest.raises(ValueError, match="momentum"):
        ds.mmd_flow(x, x, key=key, num_steps=1, momentum=1.0)
    with pytest.raises(ValueError, match="step_size"):
        ds.mmd_flow(x, x, key=key, num_steps=1, step_size=0.0)
    with pytest.raises(ValueError, match="num_projections"):
        ds.sliced_mmd_gradient(x, x, key=key, num_projections=0)
    with pytest.raises(ValueError, match="dimension"):
        ds.mmd_flow(x, jnp.ones((5, 3)), key=key, num_steps=1)


def test_mmd_flow_deterministic_and_compiled_once():
    """Same key, same particles; a new step size or key reuses the compiled flow."""
    from driftax.samplers._particles import _mmd_flow

    x0 = jax.random.normal(jax.random.key(0), (32, 2))
    y = jax.random.normal(jax.random.key(1), (40, 2)) + 1.0
    kw = dict(num_steps=3, num_projections=4)
    a = ds.mmd_flow(x0, y, key=jax.random.key(2), step_size=0.5, **kw)
    size = _mmd_flow._flow._cache_size()
    b = ds.mmd_flow(x0, y, key=jax.random.key(2), step_size=0.5, **kw)
    c = ds.mmd_flow(x0, y, key=jax.random.key(3), step_size=0.3, noise_level=0.1, **kw)
    assert _mmd_flow._flow._cache_size() == size
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert bool(jnp.all(jnp.isfinite(c)))


# ---------------------------------------------------------------------------------------------
# The gradient-free reverse-diffusion sampler with the ensemble score
# ---------------------------------------------------------------------------------------------


def test_ensemble_score_is_exact_for_a_gaussian_with_many_proposals(x64):
    """For π = N(m, s² I) the noised score is `(α m - x) / (α² s² + σ²)`; with 20 000 pooled
    proposals the importance-sampled estimate is within 2% of it (relative norm)."""
    from driftax.samplers._particles._ensemble_score import ensemble_score

    m, s2, t = jnp.array([1.0, -0.5]), 0.5, 0.7
    target = dx.energies.gaussian(m, s2 * jnp.eye(2, dtype=jnp.float64))
    alpha, var = np.exp(-t), 1 - np.exp(-2 * t)
    x = jax.random.normal(jax.random.key(0), (50, 2), jnp.float64) + alpha * m
    centres = x[jax.random.randint(jax.random.key(1), (20000,), 0, 50)] / alpha
    props = centres + np.sqrt(var) / alpha * jax.random.normal(jax.random.key(2), (20000, 2))
    got = ensemble_score(target, x, t, props)
    exact = (alpha * m - x) / (alpha**2 * s2 + var)
    assert float(jnp.linalg.norm(got - exact) / jnp.linalg.norm(exact)) < 0.02


def test_ensemble_score_sample_finds_both_modes_with_their_weights():
    """A two-mode mixture (weights 0.3 / 0.7 at x = ∓2.5): the mode weights of 2000 particles
    are within 4 binomial standard errors plus 0.02 (the finite-proposal and time-step bias),
    and the mean of the right mode within 0.1 of 2.5; the same key gives the same particles."""
    target = dx.energies.gaussian_mixture(
        jnp.array([0.3, 0.7]), jnp.array([[-2.5, 0.0], [2.5, 0.0]]), 0.25
    )
    kw = dict(key=jax.random.key(0), num_particles=2000, num_steps=100, num_proposals=1024)
    x = np.asarray(ds.ensemble_score_sample(target, **kw))
    right = x[:, 0] > 0
    se = np.sqrt(0.3 * 0.7 / 2000)
    assert abs(right.mean() - 0.7) < 4 * se + 0.02, right.mean()
    assert abs(x[right, 0].mean() - 2.5) < 0.1
    np.testing.assert_array_equal(x, ds.ensemble_score_sample(target, **kw))


def test_ensemble_score_sample_bad_input():
    target = dx.energies.gaussian(jnp.zeros(2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="t_min"):
        ds.ensemble_score_sample(target, key=key, num_particles=4, t_min=2.0, t_max=1.0)
    with pytest.raises(ValueError, match="num_proposals"):
        ds.ensemble_score_sample(target, key=key, num_particles=4, num_proposals=0)
    with pytest.raises(ValueError, match="t_max"):
        ds.ensemble_score_sample(target, key=key, num_particles=4, t_max=-1.0)
    with pytest.raises(TypeError, match="energy"):
        ds.ensemble_score_sample(lambda x: x, key=key, num_particles=4)


# ---------------------------------------------------------------------------------------------
# Mean-field underdamped Langevin for F(μ)
# ---------------------------------------------------------------------------------------------


def test_mean_field_langevin_ksd_reaches_the_target():
    """KSD functional, 100 particles started at N(2, 0.25 I) for N(0, I): the mean is within
    2 standard errors of an i.i.d. sample's (2 / √100 per coordinate), the standard deviations
    within 10%, and the particles' KSD² is below a tenth of a fresh i.i.d. sample's."""
    from driftax.samplers._particles._mean_field import ksd_squared

    target = dx.energies.gaussian(jnp.zeros(2))
    x0 = jax.random.normal(jax.random.key(0), (100, 2)) * 0.5 + 2.0
    x = ds.mean_field_langevin(x0, key=jax.random.key(1), num_steps=300, step_size=0.1,
                               functional="ksd", energy=target)  # fmt: skip
    assert np.all(np.abs(np.asarray(x.mean(0))) < 2 / np.sqrt(100))
    assert np.all(np.abs(np.asarray(x.std(0)) - 1) < 0.1)
    iid = jax.random.normal(jax.random.key(5), (100, 2))
    assert ksd_squared(target, x, 1.0) < 0.1 * ksd_squared(target, iid, 1.0)


@pytest.mark.slow
def test_mean_field_langevin_mmd_matches_target_samples():
    """MMD functional against 300 target samples: the particles' mean is within 5% of a
    standard deviation of the samples' and their energy distance to the samples is below that
    of a fresh i.i.d. sample of the same size."""
    scale = jnp.array([1.0, 0.5])
    y = jax.random.normal(jax.random.key(2), (300, 2)) * scale + 2.0
    x0 = jax.random.normal(jax.random.key(3), (300, 2))
    x = ds.mean_field_langevin(x0, key=jax.random.key(4), num_steps=300, step_size=0.3,
                               target_samples=y, num_projections=16)  # fmt: skip
    sd = np.asarray(y.std(0))
    assert np.all(np.abs(np.asarray(x.mean(0) - y.mean(0))) < 0.05 * sd)
    fresh = jax.random.normal(jax.random.key(9), (300, 2)) * scale + 2.0
    assert dx.energies.energy_distance(x, y) < dx.energies.energy_distance(fresh, y)


def test_mean_field_langevin_bad_input():
    x = jnp.ones((10, 2)) * jnp.arange(10)[:, None]
    target = dx.energies.gaussian(jnp.zeros(2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="functional"):
        ds.mean_field_langevin(x, key=key, num_steps=1, step_size=0.1, functional="kl",
                               energy=target)  # fmt: skip
    with pytest.raises(ValueError, match="target_samples"):
        ds.mean_field_langevin(x, key=key, num_steps=1, step_size=0.1)
    with pytest.raises(ValueError, match="energy"):
        ds.mean_field_langevin(x, key=key, num_steps=1, step_size=0.1, functional="ksd")
    with pytest.raises(ValueError, match="friction"):
        ds.mean_field_langevin(x, key=key, num_steps=1, step_size=0.1, target_samples=x,
                               friction=0.0)  # fmt: skip
    with pytest.raises(ValueError, match="x0"):
        ds.mean_field_langevin(jnp.ones((10, 3)), key=key, num_steps=1, step_size=0.1,
                               functional="ksd", energy=target)  # fmt: skip
