"""Annealed flow transport: `SMC(..., transport=FlowTransport(...))`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax.energies as de
import driftax.flows as df
import driftax.samplers as ds


def _affine(d):
    return df.Affine(loc=jnp.zeros(d), scale=jnp.ones(d))


def test_affine_transport_is_exact_on_a_gaussian():
    """One stage from N(0, I) to a shifted, scaled Gaussian: the fitted affine map carries the
    reference onto the target, so the weights are nearly uniform and log Z (= 0) is recovered;
    without the transport the same single stage degenerates."""
    target = de.gaussian(jnp.array([2.0, -1.0, 0.5]), jnp.array([0.5, 2.0, 1.0]))
    transport = df.FlowTransport(_affine(3), optimizer=optax.adam(0.05), num_steps=300)
    kw = dict(schedule=jnp.linspace(0.0, 1.0, 2), reference_scale=1.0)
    r = ds.SMC(ds.MALA(step_size=0.1), transport=transport, **kw).run(
        target, key=jax.random.key(0), num_particles=512
    )
    plain = ds.SMC(ds.MALA(step_size=0.1), **kw).run(
        target, key=jax.random.key(0), num_particles=512
    )
    assert float(r.extras["stage_ess"][0]) > 0.97 * 512
    assert float(plain.extras["stage_ess"][0]) < 0.2 * 512
    assert abs(float(r.log_normalizer.value)) < 5 * float(r.log_normalizer.stderr) + 0.01
    assert np.isfinite(r.extras["transport_loss"]).all()
    assert np.isnan(plain.extras["transport_loss"]).all()
    # the fit's gradients are counted: 300 steps over the 512 training particles + final loss
    assert int(r.num_grad_evals) - 2 * int(plain.num_grad_evals) == 301 * 512


def test_nonfinite_fit_falls_back_to_the_initial_bijection():
    transport = df.FlowTransport(_affine(2), optimizer=optax.adam(0.1), num_steps=5)
    x = jax.random.normal(jax.random.key(1), (16, 2))
    logw = jnp.full((16,), -jnp.log(16.0))
    y, log_det, loss = transport.fit_and_transport(
        jax.random.key(2), x, logw, lambda z: jnp.nan * jnp.sum(z), x, 0
    )
    np.testing.assert_allclose(np.asarray(y), np.asarray(x))
    np.testing.assert_allclose(np.asarray(log_det), 0.0)
    assert np.isnan(float(loss))


def test_bad_arguments():
    with pytest.raises(TypeError, match="bijection"):
        df.FlowTransport(3)
    with pytest.raises(ValueError, match="num_steps"):
        df.FlowTransport(_affine(2), num_steps=0)
    with pytest.raises(TypeError, match="optimizer"):
        df.FlowTransport(_affine(2), optimizer="adam")
    with pytest.raises(TypeError, match="transport"):
        ds.SMC(ds.MALA(step_size=0.1), transport="flow")


@pytest.mark.slow
def test_coupling_transport_log_z_unbiased_on_many_well():
    """A flexible coupling flow fitted at every stage does not bias log Z (the maps are fitted on
    the separate training population): 8 runs on many_well(8) agree with the exact value."""
    target = de.many_well(8)
    flow = df.coupling_flow(
        jax.random.key(1), 8, transformer="affine", num_layers=4, hidden=32, permutation="reverse"
    )
    transport = df.FlowTransport(flow.bijection, optimizer=optax.adam(1e-3), num_steps=100)
    smc = ds.SMC(
        ds.MALA(step_size=0.1),
        schedule=jnp.linspace(0.0, 1.0, 6),
        reference_scale=1.5,
        transport=transport,
        num_mcmc_steps=5,
    )
    r = smc.run(target, key=jax.random.key(0), num_particles=1000, num_runs=8)
    est = r.pooled_log_normalizer
    exact = float(target.log_normalizer)
    assert abs(float(est.value) - exact) < 4 * float(est.stderr) + 0.05, (est, exact)
