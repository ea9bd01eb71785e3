"""SMC / AIS: log Z against exact values within estimated standard errors, reported weight
degeneracy, evaluation counts, bad input, determinism and no retracing."""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers import _smc

D = 3
MEAN = np.array([1.0, -0.5, 2.0])
STD = np.array([0.5, 1.5, 0.8])
OFFSET = 1.7


def _shifted_gaussian():
    """An unnormalized Gaussian with exact log Z = OFFSET + Σ log(√(2π) σ)."""

    mean, std = jnp.asarray(MEAN), jnp.asarray(STD)  # in the current precision

    def log_density(x):
        return OFFSET - 0.5 * jnp.sum(((x - mean) / std) ** 2)

    exact = OFFSET + float(np.sum(np.log(np.sqrt(2 * np.pi) * STD)))
    return de.from_log_density(log_density, jnp.zeros(D)), exact


def _within(result, exact, n_se=3.0):
    est = result.log_z_estimate
    value, se = float(est.value), float(est.stderr)
    assert np.isfinite(se) and se > 0
    assert abs(value - exact) <= n_se * se, f"log Z {value} ± {se} vs exact {exact}"
    return value, se


def test_gaussian_log_z_adaptive(x64):
    target, exact = _shifted_gaussian()
    smc = ds.SMC(
        ds.MALA(step_size=0.2), reference_scale=2.0, resampling="multinomial", target_ess=0.7
    )
    result = smc.run(target, key=jax.random.key(0), num_particles=1000)
    value, se = _within(result, exact)
    assert se < 0.1
    assert result.betas[0] == 0.0 and result.betas[-1] == 1.0
    assert np.all(np.diff(result.betas) > 0)
    assert not result.truncated
    assert result.num_stages == len(result.ess) == len(result.betas) - 1
    # the particles target the target: weighted mean within 5 standard errors
    w = np.exp(np.asarray(result.log_weights))
    x = np.asarray(result.particles)
    mean = np.sum(w[:, None] * x, axis=0)
    se_mean = STD / np.sqrt(float(1.0 / np.sum(w**2)) / 3.0)  # allow for correlation
    assert np.all(np.abs(mean - MEAN) <= 5 * se_mean)


def test_gaussian_log_z_fixed_schedule_independent_runs(x64):
    target, exact = _shifted_gaussian()
    smc = ds.SMC(ds.HMC(step_size=0.3, num_integration_steps=3), jnp.linspace(0, 1, 6) ** 2)
    result = smc.run(target, key=jax.random.key(1), num_particles=300, num_runs=8)
    assert result.log_z.shape == (8,) and result.particles.shape == (8, 300, D)
    assert result.ess.shape == (8, 5)
    _within(result, exact)


def test_ais_equals_importance_sampling(x64):
    """One AIS stage from the reference to the target is importance sampling: the single-run
    error estimate reduces to the delta-method one of `log_z_importance`."""
    target, exact = _shifted_gaussian()
    ais = ds.AIS(ds.RandomWalk(step_size=0.5), [0.0, 1.0], reference_scale=2.0)
    result = ais.run(target, key=jax.random.key(2), num_particles=2000)
    log_w = result.log_weights  # normalized IS weights of the initial draws
    ess = float(de.importance_ess(log_w).ess)
    n = 2000
    assert result.ess[0] == pytest.approx(ess, rel=1e-8)
    assert float(result.log_z_stderr) == pytest.approx(math.sqrt((n / ess - 1) / (n - 1)), rel=1e-8)
    assert not np.any(result.resampled) and result.num_resampling == 0
    _within(result, exact, n_se=4.0)


def test_weight_degeneracy_is_reported(x64):
    target, _ = _shifted_gaussian()
    # a coarse AIS schedule from a poor reference: ESS collapses and is reported per stage
    ais = ds.AIS(ds.MALA(step_size=0.1), [0.0, 0.5, 1.0], reference_scale=10.0)
    result = ais.run(target, key=jax.random.key(3), num_particles=500)
    assert result.ess.shape == (2,)
    assert np.all((result.ess >= 1.0) & (result.ess <= 500.0))
    assert result.ess[-1] < 50  # degenerate, and visibly so
    # SMC with a threshold of 1 resamples at every stage
    smc = ds.SMC(ds.MALA(step_size=0.1), [0.0, 0.5, 1.0], reference_scale=10.0,
                 resampling_threshold=1.0)  # fmt: skip
    result = smc.run(target, key=jax.random.key(3), num_particles=500)
    assert np.all(result.resampled) and result.num_resampling == 2


def test_evaluation_counts():
    target, _ = _shifted_gaussian()
    n, k = 64, 3
    smc = ds.SMC(ds.RandomWalk(step_size=0.5), [0.0, 0.3, 1.0], num_mcmc_steps=k)
    result = smc.run(target, key=jax.random.key(4), num_particles=n)
    assert result.num_grad_evals == 0
    assert result.num_energy_evals == n + 2 * (n * k + 2 * n)
    smc = ds.SMC(ds.HMC(step_size=0.1, num_integration_steps=4), [0.0, 0.3, 1.0], num_mcmc_steps=k)
    result = smc.run(target, key=jax.random.key(4), num_particles=n)
    assert result.num_grad_evals == 2 * (n * k * 4 + n)


def test_step_size_adaptation_reaches_target():
    target, _ = _shifted_gaussian()
    smc = ds.SMC(ds.MALA(step_size=5.0), reference_scale=2.0, num_mcmc_steps=10)
    result = smc.run(target, key=jax.random.key(5), num_particles=256)
    assert result.step_size[0] < 1.0  # from 5: adapted within the first stage
    assert abs(result.acceptance_rate[-1] - 0.574) < 0.15


def test_metric_adaptation(x64):
    target, exact = _shifted_gaussian()
    smc = ds.SMC(ds.MALA(step_size=0.2), reference_scale=2.0, adapt_metric=True,
                 resampling="multinomial", target_ess=0.7)  # fmt: skip
    result = smc.run(target, key=jax.random.key(6), num_particles=1000)
    _within(result, exact)


def test_truncated_schedule_is_reported():
    target, _ = _shifted_gaussian()
    smc = ds.SMC(ds.MALA(step_size=0.1), reference_scale=20.0, target_ess=0.95, max_stages=2)
    result = smc.run(target, key=jax.random.key(7), num_particles=128)
    assert result.truncated and result.num_stages == 2 and result.betas[-1] == 1.0


def test_many_well_small(x64):
    target = de.many_well(4)
    smc = ds.SMC(ds.MALA(step_size=0.1), reference_scale=1.5, resampling="multinomial",
                 target_ess=0.9, num_mcmc_steps=10)  # fmt: skip
    result = smc.run(target, key=jax.random.key(8), num_particles=1000)
    _within(result, float(target.log_normalizer))


@pytest.mark.slow
def test_many_well_32():
    """many_well(32): exact log Z = 164.696, within 3 single-run standard errors."""
    target = de.many_well(32)
    assert float(target.log_normalizer) == pytest.approx(164.696, abs=1e-3)
    smc = ds.SMC(ds.MALA(step_size=0.1), reference_scale=1.5, resampling="multinomial",
                 target_ess=0.9, num_mcmc_steps=10)  # fmt: skip
    result = smc.run(target, key=jax.random.key(9), num_particles=2000)
    _within(result, float(target.log_normalizer))


@pytest.mark.slow
def test_single_run_error_is_calibrated(x64):
    """Over many runs, (log Ẑ - log Z) / stderr has standard deviation close to 1 (multinomial
    resampling, for which the Lee–Whiteley estimator is derived)."""
    target, exact = _shifted_gaussian()
    smc = ds.SMC(ds.MALA(step_size=0.2), reference_scale=2.0, resampling="multinomial")
    result = smc.run(target, key=jax.random.key(10), num_particles=200, num_runs=200)
    z = (np.asarray(result.log_z) - exact) / np.asarray(result.log_z_stderr)
    assert abs(np.mean(z)) < 0.3 and 0.8 < np.std(z) < 1.25


def test_determinism_and_no_retrace():
    target, _ = _shifted_gaussian()
    smc = ds.SMC(ds.MALA(step_size=0.2), reference_scale=2.0)
    a = smc.run(target, key=jax.random.key(11), num_particles=64)
    traces = eqx.debug.get_num_traces(_smc._run_traced)
    b = smc.run(target, key=jax.random.key(11), num_particles=64)
    np.testing.assert_array_equal(np.asarray(a.particles), np.asarray(b.particles))
    assert float(a.log_z) == float(b.log_z)
    # a new key and a new step size reuse the compiled run
    smc2 = ds.SMC(ds.MALA(step_size=0.3), reference_scale=2.0)
    c = smc2.run(target, key=jax.random.key(12), num_particles=64)
    assert eqx.debug.get_num_traces(_smc._run_traced) == traces
    assert float(c.log_z) != float(a.log_z)


def test_bad_input():
    kernel = ds.MALA(step_size=0.1)
    with pytest.raises(ValueError, match="schedule.*strictly increasing"):
        ds.SMC(kernel, [0.0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError, match="schedule.*strictly increasing"):
        ds.SMC(kernel, [0.0, 0.7, 0.4, 1.0])
    with pytest.raises(ValueError, match="schedule.*end at 1"):
        ds.SMC(kernel, [0.0, 0.5, 0.9])
    with pytest.raises(ValueError, match="schedule.*start at 0"):
        ds.SMC(kernel, [0.1, 0.5, 1.0])
    with pytest.raises(ValueError, match="schedule"):
        ds.SMC(kernel, [[0.0, 1.0]])
    with pytest.raises(ValueError, match="resampling"):
        ds.SMC(kernel, resampling="residual")
    with pytest.raises(ValueError, match="target_ess"):
        ds.SMC(kernel, target_ess=1.0)
    with pytest.raises(ValueError, match="num_mcmc_steps"):
        ds.SMC(kernel, num_mcmc_steps=0)
    with pytest.raises(TypeError, match="kernel"):
        ds.SMC("mala")
    with pytest.raises(TypeError, match="reference"):
        ds.SMC(kernel, reference=de.from_log_density(lambda x: -jnp.sum(x**2), jnp.zeros(2)))
    with pytest.raises(TypeError, match="resampling"):
        ds.AIS(kernel, resampling="systematic")
    target = de.gaussian(jnp.zeros(2))
    smc = ds.SMC(kernel)
    with pytest.raises(ValueError, match="num_particles"):
        smc.run(target, key=jax.random.key(0), num_particles=1)
    with pytest.raises(ValueError, match="reference"):
        ds.SMC(kernel, reference=de.gaussian(jnp.zeros(3))).run(
            target, key=jax.random.key(0), num_particles=8
        )
