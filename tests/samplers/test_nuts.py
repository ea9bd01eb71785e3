"""NUTS: the checkpoint bookkeeping, and distributional agreement with BlackJAX's NUTS."""

import blackjax
import jax
import jax.numpy as jnp
import numpy as np

import driftax.energies as de
import driftax.samplers as ds
from driftax.samplers._nuts import _ckpt_range


def test_checkpoint_ranges():
    # leaf n (within a subtree): even leaves store at popcount(n >> 1); odd leaves close the
    # sub-subtrees given by their trailing ones
    expect = {0: (1, 0), 1: (0, 0), 2: (2, 1), 3: (0, 1), 5: (1, 1), 7: (0, 2), 11: (1, 2)}
    for leaf, (lo, hi) in expect.items():
        got = tuple(int(v) for v in _ckpt_range(jnp.int32(leaf)))
        assert got == (lo, hi), leaf


def _chains(step, init, n, num_chains=4, seed=0):
    @jax.jit
    def run(key):
        def one(key):
            def body(s, k):
                s, info = step(s, k)
                return s, (s.position, info)

            return jax.lax.scan(body, init, jax.random.split(key, n))[1]

        return jax.vmap(one)(jax.random.split(key, num_chains))

    return run(jax.random.key(seed))


def test_agrees_with_blackjax_nuts():
    """Same step size, identity metric, correlated Gaussian: both samplers recover the moments,
    agree with each other within MCSE, and build trajectories of the same length."""
    cov = np.array([[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]])
    target = de.gaussian(np.zeros(3), cov)
    h, n = 0.3, 2000
    ours = ds.NUTS(step_size=h)
    x, info = _chains(lambda s, k: ours.step(target, s, key=k), ours.init(target, jnp.zeros(3)), n)
    bj = blackjax.nuts(target.log_density, h, jnp.ones(3))
    y, binfo = _chains(lambda s, k: bj.step(k, s), bj.init(jnp.zeros(3)), n, seed=1)
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    for a in (x, y):
        err = np.abs(a.mean((0, 1)))
        assert np.all(err <= 5 * ds.mcse(a, "mean"))
    diff_m = np.abs(x.mean((0, 1)) - y.mean((0, 1)))
    assert np.all(diff_m <= 5 * np.hypot(ds.mcse(x, "mean"), ds.mcse(y, "mean")))
    x2, y2 = x**2, y**2
    diff_v = np.abs(x2.mean((0, 1)) - y2.mean((0, 1)))
    assert np.all(diff_v <= 5 * np.hypot(ds.mcse(x2, "mean"), ds.mcse(y2, "mean")))
    np.testing.assert_allclose(x2.mean((0, 1)), np.diag(cov), rtol=0.15)
    steps_ours = float(np.mean(info.extras["num_integration_steps"]))
    steps_bj = float(np.mean(binfo.num_integration_steps))
    assert abs(steps_ours / steps_bj - 1) < 0.15, (steps_ours, steps_bj)
    acc_ours = float(np.mean(info.acceptance_rate))
    acc_bj = float(np.mean(binfo.acceptance_rate))
    assert abs(acc_ours - acc_bj) < 0.05, (acc_ours, acc_bj)


def test_trajectory_lengths_match_blackjax_across_depths():
    """Mean number of leapfrog steps per transition equals BlackJAX's at step sizes that need 3 to
    6 doublings (the U-turn criterion with half-weighted end momenta, checked at every level)."""
    target = de.gaussian(np.zeros(4), np.array([1.0, 0.5, 0.3, 0.8]))
    for h in (0.45, 0.12):
        ours = ds.NUTS(step_size=h)
        _, info = _chains(
            lambda s, k: ours.step(target, s, key=k), ours.init(target, jnp.ones(4)), 300
        )
        bj = blackjax.nuts(target.log_density, h, jnp.ones(4))
        _, binfo = _chains(lambda s, k: bj.step(k, s), bj.init(jnp.ones(4)), 300, seed=1)
        a = float(np.mean(info.extras["num_integration_steps"]))
        b = float(np.mean(binfo.num_integration_steps))
        assert abs(a / b - 1) < 0.1, (h, a, b)
