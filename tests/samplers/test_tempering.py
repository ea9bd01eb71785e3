"""Parallel tempering: gmm25 mode weights, swap bookkeeping (exact caches after swaps and ladder
changes), swap-rate reporting, ladder adaptation toward uniform rates, bad input, determinism,
and the stepping-stone log-normalizer of `tempering_result` against exact values."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds

from .registry import SAMPLERS


@pytest.fixture(scope="module")
def gmm25_run():
    target = de.gmm25()
    pt = ds.ParallelTempering(ds.MALA(step_size=0.1), num_replicas=8, max_temperature=50.0)
    result = dx.sample(pt, target, jnp.zeros(2), key=jax.random.key(0), num_steps=4000,
                       num_warmup=1000, num_chains=4,
                       adaptation=ds.ParallelTemperingAdaptation())  # fmt: skip
    return target, result


def test_gmm25_mode_weights(gmm25_run):
    """Each of the 25 equal modes holds 1/25 of the T = 1 samples, within 4 binomial standard
    errors computed with the effective sample size of the mode indicator."""
    target, result = gmm25_run
    x = np.asarray(result.samples)  # (chains, steps, 2)
    assert x.shape == (4, 4000, 2)
    modes = np.asarray(jax.vmap(jax.vmap(target.assign))(jnp.asarray(x)))
    p = 1.0 / 25
    for k in range(25):
        hits = (modes == k).astype(float)
        ess = float(ds.ess(hits[..., None])[0])
        se = np.sqrt(p * (1 - p) / ess)
        assert abs(hits.mean() - p) <= 4 * se, (k, hits.mean(), se, ess)
    cov = de.mode_coverage(x.reshape(-1, 2), target)
    assert int(cov.num_covered) == 25


def test_gmm25_swap_rates_reported(gmm25_run):
    _, result = gmm25_run
    rates = np.asarray(result.final_state.swap_rate)
    assert rates.shape == (4, 7)
    assert np.all((rates > 0.2) & (rates <= 1.0))
    # the adapted ladder is shared by the chains, increasing from 1 to the fixed top
    temps = np.asarray(result.sampler.temperatures)
    assert np.allclose(temps, temps[0]) and temps[0, 0] == 1.0
    assert np.all(np.diff(temps[0]) > 0) and temps[0, -1] == pytest.approx(50.0, rel=1e-5)
    # and each replica has its own adapted step size, larger when hotter
    steps = np.asarray(result.sampler.kernel.step_size)[0]
    assert steps[-1] > steps[0]


@pytest.mark.parametrize(
    "kernel",
    [ds.RandomWalk(step_size=0.5), ds.UnderdampedLangevin(step_size=0.2)],
    ids=["RandomWalk", "UnderdampedLangevin"],
)
def test_swaps_keep_exact_caches(x64, kernel):
    """After swaps (and after a ladder change) every replica's cached tempered log density and
    score are those of its position at its own temperature; swaps alternate parity."""
    target = de.gaussian(jnp.array([1.0, -1.0]), jnp.array([0.5, 2.0]))
    pt = ds.ParallelTempering(kernel, [1.0, 1.5, 2.5, 4.0])
    state = pt.init(target, jnp.zeros(2))
    step = jax.jit(lambda p, s, k: p.step(target, s, key=k))
    swapped_any = False
    for i in range(12):
        if i == 6:  # a new ladder: the caches are re-tempered, the swap counts restart
            pt = eqx_tree_at_betas(pt, 1.0 / jnp.array([1.0, 2.0, 3.0, 6.0]))
        old_labels = np.asarray(state.labels)
        state, info = step(pt, state, jax.random.key(i))
        swapped_any |= bool(np.any(np.asarray(state.labels) != old_labels))
        attempted = np.asarray(info.extras["swap_attempted"])
        assert np.array_equal(attempted, np.arange(3) % 2 == i % 2)
        betas = pt.inverse_temperatures
        pos = state.replicas.position
        logp = jax.vmap(target.log_density)(pos)
        np.testing.assert_allclose(state.replica_log_density, logp, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(state.replicas.log_density, betas * logp, rtol=1e-10, atol=1e-10)
        if state.replicas.score is not None:
            score = betas[:, None] * jax.vmap(target.score)(pos)
            np.testing.assert_allclose(state.replicas.score, score, rtol=1e-10, atol=1e-10)
        np.testing.assert_array_equal(state.position, pos[0])
        assert sorted(np.asarray(state.labels).tolist()) == [0, 1, 2, 3]
    assert swapped_any
    assert int(np.sum(state.swap_attempts)) == 9  # 3 per 2 steps since the ladder changed


def eqx_tree_at_betas(pt, betas):
    import equinox as eqx

    return eqx.tree_at(lambda p: p.inverse_temperatures, pt, betas)


def _gaussian_swap_rates(temps, d, n=200_000, seed=0):
    """Exact-sample Monte Carlo of the mean swap acceptance between neighbouring temperatures
    for the standard Gaussian in `d` dimensions (replica i ~ N(0, T_i I) exactly)."""
    rng = np.random.default_rng(seed)
    betas = 1.0 / np.asarray(temps, dtype=float)
    logp = [-0.5 * np.sum(rng.normal(size=(n, d)) ** 2 / b, axis=1) for b in betas]
    return np.array([
        np.mean(np.minimum(1.0, np.exp((betas[i] - betas[i + 1]) * (logp[i + 1] - logp[i]))))
        for i in range(len(betas) - 1)
    ])  # fmt: skip


def test_ladder_adaptation_moves_toward_uniform_rates():
    d = 4
    target = de.gaussian(jnp.zeros(d))
    temps = np.linspace(1.0, 30.0, 6)  # linear in T: the first pairs swap far less often
    before = _gaussian_swap_rates(temps, d)
    pt = ds.ParallelTempering(ds.RandomWalk(step_size=0.5), temps)
    result = dx.sample(pt, target, jnp.zeros(d), key=jax.random.key(1), num_steps=1000,
                       num_warmup=1000, num_chains=4,
                       adaptation=ds.ParallelTemperingAdaptation())  # fmt: skip
    t = np.asarray(result.sampler.temperatures)[0]
    assert t[0] == 1.0 and t[-1] == pytest.approx(30.0, rel=1e-5)
    after = np.asarray(result.final_state.swap_rate).mean(axis=0)
    # the reported rates are those of the adapted ladder
    np.testing.assert_allclose(after, _gaussian_swap_rates(t, d), atol=0.08)
    spread = lambda r: r.max() - r.min()  # noqa: E731
    assert spread(after) < 0.3 * spread(before), (before, after)
    assert after.min() > before.min() + 0.2


def test_equalize_ladder_is_exact_for_piecewise_constant_rejection():
    betas = 1.0 / jnp.array([1.0, 2.0, 4.0, 8.0])
    # all rejection in the first interval: the new interior points crowd into it
    new = ds.equalize_ladder(betas, jnp.array([0.9, 1e-6, 1e-6]))
    assert new[0] == 1.0 and new[-1] == pytest.approx(1 / 8.0)
    assert np.all(np.diff(np.asarray(new)) < 0)
    assert np.asarray(new)[2] > 0.5  # the second and third temperatures are now below 2
    # equal rejections leave the ladder unchanged
    np.testing.assert_allclose(ds.equalize_ladder(betas, jnp.full(3, 0.3)), betas, rtol=1e-6)


def test_stochastic_even_odd_and_determinism():
    target = de.gaussian(jnp.zeros(2))
    pt = ds.ParallelTempering(ds.MALA(step_size=0.3), num_replicas=4, max_temperature=8.0,
                              swap="seo")  # fmt: skip
    kwargs = dict(key=jax.random.key(2), num_steps=200, num_warmup=0, num_chains=2)
    a = dx.sample(pt, target, jnp.zeros(2), **kwargs)
    b = dx.sample(pt, target, jnp.zeros(2), **kwargs)
    np.testing.assert_array_equal(np.asarray(a.samples), np.asarray(b.samples))
    attempts = np.asarray(a.final_state.swap_attempts)  # (chains, 3)
    assert np.all(attempts[:, 0] == attempts[:, 2]) and np.all(attempts.sum(axis=1) > 0)
    assert a.num_grad_evals == 2 * 200 * 4  # one gradient per replica per step


def test_bad_input():
    kernel = ds.MALA(step_size=0.1)
    with pytest.raises(ValueError, match="temperatures.*positive"):
        ds.ParallelTempering(kernel, [1.0, -2.0, 3.0])
    with pytest.raises(ValueError, match="temperatures.*positive"):
        ds.ParallelTempering(kernel, [1.0, 0.0])
    with pytest.raises(ValueError, match=r"temperatures\[0\]"):
        ds.ParallelTempering(kernel, [2.0, 3.0])
    with pytest.raises(ValueError, match="strictly increasing"):
        ds.ParallelTempering(kernel, [1.0, 3.0, 2.0])
    with pytest.raises(ValueError, match="max_temperature"):
        ds.ParallelTempering(kernel, num_replicas=4, max_temperature=0.5)
    with pytest.raises(ValueError, match="num_replicas"):
        ds.ParallelTempering(kernel, num_replicas=1, max_temperature=5.0)
    with pytest.raises(ValueError, match="either"):
        ds.ParallelTempering(kernel, [1.0, 2.0], num_replicas=2)
    with pytest.raises(ValueError, match="swap"):
        ds.ParallelTempering(kernel, [1.0, 2.0], swap="random")
    with pytest.raises(TypeError, match="kernel"):
        ds.ParallelTempering("mala", [1.0, 2.0])
    pt = ds.ParallelTempering(kernel, [1.0, 2.0, 4.0])
    target = de.gaussian(jnp.zeros(2))
    with pytest.raises(ValueError, match="2 replicas.*3 temperatures"):
        pt.init(target, jnp.zeros((2, 2)))
    with pytest.raises(ValueError, match="x0"):
        pt.init(target, jnp.zeros(3))
    with pytest.raises(TypeError, match="ParallelTempering"):
        dx.sample(kernel, target, jnp.zeros(2), key=jax.random.key(0), num_steps=5,
                  adaptation=ds.ParallelTemperingAdaptation())  # fmt: skip


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_every_kernel_within_replicas(name):
    """Every registered kernel runs within the replicas; the T = 1 replica's mean is within
    5 Monte Carlo standard errors (adjusted kernels)."""
    kernel = SAMPLERS[name]()
    target = de.gaussian(jnp.array([1.0, -0.5]), jnp.array([0.5, 1.5]))
    pt = ds.ParallelTempering(kernel, num_replicas=3, max_temperature=4.0)
    res = dx.sample(pt, target, jnp.zeros(2), key=jax.random.key(3), num_steps=1000,
                    num_warmup=500, num_chains=4,
                    adaptation=ds.ParallelTemperingAdaptation())  # fmt: skip
    rates = np.asarray(res.final_state.swap_rate)
    assert np.all(np.isfinite(rates)) and np.all(rates > 0)
    if kernel.is_adjusted:
        x = np.asarray(res.samples)
        err = np.abs(x.reshape(-1, 2).mean(0) - np.array([1.0, -0.5]))
        assert np.all(err <= 5 * np.asarray(res.mcse_mean)), (err, res.mcse_mean)


class _ShiftedQuadratic(de.AbstractEnergy):
    """An unnormalized anisotropic Gaussian: `log p = -|x / scale|² / 2 + offset`."""

    scale: jax.Array
    offset: float
    event_shape: tuple = eqx.field(static=True)

    def log_density(self, x):
        return -0.5 * jnp.sum((x / self.scale) ** 2) + self.offset


def _gaussian_case():
    scale = jnp.array([0.5, 2.0])
    target = _ShiftedQuadratic(scale=scale, offset=3.0, event_shape=(2,))
    exact = 3.0 + np.log(2 * np.pi) + float(np.sum(np.log(np.asarray(scale))))
    return target, exact


def _mixture_case():  # two separated, unequal modes; normalized, so log Z = 0
    target = de.gaussian_mixture(
        jnp.array([0.3, 0.7]), jnp.array([[-4.0, 0.0], [4.0, 0.0]]), jnp.array([0.5, 0.5])
    )
    return target, 0.0


@pytest.mark.slow
@pytest.mark.parametrize("case", [_gaussian_case, _mixture_case], ids=["gaussian", "mixture"])
def test_tempering_log_normalizer(case):
    """`tempering_result`'s stepping-stone `log Z` is within 4 of its own standard errors
    (batch means over 8 chains, plus the hottest rung's importance error) of the exact
    value; the result carries WeightedSampleResult's fields; same key, same estimate."""
    target, exact = case()
    pt = ds.ParallelTempering(ds.MALA(step_size=0.3), num_replicas=6, max_temperature=50.0)
    res = dx.sample(pt, target, jnp.zeros(2), key=jax.random.key(1), num_steps=1000,
                    num_warmup=300, num_chains=8, check_health=False,
                    adaptation=ds.ParallelTemperingAdaptation())  # fmt: skip
    out = ds.tempering_result(res, key=jax.random.key(2))
    assert isinstance(out, ds.WeightedSampleResult)
    est = out.log_normalizer
    value, se = float(est.value), float(est.stderr)
    assert np.isfinite(value) and 0 < se < 0.5, (value, se)
    assert abs(value - exact) <= 4 * se, (value, exact, se)
    assert out.samples.shape == (8 * 1000, 2) and out.log_weights.shape == (8000,)
    assert np.allclose(np.exp(np.asarray(out.log_weights)).sum(), 1.0, atol=1e-4)
    assert out.extras["log_ratios"].shape == (5,)
    again = ds.tempering_result(res, key=jax.random.key(2))
    assert float(again.log_normalizer.value) == value
    with pytest.raises(ValueError, match="inflation"):
        ds.tempering_result(res, key=jax.random.key(2), inflation=0.5)


def test_tempering_result_bad_input():
    with pytest.raises(TypeError, match="result"):
        ds.tempering_result("not a result", key=jax.random.key(0))
