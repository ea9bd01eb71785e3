"""FAB (flow annealed importance sampling bootstrap): AIS weights, the α-divergence surrogate,
a short fit on a 2-D mixture, bad input, and no retrace (sized: the fits share one compiled
configuration, `FIT`)."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import driftax as dx
import driftax.flows as fl
from driftax import _training
from driftax.flows._fab import fab_ais, fab_loss

OPT = optax.adam(2e-3)


def _affine_flow(loc, scale):
    loc = jnp.asarray(loc, jnp.float32)
    return fl.Flow(fl.StandardNormal(loc.shape), fl.Affine(loc, jnp.full(loc.shape, scale)))


def _gauss_1d(x, m, s):
    return np.exp(-0.5 * ((x - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))


def test_ais_weights_unbiased_normalizers():
    """FAB's AIS towards p²/q from a fixed flow: the mean weight is unbiased for ∫p²/q (closed
    form by quadrature, the target a product of 1-D Gaussians) and the mean of w·q/p for Z."""
    m, s = np.array([0.5, -0.5]), 1.5
    target = dx.energies.gaussian(jnp.asarray(m, jnp.float32))  # normalized: Z = 1
    flow = _affine_flow([0.0, 0.0], s)
    ais = dx.samplers.AIS(
        dx.samplers.HMC(step_size=0.5, num_integration_steps=3),
        schedule=jnp.linspace(0.0, 1.0, 4),
        num_mcmc_steps=1,
        adapt_step_size=False,
    )
    n = 4000
    draws = jax.jit(lambda k: fab_ais(ais, flow, target, 2.0, k, n))(jax.random.key(0))
    assert int(draws.num_nonfinite) == 0
    w = np.exp(np.asarray(draws.log_weights, np.float64))
    grid = np.linspace(-12, 12, 20001)
    z_g = np.prod(
        [np.trapezoid(_gauss_1d(grid, mi, 1.0) ** 2 / _gauss_1d(grid, 0.0, s), grid) for mi in m]
    )
    assert abs(w.mean() - z_g) < 4 * w.std() / math.sqrt(n)
    log_p = np.asarray(jax.vmap(target.log_density)(draws.x), np.float64)
    t = w * np.exp(np.asarray(draws.log_q, np.float64) - log_p)
    assert abs(t.mean() - 1.0) < 4 * t.std() / math.sqrt(n)


@pytest.mark.parametrize("alpha", [2.0, 3.0])
def test_alpha_loss_gradient_closed_form(alpha):
    """q = N(μ, 1), p = N(0, 1): p^α q^{1-α} ∝ N((1-α)μ, 1), so the surrogate's expected
    gradient is -E_g[x - μ] = αμ = ∇ log ∫p^α q^{1-α} / (α - 1) (log ∫ = α(α-1)μ²/2)."""
    mu, n = 0.7, 40_000
    flow = _affine_flow([mu], 1.0)
    x = (1.0 - alpha) * mu + jax.random.normal(jax.random.key(1), (n, 1))
    grad = jax.grad(lambda f: fab_loss(f, x, jnp.zeros(n)))(flow).bijection.loc[0]
    assert abs(float(grad) - alpha * mu) < 4.0 / math.sqrt(n)
    # draws of q itself, weighted by p^α q^{1-α} / q: the same gradient (self-normalized IS)
    y = flow.sample(jax.random.key(2), (n,))
    log_w = alpha * (jax.vmap(dx.energies.gaussian(jnp.zeros(1)).log_density)(y)) - alpha * (
        jax.vmap(flow.log_density)(y)
    )
    g_is = jax.grad(lambda f: fab_loss(f, y, log_w))(flow).bijection.loc[0]
    w = np.asarray(jax.nn.softmax(log_w))
    mcse = math.sqrt(np.sum(w**2 * (np.asarray(mu - y[:, 0]) - float(g_is)) ** 2))
    assert abs(float(g_is) - alpha * mu) < 5 * mcse


def test_fab_loss_drops_nonfinite_weights():
    flow = _affine_flow([0.0], 1.0)
    x = jnp.array([[0.0], [1.0], [jnp.nan]])
    value = fab_loss(flow, x, jnp.array([0.0, 0.0, jnp.nan]))
    ref = fab_loss(flow, x[:2], jnp.zeros(2))
    assert np.isfinite(float(value)) and float(value) == pytest.approx(float(ref))


# ---------------------------------------------------------------------------------------------
# a short fit on a 2-D mixture (shared)

GMM = dx.energies.gaussian_mixture(
    np.ones(4), np.array([[-3.0, -3.0], [-3.0, 3.0], [3.0, -3.0], [3.0, 3.0]]), 0.5
)


# One fit configuration for the tests below: `fit_fab` compiles once (~14 CPU-s) and each further
# fit of 100 steps runs in ~0.2 s, so the determinism / no-retrace test reuses it rather than
# compiling a second, smaller configuration (~8 CPU-s).
FIT = dict(optimizer=OPT, num_steps=100, batch_size=64, buffer_size=256)


@pytest.fixture(scope="module")
def initial():
    return fl.coupling_flow(jax.random.key(0), dim=2, num_layers=4, hidden=32, base=None)


def test_fit_with_buffer_improves_log_z_and_ess(initial):
    # the initial flow covers the four modes badly (ESS ≈ 4 of 4,000; |Δlog Z| ≈ 0.35)
    trained, losses = fl.fit_fab(initial, GMM, key=jax.random.key(1), **FIT)
    before = fl.importance_diagnostics(initial, GMM, key=jax.random.key(3), num_samples=4000)
    after = fl.importance_diagnostics(trained, GMM, key=jax.random.key(3), num_samples=4000)
    # GMM.log_normalizer == 0
    assert abs(after["log_normalizer"]) < 0.5 * abs(before["log_normalizer"])
    assert after["ess"] > 20 * before["ess"]
    assert after["reverse_kl"] < before["reverse_kl"]
    assert int(jnp.sum(losses["num_nonfinite_weights"])) == 0
    assert losses["train"].shape == (100,) and bool(jnp.all(jnp.isfinite(losses["train"])))
    assert int(losses["buffer_fill_energy_evals"]) > 0
    assert bool(jnp.all(losses["num_energy_evals"] > 0))


def test_same_key_same_result_and_no_retrace(initial):
    kwargs = FIT
    compiled = _training._compiled.__wrapped__
    a, la = fl.fit_fab(initial, GMM, key=jax.random.key(4), **kwargs)
    n = eqx.debug.get_num_traces(compiled)
    b, lb = fl.fit_fab(initial, GMM, key=jax.random.key(4), **kwargs)
    fl.fit_fab(a, GMM, key=jax.random.key(5), **kwargs)
    assert eqx.debug.get_num_traces(compiled) == n
    np.testing.assert_array_equal(np.asarray(la["train"]), np.asarray(lb["train"]))


def test_buffer_weights_follow_the_flow():
    """After a step, the used rows' log weights move by (1-α)(log q_new - log q_old), the
    others stay."""
    from driftax.flows._fab import _Buffer, _FABBatches, _State, default_ais

    old, new = _affine_flow([0.0, 0.0], 1.0), _affine_flow([0.5, 0.0], 1.2)
    x = jax.random.normal(jax.random.key(0), (6, 2))
    lw = jnp.arange(6.0)
    buf = _Buffer(x, lw, jax.vmap(old.log_density)(x), jnp.zeros((), jnp.int32))
    batches = _FABBatches(GMM, default_ais(), 2.0, 2, buf, jnp.asarray(0.1))
    state = _State(buf, jnp.asarray(0.1), jnp.array([1, 4], jnp.int32))
    out = batches.update(state, new, None, jax.random.key(1)).buffer
    dq = jax.vmap(new.log_density)(x) - jax.vmap(old.log_density)(x)
    expect = lw.at[jnp.array([1, 4])].add(-dq[jnp.array([1, 4])])
    np.testing.assert_allclose(out.log_weights, expect, rtol=1e-6)
    np.testing.assert_allclose(out.log_q[1], new.log_density(x[1]), rtol=1e-6)


def test_bad_input(initial):
    kwargs = dict(key=jax.random.key(0), optimizer=OPT, num_steps=2, batch_size=16)
    with pytest.raises(ValueError, match="buffer_size"):
        fl.fit_fab(initial, GMM, buffer_size=8, **kwargs)
    for bad in (0.5, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="alpha"):
            fl.fit_fab(initial, GMM, alpha=bad, **kwargs)
    with pytest.raises(ValueError, match="event shape"):
        fl.fit_fab(initial, dx.energies.gaussian(jnp.zeros(3)), **kwargs)
    with pytest.raises(TypeError, match="ais"):
        fl.fit_fab(initial, GMM, ais="hmc", **kwargs)
    with pytest.raises(TypeError, match="energy"):
        fl.fit_fab(initial, lambda x: x, **kwargs)
