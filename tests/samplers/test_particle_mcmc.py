"""Particle filters, smoothers and particle MCMC against the exact Kalman filter / RTS smoother
of a scalar linear-Gaussian model (Monte Carlo tolerances from the spread of repeated runs)."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._particle_mcmc import _filter

from ..energies.test_ssm import joint_gaussian_posterior, scalar_model

T = 12
Z = 4.0  # |z| bound for single checks; Bonferroni-style for per-time checks below
Z_T = 4.5


@pytest.fixture(scope="module")
def lg():
    """The scalar model, its data and the exact smoothing law (float64)."""
    with jax.enable_x64(True):
        model = scalar_model()
        _, ys = model.simulate(jax.random.key(11), T)
        ys = np.asarray(ys)
        exact = de.rts_smoother(model, jnp.asarray(ys))
        mean, cov, log_ev = joint_gaussian_posterior(ys)
        return model, ys, exact, mean, cov, log_ev


def _runs(fn, num, seed=0):
    """`fn` over `num` keys, one run after another in one compiled `lax.map` (it compiles in
    about half the time of the `vmap` of a particle filter; the runs themselves are cheap)."""
    return jax.lax.map(fn, jax.random.split(jax.random.key(seed), num))


@pytest.mark.parametrize("kind", ["bootstrap", "guided", "auxiliary"])
def test_log_likelihood_unbiased(lg, kind, x64):
    """exp(log-likelihood) is unbiased: over 256 runs with 24 particles the mean of Ẑ/Z is 1
    within its MCSE, i.e. the log of the mean matches Kalman's log-likelihood."""
    model, ys, exact, *_ = lg
    proposal = None
    if kind != "bootstrap":
        opt = model.optimal_proposal()
        proposal = opt if kind == "auxiliary" else _GuidedOnly(opt)

    def one(k):
        return ds.particle_filter(model, ys, key=k, num_particles=24, proposal=proposal)

    out = _runs(one, 256)
    ratio = np.exp(np.asarray(out.log_likelihood) - float(exact.log_likelihood))
    mcse = ratio.std(ddof=1) / np.sqrt(ratio.size)
    assert abs(ratio.mean() - 1.0) < Z * mcse, (ratio.mean(), mcse)
    assert mcse > 0 and np.all(np.isfinite(ratio))
    if kind == "auxiliary":  # fully adapted: uniform weights after every resampling move
        ess, res = np.asarray(out.ess), np.asarray(out.resampled)
        np.testing.assert_allclose(ess[res], 24.0, rtol=1e-9)
    assert not np.any(np.asarray(out.collapsed_at) >= 0)


class _GuidedOnly(de.AbstractProposal):
    """The optimal proposal without its look-ahead: a plain guided filter."""

    inner: de.AbstractAuxiliaryProposal

    def initial_sample(self, key, y):
        return self.inner.initial_sample(key, y)

    def initial_log_density(self, x, y):
        return self.inner.initial_log_density(x, y)

    def sample(self, key, x_prev, y, t):
        return self.inner.sample(key, x_prev, y, t)

    def log_density(self, x_prev, x, y, t):
        return self.inner.log_density(x_prev, x, y, t)


def test_filtering_means_and_no_retrace(lg, x64):
    """Filtering means within MCSE of Kalman's at every step (16 runs of 256 particles); a
    second call with the same shapes does not retrace; the same key gives the same result."""
    model, ys, exact, *_ = lg

    # 16 eager calls of ONE compiled filter, which the no-retrace check below reuses
    keys = jax.random.split(jax.random.key(0), 16)
    means = np.stack(
        [
            ds.particle_filter(model, ys, key=k, num_particles=256).filtering_means[:, 0]
            for k in keys
        ]
    )
    z = (means.mean(0) - np.asarray(exact.filtered_means[:, 0])) / (
        means.std(0, ddof=1) / np.sqrt(16)
    )
    assert np.all(np.abs(z) < Z_T), z
    a = ds.particle_filter(model, ys, key=jax.random.key(5), num_particles=256)
    before = eqx.debug.get_num_traces(_filter._particle_filter_jit.__wrapped__)
    b = ds.particle_filter(model, ys + 0.1, key=jax.random.key(6), num_particles=256)
    c = ds.particle_filter(model, ys, key=jax.random.key(5), num_particles=256)
    assert eqx.debug.get_num_traces(_filter._particle_filter_jit.__wrapped__) == before
    np.testing.assert_array_equal(a.log_likelihood, c.log_likelihood)
    assert a.log_likelihood != b.log_likelihood
    assert a.particles.shape == (T, 256, 1) and a.log_weights.shape == (T, 256)


def test_lee_whiteley_variance(lg, x64):
    """With multinomial resampling at every step, `Ẑ² · likelihood_relative_variance` is
    unbiased for Var(Ẑ): its mean matches the mean of (Ẑ/Z - 1)² within MCSE."""
    model, ys, exact, *_ = lg

    def one(k):
        out = ds.particle_filter(
            model, ys, key=k, num_particles=16, resampling="multinomial", ess_threshold=1.0
        )
        return out.log_likelihood, out.likelihood_relative_variance

    ll, rel = _runs(one, 512)
    ratio = np.exp(np.asarray(ll) - float(exact.log_likelihood))
    d = ratio**2 * np.asarray(rel) - (ratio - 1.0) ** 2
    assert abs(d.mean()) < Z * d.std(ddof=1) / np.sqrt(d.size), (d.mean(), (ratio - 1).var())
    assert ds.particle_filter(model, ys, key=jax.random.key(0), num_particles=8).likelihood_relative_variance is None  # fmt: skip


@pytest.mark.slow
def test_score_estimate(lg, x64):
    """`differentiable=True`: the gradient of the log-likelihood estimate in the transition
    coefficient averages to Kalman's exact score (Fisher's identity) within MCSE; the forward
    value is unchanged."""
    _, ys, *_ = lg

    def model_fn(a):
        return de.linear_gaussian_ssm(
            a[None, None], jnp.array([[0.5]]), jnp.array([[1.3]]), jnp.array([[0.7]]),
            jnp.array([0.2]), jnp.array([[1.5]]),
        )  # fmt: skip

    def ll(a, k, diff):
        return ds.particle_filter(
            model_fn(a), ys, key=k, num_particles=256, differentiable=diff
        ).log_likelihood

    a = jnp.asarray(0.8)
    grads = _runs(lambda k: jax.grad(ll)(a, k, True), 32)
    exact = jax.grad(lambda a: de.kalman_filter(model_fn(a), ys).log_likelihood)(a)
    g = np.asarray(grads)
    assert abs(g.mean() - float(exact)) < Z * g.std(ddof=1) / np.sqrt(g.size) + 0.02, (
        g.mean(),
        exact,
    )
    k = jax.random.key(3)
    np.testing.assert_allclose(ll(a, k, True), ll(a, k, False), rtol=1e-12)


def test_smoothers_match_rts(lg, x64):
    """FFBSi (exact and rejection) and fixed-lag smoothing means, and PaRIS estimates of
    Σ x_{t-1} x_t, within MCSE of the RTS smoother over 12 independent runs of 128 particles
    (FFBSi draws from the particle system of the PaRIS run's filter)."""
    model, ys, exact, mean, cov, _ = lg
    cross = float(np.sum(np.diag(cov, 1) + mean[:-1] * mean[1:]))

    def one(k):
        k2, k3, k4, k5 = jax.random.split(k, 4)
        paris = ds.paris_smoother(
            model, ys, lambda xp, x, t: jnp.sum(xp * x), key=k4, num_particles=128
        )
        pf = paris.filter
        ex = ds.ffbsi(model, pf, key=k2, num_samples=64).mean(0)[:, 0]
        rj = ds.ffbsi(model, pf, key=k3, num_samples=64, method="rejection").mean(0)[:, 0]
        lag = ds.fixed_lag_smoother(model, ys, key=k5, num_particles=128, lag=T).smoothed_means
        return ex, rj, paris.estimate, lag[:, 0]

    ex, rj, paris, lag = (np.asarray(a) for a in _runs(one, 12))
    for name, est in (("exact", ex), ("rejection", rj), ("fixed-lag", lag)):
        z = (est.mean(0) - mean) / (est.std(0, ddof=1) / np.sqrt(12))
        assert np.all(np.abs(z) < Z_T), (name, z)
    z = (paris.mean() - cross) / (paris.std(ddof=1) / np.sqrt(12))
    assert abs(z) < Z, (paris.mean(), cross)


def test_conditional_smc_leaves_smoothing_law_invariant(lg, x64):
    """References drawn from the exact smoothing law stay distributed by it after one CSMC move
    with only 4 particles (backward sampling and ancestor sampling): means and variances per
    time within MCSE of the exact ones."""
    model, ys, _, mean, cov, _ = lg
    chol = np.linalg.cholesky(cov)
    num = 1024
    refs = mean + np.random.default_rng(0).standard_normal((num, T)) @ chol.T
    refs = jnp.asarray(refs[..., None])
    for backward in (True, False):

        def move(ref, k, backward=backward):
            return ds.conditional_smc(
                model, ys, ref, key=k, num_particles=4, backward_sampling=backward
            )[0][:, 0]

        keys = jax.random.split(jax.random.key(1), num)
        new = np.asarray(jax.lax.map(lambda a: move(*a), (refs, keys)))
        assert not np.allclose(new, np.asarray(refs[..., 0]))
        sd = np.sqrt(np.diag(cov))
        z_mean = (new.mean(0) - mean) / (sd / np.sqrt(num))
        # variance of a sample variance of Gaussians: 2 σ⁴ / n
        z_var = (new.var(0, ddof=1) - np.diag(cov)) / (np.sqrt(2 / num) * np.diag(cov))
        assert np.all(np.abs(z_mean) < Z_T), (backward, z_mean)
        assert np.all(np.abs(z_var) < Z_T), (backward, z_var)


@pytest.mark.slow
def test_ppg_runs_and_is_close(lg, x64):
    """PPG: the averaged estimate is within MCSE of the exact Σ x_{t-1} x_t (spread of the
    per-iteration estimates, inflated for autocorrelation by batching)."""
    model, ys, _, mean, cov, _ = lg
    cross = float(np.sum(np.diag(cov, 1) + mean[:-1] * mean[1:]))
    out = ds.ppg_smoother(
        model,
        ys,
        lambda xp, x, t: jnp.sum(xp * x),
        key=jax.random.key(2),
        num_particles=16,
        num_iterations=210,
        num_burnin=10,
    )
    est = np.asarray(out.estimates[10:])
    batches = est.reshape(20, -1).mean(1)
    assert abs(float(out.estimate) - cross) < Z * batches.std(ddof=1) / np.sqrt(20)
    assert out.reference.shape == (T, 1)


class _Collapsing(de.AbstractStateSpaceModel):
    """A random walk whose observation density is zero everywhere at t = 3."""

    state_shape: tuple = (1,)
    observation_shape: tuple = (1,)

    def initial_sample(self, key):
        return jax.random.normal(key, (1,))

    def initial_log_density(self, x):
        return -0.5 * jnp.sum(x**2)

    def transition_sample(self, key, x_prev, t):
        return x_prev + jax.random.normal(key, (1,))

    def transition_log_density(self, x_prev, x, t):
        return -0.5 * jnp.sum((x - x_prev) ** 2)

    def observation_sample(self, key, x, t):
        return x

    def observation_log_density(self, x, y, t):
        return jnp.where(t == 3, -jnp.inf, -0.5 * jnp.sum((y - x) ** 2))


def test_bad_inputs(lg):
    model, ys, *_ = lg
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="observations"):
        ds.particle_filter(model, ys[:, None], key=key, num_particles=10)
    with pytest.raises(ValueError, match="observations"):
        ds.particle_filter(model, np.zeros((5, 2)), key=key, num_particles=10)
    with pytest.raises(ValueError, match="num_particles"):
        ds.particle_filter(model, ys, key=key, num_particles=1)
    for bad in (0.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="ess_threshold"):
            ds.particle_filter(model, ys, key=key, num_particles=10, ess_threshold=bad)
    with pytest.raises(TypeError, match="proposal"):
        ds.particle_filter(model, ys, key=key, num_particles=10, proposal=lambda k, x: x)
    with pytest.raises(ValueError, match="resampling"):
        ds.particle_filter(model, ys, key=key, num_particles=10, resampling="residual")
    with pytest.raises(TypeError, match="model"):
        ds.particle_filter(de.gaussian(jnp.zeros(1)), ys, key=key, num_particles=10)
    out = ds.particle_filter(_Collapsing(), ys, key=key, num_particles=10, raise_on_collapse=False)
    with pytest.raises(TypeError, match="rejection"):
        ds.ffbsi(_Collapsing(), out, key=key, num_samples=2, method="rejection")
    with pytest.raises(ValueError, match="reference"):
        ds.conditional_smc(model, ys, np.zeros((T + 1, 1)), key=key, num_particles=4)
    with pytest.raises(ValueError, match="time step 3"):
        ds.particle_filter(_Collapsing(), ys, key=key, num_particles=10)
    assert int(out.collapsed_at) == 3 and out.log_likelihood == -np.inf
    assert np.all(np.isfinite(np.asarray(out.log_weights)))


# ----------------------------------------------------------------------------------------------
# particle MCMC on θ against the exact posterior (quadrature of the Kalman marginal) and NUTS


def _theta_model(theta):
    a = jnp.tanh(theta[0])
    return de.linear_gaussian_ssm(
        a[None, None], jnp.array([[0.5]]), jnp.array([[1.0]]), jnp.array([[0.5]]),
        jnp.zeros(1), jnp.array([[1.0]]),
    )  # fmt: skip


@pytest.fixture(scope="module")
def theta_problem():
    with jax.enable_x64(True):
        _, ys = _theta_model(jnp.array([1.0])).simulate(jax.random.key(4), 40)
        prior = de.gaussian(jnp.zeros(1))
        post = de.kalman_marginal(_theta_model, prior, ys)
        grid = jnp.linspace(-1.5, 4.0, 2001)
        logp = jax.vmap(lambda t: post.log_density(t[None]))(grid)
        w = np.exp(np.asarray(logp) - np.max(np.asarray(logp)))
        w /= w.sum()
        g = np.asarray(grid)
        m = float(np.sum(w * g))
        sd = float(np.sqrt(np.sum(w * (g - m) ** 2)))
        return ys, prior, post, m, sd


def _check_chain(result, m, sd, name):
    x = np.asarray(result.samples)[..., 0]
    ess = float(np.min(np.asarray(ds.ess(x[..., None]))))
    z = (x.mean() - m) / (sd / np.sqrt(ess))
    assert abs(z) < Z, (name, x.mean(), m, ess)
    assert 0.75 * sd < x.std() < 1.33 * sd, (name, x.std(), sd)


@pytest.mark.slow
def test_pmmh_and_particle_gibbs_recover_posterior(theta_problem, x64):
    """PMMH (through dx.sample with window adaptation) and particle Gibbs recover the exact
    posterior of θ (quadrature of the Kalman marginal), as NUTS on that marginal does."""
    ys, prior, post, m, sd = theta_problem
    x0 = jnp.array([0.5])
    kw = dict(key=jax.random.key(1), num_chains=4, progress=False)
    nuts = dx.sample(ds.NUTS(step_size=0.3), post, x0, num_steps=500, num_warmup=300, **kw)
    _check_chain(nuts, m, sd, "NUTS")
    pmmh = dx.sample(
        ds.PMMH(_theta_model, ys, num_particles=64, step_size=0.3),
        prior, x0, num_steps=1500, num_warmup=300, **kw,
    )  # fmt: skip
    _check_chain(pmmh, m, sd, "PMMH")
    pg = dx.sample(
        ds.ParticleGibbs(
            _theta_model, ys, num_particles=16, theta_sampler=ds.RandomWalk(step_size=0.4),
            num_theta_steps=3,
        ),
        prior, x0, num_steps=1000, num_warmup=0, **kw,
    )  # fmt: skip
    _check_chain(pg, m, sd, "ParticleGibbs")


@pytest.mark.slow
def test_score_climbing_reaches_mle(theta_problem, x64):
    """Markov score climbing with particle-Gibbs moves ends within a small fraction of the
    posterior spread of the exact maximum-likelihood estimate (Kalman, on a grid)."""
    import optax

    ys, *_ = theta_problem
    grid = jnp.linspace(-1.0, 4.0, 4001)
    ll = jax.vmap(lambda t: de.kalman_filter(_theta_model(t[None]), ys).log_likelihood)(grid)
    mle = float(grid[int(jnp.argmax(ll))])
    schedule = optax.exponential_decay(0.05, 400, 0.05)
    theta, history = ds.score_climbing(
        _theta_model, ys, jnp.array([0.0]), key=jax.random.key(3),
        optimizer=optax.adam(schedule), num_steps=800, batch_size=8, num_particles=32,
    )  # fmt: skip
    assert abs(float(theta[0]) - mle) < 0.1, (theta, mle)
    assert np.all(np.isfinite(np.asarray(history.losses)))


@pytest.mark.slow
def test_pmmh_matches_lotka_volterra_reference(x64):
    """A short PMMH run on the shipped stochastic Lotka–Volterra problem agrees with the
    committed long-run reference posterior of θ: means and sds within 4 combined MCSEs (the
    run's from ArviZ, the reference's stored with it)."""
    problem = de.lotka_volterra_problem()
    assert problem.reference_mean is not None and problem.reference_sd is not None
    assert problem.reference_mcse_mean is not None and problem.reference_mcse_sd is not None
    x0 = problem.true_theta + 0.05 * jax.random.normal(jax.random.key(0), (4, 2))
    result = dx.sample(
        ds.PMMH(problem.model_fn, problem.observations, num_particles=64),
        problem.prior, x0, key=jax.random.key(1), num_steps=1200, num_warmup=300,
        num_chains=4, adaptation=ds.WindowAdaptation(metric="dense", pooled=True),
        progress=False, check_health=False,
    )  # fmt: skip
    draws = np.asarray(result.samples)
    flat = draws.reshape(-1, 2)
    for name, est, mcse, ref, ref_mcse in (
        ("mean", flat.mean(0), ds.mcse(draws), problem.reference_mean,
         problem.reference_mcse_mean),
        ("sd", flat.std(0, ddof=1), ds.mcse(draws, method="sd"), problem.reference_sd,
         problem.reference_mcse_sd),
    ):  # fmt: skip
        z = (est - np.asarray(ref)) / np.sqrt(mcse**2 + np.asarray(ref_mcse) ** 2)
        assert np.all(np.abs(z) < Z), (name, est, ref, z)
