"""Runs you can trust: pytree positions end to end, dtype rule, bounded memory, health checks
(SamplingWarning), the functional core under jit/vmap, save/load/resume, repr."""

import os
import subprocess
import sys
import textwrap
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.energies._base import AbstractInitializable
from driftax.samplers import _driver

MU_A = jnp.array([1.0, -2.0, 0.5])
MU_B = jnp.array([[0.0, 3.0], [-1.0, 2.0]])
SD_B = 2.0


def _tree_log_density(p):
    return -0.5 * (jnp.sum((p["a"] - MU_A) ** 2) + jnp.sum(((p["b"] - MU_B) / SD_B) ** 2))


EXAMPLE = {"a": jnp.zeros(3), "b": jnp.zeros((2, 2))}
TREE = de.from_log_density(_tree_log_density, EXAMPLE)
GAUSS = de.gaussian(jnp.zeros(2))


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.SamplingWarning)
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------------------------
# pytree positions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sampler, steps",
    [(ds.NUTS(step_size=0.5), 400), (ds.MALA(step_size=0.3), 1500)],
    ids=["NUTS", "MALA"],
)
def test_dict_gaussian_recovers_moments_with_pytree_results(sampler, steps):
    r = _quiet(
        dx.sample,
        sampler,
        TREE,
        EXAMPLE,
        key=jax.random.key(1),
        num_steps=steps,
        num_warmup=400,
        num_chains=2,
    )
    assert r.samples["a"].shape == (2, steps, 3)
    assert r.samples["b"].shape == (2, steps, 2, 2)
    draws = r.draws()
    assert set(draws) == {"a", "b"}
    mcse = r.mcse_mean  # per kernel coordinate, in ravel order (a, then b)
    mean = np.concatenate([draws["a"].mean((0, 1)), draws["b"].mean((0, 1)).reshape(-1)])
    truth = np.concatenate([MU_A, MU_B.reshape(-1)])
    assert np.all(np.abs(mean - truth) < 4 * mcse + 1e-3), (mean, truth, mcse)
    var = np.concatenate([draws["a"].var((0, 1)), draws["b"].var((0, 1)).reshape(-1)])
    true_var = np.concatenate([np.ones(3), np.full(4, SD_B**2)])
    # the sd of a variance estimate with ESS n_eff is about var·sqrt(2/n_eff)
    tol = 5 * true_var * np.sqrt(2.0 / np.asarray(r.ess))
    assert np.all(np.abs(var - true_var) < tol), (var, true_var)
    text = r.summary()
    assert "a[0]" in text and "b[1, 0]" in text
    idata = r.to_arviz()
    assert set(idata.posterior.data_vars) == {"a", "b"}
    assert idata.posterior["b"].shape == (2, steps, 2, 2)


def test_per_chain_pytree_points_and_thinning():
    x0 = {"a": jnp.stack([MU_A, MU_A + 1.0]), "b": jnp.stack([MU_B, MU_B - 1.0])}
    r = _quiet(
        dx.sample,
        ds.MALA(step_size=0.3),
        TREE,
        x0,
        key=jax.random.key(0),
        num_steps=40,
        num_warmup=0,
        thin=4,
        adaptation=None,
    )
    assert r.num_chains == 2 and r.samples["a"].shape == (2, 10, 3)
    with pytest.raises(ValueError, match="num_chains"):
        dx.sample(
            ds.MALA(step_size=0.3), TREE, x0, key=jax.random.key(0), num_steps=4, num_chains=3
        )
    with pytest.raises(ValueError, match="structure"):
        dx.sample(ds.MALA(step_size=0.3), TREE, {"a": MU_A}, key=jax.random.key(0), num_steps=4)


def test_new_pytree_energy_of_the_same_structure_does_not_recompile():
    kw = dict(key=jax.random.key(0), num_steps=20, num_warmup=10, num_chains=2)
    _quiet(dx.sample, ds.MALA(step_size=0.3), TREE, EXAMPLE, **kw)
    before = eqx.debug.get_num_traces(_driver._run_traced)
    other = de.from_log_density(_tree_log_density, {"a": jnp.ones(3), "b": jnp.ones((2, 2))})
    x0 = {"a": jnp.ones(3), "b": jnp.ones((2, 2))}
    _quiet(dx.sample, ds.MALA(step_size=0.3), other, x0, **kw)
    assert eqx.debug.get_num_traces(_driver._run_traced) == before


class _Dispersed(AbstractInitializable):
    event_shape: tuple = (2,)

    def log_density(self, x):
        return -0.5 * jnp.sum(x**2)

    def initial_points(self, key, num):
        return jax.random.uniform(key, (num, 2), minval=-2.0, maxval=2.0)


def test_x0_none_uses_initial_points_or_fails_clearly():
    r = _quiet(
        dx.sample, ds.MALA(step_size=0.5), _Dispersed(), None, key=jax.random.key(0),
        num_steps=5, num_warmup=0, num_chains=3,
    )  # fmt: skip
    first = np.asarray(r.samples[:, 0])
    assert len({tuple(row) for row in first.round(6)}) == 3  # chains start apart
    with pytest.raises(ValueError, match="starting points"):
        dx.sample(ds.MALA(step_size=0.5), GAUSS, None, key=jax.random.key(0), num_steps=5)


def test_dtype_rule_under_x64():
    code = textwrap.dedent(
        """
        import warnings
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp, numpy as np
        import driftax as dx, driftax.energies as de, driftax.samplers as ds
        warnings.simplefilter("ignore", dx.SamplingWarning)
        g64 = de.gaussian(jnp.zeros(2))
        g32 = de.from_log_density(lambda x: -0.5 * jnp.sum(x**2), np.zeros(2, np.float32))
        assert g64.dtype == jnp.float64 and g32.dtype == jnp.float32
        for s in [ds.MALA(step_size=0.5), ds.NUTS(step_size=0.5)]:
            for e, x0 in [(g64, jnp.zeros(2, jnp.float32)), (g32, jnp.zeros(2, jnp.float64))]:
                r = dx.sample(s, e, x0, key=jax.random.key(0), num_steps=5, num_warmup=5,
                              num_chains=2)
                assert r.samples.dtype == e.dtype, (type(s).__name__, r.samples.dtype)
                assert np.all(np.isfinite(np.asarray(r.samples)))
        print("OK")
        """
    )
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# ---------------------------------------------------------------------------------------------
# bounded memory
# ---------------------------------------------------------------------------------------------


def _result_bytes(r) -> int:
    total = 0
    for name in r.__dataclass_fields__:
        if name == "_cache":
            continue
        for leaf in jax.tree.leaves(getattr(r, name)):
            if isinstance(leaf, (jax.Array, np.ndarray)):
                total += np.asarray(leaf).nbytes
    return total


def test_memory_does_not_grow_with_num_steps():
    sizes = []
    for n in (10**3, 10**5):
        r = _quiet(
            dx.sample,
            ds.RandomWalk(step_size=1.0),
            GAUSS,
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=n,
            num_warmup=0,
            num_chains=2,
            adaptation=None,
            store_samples=False,
        )
        assert r.samples is None and r.info is None
        sizes.append(_result_bytes(r))
    assert sizes[0] == sizes[1]
    # the streaming estimates still work and are right for the long run
    est = r.ess
    assert np.all(est > 2_000) and np.all(np.asarray(r.rhat) < 1.01)
    assert np.all(np.abs(np.asarray(r.stats.mean).mean(0)) < 5 * r.mcse_mean)
    assert "x[1]" in r.summary()


def test_streaming_estimates_agree_with_arviz():
    kw = dict(key=jax.random.key(3), num_steps=4000, num_warmup=200, num_chains=2)
    full = _quiet(dx.sample, ds.MALA(step_size=0.5), GAUSS, jnp.zeros(2), **kw)
    lean = _quiet(dx.sample, ds.MALA(step_size=0.5), GAUSS, jnp.zeros(2), store_samples=False, **kw)
    assert lean.info is None and full.info is not None
    np.testing.assert_allclose(lean.mean, full.mean)
    streamed = lean.ess
    ratio = streamed / np.asarray(full.ess)
    assert np.all((ratio > 0.5) & (ratio < 2.0)), ratio
    np.testing.assert_allclose(lean.mcse_mean, full.mcse_mean, rtol=0.5)
    assert lean.num_divergent == full.num_divergent
    np.testing.assert_allclose(lean.acceptance_rate, full.acceptance_rate)


# ---------------------------------------------------------------------------------------------
# health checks
# ---------------------------------------------------------------------------------------------


def _hole(bad):
    return de.from_log_density(
        lambda x: jnp.where(x[0] > 1.5, bad, -0.5 * jnp.sum(x**2)), jnp.zeros(2)
    )


@pytest.mark.parametrize("kernel", [ds.UnderdampedLangevin, ds.RandomizedMidpoint])
def test_frozen_run_raises_sampling_warning(kernel):
    # the case: auto adaptation on a target with a NaN region; before the health checks
    # this looked healthy (0 divergences, acceptance 1). Whether the kernel itself flags the
    # NaN proposals (c-kernels' side) or the step size collapses, the user is told.
    with pytest.warns(dx.SamplingWarning) as record:
        r = dx.sample(
            kernel(step_size=0.1),
            _hole(jnp.nan),
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=300,
            num_warmup=300,
            num_chains=2,
        )
    assert not r.health.ok and r.warnings
    assert any(
        f in str(w.message) for w in record for f in ("collapsed", "did not move", "divergent")
    )
    assert np.all(np.isfinite(np.asarray(r.samples)))


def test_divergences_warn_and_are_flagged():
    with pytest.warns(dx.SamplingWarning, match="divergent"):
        r = dx.sample(
            ds.HMC(step_size=0.5, num_integration_steps=4),
            _hole(jnp.nan),
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=200,
            num_warmup=0,
            num_chains=2,
            adaptation=None,
        )
    assert r.health.divergent and r.num_divergent > 0
    assert "divergent" in repr(r)


def test_huge_step_without_adaptation_is_low_acceptance():
    with pytest.warns(dx.SamplingWarning, match="did not move|acceptance"):
        r = dx.sample(
            ds.MALA(step_size=500.0),
            GAUSS,
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=200,
            num_warmup=0,
            num_chains=2,
            adaptation=None,
        )
    assert r.health.low_acceptance or r.health.frozen_chains


def test_check_health_off_is_silent_and_healthy_run_has_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error", dx.SamplingWarning)
        # the loop of the test above (the health checks run outside it): no second compile
        r = dx.sample(
            ds.MALA(step_size=500.0), GAUSS, jnp.zeros(2), key=jax.random.key(0), num_steps=200,
            num_warmup=0, num_chains=2, adaptation=None, check_health=False,
        )  # fmt: skip
        assert r.warnings == ()
        good = dx.sample(
            ds.NUTS(step_size=0.5), GAUSS, jnp.zeros(2), key=jax.random.key(0),
            num_steps=1000, num_warmup=300, num_chains=2,
        )  # fmt: skip
    assert good.health.ok and "healthy" in repr(good)


# ---------------------------------------------------------------------------------------------
# the functional core
# ---------------------------------------------------------------------------------------------


def test_run_chains_is_what_sample_runs():
    kw = dict(key=jax.random.key(0), num_steps=30, num_warmup=20)
    r = _quiet(dx.sample, ds.MALA(step_size=0.5), GAUSS, jnp.zeros(2), num_chains=2, **kw)
    out = ds.run_chains(ds.MALA(step_size=0.5), GAUSS, jnp.zeros((2, 2)), adaptation="auto", **kw)
    # the same loop, compiled separately: equal up to float32 reassociation
    np.testing.assert_allclose(out.samples, r.samples, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(out.sampler.step_size, r.step_size, rtol=1e-4)


def test_run_chains_under_vmap_and_jit_simulation_based_calibration():
    # SBC: draw θ ~ N(0, 1), y ~ N(θ, 1); the posterior is N(y/2, 1/2); the rank of θ among
    # posterior draws is uniform. One jit of a vmap over keys runs every replication.
    def replicate(key):
        k_theta, k_y, k_run = jax.random.split(key, 3)
        theta = jax.random.normal(k_theta)
        y = theta + jax.random.normal(k_y)
        posterior = de.from_log_density(
            lambda t: -((t[0] - y) ** 2) / 2 - t[0] ** 2 / 2, jnp.zeros(1)
        )
        out = ds.run_chains(
            ds.MALA(step_size=0.5), posterior, jnp.zeros((1, 1)), key=k_run, num_steps=400,
            num_warmup=100, adaptation="auto", thin=20,
        )  # fmt: skip
        return jnp.sum(out.samples[0, :, 0] < theta)

    ranks = jax.jit(jax.vmap(replicate))(jax.random.split(jax.random.key(0), 200))
    assert ranks.shape == (200,)
    # 20 draws per replication → ranks in 0..20; uniform mean 10, sd of the mean ≈ 6.06/√200
    assert abs(float(jnp.mean(ranks)) - 10.0) < 4 * 6.06 / np.sqrt(200)


def test_sample_inside_jit_or_vmap_points_at_the_core():
    def f(key):
        return dx.sample(ds.MALA(step_size=0.5), GAUSS, jnp.zeros(2), key=key, num_steps=5)

    with pytest.raises(TypeError, match="run_chains"):
        jax.jit(f)(jax.random.key(0))
    with pytest.raises(TypeError, match="run_chains"):
        jax.vmap(lambda x: dx.sample(ds.MALA(step_size=0.5), GAUSS, x, key=jax.random.key(0),
                                     num_steps=5))(jnp.zeros((2, 2)))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# friendly results: repr, save / load / resume, hyperparameters on resume
# ---------------------------------------------------------------------------------------------


def test_save_load_and_resume(tmp_path):
    kw = dict(key=jax.random.key(0), num_chains=2)
    target = de.ill_conditioned_gaussian(3, 10.0)
    r = _quiet(
        dx.sample, ds.MALA(step_size=0.1), target, jnp.zeros(3), num_steps=100, num_warmup=100, **kw
    )
    path = tmp_path / "run.npz"
    r.save(path)
    loaded = dx.SampleResult.load(path, ds.MALA(step_size=0.1), target)
    np.testing.assert_array_equal(loaded.samples, r.samples)
    np.testing.assert_array_equal(loaded.step_size, r.step_size)
    assert loaded.warnings == r.warnings and repr(loaded) == repr(r)
    a = _quiet(dx.sample, ds.MALA(step_size=0.1), target, r, num_steps=50, **kw)
    b = _quiet(dx.sample, ds.MALA(step_size=0.1), target, loaded, num_steps=50, **kw)
    np.testing.assert_array_equal(a.samples, b.samples)
    with pytest.raises(TypeError, match="MALA"):
        dx.SampleResult.load(path, ds.HMC(step_size=0.1), target)


def test_new_hyperparameter_on_resume_applies_and_says_so():
    kw = dict(key=jax.random.key(0), num_chains=2)
    r = _quiet(
        dx.sample, ds.MALA(step_size=0.1), GAUSS, jnp.zeros(2), num_steps=20, num_warmup=50, **kw
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dx.SamplingWarning)
        with pytest.warns(UserWarning, match="step_size"):
            more = dx.sample(ds.MALA(step_size=0.05), GAUSS, r, num_steps=20, **kw)
    np.testing.assert_allclose(more.step_size, [0.05, 0.05])
    # the adapted metric is kept: only what changed is replaced
    np.testing.assert_array_equal(more.sampler.metric.inverse_mass, r.sampler.metric.inverse_mass)
    same = _quiet(dx.sample, ds.MALA(step_size=0.1), GAUSS, r, num_steps=20, **kw)
    np.testing.assert_array_equal(same.step_size, r.step_size)


def test_kernel_coordinate_names_follow_the_pytree():
    from driftax.samplers._result import coordinate_names

    assert coordinate_names(TREE) == [
        "a[0]", "a[1]", "a[2]", "b[0, 0]", "b[0, 1]", "b[1, 0]", "b[1, 1]",
    ]  # fmt: skip
    assert coordinate_names(de.gaussian(jnp.zeros(2))) == ["x[0]", "x[1]"]
