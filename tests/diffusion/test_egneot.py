"""EgNEOT (energy-guided entropic neural OT): the conditional plan is an AbstractEnergy; with a
quadratic potential at the Gaussian optimum it is GaussianBridge's conditional plan and the
weak dual's exact gradient vanishes there; the MCMC-driven loss gradient matches the exact
gradient away from it; trained on Gaussian endpoints it recovers the closed-form coupling."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.diffusion as dd
import driftax.energies as de
import driftax.samplers as ds

M0 = np.array([0.0, 1.0])
S0 = np.array([[1.0, 0.3], [0.3, 0.5]])
M1 = np.array([2.0, -1.0])
S1 = np.array([[2.0, -0.4], [-0.4, 1.0]])
EPS = 1.0


def _bridge():
    return dd.GaussianBridge(M0, S0, M1, S1, math.sqrt(EPS))


def _optimal_model():
    """The quadratic potential whose plan is the closed-form Schrödinger bridge's."""
    br = _bridge()
    k = np.linalg.solve(S0, np.asarray(br.coupling_covariance())).T  # C^T S0^{-1}
    p = np.linalg.inv(0.5 * (k + k.T))
    # b = P (m1 - K m0): the conditional mean K x + P^{-1} b is then m1 + K (x - m0)
    pot = eqx.tree_at(
        lambda q: (q.chol, q.shift),
        dd.QuadraticPotential(2),
        (jnp.asarray(np.linalg.cholesky(p)), jnp.asarray(p @ (M1 - k @ M0))),
    )
    return dd.EgNEOT(pot, EPS, 2)


def _weak_dual(model):
    """-E_{p1} f + eps E_{p0} log Z_f(x), exact for a quadratic potential and Gaussian ends."""
    pot = model.potential
    p = pot.precision()
    b = pot.shift
    eps = model.epsilon
    p_inv = jnp.linalg.inv(p)
    e_f1 = -0.5 * jnp.trace((p - jnp.eye(2)) @ (S1 + np.outer(M1, M1))) + b @ M1
    mb = M0 + b
    e_quad = jnp.trace(p_inv @ S0) + mb @ p_inv @ mb
    e_xx = jnp.trace(S0) + M0 @ M0
    e_logz = (
        0.5 * (e_quad - e_xx) / eps + jnp.log(2 * jnp.pi * eps) - 0.5 * jnp.linalg.slogdet(p)[1]
    )
    return -e_f1 + eps * e_logz


def test_optimal_quadratic_plan_is_the_gaussian_bridge(x64):
    model = _optimal_model()
    br = _bridge()
    x = jnp.array([0.4, -0.3])
    k, c, cov = dd.quadratic_plan(model)
    mean_br, cov_br = br.conditional(x)
    np.testing.assert_allclose(k @ x + c, mean_br, atol=1e-10)
    np.testing.assert_allclose(cov, cov_br, atol=1e-10)
    # the conditional energy is that Gaussian's log density up to a constant
    energy = model.conditional(x)
    assert isinstance(energy, de.AbstractEnergy) and energy.event_shape == (2,)
    ys = jax.random.normal(jax.random.key(0), (5, 2))
    gauss = jax.vmap(lambda y: jax.scipy.stats.multivariate_normal.logpdf(y, mean_br, cov_br))(ys)
    diff = jax.vmap(energy.log_density)(ys) - gauss
    np.testing.assert_allclose(diff - diff[0], 0.0, atol=1e-10)
    np.testing.assert_allclose(jax.vmap(energy.score)(ys), jax.vmap(jax.grad(
        lambda y: jax.scipy.stats.multivariate_normal.logpdf(y, mean_br, cov_br)))(ys), atol=1e-10)  # fmt: skip


def test_weak_dual_is_stationary_at_the_optimum(x64):
    """The exact gradient of the weak dual in (L, b) vanishes at the Gaussian SB potential, and
    not at a perturbed one."""
    model = _optimal_model()
    grads = eqx.filter_grad(_weak_dual)(model)
    np.testing.assert_allclose(jnp.tril(grads.potential.chol), 0.0, atol=1e-9)
    np.testing.assert_allclose(grads.potential.shift, 0.0, atol=1e-9)
    moved = eqx.tree_at(lambda m: m.potential.shift, model, model.potential.shift + 0.3)
    assert float(jnp.abs(eqx.filter_grad(_weak_dual)(moved).potential.shift).max()) > 0.1


def test_mcmc_loss_gradient_matches_the_exact_gradient():
    """Away from the optimum, the gradient of EgNEOTLoss (negative samples by MALA on the
    conditional energy) estimates the weak dual's exact gradient: within 5 MCSE per
    coordinate of the shift (the batch of 2000 independent chains gives the MCSE)."""
    model = dd.EgNEOT(dd.QuadraticPotential(2), EPS, 2)  # f = 0: plan N(x, eps I)
    model = eqx.tree_at(lambda m: m.potential.shift, model, jnp.array([0.5, -0.5]))
    n = 2000
    k0, k1, kl = jax.random.split(jax.random.key(1), 3)
    x0 = jax.random.multivariate_normal(k0, M0, S0, (n,))
    x1 = jax.random.multivariate_normal(k1, M1, S1, (n,))
    loss = dd.EgNEOTLoss(sampler=ds.MALA(step_size=0.3), num_mcmc_steps=40)
    got = eqx.filter_grad(lambda m: loss(m, (x0, x1), key=kl))(model).potential.shift
    want = eqx.filter_grad(_weak_dual)(model).potential.shift
    # d/db of the loss is mean(y) - mean(x1): its MCSE from the two sample means
    mcse = np.sqrt((np.diag(S0) + EPS + np.diag(S1)) / n)
    assert np.all(np.abs(np.asarray(got) - np.asarray(want)) < 5 * mcse), (got, want, mcse)


def test_bad_input():
    with pytest.raises(ValueError, match="epsilon"):
        dd.EgNEOT(dd.QuadraticPotential(2), 0.0, 2)
    with pytest.raises(TypeError, match="potential"):
        dd.EgNEOT("f", 1.0, 2)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_mcmc_steps"):
        dd.EgNEOTLoss(num_mcmc_steps=0)
    with pytest.raises(TypeError, match="sampler"):
        dd.EgNEOTLoss(sampler="ula")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="QuadraticPotential"):
        dd.quadratic_plan(dd.EgNEOT(lambda y: -jnp.sum(y**2), 1.0, 2))


@pytest.mark.slow
def test_trained_plan_recovers_the_gaussian_coupling():
    """EgNEOT with a quadratic potential, 500 Adam steps on 4000 samples per end, ULA (30 steps
    of size 0.1) negatives: the coupling covariance S0_hat K^T is within 0.08 relative error of
    the closed form for two seeds (measured: 0.012 and 0.033, plug-in floor ~0.02), and a draw
    of the conditional by ULA has the plan's moments."""
    br = _bridge()
    c = np.asarray(br.coupling_covariance())
    errs = []
    for seed in (0, 1):
        k0, k1, kf = jax.random.split(jax.random.key(seed), 3)
        x0 = jax.random.multivariate_normal(k0, M0, S0, (4000,))
        x1 = jax.random.multivariate_normal(k1, M1, S1, (4000,))
        model = dd.EgNEOT(dd.QuadraticPotential(2), EPS, 2)
        loss = dd.EgNEOTLoss(sampler=ds.ULA(step_size=0.1), num_mcmc_steps=30)
        opt = optax.adam(optax.cosine_decay_schedule(0.05, 500))
        model, losses = dd.fit_bridge(
            model, loss, x0, x1, key=kf, optimizer=opt, num_steps=500, batch_size=512
        )
        assert np.all(np.isfinite(np.asarray(losses)))
        k, _, _ = dd.quadratic_plan(model)
        c_hat = np.cov(np.asarray(x0).T) @ np.asarray(k).T
        errs.append(np.linalg.norm(c_hat - c) / np.linalg.norm(c))
    assert max(errs) < 0.08, errs
    x = jnp.asarray(M0)
    ys = jax.vmap(lambda kk: model.sample_conditional(kk, x, num_steps=100))(
        jax.random.split(jax.random.key(9), 1000)
    )
    kmat, cvec, cov = dd.quadratic_plan(model)
    # 1000 draws: mean MCSE ~0.03, variance MCSE ~0.04; ULA (h = 0.05 eps) adds O(h) bias
    np.testing.assert_allclose(np.asarray(ys).mean(0), kmat @ x + cvec, atol=0.1)
    np.testing.assert_allclose(np.cov(np.asarray(ys).T), cov, atol=0.12)
