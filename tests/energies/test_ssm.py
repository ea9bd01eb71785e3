"""State-space models: the Kalman filter and RTS smoother against the joint Gaussian (exact
identities), the model interface, constructors and their bad-input errors."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import driftax as dx
import driftax.energies as de

A, Q, H, R, M0, P0 = 0.8, 0.5, 1.3, 0.7, 0.2, 1.5


def scalar_model():
    return de.linear_gaussian_ssm(
        jnp.array([[A]]), jnp.array([[Q]]), jnp.array([[H]]), jnp.array([[R]]),
        jnp.array([M0]), jnp.array([[P0]]),
    )  # fmt: skip


def joint_gaussian_posterior(ys: np.ndarray):
    """Mean and covariance of x_{0:T-1} | y_{0:T-1} from the tridiagonal precision, and the
    log-evidence from the marginal Gaussian of y (both dense, exact)."""
    T = ys.shape[0]
    J = np.zeros((T, T))
    b = np.zeros(T)
    for t in range(T):
        J[t, t] = (1 / P0 if t == 0 else 1 / Q) + H**2 / R + (A**2 / Q if t < T - 1 else 0.0)
        b[t] = H * ys[t, 0] / R + (M0 / P0 if t == 0 else 0.0)
        if t < T - 1:
            J[t, t + 1] = J[t + 1, t] = -A / Q
    cov = np.linalg.inv(J)
    mean = cov @ b
    # prior of x: x_t = A^t x_0 + ..., so Cov(x) and the marginal of y = H x + noise
    L = np.zeros((T, T))
    for t in range(T):
        for s in range(t + 1):
            L[t, s] = A ** (t - s)
    scales = np.array([np.sqrt(P0)] + [np.sqrt(Q)] * (T - 1))
    prior_cov = (L * scales) @ (L * scales).T
    prior_mean = np.array([A**t * M0 for t in range(T)])
    y_cov = H**2 * prior_cov + R * np.eye(T)
    resid = ys[:, 0] - H * prior_mean
    sign, logdet = np.linalg.slogdet(y_cov)
    log_ev = -0.5 * (resid @ np.linalg.solve(y_cov, resid) + logdet + T * np.log(2 * np.pi))
    return mean, cov, log_ev


@pytest.fixture(scope="module")
def data():
    with jax.enable_x64(True):
        model = scalar_model()
        xs, ys = model.simulate(jax.random.key(3), 7)
        return model, np.asarray(xs), np.asarray(ys)


def test_kalman_and_rts_are_exact(data, x64):
    """Log-likelihood, smoothing means, variances and lag-one covariances equal the dense joint
    Gaussian's to float64 precision; the last filtering moments equal the last smoothing ones."""
    model, _, ys = data
    mean, cov, log_ev = joint_gaussian_posterior(ys)
    out = de.rts_smoother(model, jnp.asarray(ys))
    np.testing.assert_allclose(out.log_likelihood, log_ev, rtol=1e-10)
    assert out.smoothed_means is not None and out.smoothed_covs is not None
    assert out.smoothed_cross_covs is not None
    np.testing.assert_allclose(out.smoothed_means[:, 0], mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(out.smoothed_covs[:, 0, 0], np.diag(cov), rtol=1e-9)
    np.testing.assert_allclose(out.smoothed_cross_covs[:, 0, 0], np.diag(cov, 1), rtol=1e-9)
    np.testing.assert_allclose(out.filtered_means[-1], out.smoothed_means[-1], rtol=1e-12)
    assert de.kalman_filter(model, jnp.asarray(ys)).smoothed_means is None


def test_log_joint_and_simulate(data, x64):
    """`log_joint` is the sum of the three densities; `simulate` gives the declared shapes and
    the same draws for the same key."""
    model, xs, ys = data
    x, y = jnp.asarray(xs), jnp.asarray(ys)
    manual = model.initial_log_density(x[0]) + sum(
        model.observation_log_density(x[t], y[t], jnp.asarray(t)) for t in range(7)
    )
    manual = manual + sum(
        model.transition_log_density(x[t - 1], x[t], jnp.asarray(t)) for t in range(1, 7)
    )
    np.testing.assert_allclose(model.log_joint(x, y), manual, rtol=1e-12)
    assert xs.shape == (7, 1) and ys.shape == (7, 1)
    xs2, _ = model.simulate(jax.random.key(3), 7)
    np.testing.assert_array_equal(xs, xs2)
    gx, gy = de.growth_model().simulate(jax.random.key(0), 9)
    assert gx.shape == (9, 1) and gy.shape == (9, 1)
    assert np.all(np.isfinite(gx)) and np.all(np.isfinite(gy))


def test_optimal_proposal_identity(data, x64):
    """The locally optimal proposal: `m(x'|x) g(y|x') / q(x'|x, y) = p(y | x)` (its look-ahead)
    for every `x'`; the same at t = 0 with the initial law, where it is the first Kalman
    increment."""
    model, _, ys = data
    prop = model.optimal_proposal()
    y = jnp.asarray(ys[2])
    t = jnp.asarray(2)
    x_prev = jnp.array([0.4])
    for x in (jnp.array([-1.0]), jnp.array([0.3]), jnp.array([2.0])):
        lhs = (
            model.transition_log_density(x_prev, x, t)
            + model.observation_log_density(x, y, t)
            - prop.log_density(x_prev, x, y, t)
        )
        np.testing.assert_allclose(lhs, prop.log_predictive(x_prev, y, t), rtol=1e-10)
        lhs0 = (
            model.initial_log_density(x)
            + model.observation_log_density(x, jnp.asarray(ys[0]), t)
            - prop.initial_log_density(x, jnp.asarray(ys[0]))
        )
        first = de.kalman_filter(model, jnp.asarray(ys[:1])).log_likelihood
        np.testing.assert_allclose(lhs0, first, rtol=1e-10)


def test_parameter_energies(data, x64):
    """`state_space_posterior` is prior + log-joint on [θ, states]; `kalman_marginal` is prior
    + Kalman log-likelihood (and differentiable)."""
    _, xs, ys = data

    def model_fn(theta):
        return de.linear_gaussian_ssm(
            theta[:1, None], jnp.array([[Q]]), jnp.array([[H]]), jnp.array([[R]]),
            jnp.array([M0]), jnp.array([[P0]]),
        )  # fmt: skip

    prior = de.gaussian(jnp.zeros(1))
    theta = jnp.array([A])
    joint = de.state_space_posterior(model_fn, prior, ys)
    z = jnp.concatenate([theta, jnp.asarray(xs)[:, 0]])
    expected = prior.log_density(theta) + model_fn(theta).log_joint(jnp.asarray(xs), ys)
    np.testing.assert_allclose(joint.log_density(z), expected, rtol=1e-12)
    marginal = de.kalman_marginal(model_fn, prior, ys)
    _, _, log_ev = joint_gaussian_posterior(ys)
    np.testing.assert_allclose(marginal.log_density(theta), prior.log_density(theta) + log_ev)
    assert np.isfinite(marginal.score(theta)).all()


def test_bad_inputs():
    eye = jnp.eye(2)
    args = (eye, eye, eye, eye, jnp.zeros(2), eye)
    with pytest.raises(ValueError, match="transition_cov"):
        de.linear_gaussian_ssm(eye, -eye, eye, eye, jnp.zeros(2), eye)
    with pytest.raises(ValueError, match="transition_matrix"):
        de.linear_gaussian_ssm(jnp.eye(3), eye, eye, eye, jnp.zeros(2), eye)
    with pytest.raises(ValueError, match="observation_matrix"):
        de.linear_gaussian_ssm(eye, eye, jnp.ones((2, 3)), eye, jnp.zeros(2), eye)
    with pytest.raises(ValueError, match="initial_mean"):
        de.linear_gaussian_ssm(eye, eye, eye, eye, jnp.zeros((2, 1)), eye)
    model = de.linear_gaussian_ssm(*args)
    with pytest.raises(ValueError, match="observations"):
        de.kalman_filter(model, jnp.zeros((5, 3)))
    with pytest.raises(ValueError, match="observations"):
        de.kalman_filter(model, jnp.zeros(5))
    with pytest.raises(TypeError, match="model"):
        de.kalman_filter(de.growth_model(), jnp.zeros((5, 1)))
    with pytest.raises(ValueError, match="transition_variance"):
        de.growth_model(transition_variance=-1.0)
    with pytest.raises(TypeError, match="model_fn"):
        de.kalman_marginal(
            lambda th: de.growth_model(), de.gaussian(jnp.zeros(1)), jnp.zeros((4, 1))
        )
    assert isinstance(model, dx.energies.AbstractBoundedTransition)


# ----------------------------------------------------------------------------------------------
# the stochastic Lotka–Volterra model


def _lv_reference_log_densities(model, x_prev, x, y):
    """The transition, initial and observation log densities written out directly in NumPy:
    Gaussian Euler–Maruyama steps of the log-population SDE, one sub-step at a time."""
    a, b, g, d = (float(v) for v in (model.prey_growth, model.predation,
                                     model.predator_death, model.predator_growth))  # fmt: skip
    s, tau = float(model.volatility), float(model.observation_sd)
    dt = model.interval / model.num_substeps

    def gauss(v, mean, sd):
        return float(np.sum(-0.5 * ((v - mean) / sd) ** 2 - np.log(sd) - 0.5 * np.log(2 * np.pi)))

    def path(z, rows):
        total = 0.0
        for row in rows:
            drift = np.array([a - b * np.exp(z[1]) - s**2 / 2, d * np.exp(z[0]) - g - s**2 / 2])
            total += gauss(row, z + dt * drift, s * np.sqrt(dt))
            z = row
        return total

    x_prev, x, y = np.asarray(x_prev), np.asarray(x), np.asarray(y)
    trans = path(x_prev[-1], x)
    init = gauss(x[0], np.asarray(model.initial_mean), np.asarray(model.initial_sd))
    init += path(x[0], x[1:])
    return trans, init, gauss(y, x[-1], tau)


def test_lotka_volterra_densities(x64):
    """Transition, initial and observation log densities equal the direct Gaussian formulas;
    the transition's bound is attained at the noise-free Euler path; `simulate` has the
    declared shapes, repeats for the same key, and regenerates the shipped data set."""
    simulate = eqx.filter_jit(lambda m, k, n: m.simulate(k, n))  # one compile per model shape
    model = de.lotka_volterra_ssm(1.1, 0.04, 0.9, 0.03, volatility=0.2, observation_sd=0.3)
    xs, ys = simulate(model, jax.random.key(1), 6)
    assert xs.shape == (6, 4, 2) and ys.shape == (6, 2)
    np.testing.assert_array_equal(xs, simulate(model, jax.random.key(1), 6)[0])
    t = jnp.asarray(3)
    trans, init, obs = _lv_reference_log_densities(model, xs[2], xs[3], ys[3])
    np.testing.assert_allclose(model.transition_log_density(xs[2], xs[3], t), trans, rtol=1e-12)
    np.testing.assert_allclose(model.initial_log_density(xs[3]), init, rtol=1e-12)
    np.testing.assert_allclose(model.observation_log_density(xs[3], ys[3], t), obs, rtol=1e-12)
    z, rows = xs[2, -1], []
    for _ in range(4):
        z = model.euler_mean(z)
        rows.append(z)
    np.testing.assert_allclose(
        model.transition_log_density(xs[2], jnp.stack(rows), t),
        model.transition_log_bound(t),
        rtol=1e-12,
    )
    one = de.lotka_volterra_ssm(num_substeps=1, interval=0.2)
    x1, y1 = simulate(one, jax.random.key(2), 5)
    assert x1.shape == (5, 1, 2)
    trans, init, _ = _lv_reference_log_densities(one, x1[0], x1[1], y1[1])
    np.testing.assert_allclose(one.transition_log_density(x1[0], x1[1], t), trans, rtol=1e-12)
    np.testing.assert_allclose(one.initial_log_density(x1[1]), init, rtol=1e-12)
    states, observations = de._ssm.simulate_lotka_volterra_data()
    problem = de.lotka_volterra_problem(with_reference=False)
    np.testing.assert_allclose(problem.observations, observations, rtol=1e-12)
    np.testing.assert_allclose(problem.states, states, rtol=1e-12)


def test_lotka_volterra_problem(x64):
    """The shipped problem: its joint posterior is prior + log-joint on [θ, states]; the
    reference holds finite moments with small MCSEs and converged diagnostics."""
    problem = de.lotka_volterra_problem()
    theta = jnp.array([0.1, -0.05])
    joint = problem.posterior()
    z = jnp.concatenate([theta, problem.states.reshape(-1)])
    expected = problem.prior.log_density(theta) + problem.model_fn(theta).log_joint(
        problem.states, problem.observations
    )
    np.testing.assert_allclose(joint.log_density(z), expected, rtol=1e-12)
    assert joint.event_shape == (2 + 25 * 8,)
    assert problem.reference_mean is not None and problem.reference_sd is not None
    assert problem.reference_mcse_mean is not None and problem.reference_info is not None
    assert np.all(np.asarray(problem.reference_mcse_mean) < 0.05 * np.asarray(problem.reference_sd))
    assert max(problem.reference_info["rhat"]) < 1.01
    assert min(problem.reference_info["ess_bulk"]) > 1000


def test_lotka_volterra_bad_inputs():
    with pytest.raises(ValueError, match="predation"):
        de.lotka_volterra_ssm(predation=-0.1)
    with pytest.raises(ValueError, match="volatility"):
        de.lotka_volterra_ssm(volatility=jnp.ones(2))
    with pytest.raises(ValueError, match="num_substeps"):
        de.lotka_volterra_ssm(num_substeps=0)
    with pytest.raises(ValueError, match="initial_mean"):
        de.lotka_volterra_ssm(initial_mean=jnp.zeros(3))
    with pytest.raises(ValueError, match="initial_sd"):
        de.lotka_volterra_ssm(initial_sd=(0.1, 0.0))
    with pytest.raises(ValueError, match="interval"):
        de.lotka_volterra_ssm(interval=float("nan"))
    with pytest.raises(ValueError, match="observations"):
        dx.samplers.particle_filter(
            de.lotka_volterra_ssm(), jnp.zeros((5, 3)), key=jax.random.key(0), num_particles=8
        )
