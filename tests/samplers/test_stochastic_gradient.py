"""Stochastic-gradient MCMC on data energies: through `dx.sample`, the exact stationary law on
Gaussian-posterior linear regression (the bias predicted for a step size, and that it falls
with the step size), schedules, data-gradient accounting, and clear errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.samplers as ds

NUM_DATA, DIM, BATCH = 200, 2, 20


@pytest.fixture(scope="module")
def target():
    design, y = dx.energies.simulate_linear_regression(jax.random.key(0), NUM_DATA, DIM)
    return dx.energies.linear_regression(design, y)


def _run(sampler, target, *, num_steps, num_warmup, num_chains, key=1):
    x0 = target.sample(jax.random.key(5), num_chains)  # start at the posterior: short burn-in
    return dx.sample(
        sampler,
        target,
        x0,
        key=jax.random.key(key),
        num_steps=num_steps,
        num_warmup=num_warmup,
        check_health=False,
    )


def _covariance(result, mean):
    """Pooled covariance about the known stationary mean, and its standard error from the
    spread of the per-chain estimates (independent chains)."""
    xs = np.asarray(result.kernel_samples, np.float64) - mean
    per_chain = np.einsum("cti,ctj->cij", xs, xs) / xs.shape[1]
    return per_chain.mean(0), per_chain.std(0, ddof=1) / np.sqrt(per_chain.shape[0])


# ---- the exact stationary law (fast: no sampling) ----------------------------------------------


def test_predicted_bias_falls_with_step_size(target):
    """SGLD's exact stationary covariance tends to the posterior as h -> 0, its error falling
    linearly in h (the gradient noise and the Euler error are both O(h)); its mean is exact."""
    post = np.asarray(target.posterior_covariance, np.float64)
    errors = []
    for h in (4e-4, 2e-4, 1e-4, 5e-5):
        mean, cov = ds.stationary_moments(ds.SGLD(step_size=h, batch_size=BATCH), target)
        np.testing.assert_allclose(mean, np.asarray(target.mean), rtol=1e-4, atol=1e-5)
        errors.append(np.linalg.norm(cov - post) / np.linalg.norm(post))
    errors = np.array(errors)
    assert np.all(np.diff(errors) < 0)
    slopes = np.diff(np.log(errors)) / np.log(0.5)
    assert np.all(np.abs(slopes - 1.0) < 0.1), slopes


def test_predicted_sghmc_full_batch_is_exact_and_minibatch_is_not(target):
    """SGHMC (BAOAB) with the full data is exact in the position on a Gaussian posterior; with
    minibatches the gradient noise heats it by about h V / (2 gamma)."""
    post = np.asarray(target.posterior_covariance, np.float64)
    _, full = ds.stationary_moments(
        ds.SGHMC(step_size=0.02, friction=10.0, batch_size=NUM_DATA), target
    )
    np.testing.assert_allclose(full, post, rtol=1e-6, atol=1e-9)
    _, mini = ds.stationary_moments(
        ds.SGHMC(step_size=0.02, friction=10.0, batch_size=BATCH), target
    )
    _, mini_small = ds.stationary_moments(
        ds.SGHMC(step_size=0.005, friction=10.0, batch_size=BATCH), target
    )
    assert np.linalg.norm(mini - post) > 4 * np.linalg.norm(mini_small - post) * 0.9


def test_control_variate_reduces_predicted_bias(target):
    """Around the posterior mean, SGLD-CV's gradient noise is far smaller: its stationary law is
    nearly the full-batch one."""
    post = np.asarray(target.posterior_covariance, np.float64)
    sampler = ds.SGLD(step_size=2e-4, batch_size=BATCH)
    _, plain = ds.stationary_moments(sampler, target)
    _, cv = ds.stationary_moments(sampler, target.with_control_variate(target.mean))
    _, full = ds.stationary_moments(ds.SGLD(step_size=2e-4, batch_size=NUM_DATA), target)
    assert np.linalg.norm(cv - post) < 0.2 * np.linalg.norm(plain - post)
    assert np.linalg.norm(cv - full) < 0.05 * np.linalg.norm(plain - post)


# ---- through dx.sample ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler",
    [
        ds.SGLD(step_size=1e-4, batch_size=BATCH),
        ds.PreconditionedSGLD(step_size=1e-3, batch_size=BATCH),
        ds.SGHMC(step_size=0.01, friction=10.0, batch_size=BATCH, noise_estimate=True),
        ds.SGNHT(step_size=0.005, batch_size=BATCH, replace=True),
    ],
    ids=["SGLD", "pSGLD", "SGHMC", "SGNHT"],
)
def test_sample_runs_and_counts_data_gradients(target, sampler):
    """Each sampler runs through dx.sample, stays near the posterior, is reproducible, and the
    result's data-gradient count is steps x batch + N (the exact initial gradient)."""
    res = _run(sampler, target, num_steps=200, num_warmup=20, num_chains=2)
    again = _run(sampler, target, num_steps=200, num_warmup=20, num_chains=2)
    np.testing.assert_array_equal(res.kernel_samples, again.kernel_samples)
    assert np.all(np.isfinite(np.asarray(res.kernel_samples)))
    sd = np.sqrt(np.asarray(target.variance))
    assert np.all(np.abs(np.asarray(res.kernel_samples).mean((0, 1)) - target.mean) < 6 * sd)
    grads = ds.data_gradient_evaluations(res)
    np.testing.assert_array_equal(grads, np.full(2, 220 * BATCH + NUM_DATA))
    assert res.num_divergent == 0


def test_nuts_data_gradient_count(target):
    res = _run(ds.MALA(step_size=0.01), target, num_steps=10, num_warmup=0, num_chains=2)
    np.testing.assert_array_equal(ds.data_gradient_evaluations(res), np.full(2, 11 * NUM_DATA))


def test_control_variate_counted_twice(target):
    cv = target.with_control_variate(target.mean)
    res = _run(
        ds.SGLD(step_size=1e-4, batch_size=BATCH), cv, num_steps=10, num_warmup=0, num_chains=2
    )
    np.testing.assert_array_equal(
        ds.data_gradient_evaluations(res), np.full(2, 10 * 2 * BATCH + 2 * NUM_DATA)
    )


def test_no_retrace(target):
    """The compiled chain loop is traced once for two calls with the same shapes."""
    sampler = ds.SGLD(step_size=1e-4, batch_size=BATCH)

    @eqx.filter_jit
    @eqx.debug.assert_max_traces(max_traces=1)
    def run(sampler, energy, x0, key):
        return ds.run_chains(sampler, energy, x0, key=key, num_steps=5).samples

    x0 = jnp.tile(target.mean, (2, 1))
    a = run(sampler, target, x0, jax.random.key(0))
    b = run(ds.SGLD(step_size=2e-4, batch_size=BATCH), target, x0, jax.random.key(1))
    assert a.shape == b.shape == (2, 5, DIM)


def test_schedules():
    cyc = ds.CyclicalSchedule(cycle_length=10, exploration_fraction=0.3)
    t = jnp.arange(20)
    f = np.asarray(cyc.factor(t))
    assert f[0] == 1.0 and f[10] == 1.0 and np.all(f > 0) and np.all(np.diff(f[:10]) < 0)
    mask = cyc.sampling_mask(20)
    np.testing.assert_array_equal(mask[:10], [False] * 3 + [True] * 7)
    poly = ds.PolynomialSchedule(offset=10.0, decay=0.5)
    np.testing.assert_allclose(poly.factor(jnp.asarray(30)), 0.5, rtol=1e-6)
    tab = ds.TabulatedSchedule(jnp.array([1.0, 0.5]))
    np.testing.assert_allclose(tab.factor(jnp.arange(4)), [1.0, 0.5, 0.5, 0.5])


def test_cyclical_schedule_through_sample(target):
    """Exploration steps add no noise: with exploration_fraction near 1 the chain behaves as
    stochastic-gradient ascent and shrinks towards the mode."""
    sched = ds.CyclicalSchedule(cycle_length=50, exploration_fraction=0.0)
    res = _run(
        ds.SGLD(step_size=1e-4, batch_size=BATCH, schedule=sched),
        target,
        num_steps=100,
        num_warmup=0,
        num_chains=2,
    )
    assert np.all(np.isfinite(np.asarray(res.kernel_samples)))
    ascent = ds.SGLD(
        step_size=1e-3,
        batch_size=NUM_DATA,
        schedule=ds.CyclicalSchedule(cycle_length=1000, exploration_fraction=0.999),
    )
    res = _run(ascent, target, num_steps=100, num_warmup=0, num_chains=2)
    last = np.asarray(res.kernel_samples)[:, -1]
    np.testing.assert_allclose(last, np.tile(np.asarray(target.mean), (2, 1)), atol=1e-3)


def test_bad_input(target):
    with pytest.raises(ValueError, match="batch_size"):
        ds.SGLD(step_size=0.1, batch_size=0)
    with pytest.raises(ValueError, match="batch_size"):
        dx.sample(
            ds.SGLD(step_size=1e-4, batch_size=NUM_DATA + 1),
            target,
            target.mean,
            key=jax.random.key(0),
            num_steps=2,
            num_warmup=0,
            check_health=False,
        )
    with pytest.raises(ValueError, match="step_size"):
        ds.SGHMC(step_size=-0.1)
    with pytest.raises(ValueError, match="friction"):
        ds.SGHMC(step_size=0.1, friction=0.0)
    with pytest.raises(ValueError, match="values"):
        ds.TabulatedSchedule(jnp.array([1.0, 0.0]))
    with pytest.raises(ValueError, match="cycle_length"):
        ds.CyclicalSchedule(cycle_length=0)
    with pytest.raises(ValueError, match="exploration_fraction"):
        ds.CyclicalSchedule(cycle_length=5, exploration_fraction=1.0)
    with pytest.raises(ValueError, match="decay"):
        ds.PreconditionedSGLD(step_size=0.1, decay=1.0)
    with pytest.raises(TypeError, match="schedule"):
        ds.SGLD(step_size=0.1, schedule=0.5)
    gaussian = dx.sample(
        ds.SGLD(step_size=0.1),
        dx.energies.gaussian(jnp.zeros(2)),
        jnp.zeros(2),
        key=jax.random.key(0),
        num_steps=2,
        num_warmup=0,
        check_health=False,
    )
    with pytest.raises(TypeError, match="data energy"):
        ds.data_gradient_evaluations(gaussian)


# ---- statistical checks against the exact stationary law (slow) -------------------------------


@pytest.mark.slow
def test_sgld_matches_predicted_law_and_bias_falls(target):
    """SGLD's empirical covariance equals the exact stationary covariance for its step size
    (within 4 MCSE) at h and h/4, is distinguishable from the posterior at h, and its distance
    to the posterior falls with h."""
    post = np.asarray(target.posterior_covariance, np.float64)
    errs = []
    for h in (5e-4, 1.25e-4):
        sampler = ds.SGLD(step_size=h, batch_size=BATCH)
        mean, pred = ds.stationary_moments(sampler, target)
        res = _run(sampler, target, num_steps=1500, num_warmup=300, num_chains=48)
        emp, se = _covariance(res, mean)
        assert np.all(np.abs(emp - pred) < 4 * se + 1e-12), (h, emp, pred, se)
        errs.append(np.abs(np.diag(emp) / np.diag(post) - 1.0).max())
        if h == 5e-4:  # the bias is real at this step size: many MCSE away from the posterior
            assert np.all(np.abs(np.diag(emp - post)) > 6 * np.diag(se))
    assert errs[1] < 0.5 * errs[0]


@pytest.mark.slow
def test_sghmc_matches_predicted_law(target):
    """SGHMC's empirical covariance equals the exact stationary one (minibatch: heated; full
    batch: the posterior) within 4 MCSE."""
    for batch in (BATCH, NUM_DATA):
        sampler = ds.SGHMC(step_size=0.02, friction=10.0, batch_size=batch)
        mean, pred = ds.stationary_moments(sampler, target)
        res = _run(sampler, target, num_steps=1500, num_warmup=300, num_chains=48)
        emp, se = _covariance(res, mean)
        assert np.all(np.abs(emp - pred) < 4 * se + 1e-12), (batch, emp, pred, se)


@pytest.mark.slow
def test_psgld_and_sgnht_approach_posterior_as_step_falls(target):
    """pSGLD and SGNHT (no closed form): the mean is right within MCSE, and the variance error
    falls as the step size falls (step sizes where both mix within the run, burn-in over equal
    dynamics time)."""
    post_var = np.asarray(target.variance, np.float64)
    for make, steps in (
        (lambda h: ds.PreconditionedSGLD(step_size=h, batch_size=BATCH), (2e-2, 4e-3)),
        (lambda h: ds.SGNHT(step_size=h, batch_size=BATCH), (2e-2, 4e-3)),
    ):
        errs = []
        for h in steps:
            # burn-in over the same dynamics time at every h: SGNHT's thermostat equilibrates
            # in time ~ 1/h steps (too short a burn-in leaves the small step overheated)
            warmup = int(round(300 * steps[0] / h))
            res = _run(make(h), target, num_steps=1000, num_warmup=warmup, num_chains=64)
            xs = np.asarray(res.kernel_samples, np.float64)
            chain_means = xs.mean(1)
            se_mean = chain_means.std(0, ddof=1) / np.sqrt(xs.shape[0])
            assert np.all(np.abs(chain_means.mean(0) - np.asarray(target.mean)) < 4 * se_mean)
            errs.append(np.abs(xs.reshape(-1, DIM).var(0) / post_var - 1.0).max())
        assert errs[1] < errs[0], errs
