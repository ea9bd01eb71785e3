"""Stochastic interpolants: exact mixture-to-mixture fields, ODE/SDE transport, losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de

from .helpers import mmd2, mmd_null_band, small_mixture


def _base():
    return de.gaussian_mixture(np.ones(2), np.array([[-3.0, 0.0], [3.0, 0.0]]), 0.5)


INTERPOLANTS = [
    dd.StochasticInterpolant(kind="linear", gamma_scale=float(np.sqrt(2.0))),
    dd.StochasticInterpolant(kind="trigonometric", gamma_scale=1.0),
    dd.StochasticInterpolant(kind="linear", gamma_scale=0.0),
]
IDS = ["linear", "trig", "deterministic"]


@pytest.mark.parametrize("interpolant", INTERPOLANTS, ids=IDS)
def test_exact_fields_solve_the_continuity_equation(interpolant, x64):
    """`∂_t log p = -div b - b · ∇log p`, and the score is `∇ log p`."""
    ex = dd.InterpolantMixtureFields(interpolant, _base(), small_mixture())

    @jax.jit
    def sides(t, x):
        s = ex.score(t, x)
        auto = jax.grad(lambda y: ex.log_density(t, y))(x)
        dlogp = jax.grad(lambda tt: ex.log_density(tt, x))(t)
        b = ex.velocity(t, x)
        div = jnp.trace(jax.jacfwd(lambda y: ex.velocity(t, y))(x))
        return s, auto, dlogp, -div - b @ s

    ts = jnp.array([0.2, 0.55, 0.9, 0.2, 0.55, 0.9])
    xs = jnp.array([[0.3, -0.7]] * 3 + [[-2.0, 1.5]] * 3)
    s, auto, lhs, rhs = jax.vmap(sides)(ts, xs)
    np.testing.assert_allclose(s, auto, rtol=1e-8)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-7, atol=1e-9)


@pytest.fixture(scope="module")
def transport():
    n, bw = 400, 1.0
    target = small_mixture()
    mean, sd = mmd_null_band(lambda k, m: target.sample(k, m), n, bw, key=jax.random.key(2))
    x0 = _base().sample(jax.random.key(0), n)
    ref = target.sample(jax.random.key(1), n)
    return x0, ref, bw, mean + 5 * sd


@pytest.mark.parametrize(
    "interpolant,solver,num_steps",
    [
        (INTERPOLANTS[0], dd.Heun(), 50),
        (INTERPOLANTS[0], dd.EulerMaruyama(epsilon=0.5), 300),
        (INTERPOLANTS[0], dd.EulerMaruyama(epsilon=2.0), 300),
        (INTERPOLANTS[1], dd.EulerMaruyama(epsilon=1.0), 300),
        (INTERPOLANTS[2], dd.Euler(), 100),
    ],
    ids=["linear-ode", "linear-sde-0.5", "linear-sde-2", "trig-sde-1", "deterministic-euler"],
)
def test_interpolant_transports_base_to_target(interpolant, solver, num_steps, transport):
    x0, ref, bw, band = transport
    ex = dd.InterpolantMixtureFields(interpolant, _base(), small_mixture())
    x = dd.solve_interpolant(
        solver,
        interpolant,
        x0,
        velocity=ex.velocity,
        score=ex.score,
        num_steps=num_steps,
        key=jax.random.key(3),
    )
    assert float(mmd2(x, ref, bw)) < band


def test_interpolant_loss_is_minimised_by_the_exact_drift():
    it = INTERPOLANTS[0]
    ex = dd.InterpolantMixtureFields(it, _base(), small_mixture())
    data = small_mixture().sample(jax.random.key(0), 4000)
    base = lambda k, shape: _base().sample(k, shape[0])
    loss_b = dd.InterpolantLoss(it, target="velocity", base=base)
    loss_eta = dd.InterpolantLoss(it, target="noise", base=base)
    key = jax.random.key(1)
    exact_b = float(loss_b(ex.velocity, data, key=key))
    exact_eta = float(loss_eta(ex.noise, data, key=key))
    assert exact_b < float(loss_b(lambda t, x: 1.1 * ex.velocity(t, x), data, key=key))
    assert exact_b < float(loss_b(lambda t, x: ex.velocity(t, x) + 0.1, data, key=key))
    assert exact_eta < float(loss_eta(lambda t, x: 0.9 * ex.noise(t, x), data, key=key))


def test_interpolant_bad_input():
    it = INTERPOLANTS[0]
    ex = dd.InterpolantMixtureFields(it, _base(), small_mixture())
    x0 = jnp.zeros((3, 2))
    kw = dict(velocity=ex.velocity, num_steps=5)
    with pytest.raises(ValueError, match="epsilon"):
        dd.solve_interpolant(
            dd.EulerMaruyama(), it, x0, score=ex.score, key=jax.random.key(0), **kw
        )
    with pytest.raises(ValueError, match="score"):
        dd.solve_interpolant(dd.EulerMaruyama(epsilon=1.0), it, x0, key=jax.random.key(0), **kw)
    with pytest.raises(ValueError, match="key"):
        dd.solve_interpolant(dd.EulerMaruyama(epsilon=1.0), it, x0, score=ex.score, **kw)
    with pytest.raises(TypeError, match="Euler"):
        dd.solve_interpolant(dd.DPMSolverPP2M(), it, x0, **kw)
    with pytest.raises(ValueError, match="monotone"):
        dd.solve_interpolant(
            dd.Euler(), it, x0, velocity=ex.velocity, ts=jnp.array([0.0, 0.6, 0.4, 1.0])
        )
    with pytest.raises(ValueError, match="kind"):
        dd.StochasticInterpolant(kind="cubic")
    with pytest.raises(ValueError, match="gamma_scale"):
        dd.InterpolantLoss(dd.StochasticInterpolant(gamma_scale=0.0), target="noise")
