"""Generic conformance over every reference target of TARGETS.md (the registry)."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de

REGISTRY = de.reference_targets()
TARGETS_MD_NAMES = {
    "gaussian", "ill_conditioned_gaussian", "gaussian_mixture", "gmm40", "gmm25", "gmm9",
    "four_mode_gmm", "funnel", "banana", "many_well", "double_well_2d", "rezende_u1", "rezende_u2",
    "rezende_u3", "rezende_u4", "dw4", "lj13", "lj55", "phi4", "u1_lattice", "logistic_regression",
    "lgcp", "rosenbrock", "item_response", "horseshoe_logistic_regression",
}  # fmt: skip


def test_registry_covers_targets_md():
    assert set(REGISTRY) == TARGETS_MD_NAMES


def _points(energy, n=4):
    key = jax.random.key(0)
    if isinstance(energy, de.AbstractSampleable):
        return energy.sample(key, n)
    return 0.3 * jax.random.normal(key, (n, *energy.event_shape))


@eqx.filter_jit
def _evaluate(energy, xs):
    """One compiled program per target for the float32 properties: the batched value and score,
    and the single-point log density and energy."""
    lp_batch, score_batch = jax.vmap(energy.value_and_score)(xs)
    return lp_batch, score_batch, energy.log_density(xs[0]), energy.energy(xs[0])


@eqx.filter_jit
def _directional(energy, x, v, h):
    """The score along `v` and the central finite difference of the log density along `v`."""
    fd = (energy.log_density(x + h * v) - energy.log_density(x - h * v)) / (2 * h)
    return jnp.vdot(energy.score(x), v), fd


@pytest.mark.parametrize("name", sorted(TARGETS_MD_NAMES))
def test_target_conformance(name):
    """Sized: the numeric properties of a target come from two compiled programs (float32 and
    float64) instead of op-by-op eager calls; the event-shape check stays eager."""
    info = REGISTRY[name]
    energy = info.build_small()
    assert isinstance(energy, de.AbstractEnergy)
    xs = _points(energy)
    assert xs.shape == (4, *energy.event_shape)
    lp_batch, score_batch, lp0, e0 = _evaluate(energy, xs)
    assert lp_batch.shape == (4,) and score_batch.shape == xs.shape
    assert np.all(np.isfinite(lp_batch)) and np.all(np.isfinite(score_batch))
    assert lp0.shape == ()
    np.testing.assert_allclose(lp_batch[0], lp0, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e0, -lp0, rtol=1e-6)
    # The score is the gradient: a directional finite difference agrees.
    v = jax.random.normal(jax.random.key(1), energy.event_shape)
    with jax.enable_x64(True):
        e64 = info.build_small()
        x64 = jnp.asarray(xs[0], jnp.float64)
        dd, fd = _directional(e64, x64, jnp.asarray(v, jnp.float64), 1e-6)
        np.testing.assert_allclose(dd, fd, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="event shape"):
        energy.log_density(jnp.zeros((*energy.event_shape, 2)))
    if isinstance(energy, de.AbstractSampleable):
        a = energy.sample(jax.random.key(7), 3)
        b = energy.sample(jax.random.key(7), 3)
        np.testing.assert_array_equal(a, b)
        assert energy.sample(jax.random.key(7)).shape == energy.event_shape
    if isinstance(energy, de.AbstractKnownMoments):
        assert energy.mean.shape == energy.event_shape
        assert energy.variance.shape == energy.event_shape
        assert np.all(np.asarray(energy.variance) > 0)
    if isinstance(energy, de.AbstractKnownNormalizer):
        assert np.isfinite(energy.log_normalizer)
