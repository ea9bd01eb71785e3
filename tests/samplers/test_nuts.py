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


def _chains(step, init, n, num_chains=4):
    """A function key -> (positions, infos) of `num_chains` vmapped chains of `n` steps."""

    def run(key):
        def one(key):
            def body(s, k):
                s, info = step(s, k)
                return s, (s.position, info)

            return jax.lax.scan(body, init, jax.random.split(key, n))[1]

        return jax.vmap(one)(jax.random.split(key, num_chains))

    return jax.jit(run)


def test_agrees_with_blackjax_nuts():
    """Same step size, identity metric, correlated Gaussian: both samplers recover the moments and
    agree with each other within MCSE; at step sizes that need 3 to 6 doublings they build
    trajectories of the same length and have the same acceptance (U-turn criterion with
    half-weighted end momenta, checked at every level of the tree)."""
    cov = np.array(
        [[1.0, 0.8, 0.0, 0.0], [0.8, 1.0, 0.3, 0.0], [0.0, 0.3, 0.5, 0.0], [0, 0, 0, 0.3]]
    )
    target = de.gaussian(np.zeros(4), cov)
    ours = ds.NUTS(step_size=0.45)
    run_ours = jax.jit(
        lambda sampler, key: _chains(
            lambda s, k: sampler.step(target, s, key=k), sampler.init(target, jnp.ones(4)), 500
        )(key)
    )
    for h in (0.45, 0.12):
        x, info = run_ours(ours.__class__(step_size=h), jax.random.key(0))
        bj = blackjax.nuts(target.log_density, h, jnp.ones(4))
        y, binfo = _chains(lambda s, k, bj=bj: bj.step(k, s), bj.init(jnp.ones(4)), 500)(
            jax.random.key(1)
        )
        steps_ours = float(np.mean(info.extras["num_integration_steps"]))
        steps_bj = float(np.mean(binfo.num_integration_steps))
        assert abs(steps_ours / steps_bj - 1) < 0.1, (h, steps_ours, steps_bj)
        acc_ours, acc_bj = (
            float(np.mean(info.acceptance_rate)),
            float(np.mean(binfo.acceptance_rate)),
        )
        assert abs(acc_ours - acc_bj) < 0.05, (h, acc_ours, acc_bj)
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        for a in (x, y):
            assert np.all(np.abs(a.mean((0, 1))) <= 5 * ds.mcse(a, "mean"))
        diff_m = np.abs(x.mean((0, 1)) - y.mean((0, 1)))
        assert np.all(diff_m <= 5 * np.hypot(ds.mcse(x, "mean"), ds.mcse(y, "mean")))
        x2, y2 = x**2, y**2
        diff_v = np.abs(x2.mean((0, 1)) - y2.mean((0, 1)))
        assert np.all(diff_v <= 5 * np.hypot(ds.mcse(x2, "mean"), ds.mcse(y2, "mean")))


def test_default_step_size():
    """`NUTS()` needs no arguments: it starts at step size 1 (Stan's) and one step runs."""
    kernel = ds.NUTS()
    assert float(kernel.step_size) == 1.0
    target = de.gaussian(jnp.zeros(3))
    state = kernel.init(target, jnp.zeros(3))
    new, info = jax.jit(lambda s, k: kernel.step(target, s, key=k))(state, jax.random.key(0))
    assert np.all(np.isfinite(np.asarray(new.position)))
    assert int(info.num_grad_evals) >= 1


def test_jitter_step_size_validated():
    import pytest

    with pytest.raises(ValueError, match="jitter_step_size"):
        ds.NUTS(jitter_step_size=1.0)
    assert ds.NUTS(jitter_step_size=0.5).jitter_step_size == 0.5


def test_trajectories_match_stored_reference():
    """Fixed-key runs (one chain, vmapped batches of 1-3 chains, a diagonal metric with jitter,
    the tree-depth limit, logistic regression) give the stored draws and leaf counts: a change
    to the builder's bookkeeping must leave every trajectory as it was. Leaf counts must match
    exactly and draws to float64 rounding (the stored file was written on one CPU, from the
    builder before its bookkeeping changed; another CPU's XLA may fuse differently)."""
    from ._nuts_reference import PATH, compute

    ref = np.load(PATH)
    got = compute()
    assert set(got) == set(ref.files)
    for name, value in got.items():
        if name.endswith("_n"):
            np.testing.assert_array_equal(value, ref[name], err_msg=name)
        else:
            np.testing.assert_allclose(value, ref[name], rtol=1e-10, atol=1e-12, err_msg=name)
