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
from driftax.samplers import _smc as _smc_module

from .registry import SAMPLERS

D = 3
MEAN = np.array([1.0, -0.5, 2.0])
STD = np.array([0.5, 1.5, 0.8])
OFFSET = 1.7
N = 1000

# The whole module runs in float64 (exact log Z comparisons); energies and references are
# built once so that runs sharing a configuration share one compilation.
pytestmark = pytest.mark.usefixtures("x64_module")


@pytest.fixture(scope="module")
def x64_module():
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module")
def shifted(x64_module):
    """An unnormalized Gaussian with exact log Z = OFFSET + Σ log(√(2π) σ)."""
    mean, std = jnp.asarray(MEAN), jnp.asarray(STD)

    def log_density(x):
        return OFFSET - 0.5 * jnp.sum(((x - mean) / std) ** 2)

    exact = OFFSET + float(np.sum(np.log(np.sqrt(2 * np.pi) * STD)))
    return de.from_log_density(log_density, jnp.zeros(D)), exact


def _reference(scale):
    return de.gaussian(jnp.zeros(D), scale**2)


def _smc(step_size=0.2, **kwargs):
    """The shared configuration: MALA moves, adaptive tempering, multinomial resampling."""
    kwargs.setdefault("reference", _reference(2.0))
    kwargs.setdefault("target_ess", 0.7)
    return ds.SMC(ds.MALA(step_size=step_size), resampling="multinomial", **kwargs)


def _within(result, exact, n_se=3.0):
    est = result.pooled_log_normalizer
    value, se = float(est.value), float(est.stderr)
    assert np.isfinite(se) and se > 0
    assert abs(value - exact) <= n_se * se, f"log Z {value} ± {se} vs exact {exact}"
    return value, se


def test_gaussian_log_z_adaptive(shifted):
    target, exact = shifted
    result = _smc().run(target, key=jax.random.key(0), num_particles=N)
    value, se = _within(result, exact)
    assert se < 0.1
    assert isinstance(result, ds.WeightedSampleResult) and result.num_runs is None
    st = result.extras
    assert st["betas"][0] == 0.0 and st["betas"][-1] == 1.0
    assert np.all(np.diff(st["betas"]) > 0)
    assert not st["truncated"]
    assert st["num_stages"] == len(st["stage_ess"]) == len(st["betas"]) - 1
    # the final ESS is the Kish ESS of the final weights; nothing non-finite
    ess = float(de.importance_ess(result.log_weights).ess)
    assert float(result.ess) == pytest.approx(ess, rel=1e-10)
    assert result.num_nonfinite == 0 and result.elbo is None and result.eubo is None
    # the particles target the target: weighted mean within 5 standard errors
    w = np.exp(np.asarray(result.log_weights))
    x = np.asarray(result.samples)
    mean = np.sum(w[:, None] * x, axis=0)
    se_mean = STD / np.sqrt(float(1.0 / np.sum(w**2)) / 3.0)  # allow for correlation
    assert np.all(np.abs(mean - MEAN) <= 5 * se_mean)


def test_independent_runs(shifted):
    target, exact = shifted
    result = _smc().run(target, key=jax.random.key(1), num_particles=N, num_runs=4)
    assert result.log_normalizer.value.shape == (4,) and result.samples.shape == (4, N, D)
    assert result.extras["stage_ess"].shape == (4, int(np.max(result.extras["num_stages"])))
    assert result.num_runs == 4 and result.ess.shape == (4,)
    _within(result, exact)


def test_fixed_schedule_hmc_and_grad_counts(shifted):
    target, exact = shifted
    n, k, stages = 300, 3, 5
    smc = ds.SMC(ds.HMC(step_size=0.3, num_integration_steps=4), jnp.linspace(0, 1, 6) ** 2,
                 num_mcmc_steps=k, reference=_reference(2.0), resampling="systematic")  # fmt: skip
    result = smc.run(target, key=jax.random.key(1), num_particles=n)
    _within(result, exact)
    np.testing.assert_allclose(result.extras["betas"], np.linspace(0, 1, 6) ** 2)
    # 4 gradients per HMC step, one per particle to start each stage's kernel
    assert result.num_grad_evals == stages * (n * k * 4 + n)


def _ais(scale):
    return ds.AIS(ds.RandomWalk(step_size=0.5), [0.0, 1.0], reference=_reference(scale))


def test_ais_equals_importance_sampling(shifted):
    """One AIS stage from the reference to the target is importance sampling: the single-run
    error estimate reduces to the delta-method one of `log_z_importance`."""
    target, exact = shifted
    result = _ais(2.0).run(target, key=jax.random.key(2), num_particles=2000)
    log_w = result.log_weights  # normalized IS weights of the initial draws
    ess = float(de.importance_ess(log_w).ess)
    n = 2000
    assert result.extras["stage_ess"][0] == pytest.approx(ess, rel=1e-8)
    se = math.sqrt((n / ess - 1) / (n - 1))
    assert float(result.log_normalizer.stderr) == pytest.approx(se, rel=1e-8)
    assert not np.any(result.extras["resampled"]) and result.extras["num_resampling"] == 0
    # AIS reports the ELBO (mean log-weight of the trajectories), a lower bound on log Z
    assert float(result.elbo.value) < float(result.log_normalizer.value)
    assert float(result.elbo.value) < exact + 3 * float(result.elbo.stderr)
    _within(result, exact, n_se=4.0)
    # gradient-free moves: target evaluations are the initial draws, then per stage the moves,
    # the kernel start and the new log densities
    assert result.num_grad_evals == 0
    assert result.num_energy_evals == 2000 + (2000 * 5 + 2 * 2000)


def test_weight_degeneracy_is_reported(shifted):
    target, _ = shifted
    # one-stage AIS from a poor reference: the ESS collapses and is reported
    result = _ais(10.0).run(target, key=jax.random.key(3), num_particles=2000)
    assert result.extras["stage_ess"].shape == (1,)
    assert 1.0 <= result.extras["stage_ess"][0] < 100.0
    # SMC reports the ESS of every stage; with a threshold of 1 it resamples at every stage
    result = _smc(resampling_threshold=1.0).run(target, key=jax.random.key(3), num_particles=N)
    st = result.extras
    assert np.all((st["stage_ess"] >= 1.0) & (st["stage_ess"] <= N))
    assert np.all(st["resampled"]) and st["num_resampling"] == st["num_stages"]


def test_step_size_adaptation_reaches_target(shifted):
    target, _ = shifted
    result = _smc(step_size=5.0).run(target, key=jax.random.key(5), num_particles=N)
    assert result.extras["step_size"][-1] < 1.0
    assert abs(result.extras["acceptance_rate"][-1] - 0.574) < 0.15


def test_metric_adaptation(shifted):
    target, exact = shifted
    result = _smc(adapt_metric=True).run(target, key=jax.random.key(6), num_particles=N)
    _within(result, exact)
    # the diagonal metric follows the particles: acceptance stays on target at the end
    assert abs(result.extras["acceptance_rate"][-1] - 0.574) < 0.15


def test_truncated_schedule_is_reported(shifted):
    target, _ = shifted
    smc = _smc(reference=_reference(20.0), target_ess=0.95, max_stages=2)
    result = smc.run(target, key=jax.random.key(7), num_particles=N)
    st = result.extras
    assert st["truncated"] and st["num_stages"] == 2 and st["betas"][-1] == 1.0


def test_many_well_small():
    target = de.many_well(4)
    smc = ds.SMC(ds.MALA(step_size=0.1), reference_scale=1.5, resampling="multinomial",
                 target_ess=0.9, num_mcmc_steps=10)  # fmt: skip
    result = smc.run(target, key=jax.random.key(8), num_particles=N)
    _within(result, float(target.log_normalizer))


@pytest.mark.slow
def test_many_well_32():
    """many_well(32): exact log Z = 164.696, within 3 single-run standard errors."""
    target = de.many_well(32)
    assert float(target.log_normalizer) == pytest.approx(164.696, abs=1e-3)
    # HMC moves mix across the wells far better than MALA at equal cost per stage
    smc = ds.SMC(ds.HMC(step_size=0.1, num_integration_steps=5), reference_scale=1.5,
                 resampling="multinomial", target_ess=0.9, num_mcmc_steps=5)  # fmt: skip
    result = smc.run(target, key=jax.random.key(9), num_particles=2000)
    est = result.log_normalizer
    print(f"many_well(32): log Z = {float(est.value):.4f} ± {float(est.stderr):.4f}")
    _within(result, float(target.log_normalizer))


@pytest.mark.slow
def test_single_run_error_is_calibrated(shifted):
    """Over many runs, (log Ẑ - log Z) / stderr has standard deviation close to 1 (multinomial
    resampling, for which the Lee–Whiteley estimator is derived)."""
    target, exact = shifted
    result = _smc(target_ess=0.5).run(target, key=jax.random.key(10), num_particles=200,
                                      num_runs=200)  # fmt: skip
    est = result.log_normalizer
    z = (np.asarray(est.value) - exact) / np.asarray(est.stderr)
    assert abs(np.mean(z)) < 0.3 and 0.8 < np.std(z) < 1.25


def test_determinism_and_no_retrace(shifted):
    target, _ = shifted
    a = _smc().run(target, key=jax.random.key(11), num_particles=N)
    traces = eqx.debug.get_num_traces(_smc_module._run_traced)
    b = _smc().run(target, key=jax.random.key(11), num_particles=N)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    assert float(a.log_normalizer.value) == float(b.log_normalizer.value)
    # a new key, step size, ESS target and reference scale reuse the compiled run
    c = _smc(step_size=0.3, target_ess=0.6, reference=_reference(3.0)).run(
        target, key=jax.random.key(12), num_particles=N
    )
    assert eqx.debug.get_num_traces(_smc_module._run_traced) == traces
    assert float(c.log_normalizer.value) != float(a.log_normalizer.value)


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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_kernel_as_the_move(shifted, name):
    """Every registered kernel works as the SMC move; adjusted kernels give log Z within
    4 standard errors (unadjusted ones are biased by their discretization: finite only)."""
    target, exact = shifted
    kernel = SAMPLERS[name]()
    smc = ds.SMC(kernel, reference=_reference(2.0), resampling="multinomial", target_ess=0.7)
    result = smc.run(target, key=jax.random.key(13), num_particles=500)
    assert np.isfinite(float(result.log_normalizer.value))
    assert np.all(np.isfinite(np.asarray(result.samples)))
    if kernel.is_adjusted:
        _within(result, exact, n_se=4.0)


PT_MEAN = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -1.0, 2.0])
PT_STD = np.array([0.5, 1.0, 2.0, 0.7, 1.5, 0.3, 1.0])


class _DictGaussian(de.AbstractEnergy):
    """A diagonal Gaussian whose user points are dicts `{"a": (3,), "b": (2, 2)}`: the kernels see
    the flat vector of shape (7,), `unravel` gives the dict back."""

    mean: jax.Array
    std: jax.Array
    event_shape: tuple = eqx.field(static=True)

    def log_density(self, x):
        return -0.5 * jnp.sum(((x - self.mean) / self.std) ** 2)

    def ravel(self, point):
        return jnp.concatenate([point["a"], point["b"].reshape(-1)])

    def unravel(self, x):
        return {"a": x[:3], "b": x[3:].reshape(2, 2)}


def test_pytree_positions_recover_moments():
    """A dict-position Gaussian through SMC: pytree-shaped samples whose weighted means and
    variances match the truth within 5 Monte Carlo standard errors (from the spread of
    independent runs), and log Z within its error."""
    energy = _DictGaussian(mean=jnp.asarray(PT_MEAN), std=jnp.asarray(PT_STD), event_shape=(7,))
    runs, n = 8, 400
    smc = _smc(reference=de.gaussian(jnp.zeros(7), 4.0))
    result = smc.run(energy, key=jax.random.key(14), num_particles=n, num_runs=runs)
    samples = result.samples
    assert set(samples) == {"a", "b"}
    assert samples["a"].shape == (runs, n, 3) and samples["b"].shape == (runs, n, 2, 2)
    flat = jax.vmap(jax.vmap(energy.ravel))(samples)  # (runs, n, 7)
    np.testing.assert_array_equal(np.asarray(flat[..., 3:5]), np.asarray(samples["b"][..., 0, :]))
    w = np.exp(np.asarray(result.log_weights))
    flat = np.asarray(flat)
    means = np.einsum("rn,rnd->rd", w, flat)
    variances = np.einsum("rn,rnd->rd", w, (flat - means[:, None]) ** 2)
    for est, truth in ((means, PT_MEAN), (variances, PT_STD**2)):
        mcse = est.std(axis=0, ddof=1) / np.sqrt(runs)
        assert np.all(np.abs(est.mean(axis=0) - truth) <= 5 * mcse), (est.mean(0), truth, mcse)
    _within(result, float(np.sum(np.log(np.sqrt(2 * np.pi) * PT_STD))), n_se=4.0)
    # AIS on the same energy also gives dict-shaped samples
    ais = ds.AIS(ds.RandomWalk(step_size=0.5), [0.0, 0.5, 1.0], reference=de.gaussian(jnp.zeros(7)))
    out = ais.run(energy, key=jax.random.key(15), num_particles=16)
    assert out.samples["a"].shape == (16, 3) and out.samples["b"].shape == (16, 2, 2)


def test_default_reference_is_the_library_gaussian(shifted):
    target, _ = shifted
    ref = ds.SMC(ds.MALA(step_size=0.1), reference_scale=2.0).reference_for(target)
    assert isinstance(ref, de.Gaussian) and ref.event_shape == (D,)
    np.testing.assert_allclose(np.asarray(ref.variance), 4.0)
    assert ref.loc.dtype == target.dtype
