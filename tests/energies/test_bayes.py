"""Logistic regression and LGCP: shipped data, definitions, and independent checks of the stored
reference moments."""

import importlib.resources
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de
from driftax.energies._bayes import (
    LGCP_LENGTH_SCALE,
    LGCP_MEAN,
    LGCP_SIGNAL_VARIANCE,
    bin_counts,
    lgcp_covariance,
    simulate_lgcp_points,
)

# ----------------------------------------------------------------------------- data


def test_data_files_are_package_resources():
    data = importlib.resources.files("driftax.energies").joinpath("data")
    for name in ("breast_cancer.npz", "logreg_reference.npz", "lgcp_synthetic_points.npz"):
        assert data.joinpath(name).is_file(), name
    assert data.joinpath("README.md").is_file()


def test_breast_cancer_data():
    raw_x, raw_y = de.breast_cancer_data(standardize=False)
    x, y = de.breast_cancer_data()
    assert raw_x.shape == x.shape == (569, 30) and y.shape == (569,)
    assert set(np.unique(y)) == {0, 1} and y.sum() == 357  # 357 benign, 212 malignant
    assert raw_x[0, 0] == 17.99  # first case, mean radius (UCI WDBC)
    np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-12)
    np.testing.assert_allclose(x.std(0), 1.0, rtol=1e-12)


# ----------------------------------------------------------------------------- logistic regression


@pytest.fixture(scope="module")
def logreg_newton():
    """MAP, Laplace covariance and the third-order mean correction, in NumPy (no JAX)."""
    x, y = de.breast_cancer_data()
    a = np.c_[np.ones(len(x)), x]
    w = np.zeros(31)
    for _ in range(50):
        p = 1.0 / (1.0 + np.exp(-(a @ w)))
        grad = a.T @ (y - p) - w
        hess = a.T @ (a * (p * (1 - p))[:, None]) + np.eye(31)
        step = np.linalg.solve(hess, grad)
        w = w + step
        if np.abs(step).max() < 1e-13:
            break
    p = 1.0 / (1.0 + np.exp(-(a @ w)))
    cov = np.linalg.inv(a.T @ (a * (p * (1 - p))[:, None]) + np.eye(31))
    # E[w] − ŵ ≈ −½ Σ H⁻¹_ij U_jkl H⁻¹_kl with U_jkl = Σ_n p(1−p)(1−2p) a_nj a_nk a_nl.
    q = np.einsum("nj,jk,nk->n", a, cov, a)
    correction = -0.5 * cov @ (a.T @ (p * (1 - p) * (1 - 2 * p) * q))
    return a, y, w, cov, correction


def test_logreg_log_density(x64, logreg_newton):
    a, y, _, _, _ = logreg_newton
    target = de.logistic_regression()
    assert target.event_shape == (31,)
    w = np.random.default_rng(0).normal(scale=0.3, size=31)
    z = a @ w
    expected = y @ z - np.logaddexp(0.0, z).sum() - 0.5 * w @ w - 15.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(target.log_density(jnp.asarray(w)), expected, rtol=1e-12)


def test_logreg_reference_against_laplace(x64, logreg_newton):
    """The stored long-run moments against asymptotic expansions around the MAP: the Laplace mean
    is within O(n^{-1/2}) posterior sds; adding the third-order (skewness) correction leaves an
    error of higher order; the Laplace variances are right to O(n^{-1/2}) relative."""
    _, _, w_map, cov, correction = logreg_newton
    target = de.logistic_regression()
    mean, var = np.asarray(target.mean), np.asarray(target.variance)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(mean - w_map) < 0.5 * sd)
    assert np.all(np.abs(mean - w_map - correction) < 0.2 * sd)
    assert np.median(np.abs(mean - w_map - correction) / sd) < 0.05
    assert np.all((var / np.diag(cov) > 0.8) & (var / np.diag(cov) < 1.25))
    # The stored errors are small and the run converged.
    assert np.all(np.asarray(target.reference_mcse_mean) < 0.01 * np.sqrt(var))
    assert np.all(np.asarray(target.reference_mcse_variance) < 0.01 * var)
    info = target.reference_info
    assert info["max_rhat"] < 1.01 and info["num_divergent"] == 0


@pytest.mark.slow
def test_logreg_reference_against_numpyro_nuts(x64):
    """An independent short numpyro NUTS run agrees within 5 combined MCSEs per coordinate."""
    import numpyro
    import numpyro.distributions as dist
    from numpyro.diagnostics import effective_sample_size
    from numpyro.infer import MCMC, NUTS

    x, y = de.breast_cancer_data()
    a = jnp.asarray(np.c_[np.ones(len(x)), x])

    def model():
        w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([31]).to_event(1))
        numpyro.sample("y", dist.Bernoulli(logits=a @ w), obs=jnp.asarray(y))

    mcmc = MCMC(
        NUTS(model, dense_mass=True),
        num_warmup=500,
        num_samples=1500,
        num_chains=2,
        chain_method="vectorized",
        progress_bar=False,
    )
    mcmc.run(jax.random.key(11))
    draws = np.asarray(mcmc.get_samples(group_by_chain=True)["w"])  # (chains, draws, 31)
    flat = draws.reshape(-1, 31)
    mean, var = flat.mean(0), flat.var(0)
    sq = (draws - mean) ** 2
    mcse_mean = np.sqrt(var / effective_sample_size(draws))
    mcse_var = sq.reshape(-1, 31).std(0) / np.sqrt(effective_sample_size(sq))
    target = de.logistic_regression()
    tol_mean = 5 * np.sqrt(mcse_mean**2 + np.asarray(target.reference_mcse_mean) ** 2)
    tol_var = 5 * np.sqrt(mcse_var**2 + np.asarray(target.reference_mcse_variance) ** 2)
    assert np.all(np.abs(mean - np.asarray(target.mean)) < tol_mean)
    assert np.all(np.abs(var - np.asarray(target.variance)) < tol_var)


def test_logreg_without_reference_raises():
    target = de.logistic_regression(with_reference=False)
    with pytest.raises(NotImplementedError, match="make_logreg_reference"):
        _ = target.mean
    with pytest.raises(NotImplementedError, match="make_logreg_reference"):
        _ = target.reference_info


# ----------------------------------------------------------------------------- LGCP


def test_lgcp_stored_pattern():
    points = de.lgcp_points()
    assert points.ndim == 2 and points.shape[1] == 2 and len(points) > 50
    assert np.all((points >= 0) & (points <= 1))
    target = de.lgcp()
    assert target.event_shape == (1600,) and target.grid == 40 and not target.whitened
    counts = np.asarray(target.bin_counts)
    assert counts.shape == (40, 40) and counts.sum() == len(points)
    with (
        importlib.resources.files("driftax.energies")
        .joinpath("data", "lgcp_synthetic_points.npz")
        .open("rb") as f
    ):
        stored = np.load(f)
        np.testing.assert_array_equal(counts, stored["counts"])
    for grid in (1, 5, 8):
        assert np.asarray(de.lgcp(grid).bin_counts).sum() == len(points)


def test_lgcp_pattern_is_reproducible():
    """Re-simulating from the recorded seed gives (essentially) the shipped counts."""
    again = simulate_lgcp_points(seed=0, grid=40)
    counts = np.asarray(de.lgcp().bin_counts)
    assert np.mean(again["counts"] == counts) > 0.99
    np.testing.assert_array_equal(bin_counts(again["points"], 40), again["counts"])


def test_lgcp_prior_definition(x64):
    k = lgcp_covariance(3)
    # Bins (0, 0) -> index 0, (1, 1) -> index 4, (2, 0) -> index 6 (row-major).
    scale = 3 * LGCP_LENGTH_SCALE
    np.testing.assert_allclose(k[0, 0], 1.91)
    np.testing.assert_allclose(k[0, 4], 1.91 * np.exp(-np.sqrt(2) / scale), rtol=1e-14)
    np.testing.assert_allclose(k[4, 6], 1.91 * np.exp(-np.sqrt(2) / scale), rtol=1e-14)
    np.testing.assert_allclose(k[0, 6], 1.91 * np.exp(-2 / scale), rtol=1e-14)
    assert LGCP_SIGNAL_VARIANCE == 1.91 and LGCP_LENGTH_SCALE == 1 / 33
    np.testing.assert_allclose(LGCP_MEAN, np.log(126) - 1.91 / 2)


def test_lgcp_log_density_and_whitening(x64):
    plain, white = de.lgcp(4), de.lgcp(4, whitened=True)
    e = jnp.asarray(np.random.default_rng(0).normal(size=16))
    f = white.latent_from_white(e)
    np.testing.assert_allclose(plain.white_from_latent(f), e, rtol=1e-10)
    # Same density up to the constant Jacobian |det L|: log p_w(e) = log p_f(f) + log|det L|.
    np.testing.assert_allclose(
        white.log_density(e), plain.log_density(f) + plain.half_log_det, rtol=1e-12
    )
    # Against a direct evaluation: Gaussian prior log density + Poisson terms.
    from scipy.stats import multivariate_normal

    c = np.asarray(plain.counts)
    fn = np.asarray(f)
    prior = multivariate_normal(mean=np.full(16, LGCP_MEAN), cov=lgcp_covariance(4)).logpdf(fn)
    expected = prior + np.sum(fn * c - np.exp(fn) / 16)
    np.testing.assert_allclose(plain.log_density(f), expected, rtol=1e-12)
    g = jax.grad(plain.log_density)(f)
    assert np.all(np.isfinite(np.asarray(g)))


def test_lgcp_log_z_same_in_both_parameterisations(x64):
    """grid = 1: one cell, 1-D quadrature of both parameterisations gives the same log Z."""
    plain, white = de.lgcp(1), de.lgcp(1, whitened=True)
    s = math.sqrt(LGCP_SIGNAL_VARIANCE)
    f = np.linspace(LGCP_MEAN - 12 * s, LGCP_MEAN + 12 * s, 20001)
    e = (f - LGCP_MEAN) / s
    lp_f = np.asarray(jax.vmap(plain.log_density)(jnp.asarray(f[:, None])))
    lp_e = np.asarray(jax.vmap(white.log_density)(jnp.asarray(e[:, None])))
    log_z_f = np.log(np.trapezoid(np.exp(lp_f - lp_f.max()), f)) + lp_f.max()
    log_z_e = np.log(np.trapezoid(np.exp(lp_e - lp_e.max()), e)) + lp_e.max()
    np.testing.assert_allclose(log_z_f, log_z_e, rtol=1e-10)


def test_lgcp_log_normalizer_not_faked():
    target = de.lgcp(2)
    with pytest.raises(NotImplementedError, match="stored grids: 4, 40"):
        _ = target.log_normalizer
    with pytest.raises(NotImplementedError, match="make_references"):
        _ = target.log_normalizer_stderr
    with pytest.raises(NotImplementedError, match="make_references"):
        _ = target.reference_info


@pytest.fixture(scope="module")
def make_references():
    """The script that made the stored references (its functions are the code path under test)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "benchmarks" / "make_references.py"
    spec = importlib.util.spec_from_file_location("make_references", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _independent_is_log_z(grid, num_samples, seed, inflate=1.2):
    """Importance sampling written independently of the reference script: a Gaussian proposal at
    the posterior mode of `lgcp(grid).log_density` (Newton with `jax.hessian`) with the inverse
    Hessian inflated by `inflate²`; log-mean-exp of the weights and its delta-method error."""
    target = de.lgcp(grid)
    n = grid * grid
    grad, hess = jax.jit(jax.grad(target.log_density)), jax.jit(jax.hessian(target.log_density))
    f = jnp.full(n, LGCP_MEAN)
    for _ in range(30):
        step = jnp.linalg.solve(hess(f), grad(f))
        f = f - step
        if float(jnp.abs(step).max()) < 1e-12:
            break
    assert float(jnp.abs(grad(f)).max()) < 1e-8
    chol = inflate * np.linalg.cholesky(np.linalg.inv(-np.asarray(hess(f))))
    z = jax.random.normal(jax.random.key(seed), (num_samples, n))
    x = f + z @ jnp.asarray(chol).T
    log_q = (
        -0.5 * jnp.sum(z**2, 1) - np.sum(np.log(np.diag(chol))) - 0.5 * n * math.log(2 * math.pi)
    )
    log_w = np.asarray(jax.jit(jax.vmap(target.log_density))(x) - log_q)
    w = np.exp(log_w - log_w.max())
    log_z = log_w.max() + math.log(w.mean())
    se = w.std() / (w.mean() * math.sqrt(num_samples))
    return log_z, se, w.sum() ** 2 / np.sum(w**2) / num_samples


def test_lgcp_reference_stored():
    """The stored references: finite, small errors, the same in both parameterisations, and
    consistent with the cross-checks stored beside them (importance sampling from the variational
    Gaussian; ELBO below log Z)."""
    for grid in (4, 40):
        plain, white = de.lgcp(grid), de.lgcp(grid, whitened=True)
        log_z, se = float(plain.log_normalizer), plain.log_normalizer_stderr
        assert np.isfinite(log_z) and 0 < se < 0.05
        assert float(white.log_normalizer) == log_z
        info = plain.reference_info
        assert info["grid"] == grid and info["num_runs"] >= 8
        assert info["elbo"] < log_z
        if info["is_ess"] > 0.1 * info["is_samples"]:  # reliable importance sampling (grid 4)
            assert abs(log_z - info["is_log_z"]) < 4 * math.hypot(se, info["is_log_z_se"])
        else:  # heavy-tailed weights (grid 40): the IS estimate is only a rough check
            assert abs(log_z - info["is_log_z"]) < 0.5
    assert de.lgcp().reference_info["num_particles"] >= 1000
    assert de.lgcp(4).reference_info["is_ess"] > 0.1 * de.lgcp(4).reference_info["is_samples"]


@pytest.mark.parametrize("grid", [4, 6])
def test_lgcp_reference_identity(x64, make_references, grid):
    """The whitening identity the SMC relies on, against `lgcp(grid).log_density` itself:
    log γ(m + A z) + log|det A| = C + log N(z; 0, I) + R(z)."""
    approx = make_references.lgcp_gaussian_approximation(grid)
    remainder = make_references.lgcp_remainder_fn(approx)
    target = de.lgcp(grid)
    n = grid * grid
    a = jnp.asarray(approx["sqrt_cov"])
    for seed in range(3):
        z = 1.5 * jax.random.normal(jax.random.key(seed), (n,))
        lhs = target.log_density(jnp.asarray(approx["mean"]) + a @ z) + approx["log_det_sqrt_cov"]
        rhs = approx["constant"] - 0.5 * z @ z - 0.5 * n * math.log(2 * math.pi) + remainder(z)
        np.testing.assert_allclose(lhs, rhs, rtol=1e-11)


def test_lgcp_stored_reference_against_independent_is(x64):
    """grid = 4: the stored SMC reference agrees with independent importance sampling."""
    target = de.lgcp(4)
    log_z, se, ess = _independent_is_log_z(4, 200_000, seed=7)
    assert ess > 0.2
    tol = 4 * math.hypot(se, target.log_normalizer_stderr)
    assert abs(float(target.log_normalizer) - log_z) < tol
    assert tol < 0.05


def test_lgcp_smc_code_path_against_independent_is(x64, make_references):
    """grid = 6: the script's tempered SMC — forced through several stages (target ESS 0.9) —
    agrees with independent importance sampling within 4 combined standard errors. This is the
    code path that made the 40×40 reference."""
    grid, runs = 6, 6
    approx = make_references.lgcp_gaussian_approximation(grid)
    run = make_references.make_smc_runner(
        make_references.lgcp_remainder_fn(approx),
        grid * grid,
        particles=256,
        mcmc_steps=3,
        leapfrog=5,
        target_ess=0.9,
    )
    results = [run(k) for k in jax.random.split(jax.random.key(11), runs)]
    assert all(int(r["num_stages"]) >= 3 for r in results)
    assert all(float(r["final_tempering"]) == 1.0 for r in results)
    estimates = approx["constant"] + np.array([float(r["log_evidence"]) for r in results])
    smc, smc_se = estimates.mean(), estimates.std(ddof=1) / math.sqrt(runs)
    log_z, se, ess = _independent_is_log_z(grid, 200_000, seed=8)
    assert ess > 0.05
    assert abs(smc - log_z) < 4 * math.hypot(se, smc_se), (smc, smc_se, log_z, se)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"grid": 0}, ValueError, "grid"),
        ({"grid": 2.5}, ValueError, "grid"),
        ({"grid": True}, ValueError, "grid"),
        ({"grid": 2, "whitened": "yes"}, TypeError, "whitened"),
    ],
)
def test_lgcp_bad_input(kwargs, error, match):
    with pytest.raises(error, match=match):
        de.lgcp(**kwargs)


def test_bayes_wrong_shapes():
    with pytest.raises(ValueError, match="event shape"):
        de.logistic_regression().log_density(jnp.zeros(30))
    with pytest.raises(ValueError, match="event shape"):
        de.lgcp(3).log_density(jnp.zeros((3, 3)))
