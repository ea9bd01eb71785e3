"""Phase-space (position–velocity) bridges (AGM): the closed-form conditional against Van Loan's
matrix exponential and Gaussian conditioning of the linear SDE, and against the moment ODEs of
the bridge SDE (jax.jacfwd); the exact data predictor between Gaussians minimises the loss and
its sampler reproduces the target law."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.linalg

import driftax.diffusion as dd


def _van_loan(h, sigma):
    """Phi and Q of dx = v dt, dv = sigma dW over a step h, by Van Loan's exponential."""
    a = np.array([[0.0, 1.0], [0.0, 0.0]])
    ll = np.array([[0.0, 0.0], [0.0, sigma**2]])
    e = scipy.linalg.expm(np.block([[-a, ll], [np.zeros((2, 2)), a.T]]) * h)
    phi = e[2:, 2:].T
    return phi, phi @ e[:2, 2:]


@pytest.mark.parametrize("sigma", [0.0, 0.7, 2.0])
def test_conditional_is_gaussian_conditioning_of_the_linear_sde(x64, sigma):
    """(x_t, v_t) | (x_s, v_s), x_1 from the Van Loan transitions and Gaussian conditioning,
    per coordinate, equals the closed form; the reference transition too."""
    br = dd.PhaseSpaceBridge(sigma=sigma)
    for h in (0.3, 1.0):
        phi, q = _van_loan(h, sigma)
        got_phi, got_q = br.transition(h)
        np.testing.assert_allclose(got_phi, phi, atol=1e-12)
        np.testing.assert_allclose(got_q, q, atol=1e-12)
    x, v, x1 = jnp.array([0.3, -1.0]), jnp.array([1.0, 0.5]), jnp.array([2.0, 2.0])
    h_row = np.array([[1.0, 0.0]])
    for s, t in ((0.0, 0.4), (0.2, 0.5), (0.2, 0.95), (0.3, 1.0)):
        p1, q1 = _van_loan(t - s, sigma)
        p2, q2 = _van_loan(1.0 - t, sigma)
        (mx, mv), cov = br.conditional(t, x, v, x1, s)
        for i in range(2):
            mt = p1 @ np.array([x[i], v[i]])
            c_x1 = (q1 @ p2.T @ h_row.T)[:, 0]
            var_x1 = (h_row @ (p2 @ q1 @ p2.T + q2) @ h_row.T)[0, 0]
            resid = x1[i] - (h_row @ p2 @ mt)[0]
            if var_x1 > 0:
                want_m, want_c = mt + c_x1 * resid / var_x1, q1 - np.outer(c_x1, c_x1) / var_x1
            else:  # sigma = 0: the same conditioning as the sigma -> 0 limit (scale-free gain)
                p1s, q1s = _van_loan(t - s, 1.0)
                p2s, q2s = _van_loan(1.0 - t, 1.0)
                c1 = (q1s @ p2s.T @ h_row.T)[:, 0]
                v1 = (h_row @ (p2s @ q1s @ p2s.T + q2s) @ h_row.T)[0, 0]
                want_m, want_c = mt + c1 * resid / v1, np.zeros((2, 2))
            np.testing.assert_allclose([mx[i], mv[i]], want_m, atol=1e-12)
            np.testing.assert_allclose(cov, want_c, atol=1e-12)
    # pinned at t = 1
    (mx, _), cov = br.conditional(1.0, x, v, x1)
    np.testing.assert_allclose(mx, x1, atol=1e-12)
    assert abs(float(cov[0, 0])) < 1e-12


def test_conditional_solves_the_bridge_sde_moment_odes(x64):
    """The bridge SDE dx = v dt, dv = u(t, x, v; x1) dt + sigma dW with the Doob control u is
    linear, so its mean and covariance obey d mean/dt = A mean + b, d cov/dt = A cov + cov A^T
    + sigma^2 e_v e_v^T; the closed-form conditional does (jax.jacfwd in t)."""
    sigma = 0.8
    br = dd.PhaseSpaceBridge(sigma=sigma)
    x, v, x1 = jnp.array([0.3]), jnp.array([-0.4]), jnp.array([1.5])
    for t in (0.1, 0.5, 0.85):

        def law(tt):
            (mx, mv), cov = br.conditional(tt, x, v, x1)
            return jnp.concatenate([mx, mv]), cov

        (mean, cov), (dmean, dcov) = jax.jvp(law, (jnp.asarray(t),), (jnp.asarray(1.0),))

        def drift(m, tt=t):
            return jnp.concatenate([m[1:], br.acceleration(tt, m[:1], m[1:], x1)])

        a = jax.jacfwd(drift)(mean)
        np.testing.assert_allclose(drift(mean), dmean, atol=1e-10)
        noise = np.diag([0.0, sigma**2])
        np.testing.assert_allclose(a @ cov + cov @ a.T + noise, dcov, atol=1e-10)


def test_sde_monte_carlo_matches_the_conditional():
    """Euler–Maruyama of the bridge SDE from (x0, v0) to t = 0.6 (float32, 300 steps): the
    sample moments agree with the closed form within 5 MCSE."""
    sigma, n = 1.0, 20000
    br = dd.PhaseSpaceBridge(sigma=sigma)
    x0, v0, x1, t_end = 0.2, -0.5, 1.0, 0.6
    steps = 300
    h = t_end / steps

    def step(carry, inp):
        x, v = carry
        i, k = inp
        t = i * h
        u = br.acceleration(t, x, v, jnp.full_like(x, x1))
        return (x + h * v, v + h * u + sigma * jnp.sqrt(h) * jax.random.normal(k, v.shape)), None

    init = (jnp.full((n,), x0), jnp.full((n,), v0))
    (xs, vs), _ = jax.lax.scan(
        step, init, (jnp.arange(steps), jax.random.split(jax.random.key(0), steps))
    )
    (mx, mv), cov = br.conditional(t_end, jnp.array([x0]), jnp.array([v0]), jnp.array([x1]))
    for got, want, var in ((xs, mx[0], cov[0, 0]), (vs, mv[0], cov[1, 1])):
        assert abs(float(got.mean()) - float(want)) < 5 * np.sqrt(float(var) / n) + 2e-3
        # MCSE of a variance ~ var sqrt(2 / n); plus the O(h) discretization
        assert abs(float(got.var()) - float(var)) < 5 * float(var) * np.sqrt(2 / n) + 5e-3


# ------------------------------------------------------- exact predictor between Gaussians

M0, S0 = np.array([0.0, 0.0]), np.eye(2)
M1, S1 = np.array([2.0, -1.0]), np.array([[0.5, 0.2], [0.2, 0.3]])


class _ExactPredictor:
    """E[x1 | x_t, v_t] when x0 ~ N(M0, S0), v0 ~ N(0, vs^2 I), x1 ~ N(M1, S1) independent."""

    def __init__(self, br):
        self.br = br

    def __call__(self, t, x, v):
        br = self.br
        d = x.shape[0]
        eye = jnp.eye(d)
        k, _, _ = br._gain(0.0, t)
        # (x_t, v_t) = L (x0, v0, x1) + noise
        lx = jnp.hstack([(1 - k[0]) * eye, (t - k[0]) * eye, k[0] * eye])
        lv = jnp.hstack([-k[1] * eye, (1 - k[1]) * eye, k[1] * eye])
        lmat = jnp.vstack([lx, lv])
        zero = jnp.zeros((d, d))
        vs2 = br.velocity_scale**2 * eye
        src = jnp.block([[S0, zero, zero], [zero, vs2, zero], [zero, zero, S1]])
        mean_in = jnp.concatenate([M0, jnp.zeros(d), M1])
        _, ncov = br.conditional(t, jnp.zeros(d), jnp.zeros(d), jnp.zeros(d))
        cov_m = lmat @ src @ lmat.T + jnp.kron(ncov, eye)
        cross = src[2 * d :] @ lmat.T  # Cov(x1, m_t)
        m = jnp.concatenate([x, v])
        return M1 + cross @ jnp.linalg.solve(cov_m, m - lmat @ mean_in)


@pytest.fixture(scope="module")
def gaussian_data():
    k0, k1 = jax.random.split(jax.random.key(1))
    x0 = jax.random.multivariate_normal(k0, M0, S0, (4000,))
    x1 = jax.random.multivariate_normal(k1, M1, S1, (4000,))
    return x0, x1


@pytest.mark.parametrize("sigma", [0.0, pytest.param(1.0, marks=pytest.mark.slow)])
def test_exact_predictor_minimises_loss_and_sampler_hits_target(gaussian_data, sigma):
    """The exact E[x1 | x_t, v_t] scores lower than a shifted one, and the closed-form
    sampler driven by it moves N(M0, S0) to N(M1, S1) (200 steps)."""
    br = dd.PhaseSpaceBridge(sigma=sigma, velocity_scale=0.5)
    exact = _ExactPredictor(br)
    loss = dd.PhaseSpaceLoss(br)
    x0, x1 = gaussian_data
    key = jax.random.key(2)

    def shifted(t, x, v):
        return exact(t, x, v) + 0.05

    assert float(loss(exact, (x0, x1), key=key)) < float(loss(shifted, (x0, x1), key=key))
    out, vel = dd.solve_phase_space(br, exact, x0, key=jax.random.key(3), num_steps=200)
    assert out.shape == vel.shape == x0.shape
    out = np.asarray(out)
    n = out.shape[0]
    # MCSE: mean sqrt(diag S1 / n) ~ 0.011; covariance entries ~ 0.5 sqrt(2 / n) ~ 0.011. The
    # sampler is first order (its covariance is 0.43 at 40 steps, 0.485 at 160, 0.499 at 640
    # for the 0.5 entry at sigma = 0): 200 steps leave ~0.012 of bias, so 0.04 = bias + 2.5 MCSE
    np.testing.assert_allclose(out.mean(0), M1, atol=5 * np.sqrt(np.diag(S1).max() / n))
    np.testing.assert_allclose(np.cov(out.T), S1, atol=0.04)


@pytest.mark.slow
def test_trained_predictor_reduces_its_loss(gaussian_data):
    """A few hundred steps of PhaseSpaceLoss on the shared loop lower the loss towards the
    exact predictor's."""
    br = dd.PhaseSpaceBridge(sigma=0.5, velocity_scale=0.5)
    x0, x1 = gaussian_data
    model = dd.PhaseSpaceMLP(2, key=jax.random.key(4), hidden=32, depth=2)
    model, losses = dd.fit_bridge(
        model,
        dd.PhaseSpaceLoss(br),
        x0,
        x1,
        key=jax.random.key(5),
        optimizer=optax.adam(3e-3),
        num_steps=300,
        batch_size=256,
    )
    losses = np.asarray(losses)
    assert np.all(np.isfinite(losses)) and losses[-50:].mean() < 0.5 * losses[:20].mean()
    exact_loss = float(dd.PhaseSpaceLoss(br)(_ExactPredictor(br), (x0, x1), key=jax.random.key(6)))
    assert losses[-50:].mean() < 1.5 * exact_loss + 0.02


def test_bad_input():
    with pytest.raises(ValueError, match="sigma"):
        dd.PhaseSpaceBridge(sigma=-1.0)
    with pytest.raises(ValueError, match="velocity_scale"):
        dd.PhaseSpaceBridge(velocity_scale=float("nan"))
    br = dd.PhaseSpaceBridge()
    with pytest.raises(ValueError, match="`t`"):
        br.conditional(1.5, jnp.zeros(2), jnp.zeros(2), jnp.zeros(2))
    with pytest.raises(ValueError, match="t_min"):
        dd.PhaseSpaceLoss(br, t_min=0.0)
    with pytest.raises(ValueError, match="x_init"):
        dd.solve_phase_space(
            br, lambda t, x, v: x, jnp.zeros(3), key=jax.random.key(0), num_steps=2
        )
    with pytest.raises(ValueError, match="v_init"):
        dd.solve_phase_space(
            br, lambda t, x, v: x, jnp.zeros((3, 2)), key=jax.random.key(0), num_steps=2,
            v_init=jnp.zeros((3, 1)),
        )  # fmt: skip
    with pytest.raises(ValueError, match="order"):
        dd.solve_phase_space(
            br, lambda t, x, v: x, jnp.zeros((3, 2)), key=jax.random.key(0), num_steps=2, order=3
        )
    with pytest.raises(ValueError, match="num_steps"):
        dd.solve_phase_space(
            br, lambda t, x, v: x, jnp.zeros((3, 2)), key=jax.random.key(0), num_steps=0
        )


@pytest.mark.parametrize(("s", "t"), [(0.0, 0.5), (0.2, 0.7), (0.5, 0.95)])
def test_second_order_step_exact_for_a_target_linear_in_time(s, t):
    """The order-2 step's extra response to a target `D + (tau - s) delta` matches a tight
    numerical solve of the bridge ODE `x'' = 3 (x1(tau) - x - (1 - tau) x') / (1 - tau)^2`."""
    from scipy.integrate import solve_ivp

    from driftax.diffusion._bridges._phase_space import _slope_gain

    d, delta, x, v = 0.7, -1.3, 0.2, 0.4

    def rhs(tau, y):
        return [y[1], 3.0 * (d + (tau - s) * delta - y[0] - (1 - tau) * y[1]) / (1 - tau) ** 2]

    ref = solve_ivp(rhs, (s, t), [x, v], rtol=1e-11, atol=1e-12).y[:, -1]
    (mx, mv), _ = dd.PhaseSpaceBridge(sigma=0.0).conditional(
        t, jnp.array([x]), jnp.array([v]), jnp.array([d]), s
    )
    gx, gv = _slope_gain(jnp.asarray(s), jnp.asarray(t))
    np.testing.assert_allclose(
        [float(mx[0] + gx * delta), float(mv[0] + gv * delta)], ref, rtol=1e-5
    )


def test_both_orders_exact_for_a_constant_prediction():
    """Point-mass data: the exact prediction is the constant `c`; both samplers land on it
    (and agree on the whole path) at any step count."""
    c = jnp.array([1.5, -2.0])
    br = dd.PhaseSpaceBridge(sigma=0.7, velocity_scale=0.5)
    x0 = jax.random.normal(jax.random.key(7), (50, 2))
    outs = [
        dd.solve_phase_space(
            br, lambda t, x, v: c, x0, key=jax.random.key(8), num_steps=3, order=o
        )[0]
        for o in (1, 2)
    ]
    for out in outs:
        np.testing.assert_allclose(np.asarray(out), np.broadcast_to(c, out.shape), atol=1e-4)


@pytest.mark.slow
def test_second_order_sampler_converges_at_second_order(gaussian_data):
    """With the exact Gaussian predictor at sigma = 0 (deterministic), the distance to a
    256-step order-2 solution falls ~4x per halving of the step for order 2 and ~2x for
    order 1, and order 2 at 16 steps beats order 1 at 32."""
    br = dd.PhaseSpaceBridge(sigma=0.0, velocity_scale=0.5)
    exact = _ExactPredictor(br)
    x0 = gaussian_data[0][:200]
    v0 = 0.5 * jax.random.normal(jax.random.key(9), x0.shape)

    def run(n, o):
        out, _ = dd.solve_phase_space(
            br, exact, x0, key=jax.random.key(0), num_steps=n, v_init=v0, order=o
        )
        return out

    ref = run(256, 2)
    err = {
        (n, o): float(jnp.mean(jnp.linalg.norm(run(n, o) - ref, axis=-1)))
        for o in (1, 2)
        for n in (8, 16, 32)
    }
    assert err[8, 2] / err[16, 2] > 3.0 and err[16, 2] / err[32, 2] > 3.0
    assert 1.5 < err[16, 1] / err[32, 1] < 2.5
    assert err[16, 2] < err[32, 1] / 4
