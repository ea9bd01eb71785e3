"""Metrics of fit: each against a brute-force NumPy reference on small sets, known values,
invariances, jit-friendliness and bad input."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize
import scipy.stats

import driftax.energies as E

# ----------------------------------------------------------------------------------------------
# NumPy references


def _np_kernel(kernel, s, h):
    if kernel == "rbf":
        return np.exp(-s / (2 * h**2))
    if kernel == "imq":
        return (1 + s / h**2) ** -0.5
    return -np.sqrt(s)


def _np_mmd(x, y, kernel, h):
    """Double loop over all pairs: (unbiased, biased)."""
    n, m = len(x), len(y)

    def k(a, b):
        return _np_kernel(kernel, float(np.sum((a - b) ** 2)), h)

    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j)
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m))
    kxx_d = sum(k(x[i], x[i]) for i in range(n))
    kyy_d = sum(k(y[i], y[i]) for i in range(m))
    unbiased = kxx / (n * (n - 1)) + kyy / (m * (m - 1)) - 2 * kxy / (n * m)
    biased = (kxx + kxx_d) / n**2 + (kyy + kyy_d) / m**2 - 2 * kxy / (n * m)
    return unbiased, biased


def _np_median(x, y):
    z = np.concatenate([x, y])
    d = [np.linalg.norm(z[i] - z[j]) for i in range(len(z)) for j in range(i + 1, len(z))]
    return np.median(d)


def _np_energy_distance(x, y, unbiased):
    n, m = len(x), len(y)
    dxy = sum(np.linalg.norm(a - b) for a in x for b in y)
    dxx = sum(np.linalg.norm(a - b) for a in x for b in x)
    dyy = sum(np.linalg.norm(a - b) for a in y for b in y)
    if unbiased:
        return 2 * dxy / (n * m) - dxx / (n * (n - 1)) - dyy / (m * (m - 1))
    return 2 * dxy / (n * m) - dxx / n**2 - dyy / m**2


def _lp_w2sq(x, y):
    """Exact W2² between uniform empirical measures by the transport linear program."""
    x = np.asarray(x, float).reshape(len(x), -1)
    y = np.asarray(y, float).reshape(len(y), -1)
    n, m = len(x), len(y)
    cost = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    a_eq = np.zeros((n + m, n * m))
    for i in range(n):
        a_eq[i, i * m : (i + 1) * m] = 1
    for j in range(m):
        a_eq[n + j, j::m] = 1
    b_eq = np.concatenate([np.full(n, 1 / n), np.full(m, 1 / m)])
    res = scipy.optimize.linprog(cost.ravel(), A_eq=a_eq, b_eq=b_eq, bounds=(0, None))
    assert res.status == 0
    return res.fun


def _perm_w2sq(x, y):
    n = len(x)
    return min(np.mean(np.sum((x - y[list(p)]) ** 2, -1)) for p in itertools.permutations(range(n)))


def _rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# ----------------------------------------------------------------------------------------------
# MMD and energy distance


@pytest.mark.parametrize(
    "kernel, given",
    [("rbf", True), ("rbf", False), ("imq", True), ("imq", False), ("energy", False)],
)
def test_mmd_matches_double_loop(x64, rng, kernel, given):
    x = rng.normal(size=(7, 3))
    y = rng.normal(size=(5, 3)) + 0.4
    h = 1.3 if given else (None if kernel == "energy" else _np_median(x, y))
    res = E.mmd(x, y, kernel=kernel, bandwidth=1.3 if given else None)
    ref_u, ref_b = _np_mmd(x, y, kernel, h)
    np.testing.assert_allclose(float(res.unbiased), ref_u, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(res.biased), ref_b, rtol=1e-10, atol=1e-12)
    assert res.kernel == kernel
    if kernel == "energy":
        assert res.bandwidth_rule == "none"
    else:
        assert res.bandwidth_rule == ("given" if given else "median")
        np.testing.assert_allclose(float(res.bandwidth), h, rtol=1e-12)


def test_median_heuristic(x64, rng):
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(9, 2))
    np.testing.assert_allclose(float(E.median_heuristic(x, y)), _np_median(x, y), rtol=1e-12)


@pytest.mark.parametrize("unbiased", [False, True])
def test_energy_distance_matches_double_loop(x64, rng, unbiased):
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(8, 3)) * 1.5
    got = float(E.energy_distance(x, y, unbiased=unbiased))
    np.testing.assert_allclose(got, _np_energy_distance(x, y, unbiased), rtol=1e-10)


def test_energy_distance_scipy_and_energy_kernel(x64, rng):
    x, y = rng.normal(size=(30, 1)), rng.normal(size=(20, 1)) + 0.3
    ref = scipy.stats.energy_distance(x[:, 0], y[:, 0]) ** 2  # scipy returns the square root
    np.testing.assert_allclose(float(E.energy_distance(x, y)), ref, rtol=1e-10)
    np.testing.assert_allclose(float(E.mmd(x, y, kernel="energy").biased), ref, rtol=1e-10)


def test_mmd_energy_invariances(x64, rng):
    x, y = rng.normal(size=(20, 3)), rng.normal(size=(15, 3)) + 0.5
    q, t = _rotation(rng, 3), rng.normal(size=3)
    for fn in (
        lambda a, b: E.energy_distance(a, b),
        lambda a, b: E.mmd(a, b, kernel="rbf", bandwidth=0.7).unbiased,
        lambda a, b: E.mmd(a, b, kernel="imq").biased,
    ):
        base = float(fn(x, y))
        np.testing.assert_allclose(float(fn(x @ q.T + t, y @ q.T + t)), base, rtol=1e-9)
        np.testing.assert_allclose(float(fn(y, x)), base, rtol=1e-9)
        np.testing.assert_allclose(float(fn(x[::-1], y)), base, rtol=1e-9)
    assert abs(float(E.mmd(x, x).biased)) < 1e-12
    assert abs(float(E.energy_distance(x, x))) < 1e-12


def test_mmd_detects_shift(key):
    kx, ky, kz = jax.random.split(key, 3)
    x = jax.random.normal(kx, (400, 2))
    same = E.mmd(x, jax.random.normal(ky, (400, 2))).unbiased
    shifted = E.mmd(x, jax.random.normal(kz, (400, 2)) + 1.0).unbiased
    assert float(shifted) > 10 * abs(float(same))


# ----------------------------------------------------------------------------------------------
# Exact W2, 1-D W2, Gaussian W2, sliced W2


def test_w2_1d_matches_lp(x64, rng):
    a, b = rng.normal(size=7), rng.normal(size=4) * 2 + 1
    np.testing.assert_allclose(float(E.wasserstein2_1d(a, b)) ** 2, _lp_w2sq(a, b), rtol=1e-8)
    a2 = rng.normal(size=6)
    np.testing.assert_allclose(
        float(E.wasserstein2_1d(a[:6], a2)) ** 2, np.mean((np.sort(a[:6]) - np.sort(a2)) ** 2)
    )
    # duplicating every point leaves the empirical measure unchanged
    np.testing.assert_allclose(
        float(E.wasserstein2_1d(np.repeat(a, 3), b)), float(E.wasserstein2_1d(a, b)), rtol=1e-10
    )


@pytest.mark.parametrize("n", [2, 5, 7])
def test_w2_exact_matches_permutations(rng, n):
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) + 0.5
    np.testing.assert_allclose(E.wasserstein2_exact(x, y) ** 2, _perm_w2sq(x, y), rtol=1e-10)


@pytest.mark.parametrize("sizes", [(4, 6), (61, 67)])  # replication; lcm > 4000 (POT)
def test_w2_exact_unequal_sizes_matches_lp(rng, sizes):
    if sizes[0] * sizes[1] > 1000:
        pytest.importorskip("ot")
    x, y = rng.normal(size=(sizes[0], 2)), rng.normal(size=(sizes[1], 2)) * 1.5
    np.testing.assert_allclose(E.wasserstein2_exact(x, y) ** 2, _lp_w2sq(x, y), rtol=1e-7)


def test_w2_exact_gelbrich_bound_and_sliced_below(x64, rng, key):
    x, y = rng.normal(size=(60, 3)), rng.standard_t(4, size=(60, 3)) + 0.3
    w2 = E.wasserstein2_exact(x, y)
    gauss = E.gaussian_w2(x.mean(0), np.cov(x.T, bias=True), y.mean(0), np.cov(y.T, bias=True))
    assert float(gauss) <= w2 + 1e-9
    assert float(E.sliced_wasserstein(x, y, key=key, num_projections=64)) <= w2 + 1e-9


def test_sliced_equals_exact_in_one_dimension(x64, rng, key):
    a, b = rng.normal(size=(9, 1)), rng.normal(size=(9, 1)) + 1
    sw = float(E.sliced_wasserstein(a, b, key=key, num_projections=3))
    np.testing.assert_allclose(sw, E.wasserstein2_exact(a, b), rtol=1e-10)
    np.testing.assert_allclose(sw, float(E.wasserstein2_1d(a[:, 0], b[:, 0])), rtol=1e-10)


def test_gaussian_w2_closed_form(x64):
    # 1-D: |m1 - m2|² + (s1 - s2)²; commuting diagonal covariances: coordinate-wise sum
    np.testing.assert_allclose(float(E.gaussian_w2([1.0], [[4.0]], [0.0], [[1.0]])), math.sqrt(2))
    got = E.gaussian_w2([0.0, 1.0], np.diag([1.0, 9.0]), [1.0, 1.0], np.diag([4.0, 1.0]))
    np.testing.assert_allclose(float(got) ** 2, 1 + 1 + 4, rtol=1e-10)


def test_w2_exact_large_samples_approach_closed_form():
    """N(0, I) vs N((1, 0), diag(4, 1)) in 2-D: W2² = 1 + (2 - 1)² = 2. Replicates give the
    Monte Carlo band (the finite-sample bias, O(log n / n), is far inside it)."""
    rng = np.random.default_rng(7)
    vals = []
    for _ in range(6):
        x = rng.normal(size=(400, 2))
        y = rng.normal(size=(400, 2)) * np.array([2.0, 1.0]) + np.array([1.0, 0.0])
        vals.append(E.wasserstein2_exact(x, y) ** 2)
    vals = np.array(vals)
    se = vals.std(ddof=1) / np.sqrt(len(vals))
    assert abs(vals.mean() - 2.0) < 5 * se + 0.02


# ----------------------------------------------------------------------------------------------
# Sinkhorn (ott-jax)


def test_sinkhorn_converges_to_exact_w2(x64, rng):
    n = 30
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(n, 2)) * 1.3 + 0.5
    exact = E.wasserstein2_exact(x, y) ** 2
    c_max = float(np.max(((x[:, None] - y[None]) ** 2).sum(-1)))
    gaps = []
    for eps in (0.5, 0.1, 0.02):
        res = E.sinkhorn_w2(x, y, epsilon=eps, threshold=1e-5, max_iterations=20_000)
        cost = float(res.transport_cost)
        # <P_ε, C> >= W2² for a coupling, and <P_ε, C> - W2² <= ε log n (KL(P*|ab) = log n);
        # the plan meets its marginals only up to `marginal_error`.
        slack = 2 * c_max * float(res.marginal_error) + 1e-9
        assert float(res.marginal_error) < 2e-4
        assert exact - slack <= cost <= exact + eps * math.log(n) + slack
        np.testing.assert_allclose(float(res.w2), math.sqrt(cost))
        gaps.append(abs(cost - exact))
        div = E.sinkhorn_divergence(x, y, epsilon=eps, threshold=1e-5, max_iterations=20_000)
        # OT_ε(x, y) ∈ [W2², W2² + ε log n] and OT_ε(x, x), OT_ε(y, y) ∈ [0, ε log n]
        assert abs(float(div.regularized_cost) - exact) <= eps * math.log(n) + 1e-3
    assert gaps[2] < gaps[1] < gaps[0]
    assert gaps[2] < 0.01 * exact


def test_sinkhorn_divergence_of_identical_sets_is_zero(rng):
    x = rng.normal(size=(50, 3))
    div = E.sinkhorn_divergence(x, x, epsilon=0.1)
    assert abs(float(div.regularized_cost)) < 1e-4
    assert bool(div.converged)


# ----------------------------------------------------------------------------------------------
# log Z, ELBO, EUBO, ESS


def _gaussian_logz_setup(key, n, d=3, s=1.5, sigma=1.0):
    """Target exp(-|x - mu|² / (2 sigma²)) with log Z = d/2 log(2 pi sigma²); q = N(0, s² I)."""
    mu = jnp.linspace(0.2, 0.6, d)

    def log_density(x):
        return -0.5 * jnp.sum((x - mu) ** 2, -1) / sigma**2

    def log_q(x):
        return -0.5 * jnp.sum(x**2, -1) / s**2 - 0.5 * d * jnp.log(2 * jnp.pi * s**2)

    kq, kp = jax.random.split(key)
    xq = s * jax.random.normal(kq, (n, d))
    xp = mu + sigma * jax.random.normal(kp, (n, d))
    log_z = 0.5 * d * math.log(2 * math.pi * sigma**2)
    r = s**2 / sigma**2
    mu2 = float(jnp.sum(mu**2))
    kl_qp = 0.5 * d * (r - 1 - math.log(r)) + 0.5 * mu2 / sigma**2
    kl_pq = 0.5 * d * (1 / r - 1 + math.log(r)) + 0.5 * mu2 / s**2
    return (log_density(xq) - log_q(xq), log_density(xp) - log_q(xp), log_z, kl_qp, kl_pq)


def test_log_z_elbo_eubo_on_gaussians(x64, key):
    lw_q, lw_p, log_z, kl_qp, kl_pq = _gaussian_logz_setup(key, 4000)
    est = E.log_z_importance(lw_q)
    assert abs(float(est.value) - log_z) < 5 * float(est.stderr)
    lo, hi = E.elbo(lw_q), E.eubo(lw_p)
    assert abs(float(lo.value) - (log_z - kl_qp)) < 5 * float(lo.stderr)
    assert abs(float(hi.value) - (log_z + kl_pq)) < 5 * float(hi.stderr)
    assert float(lo.value) < log_z < float(hi.value)
    # stderr of the ELBO is sd/sqrt(n)
    np.testing.assert_allclose(float(lo.stderr), np.std(np.asarray(lw_q), ddof=1) / np.sqrt(4000))


def test_log_mean_exp_reference_and_stability(x64, rng):
    lw = rng.normal(size=50)
    est = E.log_z_importance(lw)
    np.testing.assert_allclose(float(est.value), np.log(np.mean(np.exp(lw))), rtol=1e-12)
    w = np.exp(lw)
    se_ref = np.std(w, ddof=1) / (np.sqrt(50) * np.mean(w))  # delta method
    np.testing.assert_allclose(float(est.stderr), se_ref, rtol=1e-10)
    shifted = E.log_z_importance(lw + 1000.0)  # exp would overflow
    np.testing.assert_allclose(float(shifted.value), float(est.value) + 1000.0, rtol=1e-12)
    np.testing.assert_allclose(float(shifted.stderr), float(est.stderr), rtol=1e-9)
    lw_zero = np.concatenate([lw, [-np.inf]])  # a zero weight
    np.testing.assert_allclose(
        float(E.log_z_importance(lw_zero).value), np.log(np.sum(w) / 51), rtol=1e-12
    )


def test_importance_ess(x64, rng):
    ess = E.importance_ess(np.zeros(40))
    np.testing.assert_allclose(float(ess.ess), 40)
    np.testing.assert_allclose(float(ess.normalized), 1)
    one = E.importance_ess(np.array([3.0, -np.inf, -np.inf]))
    np.testing.assert_allclose(float(one.ess), 1)
    lw = rng.normal(size=30) * 2
    w = np.exp(lw)
    ref = w.sum() ** 2 / np.sum(w**2)
    np.testing.assert_allclose(float(E.importance_ess(lw).ess), ref, rtol=1e-10)
    np.testing.assert_allclose(float(E.importance_ess(lw + 800).normalized), ref / 30, rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Mode coverage


def test_mode_coverage_exact_samples(key):
    target = E.gmm9()
    n = 1800
    cov = E.mode_coverage(target.sample(key, n), target)
    assert int(cov.num_covered) == 9 and float(cov.fraction_covered) == 1.0
    # multinomial standard error of each estimated weight
    se = math.sqrt((1 / 9) * (8 / 9) / n)
    assert np.all(np.abs(np.asarray(cov.weights) - 1 / 9) < 5 * se)
    np.testing.assert_allclose(float(jnp.sum(cov.counts)), n)
    assert float(cov.weight_tv) < 9 * 5 * se / 2
    soft = E.mode_coverage(target.sample(key, n), target, assignment="responsibility")
    np.testing.assert_allclose(float(jnp.sum(soft.counts)), n, rtol=1e-5)


def test_mode_coverage_missing_modes_and_thresholds(x64, rng):
    target = E.gmm9()
    means = np.asarray(target.means)
    # 20 samples near mode 0, 20 near mode 4, 1 near mode 8, 3 far away
    pts = [means[0] + 0.1 * rng.normal(size=(20, 2)), means[4] + 0.1 * rng.normal(size=(20, 2))]
    pts += [means[8][None] + 0.05, np.full((3, 2), 100.0)]
    x = np.concatenate(pts)
    for modes, kw in ((target, {}), (means, {}), (target, {"assignment": "nearest"})):
        cov = E.mode_coverage(x, modes, **kw)
        assert int(cov.num_covered) == 3
        strict = E.mode_coverage(x, modes, min_count=5, **kw)  # mode 8 has 1 + 3 far points
        assert int(strict.num_covered) == 2
        far = E.mode_coverage(x, modes, max_distance=3.0, min_count=2, **kw)
        assert int(far.num_covered) == 2
        np.testing.assert_allclose(float(far.unassigned_fraction), 3 / 44)
        np.testing.assert_allclose(np.asarray(far.counts)[[0, 4, 8]], [20, 20, 1])
        np.testing.assert_allclose(np.asarray(far.weights)[[0, 4, 8]], np.array([20, 20, 1]) / 41)
    assert E.mode_coverage(x, means).weight_tv is None


# ----------------------------------------------------------------------------------------------
# Particle metrics


def test_energy_w2_matches_reference(x64, rng):
    target = E.gaussian(jnp.zeros(3))
    x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) * 1.4
    ex = 0.5 * np.sum(x**2, -1)  # gaussian energy up to a constant shared by both sets
    ey = 0.5 * np.sum(y**2, -1)
    np.testing.assert_allclose(float(E.energy_w2(x, y, target)) ** 2, _lp_w2sq(ex, ey), rtol=1e-8)
    fn = lambda p: 0.5 * jnp.sum(p**2)  # a plain callable works too
    np.testing.assert_allclose(float(E.energy_w2(x, y, fn)), float(E.energy_w2(x, y, target)))


def test_interatomic_distance_w2_matches_reference_and_invariances(x64, rng):
    n_p, dim = 4, 2
    x, y = rng.normal(size=(5, n_p * dim)), rng.normal(size=(3, n_p * dim)) * 1.3

    def dists(s):
        p = s.reshape(n_p, dim)
        return [np.linalg.norm(p[i] - p[j]) for i in range(n_p) for j in range(i + 1, n_p)]

    dx = np.concatenate([dists(s) for s in x])
    dy = np.concatenate([dists(s) for s in y])
    got = float(E.interatomic_distance_w2(x, y, n_p, dim))
    np.testing.assert_allclose(got**2, _lp_w2sq(dx, dy), rtol=1e-8)
    # rotate, translate and permute the particles of every sample: unchanged
    moved = []
    for s in x.reshape(-1, n_p, dim):
        moved.append((s @ _rotation(rng, dim).T + rng.normal(size=dim))[rng.permutation(n_p)])
    moved = np.stack(moved)  # (n, n_particles, spatial_dim) is accepted as well
    np.testing.assert_allclose(float(E.interatomic_distance_w2(moved, y, n_p, dim)), got)


# ----------------------------------------------------------------------------------------------
# MCMC bias² (Robnik et al.)


def test_bias_squared_matches_numpy(x64, rng):
    mu, var = np.array([0.5, -1.0, 0.0]), np.array([1.0, 4.0, 0.25])
    x = mu + np.sqrt(var) * rng.normal(size=(200, 3))
    b = E.bias_squared(x, mu, var)
    b1 = (x.mean(0) - mu) ** 2 / var
    b2 = ((x**2).mean(0) - (var + mu**2)) ** 2 / (2 * var**2 + 4 * mu**2 * var)
    np.testing.assert_allclose([float(b.x_avg), float(b.x_max)], [b1.mean(), b1.max()])
    np.testing.assert_allclose([float(b.x2_avg), float(b.x2_max)], [b2.mean(), b2.max()])
    # moments as input, and an explicit Var[x²]
    bm = E.bias_squared((x.mean(0), (x**2).mean(0)), mu, var, second_moment_variance=3.0)
    np.testing.assert_allclose(float(bm.x2_avg), np.mean(b2 * (2 * var**2 + 4 * mu**2 * var) / 3))


def test_running_bias_squared_prefixes_and_pooling(x64, rng):
    chains = rng.normal(size=(3, 50, 4)) * 2.0 + 1.0
    run = E.running_bias_squared(chains[0], 1.0, 4.0)
    assert run.x2_max.shape == (50,)
    for t in (1, 17, 50):
        ref = E.bias_squared(chains[0, :t], 1.0, 4.0)
        np.testing.assert_allclose(float(run.x2_max[t - 1]), float(ref.x2_max), rtol=1e-10)
        np.testing.assert_allclose(float(run.x_avg[t - 1]), float(ref.x_avg), rtol=1e-10)
    pooled = E.running_bias_squared(chains, 1.0, 4.0)
    ref = E.bias_squared(chains[:, :20].reshape(-1, 4), 1.0, 4.0)
    np.testing.assert_allclose(float(pooled.x2_avg[19]), float(ref.x2_avg), rtol=1e-10)


def test_bias_squared_of_exact_sampler_is_about_one_over_n(key):
    """For iid draws, n * b²_i is asymptotically χ²₁ per coordinate; the coordinate average
    has mean 1 and standard deviation sqrt(2 / d)."""
    n, d = 4000, 64
    b = E.bias_squared(jax.random.normal(key, (n, d)), 0.0, 1.0)
    for v in (b.x_avg, b.x2_avg):
        assert abs(n * float(v) - 1.0) < 5 * math.sqrt(2 / d)


def test_gradients_to_threshold():
    seq = jnp.array([0.5, 0.005, 0.02, 0.009, 0.001])
    assert float(E.gradients_to_threshold(seq, grads_per_step=3)) == 4 * 3
    assert float(E.gradients_to_threshold(jnp.full(5, 0.001), grads_per_step=2)) == 2
    assert math.isinf(float(E.gradients_to_threshold(seq[::-1], grads_per_step=1)))
    assert math.isinf(float(E.gradients_to_threshold(jnp.array([0.0, jnp.nan]))))
    assert float(E.gradients_to_threshold(seq, 1, threshold=0.1)) == 2


# ----------------------------------------------------------------------------------------------
# jit-friendliness


def test_metrics_run_under_jit(key):
    """The argument checks let tracers through: every metric can sit inside a user's jit."""
    kx, ky = jax.random.split(key)
    x = jax.random.normal(kx, (40, 2))
    y = jax.random.normal(ky, (30, 2)) + 0.3
    target = E.gmm9()

    @jax.jit
    def everything(x, y):
        lw = x[:, 0]
        return (
            E.mmd(x, y).unbiased,
            E.energy_distance(x, y),
            E.sliced_wasserstein(x, y, key=key, num_projections=8),
            E.wasserstein2_1d(x[:, 0], y[:, 0]),
            E.log_z_importance(lw).value,
            E.importance_ess(lw).ess,
            E.eubo(lw).stderr,
            E.mode_coverage(x, target).num_covered,
            E.gradients_to_threshold(E.running_bias_squared(x, 0.0, 1.0).x2_avg, 2),
            E.interatomic_distance_w2(x, y, 2, 1),
        )

    out = everything(x, y)
    assert all(bool(jnp.isfinite(v)) for i, v in enumerate(out) if i != 8)
    assert float(out[8]) > 0  # inf here: 40 draws cannot reach bias² < 0.01
    np.testing.assert_allclose(out[4], E.log_z_importance(x[:, 0]).value, rtol=1e-6)
    np.testing.assert_allclose(out[5], E.importance_ess(x[:, 0]).ess, rtol=1e-6)


# ----------------------------------------------------------------------------------------------
# Bad input

_GOOD = np.ones((4, 2))
_NAN = np.array([[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]])


@pytest.mark.parametrize(
    "call",
    [
        lambda f: f(_GOOD, np.ones((4, 3))),  # mismatched dimensions
        lambda f: f(np.ones((0, 2)), _GOOD),  # empty
        lambda f: f(_GOOD, _NAN),  # non-finite
        lambda f: f(np.ones(4), _GOOD),  # 1-D instead of (n, d)
    ],
    ids=["mismatched-dim", "empty", "non-finite", "wrong-ndim"],
)
@pytest.mark.parametrize(
    "fn",
    [
        E.mmd,
        E.energy_distance,
        E.wasserstein2_exact,
        lambda x, y: E.sinkhorn_w2(x, y, epsilon=0.1),
        lambda x, y: E.sinkhorn_divergence(x, y, epsilon=0.1),
        lambda x, y: E.sliced_wasserstein(x, y, key=jax.random.key(0)),
        E.median_heuristic,
    ],
    ids=["mmd", "energy", "w2", "sinkhorn", "sinkdiv", "sliced", "median"],
)
def test_sample_pair_bad_input(fn, call):
    with pytest.raises(ValueError, match=r"`x`|`y`"):
        call(fn)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: E.mmd(_GOOD, _GOOD, kernel="laplace"), "kernel"),
        (lambda: E.mmd(_GOOD, _GOOD, bandwidth=-1.0), "bandwidth"),
        (lambda: E.mmd(_GOOD, _GOOD, bandwidth=[1.0, 2.0]), "bandwidth"),
        (lambda: E.mmd(_GOOD, _GOOD, kernel="energy", bandwidth=1.0), "bandwidth"),
        (lambda: E.mmd(_GOOD[:1], _GOOD), "`x`"),
        (lambda: E.sinkhorn_w2(_GOOD, _GOOD, epsilon=0.0), "epsilon"),
        (lambda: E.sinkhorn_w2(_GOOD, _GOOD, epsilon=0.1, max_iterations=0), "max_iterations"),
        (
            lambda: E.sliced_wasserstein(_GOOD, _GOOD, key=jax.random.key(0), num_projections=0),
            "num_projections",
        ),
        (lambda: E.wasserstein2_1d(_GOOD, np.ones(3)), "`a`"),
        (lambda: E.wasserstein2_1d(np.ones(3), np.array([1.0, np.inf])), "`b`"),
        (lambda: E.gaussian_w2(np.zeros(2), np.eye(2), np.zeros(3), np.eye(2)), "mean2"),
        (lambda: E.log_z_importance(np.array([0.0, np.nan])), "log_w"),
        (lambda: E.log_z_importance(np.array([0.0, np.inf])), "log_w"),
        (lambda: E.log_z_importance(np.full(3, -np.inf)), "log_w"),
        (lambda: E.log_z_importance(np.zeros((2, 2))), "log_w"),
        (lambda: E.importance_ess(np.zeros(0)), "log_w"),
        (lambda: E.elbo(np.array([0.0, -np.inf])), "log_w"),
        (lambda: E.eubo(np.array([np.nan])), "log_w_target_samples"),
        (lambda: E.mode_coverage(_GOOD, np.zeros((3, 3))), "modes"),
        (lambda: E.mode_coverage(_GOOD, np.zeros(3)), "modes"),
        (
            lambda: E.mode_coverage(_GOOD, np.zeros((3, 2)), assignment="responsibility"),
            "assignment",
        ),
        (lambda: E.mode_coverage(_GOOD, E.gmm9(), assignment="kmeans"), "assignment"),
        (lambda: E.mode_coverage(_GOOD, E.gmm9(), min_count=0), "min_count"),
        (lambda: E.mode_coverage(_GOOD, E.gmm9(), max_distance=-1.0), "max_distance"),
        (lambda: E.mode_coverage(_NAN, E.gmm9()), "samples"),
        (lambda: E.bias_squared(_GOOD, 0.0, 0.0), "variance"),
        (lambda: E.bias_squared(_GOOD, np.zeros(3), 1.0), "mean"),
        (
            lambda: E.bias_squared(_GOOD, 0.0, 1.0, second_moment_variance=-1.0),
            "second_moment_variance",
        ),
        (lambda: E.bias_squared((np.zeros(2), np.zeros(3)), 0.0, 1.0), "samples_or_moments"),
        (lambda: E.bias_squared(_NAN, 0.0, 1.0), "samples_or_moments"),
        (lambda: E.running_bias_squared(np.ones(5), 0.0, 1.0), "chain"),
        (lambda: E.gradients_to_threshold(np.ones((2, 2)), 1), "running_bias"),
        (lambda: E.gradients_to_threshold(np.ones(2), 1, threshold=0.0), "threshold"),
        (lambda: E.gradients_to_threshold(np.ones(2), 0), "grads_per_step"),
        (lambda: E.interatomic_distance_w2(_GOOD, _GOOD, 3, 1), "n_particles"),
        (lambda: E.interatomic_distance_w2(_GOOD, _GOOD, 1, 2), "n_particles"),
        (lambda: E.energy_w2(_GOOD, np.ones((3, 3)), E.gaussian(jnp.zeros(2))), "event shape"),
        (lambda: E.energy_w2(np.ones((0, 2)), _GOOD, E.gaussian(jnp.zeros(2))), "`x`"),
        (lambda: E.energy_w2(_GOOD, _GOOD, lambda p: p), "energy"),
        (lambda: E.energy_w2(_GOOD, _GOOD, lambda p: jnp.log(p[0] - 1)), "energy"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
