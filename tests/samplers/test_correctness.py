"""Statistical correctness against ground truth, with tolerances from the Monte Carlo standard
error (ArviZ ESS-based MCSE), never a bare atol. Unadjusted samplers are additionally allowed a
small stated discretization bias."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de
import driftax.samplers as ds

from .registry import SAMPLERS

UNADJUSTED_BIAS = 0.1  # relative bias allowed for unadjusted kernels at the default target


def check_moments(samples, mean, variance, *, bias=0.0, n_mcse=5.0, label=""):
    """|mean error| ≤ n·MCSE + bias·σ and |E(x-μ)² - σ²| ≤ n·MCSE + bias·σ², per coordinate."""
    x = np.asarray(samples, dtype=np.float64)
    x = x.reshape(*x.shape[:2], -1)
    mean = np.asarray(mean, np.float64).reshape(-1)
    variance = np.asarray(variance, np.float64).reshape(-1)
    err_m = np.abs(x.mean((0, 1)) - mean)
    tol_m = n_mcse * ds.mcse(x, "mean") + bias * np.sqrt(variance)
    assert np.all(err_m <= tol_m), f"{label} mean: error {err_m} > tolerance {tol_m}"
    y = (x - mean) ** 2
    err_v = np.abs(y.mean((0, 1)) - variance)
    tol_v = n_mcse * ds.mcse(y, "mean") + bias * variance
    assert np.all(err_v <= tol_v), f"{label} variance: error {err_v} > tolerance {tol_v}"


def _bias(sampler):
    return 0.0 if sampler.is_adjusted else UNADJUSTED_BIAS


# one representative per kernel class in the default suite; the whole registry in the slow one
DEFAULT = ["MALA", "HMC", "NUTS", "ChEESHMC", "UBU", "RMP-kinetic"]
EVERY_CLASS = ["RandomWalk", "ULA", *DEFAULT]


@pytest.mark.parametrize("name", DEFAULT)
def test_ill_conditioned_gaussian_small(name):
    target = de.ill_conditioned_gaussian(3, 10.0)
    sampler = SAMPLERS[name]()
    r = dx.sample(
        sampler,
        target,
        jnp.ones(3),
        key=jax.random.key(1),
        num_steps=2000,
        num_warmup=1000,
        num_chains=4,
    )
    assert r.num_divergent == 0
    assert np.all(r.rhat < 1.1)
    check_moments(r.samples, target.mean, target.variance, bias=_bias(sampler), label=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_ill_conditioned_gaussian_d20_kappa100(name):
    target = de.ill_conditioned_gaussian(20, 100.0)
    sampler = SAMPLERS[name]()
    n = 20_000 if name in ("RandomWalk", "ULA", "RMP-overdamped") else 4000
    r = dx.sample(
        sampler,
        target,
        jnp.ones(20),
        key=jax.random.key(2),
        num_steps=n,
        num_warmup=1000,
        num_chains=4,
    )
    assert r.num_divergent == 0
    check_moments(r.samples, target.mean, target.variance, bias=_bias(sampler), label=name)


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY_CLASS)
def test_banana(name):
    """Every kernel on a twisted Gaussian (scale 3, curvature 0.1: Var x₂ = 2.62)."""
    target = de.banana(scale=3.0, curvature=0.1)
    sampler = SAMPLERS[name]()
    n = 40_000 if name in ("RandomWalk", "ULA", "MALA", "RMP-kinetic") else 10_000
    r = dx.sample(
        sampler,
        target,
        jnp.zeros(2),
        key=jax.random.key(3),
        num_steps=n,
        num_warmup=2000,
        num_chains=4,
    )
    check_moments(r.samples, target.mean, target.variance, bias=_bias(sampler), label=name)


@pytest.mark.slow
def test_banana_standard_nuts():
    """The standard banana (scale 10, curvature 0.03): Var x₂ = 19 lives in the far tails of x₁
    (it needs E[x₁⁸] to converge), so only NUTS with a long run is checked here. The tails are
    strongly curved: at the default target acceptance 0.8, NUTS diverges there (≈ 800 of 160k
    transitions) and underestimates both variances by 4-6 MCSE on 2 of 4 seeds; at 0.95 (Stan's
    advice for divergences) seeds 3-6 all fall within 4 MCSE."""
    target = de.banana()
    r = dx.sample(
        ds.NUTS(step_size=0.3),
        target,
        jnp.zeros(2),
        key=jax.random.key(3),
        num_steps=40_000,
        num_warmup=2000,
        num_chains=4,
        adaptation=ds.WindowAdaptation(target=0.95),
    )
    check_moments(r.samples, target.mean, target.variance, label="NUTS standard banana")


@pytest.mark.slow
@pytest.mark.parametrize("name", EVERY_CLASS)
def test_logistic_regression(name):
    target = de.logistic_regression()
    sampler = SAMPLERS[name]()
    n = 10_000 if name in ("RandomWalk", "ULA", "MALA") else 2000
    x0 = jnp.zeros(target.event_shape)
    r = dx.sample(
        sampler, target, x0, key=jax.random.key(4), num_steps=n, num_warmup=1000, num_chains=4
    )
    # an unadjusted kernel may (rarely) meet a step with a huge energy error: it is rejected
    assert r.num_divergent <= (0 if sampler.is_adjusted else 1e-3 * 4 * n)
    x = np.asarray(r.samples, np.float64)
    # tolerance: our MCSE and the reference's MCSE combined
    ref_m, ref_v = np.asarray(target.mean), np.asarray(target.variance)
    err_m = np.abs(x.mean((0, 1)) - ref_m)
    tol_m = 5 * np.hypot(ds.mcse(x, "mean"), np.asarray(target.reference_mcse_mean))
    tol_m += _bias(sampler) * np.sqrt(ref_v)
    assert np.all(err_m <= tol_m), (name, err_m, tol_m)
    y = (x - x.mean((0, 1))) ** 2
    err_v = np.abs(y.mean((0, 1)) - ref_v)
    tol_v = 5 * np.hypot(ds.mcse(y, "mean"), np.asarray(target.reference_mcse_variance))
    tol_v += _bias(sampler) * ref_v
    assert np.all(err_v <= tol_v), (name, err_v, tol_v)


@pytest.mark.slow
def test_funnel_x0_marginal():
    # Neal's funnel (centered, d=10). A fixed step size adapted to the bulk skips the neck
    # (x0 << 0) and NUTS then underestimates Var x0 (measured 5.8-7.2 instead of 9, with a
    # diagonal or identity metric, target acceptance 0.95-0.99). Stan-style step-size jitter
    # lets trajectories with small steps enter the neck; with the identity metric (a diagonal
    # metric estimated from the funnel's samples scales the x_i by their average scale,
    # which is far too large in the neck) Var x0 is recovered: 7.84 ± 0.44, 7.37 ± 0.71,
    # 7.53 ± 0.49 and 8.32 ± 0.46 on seeds 5-8 (5000 steps). The configuration
    # docs/samplers.md recommends.
    target = de.funnel(10)
    r = dx.sample(
        ds.NUTS(jitter_step_size=0.5),
        target,
        jnp.zeros(10),
        key=jax.random.key(5),
        num_steps=5000,
        num_warmup=2000,
        num_chains=4,
        adaptation=ds.StepSizeAdaptation(target=0.95),
    )
    x0 = np.asarray(r.samples[..., 0], np.float64)
    check_moments(x0[..., None], 0.0, 9.0, label="NUTS funnel x0")


@pytest.mark.slow
def test_funnel_static_hmc_is_flagged():
    # HMC with a static trajectory cannot sample the centered funnel's neck: with the identity
    # metric, step-size jitter 0.5, jittered trajectory lengths (≤ 30 steps) and target
    # acceptance 0.95, Var x0 stays at 7.3 ± 0.5, 7.4 ± 0.3 and 7.1 ± 0.3 (seeds 5, 8, 9) after
    # 40 000 steps instead of 9 — a bias, not Monte Carlo noise (the old setup, with a diagonal
    # metric, gave 6.0 ± 0.4). So no moment check here: what must hold is that the run says so.
    target = de.funnel(10)
    sampler = ds.HMC(
        step_size=0.1, num_integration_steps=30, jitter_num_steps=True, jitter_step_size=0.5
    )
    with pytest.warns(dx.SamplingWarning, match="divergent"):
        r = dx.sample(
            sampler,
            target,
            jnp.zeros(10),
            key=jax.random.key(5),
            num_steps=2000,
            num_warmup=1000,
            num_chains=4,
            adaptation=ds.StepSizeAdaptation(target=0.95),
        )
    assert r.num_divergent > 0
    assert r.health.divergent


@pytest.mark.slow
@pytest.mark.parametrize("name", ["HMC", "NUTS"])
def test_u1_plaquette(name):
    target = de.u1_lattice(8, 6.0)
    # gauge directions are flat (the density is periodic and gauge invariant), so NUTS never
    # U-turns along them: cap its trajectories
    # and their variance keeps growing, so a metric estimated from the positions is
    # meaningless: adapt the step size only (identity metric)
    sampler = {
        "NUTS": ds.NUTS(step_size=0.2, max_tree_depth=6),
        "HMC": ds.HMC(step_size=0.2, num_integration_steps=10),
    }[name]
    x0 = jnp.zeros(target.event_shape)
    r = dx.sample(
        sampler,
        target,
        x0,
        key=jax.random.key(6),
        num_steps=16_000 if name == "HMC" else 8000,
        num_warmup=500,
        num_chains=4,
        adaptation=ds.StepSizeAdaptation(),
    )
    plaq = np.asarray(jax.vmap(jax.vmap(target.mean_plaquette))(r.samples), np.float64)
    err = abs(plaq.mean() - target.exact_plaquette)
    mcse = float(ds.mcse(plaq[..., None], "mean")[0])
    assert err <= 3 * mcse, (name, plaq.mean(), target.exact_plaquette, mcse)
