"""Every sampler honours the contract: shapes, jit, vmap, determinism, Info fields, dtypes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax.energies as de
import driftax.samplers as ds

from .registry import SAMPLERS

NAMES = sorted(SAMPLERS)


def _target(shape=(3,)):
    return de.from_log_density(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(shape))


def _nan_target(shape):
    """A standard Gaussian whose log density is NaN where the first coordinate exceeds 0.2."""
    return de.from_log_density(
        lambda x: jnp.where(x.reshape(-1)[0] > 0.2, jnp.nan, -0.5 * jnp.sum(x**2)),
        jnp.zeros(shape),
    )


def _run(sampler, target, x0s, key, n=6):
    """`n` steps of `len(x0s)` vmapped chains, compiled once per sampler."""

    @eqx.filter_jit
    def go(sampler, x0s, key):
        states = jax.vmap(lambda x: sampler.init(target, x))(x0s)

        def body(states, k):
            keys = jax.random.split(k, x0s.shape[0])
            states, info = jax.vmap(lambda s, kk: sampler.step(target, s, key=kk))(states, keys)
            return states, (states.position, info)

        return jax.lax.scan(body, states, jax.random.split(key, n))

    return go(sampler, x0s, key)


_EXPECTED_GRADS = {"RandomWalk": 0, "ULA": 1, "MALA": 1, "BAOAB": 1, "OBABO": 1, "UBU": 1}
_EXPECTED_GRADS.update({"RMP-kinetic": 2, "RMP-overdamped": 2, "HMC": 5, "HMC-yoshida": 9})


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, key, x64):
    """Shapes (non-vector event), vmap over chains, jit, determinism, Info, cached score,
    float64 preserved, and NaN log densities rejected and counted divergent."""
    sampler = SAMPLERS[name]()
    assert isinstance(sampler, ds.AbstractSampler)
    target = _nan_target((2, 3))
    x0s = 0.1 * jnp.ones((8, 2, 3), jnp.float64)
    run = eqx.filter_jit(lambda s, x, k: _run(s, target, x, k))
    state, (xs, info) = run(sampler, x0s, key)
    assert xs.shape == (6, 8, 2, 3)
    assert state.position.shape == (8, 2, 3)
    assert state.position.dtype == jnp.float64 and state.log_density.dtype == jnp.float64
    assert isinstance(info, ds.Info)
    for f in ("acceptance_rate", "is_divergent", "energy_error", "num_grad_evals"):
        assert getattr(info, f).shape == (6, 8), f
    assert info.is_divergent.dtype == jnp.bool_
    # steps into the NaN region are never taken, and they are counted
    assert np.all(np.isfinite(np.asarray(xs)))
    assert np.all(np.asarray(xs)[..., 0, 0] <= 0.2)
    assert np.any(np.asarray(info.is_divergent))
    acc = np.asarray(info.acceptance_rate)
    assert np.all((acc >= 0) & (acc <= 1))
    n = np.asarray(info.num_grad_evals)
    assert np.all(n == _EXPECTED_GRADS[name]) if name in _EXPECTED_GRADS else np.all(n >= 1)
    # chains get different randomness
    flat = np.asarray(xs[-1]).reshape(8, -1)
    assert len({tuple(r) for r in flat}) > 1
    # same key -> bitwise identical; another key -> different
    _, (xs2, _) = run(sampler, x0s, key)
    assert np.array_equal(np.asarray(xs), np.asarray(xs2))
    _, (xs3, _) = run(sampler, x0s, jax.random.key(123))
    assert not np.array_equal(np.asarray(xs), np.asarray(xs3))
    # the state carries the log density (and score) of its position
    logp = jax.vmap(target.log_density)(state.position)
    np.testing.assert_allclose(state.log_density, logp, rtol=1e-5, atol=1e-6)
    if getattr(state, "score", None) is not None:
        score = jax.vmap(target.score)(state.position)
        np.testing.assert_allclose(state.score, score, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_init_rejects_wrong_shape(name):
    sampler = SAMPLERS[name]()
    with pytest.raises(ValueError, match="x0"):
        sampler.init(_target((3,)), jnp.zeros(4))


def _check_all(module) -> None:
    """Every `__check_init__` along the MRO, as equinox runs them after `__init__` (a base
    class may hold a check, e.g. the step-size check of `AbstractAdaptableSampler`)."""
    for klass in type(module).__mro__:
        if "__check_init__" in vars(klass):
            vars(klass)["__check_init__"](module)


@pytest.mark.parametrize("name", NAMES)
def test_nonpositive_step_size_is_rejected(name):
    factory = SAMPLERS[name]
    cls = type(factory())
    with pytest.raises(ValueError, match="step_size"):
        _check_all(eqx.tree_at(lambda s: s.step_size, factory(), 0.0))
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(ValueError, match="step_size"):
            cls(step_size=bad)
