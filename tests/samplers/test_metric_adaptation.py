"""Fisher-divergence and low-rank metric adaptation (nutpie): the estimators on Gaussians with
known covariances, the `LowRankMetric` algebra against the dense matrix it represents, errors
and the diagonal fallback, and end-to-end runs through `driftax.sample`."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._adaptation import (
    fisher_diagonal,
    low_rank_estimate,
    nutpie_schedule,
    spd_geometric_mean,
    welford_init,
    welford_update_batch,
)

from .test_correctness import check_moments


def _moments(xs, dense):
    """Pooled Welford state of the rows of `xs`, fed in batches of 7 (as chains would be)."""
    xs = jnp.asarray(xs)
    return _moments_scan(xs, dense)


@functools.partial(jax.jit, static_argnums=1)
def _moments_scan(xs, dense):
    n, d = xs.shape
    pad = (-n) % 7
    xs = jnp.concatenate([xs, jnp.zeros((pad, d), xs.dtype)])
    weights = jnp.arange(n + pad) < n  # the padding rows add nothing

    def body(state, batch):
        return welford_update_batch(state, *batch), None

    batches = (xs.reshape(-1, 7, d), weights.reshape(-1, 7))
    state, _ = jax.lax.scan(body, welford_init(d, dense, xs.dtype), batches)
    return state


def _reciprocal_pair_covariance(d, c, seed=0):
    """`Σ = S (I + U (Λ - I) Uᵀ) S` with `Λ = (c, 1/c)` and `U`'s columns of equal squared
    entries, so that the Fisher diagonal of `N(0, Σ)` is exactly `S²` and the scaled
    covariance is exactly rank-2 away from the identity."""
    rng = np.random.default_rng(seed)
    v = np.zeros(d)
    v[:4] = 0.5
    w = np.zeros(d)
    w[:4] = [0.5, -0.5, 0.5, -0.5]
    perm = rng.permutation(d)
    u = np.stack([v[perm], w[perm]], axis=1)
    s2 = np.exp(rng.uniform(-3, 3, d))
    lam = np.array([c, 1.0 / c])
    s = np.sqrt(s2)
    cov = s[:, None] * (np.eye(d) + (u * (lam - 1)) @ u.T) * s[None, :]
    return cov, s2, u, lam


@pytest.mark.usefixtures("x64")
def test_welford_batch_matches_numpy():
    x = np.random.default_rng(1).normal(size=(50, 3)) * [1.0, 5.0, 0.1] + [1.0, -2.0, 3.0]
    for dense in (False, True):
        w = _moments(x, dense)
        ref = np.cov(x.T) if dense else x.var(0, ddof=1)
        np.testing.assert_allclose(w.m2 / (w.count - 1), ref, rtol=1e-10)
        np.testing.assert_allclose(w.mean, x.mean(0), rtol=1e-12)
    # weight 0 points (even NaN ones) add nothing
    w0 = welford_init(3, False, jnp.float64)
    xs = jnp.asarray(np.vstack([x[:4], np.full((1, 3), np.nan)]))
    w1 = welford_update_batch(w0, xs, jnp.array([1, 1, 1, 1, 0], bool))
    np.testing.assert_allclose(w1.m2 / 3, x[:4].var(0, ddof=1), rtol=1e-10)


@pytest.mark.usefixtures("x64")
def test_fisher_diagonal_is_exact_for_a_diagonal_gaussian():
    # for N(μ, diag(σ²)), ∇log p = -(x - μ)/σ²: Var[x]/Var[∇log p] = σ⁴ for ANY set of draws,
    # so the estimate is σ² up to rounding, whatever the number of draws (here 30)
    var = np.array([1e-4, 0.01, 1.0, 100.0, 1e4])
    x = np.random.default_rng(0).normal(size=(30, 5)) * np.sqrt(var) + 3.0
    g = -(x - 3.0) / var
    d = fisher_diagonal(_moments(x, False), _moments(g, False), jnp.ones(5))
    np.testing.assert_allclose(d, var, rtol=1e-10)
    # too few draws keep the previous diagonal
    d = fisher_diagonal(_moments(x[:2], False), _moments(g[:2], False), jnp.full(5, 7.0))
    np.testing.assert_allclose(d, 7.0)


@pytest.mark.usefixtures("x64")
def test_fisher_diagonal_monte_carlo_tolerance():
    # a non-Gaussian (Student-t, ν = 10) diagonal target with scales σ: the population value is
    # σ² √(Var[t]/Var[∇log t]) = σ² √((ν/(ν-2)) · (ν+3)/(ν+1)); each sample variance has a
    # relative standard error of about √(2/n) (inflated by the tails), the ratio's square root
    # half of two of them
    nu, n = 10.0, 20000
    sig2 = np.array([0.01, 1.0, 50.0])
    rng = np.random.default_rng(3)
    t = rng.standard_t(nu, size=(n, 3))
    x = t * np.sqrt(sig2)
    g = -(nu + 1) * t / (nu + t**2) / np.sqrt(sig2)
    d = np.asarray(fisher_diagonal(_moments(x, False), _moments(g, False), jnp.ones(3)))
    expect = sig2 * np.sqrt(nu / (nu - 2) * (nu + 3) / (nu + 1))
    # kurtosis of t₁₀ is 4 (excess 1): relative sd of a variance ≈ √((2 + 1)/n) ⇒ 5 sd
    assert np.all(np.abs(d / expect - 1) < 5 * np.sqrt(3.0 / n)), (d, expect)


@pytest.mark.usefixtures("x64")
def test_spd_geometric_mean_solves_riccati():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(5, 5))
    a = a @ a.T + np.eye(5)
    b = rng.normal(size=(5, 5))
    b = b @ b.T + 0.5 * np.eye(5)
    sigma = np.asarray(spd_geometric_mean(jnp.asarray(a), jnp.asarray(b)))
    np.testing.assert_allclose(sigma @ b @ sigma, a, rtol=1e-9, atol=1e-9)
    assert np.all(np.linalg.eigvalsh(sigma) > 0)


@pytest.mark.usefixtures("x64")
def test_low_rank_estimate_is_exact_from_population_moments():
    d, c = 12, 30.0
    cov, s2, u, lam = _reciprocal_pair_covariance(d, c)
    n = 1e9  # moments exact, shrinkage negligible
    zero = jnp.zeros(d)
    draws = ds._adaptation.WelfordState(jnp.asarray(n), zero, jnp.asarray((n - 1) * cov))
    prec = np.linalg.inv(cov)
    scores = ds._adaptation.WelfordState(jnp.asarray(n), zero, jnp.asarray((n - 1) * prec))
    diag, vecs, vals = low_rank_estimate(draws, scores, jnp.ones(d), rank=3)
    np.testing.assert_allclose(diag, s2, rtol=1e-7)
    # the two informative eigenpairs, in either order; the third is within the cutoff → 1
    order = np.argsort(-np.asarray(vals))
    vals, vecs = np.asarray(vals)[order], np.asarray(vecs)[:, order]
    np.testing.assert_allclose(vals, [c, 1.0, 1.0 / c], rtol=1e-6)
    assert abs(vecs[:, 0] @ u[:, 0]) > 1 - 1e-9 and abs(vecs[:, 2] @ u[:, 1]) > 1 - 1e-9
    metric = ds.LowRankMetric(diag, vecs, vals)
    np.testing.assert_allclose(metric.dense_inverse_mass(), cov, rtol=1e-6, atol=1e-9)


@pytest.mark.usefixtures("x64")
def test_low_rank_estimate_recovers_eigenpairs_from_draws():
    d, c, n = 12, 30.0, 8000
    cov, s2, u, lam = _reciprocal_pair_covariance(d, c, seed=1)
    x = np.random.default_rng(2).multivariate_normal(np.zeros(d), cov, size=n)
    g = -x @ np.linalg.inv(cov)
    diag, vecs, vals = low_rank_estimate(_moments(x, True), _moments(g, True), jnp.ones(d), 2)
    order = np.argsort(-np.asarray(vals))
    vals, vecs = np.asarray(vals)[order], np.asarray(vecs)[:, order]
    # relative sd of a Gaussian variance estimate: √(2/n); 5 sd (eigenvalues and diagonal)
    tol = 5 * np.sqrt(2.0 / n)
    np.testing.assert_allclose(diag, s2, rtol=tol)
    np.testing.assert_allclose(vals, lam, rtol=2 * tol)
    # eigenvector angles: sd ≈ √(λᵢλⱼ / n) / |λᵢ - λⱼ| per other direction (≤ 0.01 here)
    assert abs(vecs[:, 0] @ u[:, 0]) > 0.99 and abs(vecs[:, 1] @ u[:, 1]) > 0.99


@pytest.mark.usefixtures("x64")
def test_low_rank_estimate_too_few_draws_is_diagonal():
    d = 6
    cov, *_ = _reciprocal_pair_covariance(d, 30.0)
    x = np.random.default_rng(0).multivariate_normal(np.zeros(d), cov, size=5)
    g = -x @ np.linalg.inv(cov)
    diag, vecs, vals = low_rank_estimate(_moments(x, True), _moments(g, True), jnp.ones(d), 3)
    np.testing.assert_array_equal(vals, 1.0)  # 5 draws < 2·rank
    assert np.all(np.isfinite(diag)) and np.all(np.asarray(diag) > 0)


def _random_low_rank(d=7, k=3, shape=None, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, k)))
    diag = np.exp(rng.normal(size=d))
    lam = np.exp(2 * rng.normal(size=k))
    diag = diag.reshape(shape) if shape else diag
    return ds.LowRankMetric(jnp.asarray(diag), jnp.asarray(q), jnp.asarray(lam))


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("shape", [None, (7,), (1, 7)])
def test_low_rank_metric_algebra_matches_dense(shape):
    metric = _random_low_rank(shape=shape)
    minv = np.asarray(metric.dense_inverse_mass())
    m = np.linalg.inv(minv)
    dense = ds.DenseMetric(jnp.asarray(minv))
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.normal(size=shape or (7,)))
    flat = np.asarray(p).reshape(-1)
    np.testing.assert_allclose(metric.kinetic_energy(p), 0.5 * flat @ minv @ flat, rtol=1e-12)
    np.testing.assert_allclose(metric.kinetic_energy(p), dense.kinetic_energy(p), rtol=1e-12)
    v = metric.velocity(p)
    assert v.shape == p.shape
    np.testing.assert_allclose(np.asarray(v).reshape(-1), minv @ flat, rtol=1e-12)
    np.testing.assert_allclose(metric.velocity_to_momentum(v), p, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        np.asarray(metric.velocity_to_momentum(p)).reshape(-1), m @ flat, rtol=1e-10
    )
    # the noise maps are square roots: A Aᵀ = M and B Bᵀ = M⁻¹
    eye = jnp.eye(7).reshape(7, *(shape or (7,)))
    a = np.asarray(jax.vmap(metric.momentum_noise)(eye)).reshape(7, 7).T
    b = np.asarray(jax.vmap(metric.position_noise)(eye)).reshape(7, 7).T
    np.testing.assert_allclose(a @ a.T, m, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(b @ b.T, minv, rtol=1e-10, atol=1e-12)
    # float32 momenta give float32 results from a float64 metric
    assert metric.velocity(p.astype(jnp.float32)).dtype == jnp.float32


@pytest.mark.usefixtures("x64")
def test_low_rank_metric_with_unit_eigenvalues_is_diagonal():
    metric = _random_low_rank()
    metric = ds.LowRankMetric(metric.diagonal, metric.eigenvectors, jnp.ones(3))
    diag = ds.DiagonalMetric(metric.diagonal)
    p = jnp.linspace(-1.0, 2.0, 7)
    np.testing.assert_allclose(metric.velocity(p), diag.velocity(p), rtol=1e-12)
    np.testing.assert_allclose(metric.momentum_noise(p), diag.momentum_noise(p), rtol=1e-12)


@pytest.mark.usefixtures("x64")
def test_low_rank_momentum_covariance():
    metric = _random_low_rank(d=5, k=2, seed=3)
    m = np.linalg.inv(np.asarray(metric.dense_inverse_mass()))
    n = 40000
    keys = jax.random.split(jax.random.key(0), n)
    p = np.asarray(jax.vmap(lambda k: metric.sample_momentum(k, jnp.zeros(5)))(keys))
    emp = p.T @ p / n  # mean zero known
    # sd of a Gaussian covariance entry: √((M_ii M_jj + M_ij²)/n); 5 sd
    sd = np.sqrt((np.outer(np.diag(m), np.diag(m)) + m**2) / n)
    assert np.all(np.abs(emp - m) < 5 * sd)


def test_low_rank_metric_bad_input():
    q = np.linalg.qr(np.random.default_rng(0).normal(size=(4, 2)))[0]
    with pytest.raises(ValueError, match="`diagonal`"):
        ds.LowRankMetric(-np.ones(4), q, np.ones(2))
    with pytest.raises(ValueError, match="orthonormal"):
        ds.LowRankMetric(np.ones(4), 2 * q, np.ones(2))
    with pytest.raises(ValueError, match="`eigenvalues`"):
        ds.LowRankMetric(np.ones(4), q, np.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="`eigenvalues`"):
        ds.LowRankMetric(np.ones(4), q, np.ones(3))
    with pytest.raises(ValueError, match="`eigenvectors`"):
        ds.LowRankMetric(np.ones(3), q, np.ones(2))


def test_adaptation_bad_arguments():
    with pytest.raises(ValueError, match="`rank`"):
        ds.WindowAdaptation(metric="low_rank", rank=0)
    with pytest.raises(TypeError, match="`rank`"):
        ds.WindowAdaptation(metric="low_rank", rank=2.5)
    with pytest.raises(ValueError, match="`rank`"):
        ds.WindowAdaptation(metric="fisher", rank=2)
    with pytest.raises(ValueError, match="`eigenvalue_cutoff`"):
        ds.WindowAdaptation(metric="low_rank", eigenvalue_cutoff=0.5)
    with pytest.raises(ValueError, match="`metric`"):
        ds.WindowAdaptation(metric="fisherman")
    with pytest.raises(ValueError, match="`rank`"):
        ds.ChEESAdaptation(metric="diagonal", rank=3)
    target = de.gaussian(jnp.zeros(3))
    # a rank above the dimension: eager, before anything runs
    with pytest.raises(ValueError, match="`rank`"):
        dx.sample(
            ds.NUTS(),
            target,
            jnp.zeros(3),
            key=jax.random.key(0),
            num_steps=10,
            num_warmup=10,
            num_chains=1,
            adaptation=ds.WindowAdaptation(metric="low_rank", rank=4),
        )
    with pytest.raises(ValueError, match="metric"):
        ds.WindowAdaptation(metric="low_rank").prepare(
            ds.HMC(step_size=0.1, num_integration_steps=3, metric=ds.DenseMetric(jnp.eye(3))), (3,)
        )


def test_prepare_sets_the_metric_structure():
    hmc = ds.HMC(step_size=0.1, num_integration_steps=3)
    s = ds.WindowAdaptation(metric="fisher").prepare(hmc, (2, 2))
    assert isinstance(s.metric, ds.DiagonalMetric) and s.metric.inverse_mass.shape == (2, 2)
    s = ds.WindowAdaptation(metric="low_rank", rank=2).prepare(hmc, (2, 2))
    assert isinstance(s.metric, ds.LowRankMetric) and s.metric.rank == 2
    np.testing.assert_allclose(s.metric.dense_inverse_mass(), np.eye(4))
    s = ds.WindowAdaptation(metric="low_rank").prepare(hmc, (3,))  # default rank ≤ dimension
    assert s.metric.rank == 3


def test_fisher_needs_scores():
    target = de.gaussian(jnp.zeros(2))
    with pytest.raises(TypeError, match="score"):
        dx.sample(
            ds.RandomWalk(step_size=0.5),
            target,
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=10,
            num_warmup=30,
            num_chains=2,
            adaptation=ds.WindowAdaptation(metric="fisher"),
        )


@pytest.mark.parametrize("schedule", ["stan", "nutpie"])
def test_fisher_adaptation_end_to_end_recovers_the_diagonal(schedule):
    # HMC (cheap to compile); the Fisher diagonal of a diagonal Gaussian is exact from any
    # draws, so the adapted metric equals the variances up to float32 rounding. With nutpie's
    # schedule the metric is set every step from the foreground estimator (the draws since the
    # last-but-one switch, pooled over chains)
    var = jnp.array([0.01, 1.0, 25.0])
    target = de.gaussian(jnp.zeros(3), jnp.diag(var))
    r = dx.sample(
        ds.HMC(step_size=0.1, num_integration_steps=5),
        target,
        jnp.ones(3),
        key=jax.random.key(0),
        num_steps=20,
        num_warmup=150,
        num_chains=3,
        adaptation=ds.WindowAdaptation(metric="fisher", schedule=schedule),
        check_health=False,
    )
    inv = np.asarray(r.sampler.metric.inverse_mass)
    assert np.all(inv == inv[0])  # pooled over chains
    np.testing.assert_allclose(inv[0], var, rtol=1e-3)


def test_nutpie_schedule():
    n = 500
    update, switch, restart = nutpie_schedule(n)
    last = n - int(0.15 * n)  # the final 15%: step size only
    assert np.flatnonzero(restart).tolist() == [last - 1]
    assert np.flatnonzero(update).tolist() == list(range(9, last))
    sw = np.flatnonzero(switch) + 1  # number of steps done at each switch
    gaps = np.diff(np.concatenate([[0], sw]))
    # every 10 steps through the early window (30%), every 80 after, none in the final window
    assert np.all(gaps[sw <= int(0.3 * n)] == 10)
    assert np.all(gaps[sw > int(0.3 * n) + 10] == 80)
    assert sw[-1] <= last
    assert not any(a.any() for a in nutpie_schedule(19))
    with pytest.raises(ValueError, match="`final`"):
        nutpie_schedule(100, final=1.0)
    with pytest.raises(ValueError, match="`early_switch`"):
        nutpie_schedule(100, early_switch=0)
    with pytest.raises(ValueError, match="`schedule`"):
        ds.WindowAdaptation(metric="diagonal", schedule="nutpie")
    with pytest.raises(ValueError, match="`schedule`"):
        ds.WindowAdaptation(metric="fisher", schedule="pymc")


def test_low_rank_fallback_warns_and_stays_diagonal():
    target = de.gaussian(jnp.zeros(8))
    with pytest.warns(dx.SamplingWarning, match="rank"):
        r = dx.sample(
            ds.HMC(step_size=0.1, num_integration_steps=3),
            target,
            jnp.ones(8),
            key=jax.random.key(0),
            num_steps=10,
            num_warmup=20,  # last window: 15 steps × 1 chain < 2·rank = 16
            num_chains=1,
            adaptation=ds.WindowAdaptation(metric="low_rank", rank=8),
            check_health=False,
        )
    metric = r.sampler.metric
    assert isinstance(metric, ds.LowRankMetric)
    np.testing.assert_array_equal(metric.eigenvalues, 1.0)
    assert np.all(np.isfinite(metric.diagonal)) and np.all(np.asarray(metric.diagonal) > 0)


def test_low_rank_adaptation_end_to_end_finds_the_correlation():
    # a 2-d Gaussian with correlation 0.95 (eigenvalues 1.95 and 0.05 along (1, ±1)/√2): a
    # rank-2 metric can represent the covariance exactly, and the adapted one should
    r = dx.sample(
        ds.HMC(step_size=0.05, num_integration_steps=10),
        de.gaussian(jnp.zeros(2), jnp.array([[1.0, 0.95], [0.95, 1.0]])),
        jnp.zeros(2),
        key=jax.random.key(1),
        num_steps=20,
        num_warmup=400,
        num_chains=4,
        adaptation=ds.WindowAdaptation(metric="low_rank", rank=2),
        check_health=False,
    )
    m = r.sampler.metric
    assert isinstance(m, ds.LowRankMetric)
    first = jax.tree.map(lambda a: a[0], m)
    vals, vecs = np.linalg.eigh(np.asarray(first.dense_inverse_mass()))
    # ~1000 autocorrelated draws in the last window: 30% on the eigenvalues is > 5 sd
    np.testing.assert_allclose(vals, [0.05, 1.95], rtol=0.3)
    assert abs(vecs[:, 0] @ np.array([1.0, -1.0])) / np.sqrt(2) > 0.99


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["fisher", "low_rank", "fisher_nutpie"])
def test_nuts_with_nutpie_metrics_moments_within_mcse(metric):
    target = de.ill_conditioned_gaussian(5, 100.0, rotate=True, seed=2)
    kw = {"rank": 2} if metric == "low_rank" else {}
    if metric == "fisher_nutpie":
        metric, kw = "fisher", {"schedule": "nutpie"}
    r = dx.sample(
        ds.NUTS(),
        target,
        jnp.ones(5),
        key=jax.random.key(3),
        num_steps=1000,
        num_warmup=500,
        num_chains=4,
        adaptation=ds.WindowAdaptation(metric=metric, **kw),
    )
    assert r.num_divergent == 0
    assert np.all(r.rhat < 1.1)
    check_moments(r.samples, target.mean, target.variance, label=metric)


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["fisher", "low_rank"])
def test_chees_with_nutpie_metrics(metric):
    var = jnp.array([0.01, 1.0, 25.0, 4.0])
    target = de.gaussian(jnp.zeros(4), jnp.diag(var))
    kw = {"rank": 2} if metric == "low_rank" else {}
    r = dx.sample(
        ds.ChEESHMC(step_size=0.1, trajectory_length=0.5),
        target,
        jnp.ones(4),
        key=jax.random.key(2),
        num_steps=300,
        num_warmup=400,
        num_chains=16,
        adaptation=ds.ChEESAdaptation(metric=metric, **kw),
    )
    m = jax.tree.map(lambda a: a[0], r.sampler.metric)
    inv = m.inverse_mass if metric == "fisher" else m.dense_inverse_mass().diagonal()
    # exact for a diagonal Gaussian (Fisher diagonal; no eigenvalue outside the cutoff)
    np.testing.assert_allclose(inv, var, rtol=1e-3)
    check_moments(r.samples, jnp.zeros(4), var, label=metric)
