"""IIA-style fitted coefficients for Euler/DDIM: they improve the base solver at the same NFE on
held-out trajectories of the fitted field; zero coefficients are the base solver; bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.diffusion as dd
import driftax.energies as de


@pytest.fixture(scope="module")
def iia_case():
    with jax.enable_x64(True):
        path = dd.VP()
        field = de.NoisedGaussianMixture(de.gmm9(), path)
        x_fit = field.sample(jax.random.key(0), path.t_noise, 128)
        x_test = field.sample(jax.random.key(1), path.t_noise, 128)
        ref = dd.solve_adaptive(
            field.score, path, x_test, rtol=1e-10, atol=1e-10, max_steps=100_000
        )
        return path, field, x_fit, x_test, ref


def _err(x, ref):
    return float(jnp.mean(jnp.linalg.norm(x - ref, axis=-1)))


@pytest.mark.parametrize(
    "base,plain,schedule", [("ddim", dd.DDIM(), "log_snr"), ("euler", dd.Euler(), "uniform")]
)
def test_fitted_coefficients_beat_the_base_solver(iia_case, base, plain, schedule, x64):
    """Fitted on 128 trajectories, scored on 128 others: at NFE 5 the error falls at least 2x
    (measured 1.71 -> 0.61 for DDIM, 1.31 -> 0.26 for Euler with 256 fitting trajectories)."""
    path, field, x_fit, x_test, ref = iia_case
    solver = dd.fit_iia(field.score, path, x_fit, base=base, num_steps=5)
    fitted = _err(dd.solve(solver, field.score, path, x_test, ts=solver.ts), ref)
    base_err = _err(dd.solve(plain, field.score, path, x_test, num_steps=5, schedule=schedule), ref)
    assert fitted < 0.5 * base_err, (fitted, base_err)


def test_zero_coefficients_are_the_base_solver(iia_case, x64):
    path, field, _, x_test, _ = iia_case
    ts = dd.time_grid(path, 6, "log_snr")
    zero = dd.IIASolver(base="ddim", ts=ts, beta=jnp.zeros(6), gamma=jnp.zeros(6))
    np.testing.assert_allclose(
        dd.solve(zero, field.score, path, x_test, ts=ts),
        dd.solve(dd.DDIM(), field.score, path, x_test, ts=ts),
        rtol=1e-12,
        atol=1e-12,
    )


def test_bad_input(iia_case, x64):
    path, field, x_fit, x_test, _ = iia_case
    ts = dd.time_grid(path, 4, "log_snr")
    solver = dd.IIASolver(base="ddim", ts=ts, beta=jnp.zeros(4), gamma=jnp.zeros(4))
    with pytest.raises(ValueError, match="fitted on a grid of 4 steps"):
        dd.solve(solver, field.score, path, x_test, num_steps=5)
    with pytest.raises(ValueError, match="base"):
        dd.fit_iia(field.score, path, x_fit, base="heun", num_steps=5)
    with pytest.raises(ValueError, match="base"):
        dd.IIASolver(base="rk4", ts=ts, beta=jnp.zeros(4), gamma=jnp.zeros(4))
    with pytest.raises(ValueError, match="one entry per step"):
        dd.IIASolver(base="ddim", ts=ts, beta=jnp.zeros(3), gamma=jnp.zeros(4))
    with pytest.raises(ValueError, match="num_steps"):
        dd.fit_iia(field.score, path, x_fit)
    with pytest.raises(ValueError, match="fine_steps"):
        dd.fit_iia(field.score, path, x_fit, num_steps=5, fine_steps=1)
