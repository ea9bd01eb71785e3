"""The learned leapfrog (L2HMC): its log-determinant against `jax.jacobian`, its inverse, the
MH-adjusted kernel's invariance of a Gaussian for untrained (random) networks, training on the
shared loop, no retracing, and clear errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax as dx
import driftax.samplers as ds

COV = np.array([[1.0, 0.8], [0.8, 1.0]])


@pytest.fixture(scope="module")
def target():
    return dx.energies.gaussian(jnp.array([0.5, -1.0]), jnp.asarray(COV))


def _random_leapfrog(dim=2, num_layers=3, seed=0):
    # init_scale > 0: every network's output is nonzero, so every scale/translate term is active
    return ds.learned_leapfrog(
        jax.random.key(seed), dim, num_layers=num_layers, step_size=0.4, init_scale=0.3
    )


def test_log_det_equals_jacobian(target, x64):
    """The carried log|det| of the forward and backward maps equals log|det| of the Jacobian
    of (x, v) -> (x', v') computed by `jax.jacobian`, and backward inverts forward."""
    tgt = dx.energies.gaussian(jnp.array([0.5, -1.0]), jnp.asarray(COV))
    lf = _random_leapfrog(dim=2, num_layers=3)
    assert lf.num_layers == 3 and lf.dim == 2
    z = jnp.array([0.3, -0.7, 1.1, 0.4])

    for direction in ("forward", "backward"):
        move = getattr(lf, direction)

        def flat(z, move=move):
            x, v, _ = move(tgt, z[:2], z[2:])
            return jnp.concatenate([x, v])

        jac = jax.jacobian(flat)(z)
        _, _, ld = move(tgt, z[:2], z[2:])
        sign, expected = np.linalg.slogdet(np.asarray(jac))
        assert sign != 0
        np.testing.assert_allclose(float(ld), expected, rtol=1e-10, atol=1e-10)
        assert abs(float(ld)) > 1e-3  # the networks really change the volume

    x1, v1, ld_f = lf.forward(tgt, z[:2], z[2:])
    x0, v0, ld_b = lf.backward(tgt, x1, v1)
    np.testing.assert_allclose(np.concatenate([x0, v0]), z, atol=1e-10)
    np.testing.assert_allclose(float(ld_f), -float(ld_b), atol=1e-10)


def test_zero_networks_are_plain_leapfrog(target, x64):
    """With the networks at zero (the default start) one layer is one leapfrog step."""
    tgt = dx.energies.gaussian(jnp.array([0.5, -1.0]), jnp.asarray(COV))
    lf = ds.learned_leapfrog(jax.random.key(1), 2, num_layers=4, step_size=0.2)
    x, v = jnp.array([0.3, -0.7]), jnp.array([1.1, 0.4])
    x1, v1, ld = lf.forward(tgt, x, v)
    xr, vr = x, v
    for _ in range(4):
        vr = vr + 0.1 * tgt.score(xr)
        xr = xr + 0.2 * vr
        vr = vr + 0.1 * tgt.score(xr)
    np.testing.assert_allclose(np.asarray(x1), np.asarray(xr), atol=1e-12)
    np.testing.assert_allclose(np.asarray(v1), np.asarray(vr), atol=1e-12)
    assert float(ld) == 0.0


@pytest.mark.slow
def test_kernel_leaves_gaussian_invariant(target):
    """Chains started at exact draws stay exact after several steps of the MH-adjusted kernel
    with random (untrained) networks: mean and second moments within 4.5 MCSE (independent
    chains), and the kernel does move (acceptance well inside (0, 1))."""
    sampler = ds.L2HMC(_random_leapfrog())
    num_chains, num_steps = 4000, 4
    x0 = target.sample(jax.random.key(2), num_chains)

    @eqx.filter_jit
    def run(x0, key):
        states = jax.vmap(lambda x: sampler.init(target, x))(x0)

        def body(states, k):
            keys = jax.random.split(k, num_chains)
            return jax.vmap(lambda s, kk: sampler.step(target, s, key=kk))(states, keys)

        return jax.lax.scan(body, states, jax.random.split(key, num_steps))

    states, info = run(x0, jax.random.key(3))
    acc = float(info.acceptance_rate.mean())
    assert 0.2 < acc < 0.98, acc
    moved = np.mean(np.any(np.asarray(states.position) != np.asarray(x0), axis=1))
    assert moved > 0.5
    xs = np.asarray(states.position, np.float64)
    mean = np.array([0.5, -1.0])
    feats = np.stack(
        [xs[:, 0], xs[:, 1], (xs[:, 0] - mean[0]) ** 2, (xs[:, 1] - mean[1]) ** 2,
         (xs[:, 0] - mean[0]) * (xs[:, 1] - mean[1])],
        axis=1,
    )  # fmt: skip
    expected = np.array([mean[0], mean[1], COV[0, 0], COV[1, 1], COV[0, 1]])
    se = feats.std(0, ddof=1) / np.sqrt(num_chains)
    z = (feats.mean(0) - expected) / se
    assert np.all(np.abs(z) < 4.5), z
    assert np.all(np.asarray(info.num_grad_evals) == 3)


@pytest.mark.slow
def test_fit_trains_on_shared_loop_and_is_deterministic(target):
    """`fit_l2hmc` runs on the shared training loop: finite losses, changed parameters, the
    loss falls from its start, and the same key gives the same result."""
    sampler = ds.L2HMC(ds.learned_leapfrog(jax.random.key(4), 2, num_layers=2, step_size=0.1))
    x0 = target.sample(jax.random.key(5), 32)
    kwargs = dict(key=jax.random.key(6), optimizer=optax.adam(3e-3), num_steps=60)
    trained, history = ds.fit_l2hmc(sampler, target, x0, **kwargs)
    losses = np.asarray(history.losses)
    assert losses.shape == (60,) and np.all(np.isfinite(losses))
    assert losses[-10:].mean() < losses[:10].mean()
    assert float(trained.leapfrog.log_step_size) != float(sampler.leapfrog.log_step_size)
    again, _ = ds.fit_l2hmc(sampler, target, x0, **kwargs)
    np.testing.assert_array_equal(
        np.asarray(again.leapfrog.log_step_size), np.asarray(trained.leapfrog.log_step_size)
    )


def test_step_does_not_retrace(target):
    sampler = ds.L2HMC(_random_leapfrog())

    @eqx.debug.assert_max_traces(max_traces=1)
    def step(sampler, state, key):
        return sampler.step(target, state, key=key)

    step = eqx.filter_jit(step)
    state = sampler.init(target, jnp.zeros(2))
    for i in range(3):
        state, _ = step(sampler, state, jax.random.key(i))


def test_through_sample(target):
    sampler = ds.L2HMC(_random_leapfrog())
    res = dx.sample(
        sampler, target, jnp.zeros(2), key=jax.random.key(0), num_steps=20, num_warmup=0,
        check_health=False,
    )  # fmt: skip
    assert res.kernel_samples.shape[-1] == 2
    assert np.all(np.isfinite(np.asarray(res.kernel_samples)))


def test_bad_input(target):
    with pytest.raises(TypeError, match="leapfrog"):
        ds.L2HMC(ds.HMC(step_size=0.1, num_integration_steps=2))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="dim"):
        ds.learned_leapfrog(jax.random.key(0), 0)
    with pytest.raises(ValueError, match="num_layers"):
        ds.learned_leapfrog(jax.random.key(0), 2, num_layers=0)
    with pytest.raises(ValueError, match="step_size"):
        ds.learned_leapfrog(jax.random.key(0), 2, step_size=-0.1)
    sampler = ds.L2HMC(_random_leapfrog())
    with pytest.raises(ValueError, match="x0"):
        sampler.init(target, jnp.zeros(3))
    with pytest.raises(ValueError, match="x0"):
        ds.fit_l2hmc(sampler, target, jnp.zeros((4, 3)), key=jax.random.key(0), num_steps=2)
    with pytest.raises(ValueError, match="scale"):
        ds.fit_l2hmc(
            sampler, target, jnp.zeros((4, 2)), key=jax.random.key(0), num_steps=2, scale=0.0
        )
