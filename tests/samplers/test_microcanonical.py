"""MCLMC and MAMS: the isokinetic operation of the splitting core, exactness of MAMS, the
discretization bias of MCLMC, their own tuning, and their argument checks."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers import _driver
from driftax.samplers._integrators import (
    IsokineticLeapfrog,
    IsokineticMcLachlan,
    isokinetic,
    momentum_norm,
    partial_refresh,
    unit_momentum,
)

from .test_correctness import check_moments


def _state(p, g):
    return ds.KineticState(position=jnp.zeros_like(p), momentum=p, log_density=0.0, score=g)


# ---------------------------------------------------------------------------------------------
# The isokinetic operation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "metric",
    [ds.IdentityMetric(), ds.DiagonalMetric(jnp.array([0.5, 2.0, 1.0, 3.0]))],
    ids=["identity", "diagonal"],
)
def test_isokinetic_update_is_a_flow_on_the_unit_sphere(metric, x64):
    """Exact identities of the closed form: unit speed is kept, two updates of h₁ and h₂ with
    the same score are one update of h₁ + h₂ (momentum and kinetic-energy change alike), the
    update turns the velocity towards the whitened score, and a zero score does nothing."""
    k1, k2 = jax.random.split(jax.random.key(0))
    p = unit_momentum(metric, jax.random.normal(k1, (4,)))
    g = 3.0 * jax.random.normal(k2, (4,))
    s1, dk1 = isokinetic(_state(p, g), metric, 0.3)
    s12, dk2 = isokinetic(s1, metric, 0.5)
    s, dk = isokinetic(_state(p, g), metric, 0.8)
    np.testing.assert_allclose(momentum_norm(metric, s.momentum), 1.0, rtol=1e-12)
    np.testing.assert_allclose(s12.momentum, s.momentum, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dk1 + dk2, dk, rtol=1e-10)
    # the whitened velocity turns towards the whitened score: u·g grows
    assert float(jnp.sum(s.momentum * metric.velocity(g))) > float(jnp.sum(p * metric.velocity(g)))
    s0, dk0 = isokinetic(_state(p, jnp.zeros(4)), metric, 0.8)
    np.testing.assert_allclose(s0.momentum, p, rtol=1e-12)
    assert float(dk0) == 0.0


def test_isokinetic_update_matches_the_ode(x64):
    """Against a fine Euler integration of `du/dt = (I - uuᵀ) g/(d-1)` and `dK/dt = u·g` (the
    kinetic energy takes up what `-log π` loses along the exact flow; identity metric)."""
    k1, k2 = jax.random.split(jax.random.key(1))
    d = 5
    u = unit_momentum(ds.IdentityMetric(), jax.random.normal(k1, (d,)))
    g = jax.random.normal(k2, (d,))
    s, dk = isokinetic(_state(u, g), ds.IdentityMetric(), 0.7)
    n = 20000
    dt = 0.7 / n

    def body(_, c):
        v, k = c
        v = v + dt * (g - jnp.dot(v, g) * v) / (d - 1)
        return v / jnp.linalg.norm(v), k + dt * jnp.dot(v, g)

    v, k = jax.lax.fori_loop(0, n, body, (u, 0.0))
    np.testing.assert_allclose(s.momentum, v, atol=1e-4)
    np.testing.assert_allclose(dk, k, atol=1e-3)


def test_isokinetic_integrators_are_the_kick_schemes():
    """The isokinetic integrators are leapfrog and McLachlan with I in place of B."""
    for iso, base in ((IsokineticLeapfrog, ds.Leapfrog), (IsokineticMcLachlan, ds.McLachlan)):
        assert [c for _, c in iso.scheme] == [c for _, c in base.scheme]
        assert [op for op, _ in iso.scheme] == ["I" if op == "B" else op for op, _ in base.scheme]
        assert iso().num_grad_evals == base().num_grad_evals
        assert not iso().is_stochastic
    assert isinstance(ds.MCLMC(integrator="leapfrog").integrator, IsokineticLeapfrog)
    assert isinstance(ds.MAMS().integrator, IsokineticMcLachlan)


def test_partial_refresh_keeps_unit_speed_and_decorrelates_at_rate_L(x64):
    """The refreshed velocity has unit length; over many refreshes of total time `t` the mean
    overlap `E[u₀·u_t]` decays like `e^{-t/L}` (the decoherence length) to within MC error."""
    d, L, h, n = 50, 2.0, 0.1, 10
    metric = ds.IdentityMetric()
    u0 = unit_momentum(metric, jnp.ones(d))

    def run(key):
        s = _state(u0, jnp.zeros(d))
        for k in jax.random.split(key, n):
            s = partial_refresh(s, metric, h, L, jax.random.normal(k, (d,)))
        return s.momentum

    us = jax.jit(jax.vmap(run))(jax.random.split(jax.random.key(2), 2000))
    np.testing.assert_allclose(jnp.linalg.norm(us, axis=1), 1.0, rtol=1e-12)
    overlap = np.asarray(us @ u0)
    se = overlap.std() / np.sqrt(len(overlap))
    assert abs(overlap.mean() - np.exp(-n * h / L)) < 5 * se + 0.01


def test_info_counts_every_gradient():
    """MAMS reports two gradients per McLachlan step of its jittered trajectory; MCLMC one per
    leapfrog step; the driver's counts are the sums (warmup included)."""
    target = de.gaussian(jnp.zeros(3))
    sampler = ds.MAMS(step_size=0.3, L=1.0)
    state = sampler.init(target, jnp.ones(3))
    keys = jax.random.split(jax.random.key(0), 8)
    _, info = jax.jit(jax.lax.scan, static_argnums=0)(
        lambda st, k: sampler.step(target, st, key=k), state, keys
    )
    n = np.asarray(info.extras["num_integration_steps"])
    assert np.all((n >= 1) & (n <= np.ceil(2 * 1.0 / 0.3)))
    np.testing.assert_array_equal(np.asarray(info.num_grad_evals), 2 * n)
    assert len(set(n.tolist())) > 1  # jittered
    r = dx.sample(
        ds.MCLMC(step_size=0.3, L=1.0, integrator="leapfrog"),
        target,
        jnp.ones(3),
        key=jax.random.key(1),
        num_steps=30,
        num_warmup=20,
        num_chains=2,
        check_health=False,
    )
    assert r.num_grad_evals == 60 and r.num_grad_evals_warmup == 40


# ---------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------


def test_bad_input_is_rejected_eagerly():
    for cls in (ds.MCLMC, ds.MAMS):
        for bad in (0.0, -1.0, float("nan")):
            with pytest.raises(ValueError, match="step_size"):
                cls(step_size=bad)
            with pytest.raises(ValueError, match="`L`"):
                cls(L=bad)
        with pytest.raises(ValueError, match="integrator"):
            cls(integrator="yoshida")
        with pytest.raises(ValueError, match="integrator"):
            cls(integrator=ds.Leapfrog())
        with pytest.raises(ValueError, match="x0"):
            cls().init(de.gaussian(jnp.zeros(1)), jnp.zeros(1))
    with pytest.raises(ValueError, match="max_num_steps"):
        ds.MAMS(max_num_steps=0)
    with pytest.raises(ValueError, match="integrator"):
        ds.HMC(step_size=0.1, integrator=IsokineticLeapfrog())
    for bad in (0.0, 1.0, 1.5, -0.2):
        with pytest.raises(ValueError, match="target"):
            ds.MAMSAdaptation(target=bad)
        with pytest.raises(ValueError, match="target"):
            ds.MCLMCAdaptation(target=bad)
    with pytest.raises(ValueError, match="l_factor"):
        ds.MAMSAdaptation(l_factor=0.0)
    with pytest.raises(ValueError, match="metric"):
        ds.MCLMCAdaptation(metric="dense")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="MAMS"):
        dx.sample(
            ds.MCLMC(),
            de.gaussian(jnp.zeros(2)),
            jnp.zeros(2),
            key=jax.random.key(0),
            num_steps=5,
            num_warmup=5,
            adaptation=ds.MAMSAdaptation(),
        )


# ---------------------------------------------------------------------------------------------
# Tuning
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [ds.MAMS, ds.MCLMC])
def test_tuning_is_sane_deterministic_and_compiled_once(cls):
    """`adaptation="auto"` picks the sampler's own tuning: the tuned step size and L are finite,
    shared by the chains and of the target's scale (a diagonal Gaussian with scales 0.3-3 in
    5 dimensions); the diagonal metric follows the variances; the same key gives the same
    draws; a second run with the same shapes does not recompile."""
    scales = jnp.array([0.3, 0.6, 1.0, 2.0, 3.0])
    target = de.gaussian(jnp.zeros(5), scales**2)
    kw = dict(num_steps=100, num_warmup=300, num_chains=4, check_health=False)
    r = dx.sample(cls(), target, jnp.ones(5), key=jax.random.key(0), **kw)
    assert isinstance(ds.default_adaptation(cls()), (ds.MAMSAdaptation, ds.MCLMCAdaptation))
    h, L = np.asarray(r.sampler.step_size), np.asarray(r.sampler.L)
    assert np.all(np.isfinite(h)) and np.all(np.isfinite(L))
    assert np.ptp(h) == 0 and np.ptp(L) == 0  # pooled over chains
    # whitened, the target is a unit Gaussian in 5-d: radius √5 ≈ 2.2
    assert 0.1 < h[0] < 10.0 and 0.1 < L[0] < 30.0 and L[0] >= 0.5 * h[0]  # ≥ 1 step
    ratio = np.asarray(r.sampler.metric.inverse_mass[0]) / np.asarray(scales) ** 2
    assert np.all((ratio > 0.3) & (ratio < 3.0)), ratio
    assert np.all(np.isfinite(np.asarray(r.samples)))
    assert r.num_grad_evals_warmup > 0
    before = eqx.debug.get_num_traces(_driver._run_traced)
    r2 = dx.sample(cls(), target, jnp.ones(5), key=jax.random.key(0), **kw)
    assert eqx.debug.get_num_traces(_driver._run_traced) == before
    np.testing.assert_array_equal(np.asarray(r.samples), np.asarray(r2.samples))


@pytest.mark.parametrize("phi", [0.8, -0.8])
def test_length_comparison_measures_the_second_moment(phi):
    """MAMS's comparison of trajectory lengths scores a trace by the longer of the
    autocorrelation times of x and x². For a Gaussian AR(1) chain with coefficient φ these are
    (1+φ)/(1−φ) and (1+φ²)/(1−φ²): a chain that flips sign (φ < 0) mixes x fast and x²
    slowly, and the score must see the slow one."""
    from driftax.samplers._microcanonical_adaptation import (
        integrated_autocorrelation_time,
        moments_autocorrelation_time,
    )

    n, c, d = 4000, 4, 50
    rng = np.random.default_rng(0)
    e = rng.standard_normal((n, c, d)) * np.sqrt(1 - phi**2)
    x = np.empty((n, c, d))
    x[0] = rng.standard_normal((c, d))
    for t in range(1, n):
        x[t] = phi * x[t - 1] + e[t]
    tau = np.asarray(moments_autocorrelation_time(jnp.asarray(x)))
    tau_x = np.asarray(integrated_autocorrelation_time(jnp.asarray(x)))
    exact_x, exact_x2 = (1 + phi) / (1 - phi), (1 + phi**2) / (1 - phi**2)
    # one coordinate's estimate has a relative sd of about √(2(2M+1)/(nc)) ≈ 0.1 (M ≈ 5τ
    # lags); the mean over 50 coordinates about 0.015: 10% is over 6 sd
    np.testing.assert_allclose(np.mean(tau), max(exact_x, exact_x2), rtol=0.1)
    if phi < 0:
        assert np.mean(tau_x) < 0.2 * exact_x2  # x alone looks nearly independent


# ---------------------------------------------------------------------------------------------
# Statistical checks
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_mams_ill_conditioned_gaussian():
    """MAMS with its own tuning is exact: means and variances of a diagonal Gaussian with
    condition number 100 (d = 10) within 5 MCSE."""
    target = de.ill_conditioned_gaussian(10, 100.0)
    r = dx.sample(
        ds.MAMS(), target, jnp.ones(10), key=jax.random.key(1), num_steps=2000,
        num_warmup=1000, num_chains=4,
    )  # fmt: skip
    assert r.num_divergent == 0
    check_moments(r.samples, target.mean, target.variance, label="MAMS")


def _rosenbrock():
    """A 2-d Rosenbrock-shaped target with exact moments: `x ~ N(1, 1)`, `y | x ~ N(x², 0.3²)`,
    i.e. `log π = -(1 - x)²/2 - (y - x²)²/(2·0.09)` (a curved ridge along `y = x²`).
    E[x] = 1, Var x = 1, E[y] = 2, Var y = 0.09 + 4 + 2 = 6.09."""
    energy = de.from_log_density(
        lambda z: -0.5 * (1.0 - z[0]) ** 2 - 0.5 * (z[1] - z[0] ** 2) ** 2 / 0.09, jnp.zeros(2)
    )
    return energy, np.array([1.0, 2.0]), np.array([1.0, 6.09])


@pytest.mark.slow
def test_mams_rosenbrock():
    """MAMS on the curved Rosenbrock ridge: means and variances within 5 MCSE."""
    energy, mean, var = _rosenbrock()
    r = dx.sample(
        ds.MAMS(), energy, jnp.array([1.0, 1.0]), key=jax.random.key(2), num_steps=10_000,
        num_warmup=2000, num_chains=4,
    )  # fmt: skip
    assert r.num_divergent <= 0.001 * r.samples.shape[0] * r.samples.shape[1]
    check_moments(r.samples, mean, var, label="MAMS Rosenbrock")


@pytest.mark.slow
def test_mams_logistic_regression():
    """MAMS on the breast-cancer logistic regression: posterior means and variances against the
    shipped reference, within 5 combined MCSE (ours and the reference's)."""
    target = de.logistic_regression()
    r = dx.sample(
        ds.MAMS(), target, jnp.zeros(target.event_shape), key=jax.random.key(4),
        num_steps=2000, num_warmup=1000, num_chains=4,
    )  # fmt: skip
    assert r.num_divergent == 0
    x = np.asarray(r.samples, np.float64)
    ref_m, ref_v = np.asarray(target.mean), np.asarray(target.variance)
    err_m = np.abs(x.mean((0, 1)) - ref_m)
    tol_m = 5 * np.hypot(ds.mcse(x, "mean"), np.asarray(target.reference_mcse_mean))
    assert np.all(err_m <= tol_m), (err_m, tol_m)
    y = (x - x.mean((0, 1))) ** 2
    err_v = np.abs(y.mean((0, 1)) - ref_v)
    tol_v = 5 * np.hypot(ds.mcse(y, "mean"), np.asarray(target.reference_mcse_variance))
    assert np.all(err_v <= tol_v), (err_v, tol_v)


@pytest.mark.slow
def test_mclmc_bias_is_second_order_in_the_step_size():
    """Unadjusted MCLMC (isokinetic leapfrog, fixed step sizes) on a 50-d standard Gaussian: the
    bias of E[|x|²/d] at step size h is about 4 times the one at h/2 (second order); the
    log₂ ratio is checked within 4 of its standard errors (propagated from the MCSEs), which
    excludes first order."""
    d = 50
    target = de.gaussian(jnp.zeros(d))
    x0 = jnp.zeros((32, d))

    def run(h):
        sampler = ds.MCLMC(step_size=h, L=7.0, integrator="leapfrog")
        out = ds.run_chains(
            sampler, target, x0, key=jax.random.key(5), num_steps=2000, num_warmup=200
        )
        return jnp.mean(out.samples**2, axis=-1)

    y = np.asarray(jax.jit(jax.vmap(run))(jnp.array([6.0, 3.0])), np.float64)
    bias = y.mean(axis=(1, 2)) - 1.0
    se = np.array([ds.mcse(yi[..., None], "mean")[0] for yi in y])
    assert np.all(bias > 3 * se), (bias, se)  # a measurable bias at both step sizes
    log_ratio = np.log2(bias[0] / bias[1])
    se_log = np.hypot(se[0] / bias[0], se[1] / bias[1]) / np.log(2.0)
    assert abs(log_ratio - 2.0) <= 4 * se_log, (log_ratio, se_log)
