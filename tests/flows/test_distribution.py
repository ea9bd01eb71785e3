"""Flow distributions: normalized log density, sampling, conditional flows, energy interface."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.flows as fl

from .test_bijections import _randomize

FACTORIES = {
    "planar": lambda k: fl.planar_flow(k, 2, 6, init_scale=0.8),
    "radial": lambda k: fl.radial_flow(k, 2, 4, init_scale=0.8),
    "coupling_affine": lambda k: fl.coupling_flow(k, 2, "affine", num_layers=3, hidden=8),
    "coupling_spline": lambda k: fl.coupling_flow(
        k, 2, "spline", num_layers=3, hidden=8, interval=3.0
    ),
    "maf_spline": lambda k: fl.masked_autoregressive_flow(
        k, 2, "spline", num_layers=2, hidden=8, interval=3.0
    ),
}


@eqx.filter_jit
def _grid_mass(flow, lim, n):
    g = jnp.linspace(-lim, lim, n)
    xx, yy = jnp.meshgrid(g, g)
    pts = jnp.stack([xx.ravel(), yy.ravel()], -1)
    logq = jax.vmap(flow.log_density)(pts)
    h = g[1] - g[0]
    inner = jnp.all(jnp.abs(pts) < 3.0, axis=-1)
    change = jnp.max(jnp.where(inner, jnp.abs(logq - jax.vmap(flow.base.log_density)(pts)), 0.0))
    return jnp.sum(jnp.exp(logq)) * h * h, change


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_log_density_integrates_to_one(name, x64):
    k1, k2 = jax.random.split(jax.random.key(0))
    flow = FACTORIES[name](k1)
    flow = eqx.tree_at(lambda f: f.bijection, flow, _randomize(flow.bijection, k2, scale=0.1))
    mass, max_change = _grid_mass(flow, 10.0, 801)
    assert abs(float(mass) - 1.0) < 1e-3, float(mass)
    assert max_change > 0.05  # the flow is not the identity


@eqx.filter_jit
def _sample_and_check(flow, key):
    x, logq = flow.sample_and_log_density(key, (7,))
    return x, logq, jax.vmap(flow.log_density)(x), flow.sample(key, (7,))


@pytest.mark.parametrize("name", ["coupling_spline", "maf_spline", "planar"])
def test_sample_and_log_density_consistent(name, x64):
    flow = FACTORIES[name](jax.random.key(1))
    flow = eqx.tree_at(lambda f: f.bijection, flow, _randomize(flow.bijection, jax.random.key(2)))
    x, logq, logq2, x2 = _sample_and_check(flow, jax.random.key(3))
    assert x.shape == (7, 2) and logq.shape == (7,)
    np.testing.assert_allclose(logq, logq2, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(x, x2, rtol=1e-9, atol=1e-9)


def test_flow_is_an_energy(key):
    flow = fl.coupling_flow(key, 3, "affine", num_layers=2, hidden=8)
    assert isinstance(flow, dx.energies.AbstractEnergy)
    assert isinstance(flow, dx.energies.AbstractSampleable)
    assert flow.event_shape == (3,) and flow.dim == 3
    x = jnp.array([0.1, -0.2, 0.3])
    # a fresh flow is the identity: log q = standard normal
    np.testing.assert_allclose(flow.log_density(x), flow.base.log_density(x), atol=1e-5)
    np.testing.assert_allclose(flow.score(x), -x, atol=1e-5)
    assert flow.sample(key, 4).shape == (4, 3)
    assert flow.sample(key, (2, 5)).shape == (2, 5, 3)
    assert flow.sample(key).shape == (3,)
    with pytest.raises(ValueError, match="shape"):
        flow.log_density(jnp.zeros(4))


def test_pull_back_through_flow_bijection(key, x64):
    """NeuTra's energy: the pull-back of the flow itself through its own bijection is the base."""
    flow = fl.coupling_flow(key, 2, "spline", num_layers=2, hidden=8)
    flow = eqx.tree_at(lambda f: f.bijection, flow, _randomize(flow.bijection, key))
    pulled = dx.energies.PullBack(flow, flow.bijection)
    z = jnp.array([0.3, -0.7])
    np.testing.assert_allclose(pulled.log_density(z), flow.base.log_density(z), rtol=1e-9)


def test_conditional_flow(key):
    flow = fl.coupling_flow(key, 2, "affine", num_layers=2, hidden=8, cond_dim=1)
    flow = eqx.tree_at(lambda f: f.bijection, flow, _randomize(flow.bijection, key))
    c = jnp.array([0.5])
    x = flow.sample(key, (3,), condition=c)
    xb = flow.sample(key, (3,), condition=jnp.full((3, 1), 0.5))
    np.testing.assert_allclose(x, xb, rtol=1e-5, atol=1e-5)
    x2, lq = flow.sample_and_log_density(key, (3,), condition=c)
    np.testing.assert_allclose(jax.vmap(lambda p: flow.log_density(p, c))(x2), lq, atol=1e-4)
    assert not np.allclose(flow.sample(key, (3,), condition=jnp.array([-2.0])), x)
    with pytest.raises(ValueError, match="condition"):
        flow.sample(key, (3,), condition=jnp.zeros((2, 1)))


def test_bad_flow_construction(key):
    with pytest.raises(ValueError, match="shape"):
        fl.Flow(fl.StandardNormal((3,)), fl.Planar(key, 2))
    with pytest.raises(TypeError, match="base"):
        fl.Flow(
            dx.energies.from_log_density(lambda x: -jnp.sum(x**2), jnp.zeros(2)), fl.Planar(key, 2)
        )
